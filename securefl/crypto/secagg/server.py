"""The server state machine of secure aggregation (Bonawitz et al., CCS 2017; SecAgg+,
Bell et al., CCS 2020): one round, one method per stage. Each ``*_request`` method
builds the message for one client; each ``collect_*`` method takes the replies
(``None`` for a client that dropped) and moves to the next stage.

The server learns the public keys, the share *ciphertexts* it routes, the masked
inputs (uniform in Z_(2^bits) to it), and at the end enough shares to remove the
masks of the survivors' sum: self-mask seeds of survivors and mask keys of clients
that dropped after sharing. If a secret it needs has fewer than ``t`` live holders,
or the cohort falls below its ``min_clients`` (the floor its clients apply too), it
raises :class:`~securefl.exceptions.SecAggAbortError` and the round is void, so an
honest round never reaches a request an honest client would refuse.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from securefl.crypto import primitives as P
from securefl.crypto import shamir
from securefl.crypto.secagg.common import (
    SecAggSettings,
    advert_transcript,
    b64,
    field,
    pair_info,
    pair_mask_info,
    self_mask_info,
    survivors_transcript,
    unb64,
)
from securefl.crypto.secagg.graph import build_graph
from securefl.crypto.secagg.masking import add_masks, agree_many
from securefl.crypto.secagg.packing import packed_size, unpack
from securefl.exceptions import ProtocolError, SecAggAbortError, WireFormatError
from securefl.transport import wire


_SHARE_BYTES = 4 + shamir.ELEMENT_BYTES
_Points = tuple[list[int], list[int]]


def _share_values(part: dict[str, Any], x: int, holder: str, store: dict[str, _Points]) -> None:
    """Append to ``store[v]`` the point ``x`` and the value of each base64 share
    (:meth:`shamir.Share.to_bytes`) in ``part`` (v -> text) that ``holder`` holds
    at ``x``: strict base64, the right length, point and field, else ProtocolError."""
    point = x.to_bytes(4, "big")
    a2b, from_bytes, top = binascii.a2b_base64, int.from_bytes, shamir.PRIME
    for v, text in part.items():
        try:
            raw = a2b(text, strict_mode=True)
        except (TypeError, ValueError):  # binascii.Error is a ValueError
            raise ProtocolError(f"share from {holder}: not valid base64") from None
        if len(raw) != _SHARE_BYTES or raw[:4] != point:
            raise ProtocolError(f"{holder} returned a malformed share or one held at another point")
        y = from_bytes(raw[4:], "big")
        if y >= top:
            raise ProtocolError(f"share from {holder} is out of the field")
        entry = store.get(v)
        if entry is None:
            store[v] = entry = ([], [])
        entry[0].append(x)
        entry[1].append(y)


@dataclass(frozen=True)
class SecAggResult:
    """What the server learns: the sum of the survivors' encoded vectors, decoded."""

    total: np.ndarray  #: sum of n_k * Delta_k over survivors (float64)
    aux: dict[str, float]  #: sums of the auxiliary counters
    saturated: int  #: coordinates clipped by the survivors, summed
    survivors: list[str]  #: clients whose input is in the sum
    ring_sum: np.ndarray  #: the unmasked sum in Z_(2^bits) (before decoding)


class SecAggServer:
    """One round of the protocol on the server."""

    def __init__(
        self,
        round_: int,
        roster: list[str],
        *,
        settings: SecAggSettings,
        directory: Mapping[str, bytes] | None = None,
    ) -> None:
        """``roster`` is this round's cohort; ``directory`` the pinned verification
        keys (:attr:`securefl.crypto.identity.Roster.members`), needed with the
        malicious option. The SecAgg+ graph is drawn from the OS CSPRNG."""
        if len(set(roster)) != len(roster):
            raise ProtocolError("roster has duplicate client ids")
        self.round = round_
        self.roster = sorted(roster)
        #: holder index (share point) of each client: O(1) lookups, not list.index
        self._points = {v: i + 1 for i, v in enumerate(self.roster)}
        self.settings = settings
        n = len(self.roster)
        self.threshold = settings.threshold_for(n) if n >= 2 else 2
        #: fewest inputs a released sum may hold (threshold or min_clients)
        self.floor = settings.cohort_floor(n) if n >= 2 else max(2, settings.min_clients)
        if n < 2 or n < self.floor:
            raise SecAggAbortError(len(roster), self.floor, "advertise")
        self.local_floor = settings.neighborhood_floor(n)
        self.codec = settings.codec(n)
        degree = settings.degree(n)
        self.graph = build_graph(self.roster, 0 if degree == n - 1 else degree)
        self.directory = dict(directory or {})
        if settings.malicious and set(self.roster) - set(self.directory):
            raise ProtocolError("malicious-server option: some clients are not in the pinned roster")
        self.keys: dict[str, dict[str, str]] = {}  # u1: advertised keys (base64 wire form)
        self.u2: list[str] = []
        self.routed: dict[str, dict[str, str]] = {}  # recipient -> sender -> ciphertext
        self.u3: set[str] = set()  # clients whose masked input arrived
        self.masked_sum: np.ndarray | None = None  # running sum: O(d) memory, not O(n * d)
        self.aux_keys: list[str] | None = None
        self.dim: int | None = None
        self.headers: list[dict[str, Any]] = []
        self.signatures: dict[str, str] = {}
        self.unmaskers: list[str] = []
        self.stage_bytes: dict[str, int] = {}

    def _x(self, v: str) -> int:
        return self._points[v]

    def _abort_if_short(self, alive: list[str], stage: str) -> None:
        if len(alive) < self.floor:
            raise SecAggAbortError(len(alive), self.floor, stage)

    def _prune(self, alive: set[str]) -> set[str]:
        """Drop clients whose live neighbourhood (plus themselves) is below what an
        honest client accepts (:meth:`SecAggSettings.neighborhood_floor`)."""
        changed = True
        while changed:
            changed = False
            for u in sorted(alive):
                if len(set(self.graph[u]) & alive) + 1 < self.local_floor:
                    alive.discard(u)
                    changed = True
        return alive

    def _decode(self, raw: bytes | None, kind: wire.Kind, u: str, dim: int = 0) -> wire.Message | None:
        if raw is None:
            return None
        # key stages: a few hundred bytes per neighbour; masked input: one ring element a coordinate
        msg = wire.decode(raw, expect=kind, max_size=wire.size_limit(dim, per_coordinate=8))
        if msg.header.get("round") != self.round or msg.header.get("client") != u:
            raise ProtocolError(f"{kind.name} from {u} names another round or client")
        self.stage_bytes[kind.name] = self.stage_bytes.get(kind.name, 0) + len(raw)
        return msg

    # ------------------------------------------------------------ stage 1
    def advertise_request(self, u: str) -> bytes:
        h: dict[str, Any] = {
            "round": self.round,
            "roster": self.roster,
            "neighbors": self.graph[u],
            "threshold": self.threshold,
            "bits": self.codec.bits,
            "frac_bits": self.codec.frac_bits,
        }
        return wire.encode(wire.Kind.SECAGG_ADVERTISE_REQUEST, h)

    def collect_keys(self, replies: Mapping[str, bytes | None]) -> list[str]:
        for u, raw in replies.items():
            msg = self._decode(raw, wire.Kind.SECAGG_KEYS, u)
            if msg is None:
                continue
            c_pk, s_pk = unb64(msg.header.get("c_pk"), "c_pk"), unb64(msg.header.get("s_pk"), "s_pk")
            entry = {"c_pk": b64(c_pk), "s_pk": b64(s_pk)}
            if self.settings.malicious:
                sig = unb64(msg.header.get("sig"), "sig")
                if not P.verify(self.directory[u], sig, advert_transcript(self.round, u, c_pk, s_pk)):
                    raise ProtocolError(f"advertised keys of {u} carry no valid signature")
                entry["sig"] = b64(sig)
            self.keys[u] = entry
        alive = self._prune(set(self.keys))
        self.keys = {u: self.keys[u] for u in sorted(alive)}
        self._abort_if_short(sorted(alive), "advertise")
        return sorted(alive)

    # ------------------------------------------------------------ stage 2
    def share_request(self, u: str) -> bytes:
        keys = {v: self.keys[v] for v in self.graph[u] if v in self.keys}
        return wire.encode(wire.Kind.SECAGG_SHARE_REQUEST, {"round": self.round, "keys": keys})

    def collect_shares(self, replies: Mapping[str, bytes | None]) -> list[str]:
        got: dict[str, dict[str, str]] = {}
        for u, raw in replies.items():
            msg = self._decode(raw, wire.Kind.SECAGG_SHARES, u)
            if msg is None:
                continue
            shares = msg.header.get("shares")
            expected = {v for v in self.graph[u] if v in self.keys}
            if not isinstance(shares, dict) or set(shares) != expected:
                raise ProtocolError(f"{u} must send one share ciphertext to each advertised neighbour")
            got[u] = shares
        alive = self._prune(set(got))
        self._abort_if_short(sorted(alive), "share keys")
        self.u2 = sorted(alive)
        for u in self.u2:
            for v, ct in got[u].items():
                self.routed.setdefault(v, {})[u] = ct
        return self.u2

    # ------------------------------------------------------------ stage 3
    def masking_message(self, u: str, global_message: bytes) -> bytes:
        """The GLOBAL_MODEL message for ``u`` with this round's masking parameters."""
        msg = wire.decode(global_message, expect=wire.Kind.GLOBAL_MODEL)
        maskers = [v for v in self.graph[u] if v in self.u2]
        info = {
            "round": self.round,
            "maskers": maskers,
            "ciphertexts": {v: self.routed[u][v] for v in maskers},
        }
        return wire.encode(wire.Kind.GLOBAL_MODEL, {**msg.header, "secagg": info}, msg.payload)

    def collect_masked(self, replies: Mapping[str, bytes | None], dim: int) -> list[str]:
        for u, raw in replies.items():
            msg = self._decode(raw, wire.Kind.SECAGG_MASKED_INPUT, u, dim)
            if msg is None:
                continue
            keys = msg.header.get("aux")
            if field(msg.header, "dim", int) != dim or msg.header.get("bits") != self.codec.bits:
                raise WireFormatError(f"masked input of {u} has the wrong dimension or ring")
            if self.aux_keys is None:
                self.aux_keys = keys
            if keys != self.aux_keys or not isinstance(keys, list):
                raise ProtocolError(f"masked input of {u} carries other auxiliary counters ({keys})")
            length = dim + len(keys) + 1
            if len(msg.payload) != packed_size(length, self.codec.bits):
                raise WireFormatError(
                    f"masked input of {u} has {len(msg.payload)} bytes, expected {packed_size(length, self.codec.bits)}"
                )
            y = unpack(msg.payload, self.codec.bits, length, self.codec.dtype)
            if self.masked_sum is None:
                self.masked_sum = y.astype(self.codec.dtype)
            else:
                self.masked_sum += y
            self.u3.add(u)
            self.headers.append({k: msg.header[k] for k in ("client", "epsilon", "steps") if k in msg.header})
        self.dim = dim
        alive = sorted(self.u3)
        self._abort_if_short(alive, "masked input")
        live = set(alive)
        for u in alive:  # every survivor's self-mask seed must be recoverable from live holders
            if len(set(self.graph[u]) & live) + 1 < self.threshold:
                raise SecAggAbortError(len(set(self.graph[u]) & live) + 1, self.threshold, "masked input")
        for v in set(self.u2) - live:  # and every mask key of a masker that dropped since
            holders = len(set(self.graph[v]) & live)
            if holders and holders < self.threshold:
                raise SecAggAbortError(holders, self.threshold, "masked input")
        return alive

    # ------------------------------------------------------------ stage 4 (malicious option)
    def consistency_request(self, u: str) -> bytes:
        return wire.encode(wire.Kind.SECAGG_CONSISTENCY_REQUEST, {"round": self.round, "survivors": sorted(self.u3)})

    def collect_signatures(self, replies: Mapping[str, bytes | None]) -> list[str]:
        transcript = survivors_transcript(self.round, sorted(self.u3))
        for u, raw in replies.items():
            msg = self._decode(raw, wire.Kind.SECAGG_SIGNATURE, u)
            if msg is None:
                continue
            sig = unb64(msg.header.get("sig"), "sig")
            if not P.verify(self.directory[u], sig, transcript):
                raise ProtocolError(f"consistency signature of {u} is invalid")
            self.signatures[u] = b64(sig)
        alive = sorted(self.signatures)
        self._abort_if_short(alive, "consistency check")
        signers = set(alive)
        # a client verifies only the signatures of its own neighbourhood and refuses to
        # unmask with fewer than t of them; leave such clients out, then make sure every
        # share the unmasking needs still has t holders, or abort here (nothing revealed)
        unmaskers = {u for u in signers if len((set(self.graph[u]) | {u}) & signers) >= self.threshold}
        for v in self.u3:
            have = len((set(self.graph[v]) | {v}) & unmaskers)
            if have < self.threshold:
                raise SecAggAbortError(have, self.threshold, "consistency check")
        for v in set(self.u2) - set(self.u3):
            holders = set(self.graph[v]) & unmaskers
            if any(u in self.u3 for u in self.graph[v]) and len(holders) < self.threshold:
                raise SecAggAbortError(len(holders), self.threshold, "consistency check")
        return sorted(unmaskers)

    # ------------------------------------------------------------ stage 5
    def unmask_request(self, u: str) -> bytes:
        maskers = [v for v in self.graph[u] if v in self.u2]
        h: dict[str, Any] = {
            "round": self.round,
            "survivors": sorted([v for v in maskers if v in self.u3] + [u]),
            "dropped": [v for v in maskers if v not in self.u3],
            "cohort": sorted(self.u3),  # every input in the sum (clients check it against what they know)
        }
        if self.settings.malicious:
            h["signatures"] = self.signatures
        return wire.encode(wire.Kind.SECAGG_UNMASK_REQUEST, h)

    def collect_unmask(self, replies: Mapping[str, bytes | None]) -> SecAggResult:
        b_shares: dict[str, _Points] = {}  # v -> (points, values) of its revealed shares
        sk_shares: dict[str, _Points] = {}
        survivors, dropped = set(self.u3), set(self.u2) - set(self.u3)
        for u, raw in replies.items():
            msg = self._decode(raw, wire.Kind.SECAGG_UNMASK, u)
            if msg is None:
                continue
            self.unmaskers.append(u)
            x = self._x(u)
            for name, store, allowed in (("b", b_shares, survivors), ("sk", sk_shares, dropped)):
                part = msg.header.get(name)
                if not isinstance(part, dict) or not part.keys() <= allowed:
                    raise ProtocolError(f"unmasking reply of {u} reveals shares it was not asked for")
                _share_values(part, x, u, store)
        return self._unmask(b_shares, sk_shares)

    def _unmask(self, b_shares: dict[str, _Points], sk_shares: dict[str, _Points]) -> SecAggResult:
        assert self.dim is not None and self.aux_keys is not None
        codec, t = self.codec, self.threshold
        survivors = sorted(self.u3)
        dropped = [v for v in self.u2 if v not in self.u3 and any(u in self.u3 for u in self.graph[v])]
        for group, store in ((survivors, b_shares), (dropped, sk_shares)):
            for v in group:
                have = len(store.get(v, ((), ()))[0])
                if have < t:
                    raise SecAggAbortError(have, t, "unmask")
        assert self.masked_sum is not None
        total = self.masked_sum.copy()
        # one randomized consistency check per secret, one challenge for all (shamir.combine_points)
        seeds = [shamir.int_to_secret(s) for s in shamir.combine_points([b_shares[v] for v in survivors], t)]
        keys = [shamir.int_to_secret(s) for s in shamir.combine_points([sk_shares[v] for v in dropped], t)]
        add_masks(total, [(seed, self_mask_info(self.round, v), True) for v, seed in zip(survivors, seeds)])
        pair = pair_info(self.round)
        for v, sk in zip(dropped, keys):
            if len(sk) != 32 or P.x25519_public(sk) != unb64(self.keys[v]["s_pk"], "s_pk"):
                raise ProtocolError(f"reconstructed mask key of {v} does not match its advertised key")
            live = [u for u in self.graph[v] if u in self.u3]
            seeds = agree_many(sk, [unb64(self.keys[u]["s_pk"], "s_pk") for u in live], pair)
            # u added +m if u < v, else -m; take it back out
            add_masks(total, [(seed, pair_mask_info(self.round), u < v) for u, seed in zip(live, seeds)])
        values = codec.decode(total[: self.dim + len(self.aux_keys)])
        saturated = int(codec.signed(total[-1:])[0])
        aux = {k: float(values[self.dim + i]) for i, k in enumerate(self.aux_keys)}
        return SecAggResult(values[: self.dim], aux, saturated, survivors, total)
