"""The server half of ``--protect ckks``: sums ciphertexts under a public context
only (see :mod:`securefl.protections.ckks`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from securefl.crypto import ckks_keys as keys
from securefl.crypto.ckks_auth import Layout
from securefl.crypto.encoding import b64
from securefl.crypto.hazmat import ckks as hz
from securefl.crypto.hazmat import ckks_seal as hzs
from securefl.crypto.identity import Roster
from securefl.exceptions import AggregationError, CiphertextRejectedError, ProtocolError, WireFormatError
from securefl.protections.base import AggregateInput, ClientLike, Exchange, GlobalMessage, ServerProtection, message_for
from securefl.protections.ckks import NAME, CKKSSettings, aux_keys_field, max_update_bytes, number_field, unpack_part
from securefl.transport import wire
from securefl.validators import is_int

__all__ = ["CKKSServer"]


@dataclass
class _Received:
    """The running encrypted sum of one round and what the server knows of it."""

    acc: Any = None
    headers: list[dict[str, Any]] = field(default_factory=list)
    aux_keys: tuple[str, ...] | None = None
    update_bytes: int = 0


class CKKSServer(ServerProtection):
    """The server half: holds the public context only; sums ciphertexts, has the
    round's designated key holder decrypt the sum, checks it, learns nothing else."""

    name = NAME
    sees_individual_updates = False
    stages = 2  # the update, then (for the designated holder) the decryption request

    def __init__(self, *, settings: CKKSSettings, roster: Roster | None = None) -> None:
        self.settings = settings
        self.params = settings.params
        self.roster = roster
        self.context = None  #: the public TenSEAL context (no secret key)
        self.public_context: bytes | None = None
        self.fingerprint: str | None = None
        self.key_holders: list[str] = []
        self._reachable: dict[str, ClientLike] = {}  #: every client seen at set-up, by id

    # --- set-up: key distribution through the server
    def _adverts(self, clients: Sequence[ClientLike], exchange: Exchange) -> dict[str, dict[str, Any]]:
        sid = self.settings.settings_id
        adverts: dict[str, dict[str, Any]] = {}
        hello = wire.encode(wire.Kind.CKKS_HELLO, {"settings": sid, **self.settings.describe()})
        for c, reply in zip(clients, exchange.send_many([(c, hello) for c in clients])):
            if reply is None:
                continue
            msg = wire.decode(reply, expect=wire.Kind.CKKS_ADVERT)
            if len(msg.payload) != 32 or msg.header.get("client") != c.client_id:
                raise ProtocolError(f"client {c.client_id!r} sent a malformed key advertisement")
            adverts[c.client_id] = {"pk": b64(msg.payload), "sig": msg.header.get("sig")}
        return adverts

    def setup(self, clients: Sequence[ClientLike], exchange: Exchange) -> None:
        sid = self.settings.settings_id
        adverts = self._adverts(clients, exchange)
        by_id = self._reachable = {c.client_id: c for c in clients}
        for generator in list(adverts):
            reply = exchange.send(by_id[generator], wire.encode(wire.Kind.CKKS_KEYGEN, {"settings": sid, "peers": adverts}))
            if reply is not None:
                break
        else:
            raise AggregationError("no client could generate the CKKS keys")
        msg = wire.decode(reply, expect=wire.Kind.CKKS_KEYGEN_REPLY)
        offsets = msg.header.get("parts")
        public = unpack_part(offsets, msg.payload, "public_context")
        ctx = hzs.load_context(public, self.params)
        if ctx.is_private():
            raise ProtocolError("the key generator sent the server a context holding a secret key")
        fingerprint, holders = msg.header.get("fingerprint"), msg.header.get("holders")
        if not isinstance(fingerprint, str) or not isinstance(holders, list) or holders != sorted(set(map(str, holders))):
            raise ProtocolError("key generator reply needs a fingerprint and a sorted holder list")
        self.context, self.public_context = ctx, public
        self.fingerprint, self.key_holders = fingerprint, list(holders)
        deliveries = []
        for cid in holders:
            if cid == generator:
                continue
            header = {
                "settings": sid,
                "generator": generator,
                "generator_key": adverts[generator]["pk"],
                "generator_sig": adverts[generator]["sig"],
                "fingerprint": fingerprint,
            }
            delivery = wire.encode(wire.Kind.CKKS_KEY_DELIVERY, header, unpack_part(offsets, msg.payload, f"to:{cid}"))
            deliveries.append((by_id[cid], delivery))
        for (client, _), ack in zip(deliveries, exchange.send_many(deliveries)):
            cid = client.client_id
            if ack is not None and wire.decode(ack, expect=wire.Kind.CKKS_KEY_ACK).header.get("fingerprint") != fingerprint:
                raise ProtocolError(f"client {cid!r} installed a different key set")

    # --- one round
    def _add(self, got: _Received, cid: str, raw: bytes, dim: int) -> None:
        msg = wire.decode(raw, expect=wire.Kind.CLIENT_UPDATE, max_size=self._max_update_bytes(dim))
        h = msg.header
        if h.get("protect") != NAME or h.get("settings") != self.settings.settings_id:
            raise CiphertextRejectedError(
                f"update from {cid!r} sealed with {h.get('protect')!r}/{h.get('settings')!r}, "
                f"expected {NAME!r}/{self.settings.settings_id!r}"
            )
        if h.get("fingerprint") != self.fingerprint:
            raise CiphertextRejectedError(f"update from {cid!r} names another key set")
        if not is_int(h.get("dim")) or h.get("dim") != dim:
            raise CiphertextRejectedError(f"update from {cid!r} has dim {h.get('dim')!r}, expected {dim}")
        try:
            aux_keys = aux_keys_field(h)
        except ProtocolError as exc:
            raise CiphertextRejectedError(f"update from {cid!r}: {exc}") from None
        if got.aux_keys is not None and aux_keys != got.aux_keys:
            raise CiphertextRejectedError(f"update from {cid!r} carries counters {aux_keys}, others {got.aux_keys}")
        got.aux_keys = aux_keys
        layout = Layout(dim, aux_keys, len(self.key_holders))
        tensor = hzs.load_ciphertext(self.context, self.params, msg.payload, layout.length)
        if got.acc is None:
            got.acc = tensor
        else:
            try:
                got.acc += tensor  # in place; CKKSTensor.copy() would deep-copy the context
            except (ValueError, TypeError, RuntimeError) as exc:  # TenSEAL: "scale mismatch", shapes
                raise CiphertextRejectedError(f"update from {cid!r} does not add to the others: {exc}") from None
        got.update_bytes += len(raw)
        got.headers.append(h)

    def _max_update_bytes(self, dim: int) -> int:
        """The largest encrypted update this server reads: enough ciphertexts for the
        longest layout (every counter slot used), each at most two uncompressed polynomials."""
        return wire.size_limit(0, overhead=max_update_bytes(self.params, dim, len(self.key_holders)))

    def aggregate(
        self, clients: Sequence[ClientLike], global_message: GlobalMessage, dim: int, exchange: Exchange
    ) -> AggregateInput | None:
        if self.context is None:
            raise ProtocolError("CKKS set-up has not run")
        holders = set(self.key_holders)
        got = _Received()
        members = [c for c in clients if c.client_id in holders]
        for c, raw in zip(members, exchange.send_many(
            [(c, message_for(global_message, c.client_id)) for c in members], method="fit"
        )):
            if raw is not None:
                self._add(got, c.client_id, raw, dim)
        count = len(got.headers)
        if count == 0:
            return None
        if count < self.settings.min_clients:
            raise AggregationError(
                f"{count} contribution{'s' if count > 1 else ''}, fewer than min_clients="
                f"{self.settings.min_clients}: nothing is decrypted"
            )
        assert got.aux_keys is not None
        layout = Layout(dim, got.aux_keys, len(self.key_holders))
        request = wire.encode(
            wire.Kind.CKKS_DECRYPT,
            {"settings": self.settings.settings_id, "round": exchange.round, "dim": dim, "aux_keys": list(got.aux_keys)},
            hzs.serialize(got.acc),
        )
        assert self.fingerprint is not None
        decryptor = keys.decryptor_for(tuple(self.key_holders), self.fingerprint, exchange.round)
        # the designated holder need not be in this round's sample
        holder = {**self._reachable, **{c.client_id: c for c in clients}}.get(decryptor, decryptor)
        values, flood = self._decrypt(request, holder, exchange, layout, count)
        return self._result(values, layout, got, count, decryptor, flood, exchange)

    def _result(
        self, values: np.ndarray, layout: Layout, got: _Received, count: int, decryptor: str, flood: float,
        exchange: Exchange,
    ) -> AggregateInput:
        s = self.settings
        scale = s.max_weight * s.clip
        total = torch.from_numpy(values[: layout.dim] * scale).to(torch.float32)
        aux = {"weight": float(values[layout.weight] * s.max_weight)}
        for i, k in enumerate(layout.aux_keys):
            aux[k] = float(values[layout.aux(i)])
        if not aux["weight"] > 0:
            raise CiphertextRejectedError(f"decrypted total weight {aux['weight']:.4g} is not positive")
        float_bytes = 4 * layout.dim
        stats = {
            "preset": self.params.preset,
            "encryption": self.params.encryption,
            "poly_modulus_degree": self.params.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.params.coeff_mod_bit_sizes),
            "scale_bits": self.params.scale_bits,
            "ciphertexts_per_client": hzs.num_ciphertexts(self.params, layout.length),
            "update_bytes_per_client": got.update_bytes / count,
            "bytes_ratio": got.update_bytes / count / float_bytes,
            "bytes_up_ratio": exchange.bytes_up / count / float_bytes,
            "clipped": int(round(float(values[layout.clipped]))),
            "clip": s.clip,
            "decryptor": decryptor,
            "flood_std": flood * scale,
            "max_error": self.params.max_error(count) * scale,
        }
        return AggregateInput(total, aux, count, None, got.headers, stats)

    def _decrypt(
        self, request: bytes, holder: ClientLike | str, exchange: Exchange, layout: Layout, count: int
    ) -> tuple[np.ndarray, float]:
        """Ask the round's designated key holder (the only one that will answer)."""
        name = holder if isinstance(holder, str) else holder.client_id
        reply = None if isinstance(holder, str) or exchange.gone(name) else exchange.send(holder, request)
        if reply is None:
            raise AggregationError(f"the round's designated key holder {name!r} is not reachable")
        msg = wire.decode(reply)
        if msg.kind == wire.Kind.CKKS_REJECT:
            raise CiphertextRejectedError(f"key holder {name!r} rejected the aggregate: {msg.header.get('reason')}")
        if msg.kind != wire.Kind.CKKS_AGGREGATE:
            raise WireFormatError(f"expected CKKS_AGGREGATE, got {msg.kind.name}")
        try:
            grid, flood = number_field(msg.header, "grid"), number_field(msg.header, "flood_std")
        except ProtocolError as exc:
            raise CiphertextRejectedError(f"key holder released an aggregate with a bad header: {exc}") from None
        if not (0 < grid <= flood <= 1.0):
            raise CiphertextRejectedError(f"key holder released an aggregate on grid {grid!r}")
        dtype = msg.header.get("dtype")
        if dtype not in ("<i4", "<i8"):
            raise WireFormatError(f"aggregate dtype must be <i4 or <i8, got {dtype!r}")
        width = np.dtype(dtype).itemsize
        if len(msg.payload) != width * layout.length:
            raise WireFormatError(f"aggregate payload has {len(msg.payload)} bytes, expected {width * layout.length}")
        values = np.frombuffer(msg.payload, dtype=dtype).astype(np.float64) * grid
        self._bound_check(values, layout, count, flood)
        return values, flood

    def _bound_check(self, values: np.ndarray, layout: Layout, count: int, flood: float) -> None:
        tol = hz.TAIL * flood + 1e-9
        if not np.isfinite(values).all() or np.abs(values).max() > count + tol:
            raise CiphertextRejectedError(f"released aggregate exceeds the bound {count} of {count} contributions")
        released = float(values[layout.participation].sum())
        if abs(released - count) > 0.25 + tol * math.sqrt(layout.holders):
            raise CiphertextRejectedError(
                f"released participation {released:.3f} differs from the {count} ciphertexts summed"
            )
        if not -tol <= values[layout.clipped] <= count + tol:
            raise CiphertextRejectedError("released clipping count is out of range")

