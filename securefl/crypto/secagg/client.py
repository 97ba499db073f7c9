"""The client state machine of secure aggregation (Bonawitz et al., CCS 2017; SecAgg+,
Bell et al., CCS 2020): one method per stage, each checking that it is called in
order and that the server's request is one an honest client may answer.

Stages of round r (the client's neighbours are everyone else, or its SecAgg+ graph
neighbours):

1. advertise: fresh X25519 pairs ``(c, s)``; ``c`` keys the share channels, ``s`` the
   pairwise masks (signed with the client's Ed25519 identity key in the
   malicious-server option);
2. share keys: Shamir shares of the self-mask seed ``b_u`` and of ``s_u^SK`` for each
   neighbour, each encrypted with ChaCha20-Poly1305 bound to (round, sender, recipient);
3. masked input: ``y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv)`` in Z_(2^bits) over the
   neighbours that completed stage 2;
4. consistency check (malicious option): sign the set of survivors;
5. unmask: reveal ``b``-shares of survivors and ``s^SK``-shares of dropped
   neighbours, never both for one client, and only once per round.

Against a malicious server (Bonawitz et al., section 6) the client trusts no key
the server relays: every signature is checked against a :class:`Roster` pinned out
of band, and a cohort naming anyone outside it is refused. Whatever the mode, the
client refuses any cohort, neighbourhood or released sum below its own
``min_clients``, and a :class:`RoundGuard` lets it advertise each round number at
most once, so an old round cannot be rerun with another cohort and differenced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Mapping

import numpy as np

from securefl.crypto import primitives as P
from securefl.crypto import shamir
from securefl.crypto.encoding import b64, unb64
from securefl.crypto.identity import Identity, Roster
from securefl.crypto.quantize import FixedPoint
from securefl.crypto.replay import RoundGuard
from securefl.crypto.secagg.common import (
    SecAggSettings, advert_transcript, check_party, channel_info, clip_input, distributed_noise_stddev,
    encode_with_noise, field, id_list, noise_units, pair_info, pair_mask_info, round_field, self_mask_info, survivors_transcript,
)
from securefl.crypto.secagg.masking import add_masks, agree_many, scratch
from securefl.crypto.secagg.packing import pack
from securefl.exceptions import ConfigValueError, ProtocolError
from securefl.transport import wire

#: the RoundGuard stage: a round number is advertised (keys issued) at most once
ADVERTISE_STAGE = "secagg-advertise"
# stage markers
_ADVERTISED, _SHARED, _READY, _MASKED, _SIGNED, _DONE = range(1, 7)


@dataclass
class _Round:
    round: int
    roster: list[str]
    neighbors: list[str]
    threshold: int
    codec: Any
    c_sk: bytes
    c_pk: bytes
    s_sk: bytes
    s_pk: bytes
    seed: bytes
    stage: int = _ADVERTISED
    peers: dict[str, tuple[bytes, bytes]] = dc_field(default_factory=dict)  # v -> (c_pk, s_pk)
    own_b: shamir.Share | None = None
    own_sk: shamir.Share | None = None
    maskers: list[str] = dc_field(default_factory=list)  # neighbours that completed stage 2
    held: dict[str, tuple[shamir.Share, shamir.Share]] = dc_field(default_factory=dict)  # v -> (b_v, sk_v)
    signed: list[str] | None = None
    points: dict[str, int] = dc_field(default_factory=dict)  # v -> share point (1-based roster position)

    def __post_init__(self) -> None:
        self.points = {v: i + 1 for i, v in enumerate(self.roster)}


class SecAggClient:
    """One client's side of the protocol. Secrets (round keys, seeds, shares it
    holds, the identity key) live only here and are never serialized.

    Args:
        client_id: this client's id (as named in the roster).
        settings: this client's own settings; every parameter the server announces
            is checked against them, never taken from the server.
        rng: the generator of this client's distributed-DP noise share and of
            nothing else (it is seeded under ``reproducible_noise``); keys, seeds,
            Shamir coefficients and rounding come from the OS CSPRNG.
        identity: this client's Ed25519 signing key (required with ``malicious``).
        roster: the members' verification keys, pinned out of band (required with
            ``malicious``; optional otherwise, and then enforced too).
        guard: the client's round memory; a round number is advertised at most
            once, across restarts when the guard has a file (in memory if None).
    """

    def __init__(
        self,
        client_id: str,
        *,
        settings: SecAggSettings,
        rng: Any,
        identity: Identity | None = None,
        roster: Roster | None = None,
        guard: RoundGuard | None = None,
    ) -> None:
        self.client_id = str(client_id)
        self.settings = settings
        self._noise_rng = rng
        check_party(self.client_id, settings, identity, roster)
        self._identity = identity if settings.malicious else None
        self.roster = roster
        self.guard = guard if guard is not None else RoundGuard()
        self._rounds: dict[int, _Round] = {}
        self.last_saturated = 0
        self.last_noise_stddev = 0.0  #: per-coordinate std of the last noise share
        self.last_noise_units = 0  #: its discrete Gaussian parameter, in grid units
        self._handlers: dict[wire.Kind, Callable[[wire.Message], bytes]] = {
            wire.Kind.SECAGG_ADVERTISE_REQUEST: self.advertise,
            wire.Kind.SECAGG_SHARE_REQUEST: self.share_keys,
            wire.Kind.SECAGG_CONSISTENCY_REQUEST: self.consistency,
            wire.Kind.SECAGG_UNMASK_REQUEST: self.unmask,
        }

    @property
    def verification_key(self) -> bytes | None:
        return self._identity.verification_key if self._identity else None

    # ------------------------------------------------------------ dispatch
    def handle(self, raw: bytes) -> bytes:
        msg = wire.decode(raw)
        handler = self._handlers.get(msg.kind)
        if handler is None:
            raise ProtocolError(f"secure aggregation does not answer {msg.kind.name} messages")
        return handler(msg)

    def _state(self, header: Mapping[str, Any], stage: int, what: str) -> _Round:
        r = round_field(header)
        st = self._rounds.get(r)
        if st is None or st.stage != stage:
            raise ProtocolError(f"client {self.client_id}: {what} request out of order in round {r}")
        return st

    def _reply(self, kind: wire.Kind, round_: int, header: dict[str, Any], payload: bytes | memoryview = b"") -> bytes:
        return wire.encode(kind, {"round": round_, "client": self.client_id, **header}, payload)

    def _refuse_small(self, count: int, what: str) -> None:
        if count < self.settings.min_clients:
            raise ProtocolError(
                f"client {self.client_id}: {what} has {count} clients, below this client's "
                f"min_clients {self.settings.min_clients}; refusing"
            )

    # ------------------------------------------------------------ stage 1
    def _check_cohort(self, roster: list[str], neighbors: list[str]) -> None:
        """The server's cohort: pinned members only, at least ``min_clients``, and a
        neighbourhood of the size this client's own settings call for."""
        if self.roster is not None:
            self.roster.check_members(roster, f"advertise request to {self.client_id}: the cohort")
        self._refuse_small(len(roster), "the advertised cohort")
        if self.client_id not in roster or self.client_id in neighbors or not set(neighbors) <= set(roster):
            raise ProtocolError("roster and neighbour list are inconsistent")
        degree = self.settings.degree(len(roster))
        if len(neighbors) != degree:
            raise ProtocolError(f"expected {degree} neighbours, got {len(neighbors)}")

    def _check_parameters(self, h: Mapping[str, Any], n: int) -> tuple[int, FixedPoint]:
        """Threshold and ring: computed from this client's settings; the server's
        announcement must match them (a lower threshold or another ring is refused)."""
        try:
            codec = self.settings.codec(n)
        except ConfigValueError as exc:
            raise ProtocolError(f"a cohort of {n} does not fit this client's ring: {exc}") from None
        t = self.settings.threshold_for(n)
        bits, threshold = field(h, "bits", int), field(h, "threshold", int)
        if bits != codec.bits:
            raise ProtocolError(f"server ring Z_2^{bits} differs from this client's secagg_bits {codec.bits}")
        if threshold < t:
            raise ProtocolError(f"server threshold {threshold} is below this client's threshold {t}; refusing")
        if threshold != t or field(h, "frac_bits", int) != codec.frac_bits:
            raise ProtocolError(
                f"server parameters (threshold, frac_bits) differ from this client's ({t}, {codec.frac_bits})"
            )
        return t, codec

    def advertise(self, msg: wire.Message) -> bytes:
        """Stage 1: check the cohort and parameters, record the round (never again),
        then send fresh round keys (signed in the malicious option)."""
        h = msg.header
        r = round_field(h)
        roster = id_list(h.get("roster"), "roster")
        neighbors = id_list(h.get("neighbors"), "neighbors")
        self._check_cohort(roster, neighbors)
        t, codec = self._check_parameters(h, len(roster))
        self.guard.advance(ADVERTISE_STAGE, r)  # ReplayError for a round at or below the last one
        c_sk, c_pk = P.x25519_keypair()
        s_sk, s_pk = P.x25519_keypair()
        st = _Round(r, roster, neighbors, t, codec, c_sk, c_pk, s_sk, s_pk, os.urandom(32))
        self._rounds = {r: st}  # older rounds' secrets are dropped
        out = {"c_pk": b64(c_pk), "s_pk": b64(s_pk)}
        if self._identity is not None:
            out["sig"] = b64(self._identity.sign(advert_transcript(r, self.client_id, c_pk, s_pk)))
        return self._reply(wire.Kind.SECAGG_KEYS, r, out)

    # ------------------------------------------------------------ stage 2
    def share_keys(self, msg: wire.Message) -> bytes:
        """Stage 2: verify each neighbour's keys against the pinned roster (malicious
        option), refuse too few of them, then send encrypted Shamir shares."""
        st = self._state(msg.header, _ADVERTISED, "share-keys")
        keys = msg.header.get("keys")
        if not isinstance(keys, dict) or not set(keys) <= set(st.neighbors):
            raise ProtocolError("share-keys request must list keys of neighbours only")
        seen = {st.c_pk, st.s_pk}
        for v, entry in keys.items():
            if not isinstance(entry, dict):
                raise ProtocolError(f"keys of {v} malformed")
            c_pk, s_pk = unb64(entry.get("c_pk"), "c_pk"), unb64(entry.get("s_pk"), "s_pk")
            if len(c_pk) != 32 or len(s_pk) != 32 or c_pk in seen or s_pk in seen or c_pk == s_pk:
                raise ProtocolError(f"keys of {v} are malformed or repeated")
            seen |= {c_pk, s_pk}
            if self.settings.malicious:
                assert self.roster is not None
                sig = unb64(entry.get("sig"), "sig")
                if not self.roster.verify(v, sig, advert_transcript(st.round, v, c_pk, s_pk)):
                    raise ProtocolError(f"advertised keys of {v} carry no valid signature under its pinned key")
            st.peers[v] = (c_pk, s_pk)
        floor = self.settings.neighborhood_floor(len(st.roster))
        if len(st.peers) + 1 < floor:
            raise ProtocolError(
                f"client {self.client_id}: only {len(st.peers)} neighbours' keys, need {floor - 1} "
                f"(threshold {st.threshold}, min_clients {self.settings.min_clients}); refusing to share"
            )
        holders = sorted(st.peers) + [self.client_id]
        xs = [st.points[v] for v in holders]
        b_shares = shamir.split(st.seed, xs, st.threshold)  # coefficients from os.urandom
        sk_shares = shamir.split(st.s_sk, xs, st.threshold)
        out: dict[str, str] = {}
        for v, sb, ss in zip(holders, b_shares, sk_shares):
            if v == self.client_id:
                st.own_b, st.own_sk = sb, ss
                continue
            ad = P.associated_data(st.round, self.client_id, v)
            out[v] = b64(P.wrap(st.c_sk, st.peers[v][0], channel_info(st.round), sb.to_bytes() + ss.to_bytes(), ad))
        st.stage = _SHARED
        return self._reply(wire.Kind.SECAGG_SHARES, st.round, {"shares": out})

    # ------------------------------------------------------------ stage 3
    def receive(self, header: Mapping[str, Any]) -> None:
        """Take the GLOBAL_MODEL header's ``secagg`` part: who completed stage 2
        (the neighbours to mask with) and the share ciphertexts addressed here."""
        info = header.get("secagg")
        if not isinstance(info, dict):
            raise ProtocolError("GLOBAL_MODEL carries no secure-aggregation parameters")
        st = self._state(info, _SHARED, "masked-input")
        if header.get("round") != st.round:
            raise ProtocolError("masking parameters name another round than the global model")
        maskers = id_list(info.get("maskers"), "maskers")
        cts = info.get("ciphertexts")
        if not set(maskers) <= set(st.peers) or not isinstance(cts, dict) or set(cts) != set(maskers):
            raise ProtocolError("masking set must be advertised neighbours, each with one share ciphertext")
        floor = self.settings.neighborhood_floor(len(st.roster))
        if len(maskers) + 1 < floor:
            raise ProtocolError(
                f"only {len(maskers) + 1} clients completed key sharing, below {floor} "
                f"(threshold {st.threshold}, min_clients {self.settings.min_clients})"
            )
        my_x = st.points[self.client_id]
        for v in maskers:
            ad = P.associated_data(st.round, v, self.client_id)
            plain = P.unwrap(st.c_sk, st.peers[v][0], channel_info(st.round), unb64(cts[v], "ciphertext"), ad)
            sb = shamir.Share.from_bytes(plain[:70])
            ss = shamir.Share.from_bytes(plain[70:])
            if sb.x != my_x or ss.x != my_x:
                raise ProtocolError(f"share from {v} is addressed to another point")
            st.held[v] = (sb, ss)
        st.maskers = sorted(maskers)
        st.stage = _READY

    def masked_input(self, values: np.ndarray, weight: float, aux: Mapping[str, float], header: Mapping[str, Any]) -> bytes:
        """Encode ``values`` (= n_k * Delta_k) and the auxiliary counters, add this
        client's DP noise share, mask them and return the SECAGG_MASKED_INPUT message."""
        st = self._state(header, _READY, "masked-input")
        if not 0 < weight <= self.settings.max_weight:
            raise ConfigValueError(
                "secagg_max_weight", self.settings.max_weight, f"client {self.client_id} has weight {weight:g} outside (0, max_weight]"
            )
        keys = sorted(aux)
        extra = np.array([float(aux[k]) for k in keys], dtype=np.float64)
        if np.any(~np.isfinite(extra)) or np.any(np.abs(extra) > self.settings.bound):
            raise ProtocolError(f"auxiliary counters {dict(aux)} exceed the encoding bound {self.settings.bound:g}")
        codec = st.codec
        v, saturated = clip_input(self.settings, values, weight, codec.resolution)
        # sigma from this client's own settings and threshold only; nothing the server sends lowers it
        sigma = distributed_noise_stddev(self.settings, dim=v.size, threshold=st.threshold, resolution=codec.resolution)
        self.last_noise_stddev = sigma
        self.last_noise_units = noise_units(sigma, codec.resolution) if sigma > 0 else 0
        vec = scratch(v.size + extra.size + 1, codec.dtype)  # the one output buffer, reused (copied into the reply)
        # clip_input left v finite and within +-weight * clip: encode need not scan it again
        encode_with_noise(codec, v, extra, sigma, self._noise_rng, out=vec[:-1], within=weight * self.settings.clip)
        # capped so that the summed count cannot wrap a narrow (--compress quant:B) ring
        vec[-1:] = codec.wrap(np.array([min(saturated, (1 << (codec.bits - 1)) // len(st.roster) - 1)]))
        self.last_saturated = saturated
        info = pair_mask_info(st.round)
        seeds = agree_many(st.s_sk, [st.peers[other][1] for other in st.maskers], pair_info(st.round))
        masks = [(st.seed, self_mask_info(st.round, self.client_id), False)]
        masks += [(seed, info, self.client_id > other) for other, seed in zip(st.maskers, seeds)]
        add_masks(vec, masks)
        st.stage = _MASKED
        out = {"aux": keys, "dim": int(v.size), "bits": codec.bits}
        for k in ("epsilon", "steps"):
            if k in header:
                out[k] = header[k]
        return self._reply(wire.Kind.SECAGG_MASKED_INPUT, st.round, out, pack(vec, codec.bits, view=True))

    # ------------------------------------------------------------ stage 4
    def consistency(self, msg: wire.Message) -> bytes:
        """Stage 4 (malicious option): sign the survivor set, if it is large enough."""
        st = self._state(msg.header, _MASKED, "consistency")
        if self._identity is None:
            raise ProtocolError("consistency check is part of the malicious-server option only")
        survivors = id_list(msg.header.get("survivors"), "survivors")
        if self.client_id not in survivors or not set(survivors) <= set(st.roster):
            raise ProtocolError("survivor list is inconsistent with the roster")
        if len(survivors) < st.threshold:
            raise ProtocolError(f"{len(survivors)} survivors, below the threshold {st.threshold}")
        self._refuse_small(len(survivors), "the survivor set to sign")
        st.signed = sorted(survivors)
        st.stage = _SIGNED
        sig = self._identity.sign(survivors_transcript(st.round, st.signed))
        return self._reply(wire.Kind.SECAGG_SIGNATURE, st.round, {"sig": b64(sig)})

    # ------------------------------------------------------------ stage 5
    def unmask(self, msg: wire.Message) -> bytes:
        """Stage 5: reveal self-mask shares of survivors and key shares of dropped
        neighbours, never both for one client, once, and only for a sum of at least
        ``min_clients`` inputs: its own survivors with the complete graph; the
        valid consistency signatures (malicious option) or the announced cohort
        (honest-but-curious server) otherwise."""
        h = msg.header
        r = round_field(h)
        st = self._rounds.get(r)
        if st is not None and st.stage == _DONE:
            raise ProtocolError(f"client {self.client_id} already answered an unmasking request in round {r}")
        st = self._state(h, _SIGNED if self.settings.malicious else _MASKED, "unmask")
        survivors = id_list(h.get("survivors"), "survivors")
        dropped = id_list(h.get("dropped"), "dropped")
        both = set(survivors) & set(dropped)
        if both:
            raise ProtocolError(
                f"request asks for both the self-mask share and the key share of {sorted(both)}; refusing"
            )
        masked_with = set(st.maskers)
        if not set(survivors) <= masked_with | {self.client_id} or not set(dropped) <= masked_with:
            raise ProtocolError("unmasking request names clients this client did not mask with")
        if self.client_id not in survivors:
            raise ProtocolError("this client's own masked input is missing from the survivor list")
        if self.settings.malicious:
            released = self._check_signatures(st, h, survivors, dropped)
        else:
            released = self._check_announced_cohort(st, h, survivors)
        if len(st.neighbors) == len(st.roster) - 1:
            # complete graph: every input in the sum is one this client masked with
            released = min(released, len(survivors))
        if len(survivors) < st.threshold:
            raise ProtocolError(f"{len(survivors)} survivors, below the threshold {st.threshold}; revealing nothing")
        self._refuse_small(released, "the sum to unmask")
        st.stage = _DONE
        b_out = {v: b64((st.own_b if v == self.client_id else st.held[v][0]).to_bytes()) for v in survivors}
        sk_out = {v: b64(st.held[v][1].to_bytes()) for v in dropped}
        return self._reply(wire.Kind.SECAGG_UNMASK, st.round, {"b": b_out, "sk": sk_out})

    def _check_announced_cohort(self, st: _Round, h: Mapping[str, Any], survivors: list[str]) -> int:
        """Honest-but-curious option: the server names every input in the sum; it must
        agree with what this client knows (its own neighbourhood) and the roster."""
        cohort = set(id_list(h.get("cohort"), "cohort"))
        known = set(st.neighbors) | {self.client_id}
        if not cohort <= set(st.roster) or cohort & known != set(survivors):
            raise ProtocolError("the announced cohort disagrees with the survivor list or the roster")
        return len(cohort)

    def _check_signatures(self, st: _Round, h: Mapping[str, Any], survivors: list[str], dropped: list[str]) -> int:
        """Check the lists against the signed set; return how many members validly
        signed it under their pinned keys (each one really masked an input)."""
        assert self.roster is not None and st.signed is not None
        signed = set(st.signed)
        # derive what to reveal from the signed set, never from the server's lists
        if set(survivors) != (set(st.maskers) | {self.client_id}) & signed or set(dropped) != set(st.maskers) - signed:
            raise ProtocolError("unmasking lists differ from the survivor set this client signed")
        sigs = h.get("signatures")
        if not isinstance(sigs, dict):
            raise ProtocolError("unmasking request carries no consistency signatures")
        transcript = survivors_transcript(st.round, st.signed)
        roster = self.roster
        valid = sum(1 for v, s in sigs.items() if v in signed and roster.verify(v, unb64(s, "signature"), transcript))
        if valid < st.threshold:
            raise ProtocolError(f"only {valid} valid consistency signatures, need {st.threshold}")
        return valid

