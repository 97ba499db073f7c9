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
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from securefl.crypto import primitives as P
from securefl.crypto import shamir
from securefl.crypto.secagg.common import (
    SecAggSettings,
    advert_transcript,
    b64,
    channel_info,
    distributed_noise_stddev,
    field,
    id_list,
    pair_info,
    pair_mask_info,
    self_mask_info,
    survivors_transcript,
    unb64,
)
from securefl.exceptions import ConfigValueError, ProtocolError
from securefl.transport import wire

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


class SecAggClient:
    """One client's side of the protocol. Secrets (round keys, seeds, shares it
    holds, the identity key) live only here and are never serialized."""

    def __init__(self, client_id: str, *, settings: SecAggSettings, rng) -> None:
        self.client_id = str(client_id)
        self.settings = settings
        self.rng = rng
        self._identity: tuple[bytes, bytes] | None = P.ed25519_keypair() if settings.malicious else None
        self._directory: dict[str, bytes] | None = None
        self._rounds: dict[int, _Round] = {}
        self.last_saturated = 0
        self.last_noise_stddev = 0.0  #: per-coordinate std of the last noise share
        self._handlers: dict[wire.Kind, Callable[[wire.Message], bytes]] = {
            wire.Kind.SECAGG_IDENTITY_REQUEST: self.identity,
            wire.Kind.SECAGG_ADVERTISE_REQUEST: self.advertise,
            wire.Kind.SECAGG_SHARE_REQUEST: self.share_keys,
            wire.Kind.SECAGG_CONSISTENCY_REQUEST: self.consistency,
            wire.Kind.SECAGG_UNMASK_REQUEST: self.unmask,
        }

    @property
    def verification_key(self) -> bytes | None:
        return self._identity[1] if self._identity else None

    # ------------------------------------------------------------ dispatch
    def handle(self, raw: bytes) -> bytes:
        msg = wire.decode(raw)
        handler = self._handlers.get(msg.kind)
        if handler is None:
            raise ProtocolError(f"secure aggregation does not answer {msg.kind.name} messages")
        return handler(msg)

    def _state(self, header: Mapping[str, Any], stage: int, what: str) -> _Round:
        r = field(header, "round", int)
        st = self._rounds.get(r)
        if st is None or st.stage != stage:
            raise ProtocolError(f"client {self.client_id}: {what} request out of order in round {r}")
        return st

    def _reply(self, kind: wire.Kind, round_: int, header: dict[str, Any], payload: bytes = b"") -> bytes:
        return wire.encode(kind, {"round": round_, "client": self.client_id, **header}, payload)

    # ------------------------------------------------------------ set-up
    def identity(self, msg: wire.Message) -> bytes:
        """Set-up (malicious option): publish the Ed25519 verification key."""
        if self._identity is None:
            raise ProtocolError("identity keys exist only with the malicious-server option")
        return self._reply(wire.Kind.SECAGG_IDENTITY, 0, {"vk": b64(self._identity[1])})

    def _pin_directory(self, header: Mapping[str, Any]) -> None:
        raw = header.get("directory")
        if not isinstance(raw, dict):
            raise ProtocolError("the malicious-server option needs the identity directory")
        directory = {str(k): unb64(v, "directory") for k, v in raw.items()}
        if self._directory is None:
            if directory.get(self.client_id) != self.verification_key:
                raise ProtocolError("the directory does not hold this client's own identity key")
            self._directory = directory  # trusted on first use; changes are refused afterwards
        else:
            for k, v in directory.items():
                if self._directory.get(k, v) != v:
                    raise ProtocolError(f"identity key of {k} changed since it was pinned")
            self._directory = {**directory, **self._directory}

    # ------------------------------------------------------------ stage 1
    def advertise(self, msg: wire.Message) -> bytes:
        h = msg.header
        r = field(h, "round", int)
        if r in self._rounds:
            raise ProtocolError(f"round {r} was already started")
        roster = id_list(h.get("roster"), "roster")
        neighbors = id_list(h.get("neighbors"), "neighbors")
        n = len(roster)
        if self.client_id not in roster or self.client_id in neighbors or not set(neighbors) <= set(roster):
            raise ProtocolError("roster and neighbour list are inconsistent")
        if len(neighbors) != self.settings.degree(n):
            raise ProtocolError(f"expected {self.settings.degree(n)} neighbours, got {len(neighbors)}")
        t = self.settings.threshold_for(n)
        codec = self.settings.codec(n)
        if field(h, "threshold", int) != t or field(h, "frac_bits", int) != codec.frac_bits:
            raise ProtocolError(f"server parameters (threshold, frac_bits) differ from this client's ({t}, {codec.frac_bits})")
        if self.settings.malicious:
            self._pin_directory(h)
        c_sk, c_pk = P.x25519_keypair()
        s_sk, s_pk = P.x25519_keypair()
        st = _Round(r, roster, neighbors, t, codec, c_sk, c_pk, s_sk, s_pk, os.urandom(32))
        self._rounds = {r: st}  # older rounds' secrets are dropped
        out = {"c_pk": b64(c_pk), "s_pk": b64(s_pk)}
        if self._identity is not None:
            out["sig"] = b64(P.sign(self._identity[0], advert_transcript(r, self.client_id, c_pk, s_pk)))
        return self._reply(wire.Kind.SECAGG_KEYS, r, out)

    # ------------------------------------------------------------ stage 2
    def share_keys(self, msg: wire.Message) -> bytes:
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
                assert self._directory is not None
                vk = self._directory.get(v)
                if vk is None or not P.verify(vk, unb64(entry.get("sig"), "sig"), advert_transcript(st.round, v, c_pk, s_pk)):
                    raise ProtocolError(f"advertised keys of {v} carry no valid signature")
            st.peers[v] = (c_pk, s_pk)
        if len(st.peers) + 1 < st.threshold:
            raise ProtocolError(f"only {len(st.peers) + 1} share holders, below the threshold {st.threshold}")
        holders = sorted(st.peers) + [self.client_id]
        xs = [st.roster.index(v) + 1 for v in holders]
        b_shares = shamir.split(st.seed, xs, st.threshold, self.rng)
        sk_shares = shamir.split(st.s_sk, xs, st.threshold, self.rng)
        out: dict[str, str] = {}
        for v, sb, ss in zip(holders, b_shares, sk_shares):
            if v == self.client_id:
                st.own_b, st.own_sk = sb, ss
                continue
            key = P.agree(st.c_sk, st.peers[v][0], channel_info(st.round))
            ad = P.associated_data(st.round, self.client_id, v)
            out[v] = b64(P.seal(key, sb.to_bytes() + ss.to_bytes(), ad))
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
        if len(maskers) + 1 < st.threshold:
            raise ProtocolError(f"only {len(maskers) + 1} clients completed key sharing, below the threshold {st.threshold}")
        my_x = st.roster.index(self.client_id) + 1
        for v in maskers:
            key = P.agree(st.c_sk, st.peers[v][0], channel_info(st.round))
            plain = P.open_(key, unb64(cts[v], "ciphertext"), P.associated_data(st.round, v, self.client_id))
            sb = shamir.Share.from_bytes(plain[:70])
            ss = shamir.Share.from_bytes(plain[70:])
            if sb.x != my_x or ss.x != my_x:
                raise ProtocolError(f"share from {v} is addressed to another point")
            st.held[v] = (sb, ss)
        st.maskers = sorted(maskers)
        st.stage = _READY

    def masked_input(self, values: np.ndarray, weight: float, aux: Mapping[str, float], header: Mapping[str, Any]) -> bytes:
        """Encode ``values`` (= n_k * Delta_k) and the auxiliary counters, mask them
        and return the SECAGG_MASKED_INPUT message."""
        st = self._state(header, _READY, "masked-input")
        if not 0 < weight <= self.settings.max_weight:
            raise ConfigValueError(
                "secagg_max_weight", self.settings.max_weight, f"client {self.client_id} has weight {weight:g} outside (0, max_weight]"
            )
        keys = sorted(aux)
        extra = np.array([float(aux[k]) for k in keys], dtype=np.float64)
        if np.any(~np.isfinite(extra)) or np.any(np.abs(extra) > self.settings.bound):
            raise ProtocolError(f"auxiliary counters {dict(aux)} exceed the encoding bound {self.settings.bound:g}")
        v = np.asarray(values, dtype=np.float64)
        if not np.isfinite(v).all():
            raise ProtocolError("update contains NaN or infinity")
        limit = weight * self.settings.clip
        over = np.abs(v) > limit
        saturated = int(over.sum())
        if saturated:
            v = np.clip(v, -limit, limit)
        codec = st.codec
        enc = codec.encode(np.concatenate([v, extra]), self.rng)
        values = enc.values
        sigma = distributed_noise_stddev(self.settings, dim=v.size, threshold=st.threshold, resolution=codec.resolution)
        self.last_noise_stddev = sigma
        if sigma > 0:
            # this client's share of the DP noise, on the grid, before any mask
            noise = self.rng.normal((v.size,), sigma / codec.resolution, dtype=torch.float64).numpy()
            signed = codec.signed(values)
            signed[: v.size] += np.rint(noise).astype(np.int64)
            values = codec.wrap(signed)
        vec = np.concatenate([values, codec.wrap(np.array([saturated]))]).astype(codec.dtype)
        self.last_saturated = saturated
        P.add_mask(vec, st.seed, self_mask_info(st.round, self.client_id))
        for other in st.maskers:
            seed = P.agree(st.s_sk, st.peers[other][1], pair_info(st.round))
            P.add_mask(vec, seed, pair_mask_info(st.round), subtract=self.client_id > other)
        st.stage = _MASKED
        out = {"aux": keys, "dim": int(v.size), "bits": codec.bits}
        for k in ("epsilon", "steps"):
            if k in header:
                out[k] = header[k]
        return self._reply(wire.Kind.SECAGG_MASKED_INPUT, st.round, out, vec.tobytes())

    # ------------------------------------------------------------ stage 4
    def consistency(self, msg: wire.Message) -> bytes:
        st = self._state(msg.header, _MASKED, "consistency")
        if self._identity is None:
            raise ProtocolError("consistency check is part of the malicious-server option only")
        survivors = id_list(msg.header.get("survivors"), "survivors")
        if self.client_id not in survivors or not set(survivors) <= set(st.roster):
            raise ProtocolError("survivor list is inconsistent with the roster")
        if len(survivors) < st.threshold:
            raise ProtocolError(f"{len(survivors)} survivors, below the threshold {st.threshold}")
        st.signed = sorted(survivors)
        st.stage = _SIGNED
        sig = P.sign(self._identity[0], survivors_transcript(st.round, st.signed))
        return self._reply(wire.Kind.SECAGG_SIGNATURE, st.round, {"sig": b64(sig)})

    # ------------------------------------------------------------ stage 5
    def unmask(self, msg: wire.Message) -> bytes:
        h = msg.header
        r = field(h, "round", int)
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
            self._check_signatures(st, h, survivors, dropped)
        if len(survivors) < st.threshold:
            raise ProtocolError(f"{len(survivors)} survivors, below the threshold {st.threshold}; revealing nothing")
        st.stage = _DONE
        b_out = {v: b64((st.own_b if v == self.client_id else st.held[v][0]).to_bytes()) for v in survivors}
        sk_out = {v: b64(st.held[v][1].to_bytes()) for v in dropped}
        return self._reply(wire.Kind.SECAGG_UNMASK, st.round, {"b": b_out, "sk": sk_out})

    def _check_signatures(self, st: _Round, h: Mapping[str, Any], survivors: list[str], dropped: list[str]) -> None:
        assert self._directory is not None and st.signed is not None
        signed = set(st.signed)
        # derive what to reveal from the signed set, never from the server's lists
        if set(survivors) != (set(st.maskers) | {self.client_id}) & signed or set(dropped) != set(st.maskers) - signed:
            raise ProtocolError("unmasking lists differ from the survivor set this client signed")
        sigs = h.get("signatures")
        if not isinstance(sigs, dict):
            raise ProtocolError("unmasking request carries no consistency signatures")
        transcript = survivors_transcript(st.round, st.signed)
        valid = sum(
            1
            for v, s in sigs.items()
            if v in signed and v in self._directory and P.verify(self._directory[v], unb64(s, "signature"), transcript)
        )
        if valid < st.threshold:
            raise ProtocolError(f"only {valid} valid consistency signatures, need {st.threshold}")
