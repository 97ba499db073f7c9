"""CKKS-encrypted aggregation: the server sums updates it cannot read.

Roles (DESIGN.md section 4.1). The *key holders* are the clients: one of them
generates the CKKS secret key and hands it to every other client encrypted to
that client's X25519 public key (HKDF-SHA256, then ChaCha20-Poly1305 with the
sender, recipient and parameter id as associated data), relayed by the server.
The server only ever holds a public context (no secret key), so it can add
ciphertexts but not decrypt them.

One round:

1. the server sends the global model (``fit``); each client trains, clips its
   update ``Delta_k`` to L2 norm ``C`` (counted), and encrypts
   ``x_k = (n_k / W) * Delta_k / C`` (every entry in [-1, 1]) followed by its
   counters: a count of 1, ``n_k / W``, the clipped bit, the auxiliary counters,
   and two linear authentication tags ``<r_j, x_k>`` keyed by a secret shared
   among key holders and the round number;
2. the server checks every ciphertext on receipt (parse, SEAL validity, shape,
   parameter id, key fingerprint) and adds them with ``+=``;
3. a surviving key holder decrypts the sum, checks the count, the bounds and the
   tags (a corrupted or wrong-key ciphertext decrypts to garbage around 1e30 and
   fails here), floods it with Gaussian noise of ``2^flood_bits`` times the CKKS
   error and rounds it to a grid before releasing it (Li and Micciancio,
   Eurocrypt 2021: exact CKKS decryptions together with their ciphertexts reveal
   the secret key);
4. the server bound-checks the released sums and rescales them to
   ``sum n_k Delta_k`` and ``sum n_k``: that is all it learns.

Any failed check raises :class:`~securefl.exceptions.CiphertextRejectedError`,
which aborts the round and leaves the global model unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefl.crypto.hazmat import ckks as hz
from securefl.exceptions import (
    AggregationError,
    CiphertextRejectedError,
    ConfigValueError,
    ProtocolError,
    WireFormatError,
)
from securefl.privacy.noise import SecureRNG
from securefl.protect import AggregateInput, ClientLike, ClientProtection, Exchange, ServerProtection
from securefl.transport import wire

if TYPE_CHECKING:  # pragma: no cover
    from securefl.config import RunConfig

NAME = "ckks"
#: number of linear authentication tags appended to each update
TAGS = 2
#: default bound on n_k for weighted FedAvg (1 under client-level DP, where weights are 1)
DEFAULT_MAX_WEIGHT = 1000.0
_KDF_SALT = b"securefl-ckks-keywrap-v1"
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class CKKSSettings:
    """Everything both halves agree on before the first round (all public)."""

    params: hz.CKKSParams
    clip: float
    max_weight: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigValueError("ckks_clip", self.clip, "must be a positive number")
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ConfigValueError("ckks_max_weight", self.max_weight, "must be a positive number")

    def describe(self) -> dict[str, Any]:
        return {**self.params.describe(), "clip": self.clip, "max_weight": self.max_weight}

    @property
    def settings_id(self) -> str:
        blob = json.dumps(self.describe(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def ckks_params(config: "RunConfig") -> hz.CKKSParams:
    """The CKKS parameters of a run: the preset's ring, with scale and first prime
    derived for ``ckks_max_clients`` (default: every client of the federation)."""
    p = config.protection
    return hz.derive_params(
        p.ckks_preset,
        max_summands=p.ckks_max_clients or config.clients,
        max_error=p.ckks_max_error,
        encryption=p.ckks_encryption,
    )


def ckks_settings(config: "RunConfig") -> CKKSSettings:
    p = config.protection
    weight = p.ckks_max_weight
    if weight is None:
        weight = 1.0 if config.dp.dp == "client" else DEFAULT_MAX_WEIGHT
    return CKKSSettings(ckks_params(config), float(p.ckks_clip), float(weight))


# ------------------------------------------------------------------ layout
@dataclass(frozen=True)
class Layout:
    """Where each value sits in the encrypted vector."""

    dim: int
    aux_keys: tuple[str, ...]  #: auxiliary counters besides the weight, sorted

    @property
    def count(self) -> int:
        return self.dim

    @property
    def weight(self) -> int:
        return self.dim + 1

    @property
    def clipped(self) -> int:
        return self.dim + 2

    def aux(self, i: int) -> int:
        return self.dim + 3 + i

    @property
    def tags(self) -> slice:
        start = self.dim + 3 + len(self.aux_keys)
        return slice(start, start + TAGS)

    @property
    def length(self) -> int:
        return self.dim + 3 + len(self.aux_keys) + TAGS


def tag_vectors(mac_key: bytes, round_: int, dim: int) -> np.ndarray:
    """``TAGS`` secret unit vectors of random signs, one set per round, derived
    from the key holders' shared MAC key with HKDF and a ChaCha20 keystream."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"securefl-ckks-tag-v1", info=f"round:{round_}".encode())
    key = hkdf.derive(mac_key)
    bits = np.unpackbits(np.frombuffer(SecureRNG(key).bytes((TAGS * dim + 7) // 8), dtype=np.uint8))[: TAGS * dim]
    return (bits.astype(np.float64) * 2.0 - 1.0).reshape(TAGS, dim) / math.sqrt(dim)


# ------------------------------------------------------------------ key wrapping
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text.encode(), validate=True)
    except ValueError:
        raise ProtocolError(f"{what} is not valid base64") from None


def _wrap_key(private: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public)
    except ValueError:
        raise ProtocolError("X25519 public key must be 32 bytes") from None
    shared = private.exchange(peer)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_KDF_SALT, info=info).derive(shared)


def _wrap_info(sender: str, recipient: str, settings_id: str) -> bytes:
    return json.dumps({"from": sender, "to": recipient, "settings": settings_id}, sort_keys=True).encode()


def seal_key_package(
    private: X25519PrivateKey, recipient_public: bytes, sender: str, recipient: str, settings_id: str, package: bytes
) -> bytes:
    """AEAD-encrypt a key package to one recipient: nonce || ChaCha20-Poly1305 ciphertext."""
    info = _wrap_info(sender, recipient, settings_id)
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(_wrap_key(private, recipient_public, info)).encrypt(nonce, package, info)


def open_key_package(
    private: X25519PrivateKey, sender_public: bytes, sender: str, recipient: str, settings_id: str, sealed: bytes
) -> bytes:
    info = _wrap_info(sender, recipient, settings_id)
    if len(sealed) < 12 + 16:
        raise ProtocolError("key package is truncated")
    try:
        return ChaCha20Poly1305(_wrap_key(private, sender_public, info)).decrypt(sealed[:12], sealed[12:], info)
    except InvalidTag:
        raise ProtocolError(f"key package from {sender!r} fails authentication") from None


def _pack(parts: dict[str, bytes]) -> tuple[dict[str, list[int]], bytes]:
    offsets, blob, at = {}, [], 0
    for key, data in parts.items():
        offsets[key] = [at, len(data)]
        blob.append(data)
        at += len(data)
    return offsets, b"".join(blob)


def _unpack(offsets: Any, payload: bytes, key: str) -> bytes:
    try:
        at, n = offsets[key]
        at, n = int(at), int(n)
    except (KeyError, TypeError, ValueError):
        raise ProtocolError(f"message has no part {key!r}") from None
    if at < 0 or n < 0 or at + n > len(payload):
        raise ProtocolError(f"part {key!r} lies outside the payload")
    return payload[at : at + n]


# ------------------------------------------------------------------ client half
class CKKSClient(ClientProtection):
    """The client half: a key holder. Holds an X25519 key pair and, after set-up,
    the CKKS secret context and the MAC key; neither ever leaves it unencrypted."""

    name = NAME

    def __init__(self, *, client_id: str, settings: CKKSSettings, rng: SecureRNG | None = None) -> None:
        self.client_id = str(client_id)
        self.settings = settings
        self.params = settings.params
        self.rng = rng or SecureRNG()
        self._x25519 = X25519PrivateKey.generate()
        self.public_key = self._x25519.public_key().public_bytes(_RAW, _RAW_PUB)
        self._context = None
        self._mac_key: bytes | None = None
        self.fingerprint: str | None = None
        self.clipped_rounds = 0

    @property
    def ready(self) -> bool:
        return self._context is not None

    # --- sealing one update
    def seal(self, weighted_update: torch.Tensor, aux: dict[str, float], header: dict[str, Any]) -> bytes:
        if not self.ready:
            raise ProtocolError(f"client {self.client_id!r} holds no CKKS key; set-up did not reach it")
        s = self.settings
        weight = float(aux.get("weight", 0.0))
        if not (math.isfinite(weight) and weight > 0):
            raise ProtocolError(f"update weight must be positive, got {weight!r}")
        if weight > s.max_weight:
            raise ConfigValueError(
                "ckks_max_weight",
                s.max_weight,
                f"client {self.client_id} has weight n_k={weight:g} above the bound; raise --ckks-max-weight",
            )
        extra = sorted(k for k in aux if k != "weight")
        for k in extra:
            if not (math.isfinite(float(aux[k])) and abs(float(aux[k])) <= 1.0):
                raise ProtocolError(f"auxiliary counter {k!r}={aux[k]!r} must lie in [-1, 1] under CKKS")
        delta = weighted_update.detach().double().numpy() / weight
        if not np.isfinite(delta).all():
            raise ProtocolError("update is not finite")
        norm = float(np.linalg.norm(delta))
        clipped = norm > s.clip
        if clipped:
            delta = delta * (s.clip / norm)
            self.clipped_rounds += 1
        layout = Layout(int(delta.size), tuple(extra))
        round_ = int(header.get("round", 0))
        vec = np.zeros(layout.length, dtype=np.float64)
        x = delta * (weight / s.max_weight / s.clip)
        x = np.clip(x, -1.0, 1.0)  # only float rounding can reach past 1: ||x||_2 <= 1
        vec[: layout.dim] = x
        vec[layout.count] = 1.0
        vec[layout.weight] = weight / s.max_weight
        vec[layout.clipped] = float(clipped)
        for i, k in enumerate(extra):
            vec[layout.aux(i)] = float(aux[k])
        assert self._mac_key is not None
        vec[layout.tags] = tag_vectors(self._mac_key, round_, layout.dim) @ x
        blob = hz.encrypt(self._context, self.params, vec)
        return wire.encode(
            wire.Kind.CLIENT_UPDATE,
            {
                **header,
                "protect": NAME,
                "settings": s.settings_id,
                "fingerprint": self.fingerprint,
                "aux_keys": list(extra),
            },
            blob,
        )

    # --- protocol messages
    def handle(self, message: bytes) -> bytes:
        msg = wire.decode(message)
        handler = {
            wire.Kind.CKKS_HELLO: self._hello,
            wire.Kind.CKKS_KEYGEN: self._keygen,
            wire.Kind.CKKS_KEY_DELIVERY: self._delivery,
            wire.Kind.CKKS_DECRYPT: self._decrypt,
        }.get(msg.kind)
        if handler is None:
            raise ProtocolError(f"protection {NAME!r} expects no {msg.kind.name} message")
        return handler(msg)

    def _check_settings(self, header: dict[str, Any]) -> None:
        if header.get("settings") != self.settings.settings_id:
            raise ProtocolError(
                f"server announces CKKS settings {header.get('settings')!r}, "
                f"this client uses {self.settings.settings_id!r}"
            )

    def _hello(self, msg: wire.Message) -> bytes:
        self._check_settings(msg.header)
        return wire.encode(wire.Kind.CKKS_ADVERT, {"client": self.client_id}, self.public_key)

    def _keygen(self, msg: wire.Message) -> bytes:
        """Generate the federation's secret context and wrap it for every peer."""
        self._check_settings(msg.header)
        peers = msg.header.get("peers")
        if not isinstance(peers, dict):
            raise ProtocolError("CKKS_KEYGEN needs a peers mapping")
        ctx = hz.new_secret_context(self.params)
        public = hz.public_context_bytes(ctx, self.params)
        fingerprint = hz.context_fingerprint(public)
        mac_key = os.urandom(32)
        package = _package(hz.secret_context_bytes(ctx, self.params), mac_key, fingerprint)
        parts: dict[str, bytes] = {"public_context": public}
        for peer, pk in peers.items():
            if peer == self.client_id:
                continue
            parts[f"to:{peer}"] = seal_key_package(
                self._x25519,
                _unb64(pk, f"public key of {peer}"),
                self.client_id,
                str(peer),
                self.settings.settings_id,
                package,
            )
        self._install(ctx, mac_key, fingerprint)
        offsets, payload = _pack(parts)
        return wire.encode(
            wire.Kind.CKKS_KEYGEN_REPLY,
            {"client": self.client_id, "parts": offsets, "fingerprint": fingerprint},
            payload,
        )

    def _delivery(self, msg: wire.Message) -> bytes:
        self._check_settings(msg.header)
        sender = str(msg.header.get("generator"))
        sender_pk = _unb64(msg.header.get("generator_key"), "generator key")
        package = open_key_package(
            self._x25519, sender_pk, sender, self.client_id, self.settings.settings_id, msg.payload
        )
        secret, mac_key, fingerprint = _unpackage(package)
        if msg.header.get("fingerprint") != fingerprint:
            raise ProtocolError("the server's public context is not the one the key generator made")
        ctx = hz.load_context(secret, self.params, secret=True)
        if not ctx.is_private():
            raise ProtocolError("delivered CKKS context holds no secret key")
        self._install(ctx, mac_key, fingerprint)
        return wire.encode(wire.Kind.CKKS_KEY_ACK, {"client": self.client_id, "fingerprint": fingerprint})

    def _install(self, ctx, mac_key: bytes, fingerprint: str) -> None:
        self._context, self._mac_key, self.fingerprint = ctx, mac_key, fingerprint

    def _reject(self, reason: str) -> bytes:
        return wire.encode(wire.Kind.CKKS_REJECT, {"client": self.client_id, "reason": reason})

    def _decrypt(self, msg: wire.Message) -> bytes:
        """Decrypt a summed ciphertext, verify it, flood and round it, release it."""
        if not self.ready:
            return self._reject("this client holds no CKKS key")
        h = msg.header
        self._check_settings(h)
        try:
            round_, count, dim = int(h["round"]), int(h["count"]), int(h["dim"])
            layout = Layout(dim, tuple(str(k) for k in h.get("aux_keys", [])))
        except (KeyError, TypeError, ValueError):
            raise ProtocolError("CKKS_DECRYPT header needs round, count and dim") from None
        if not 1 <= count <= self.params.max_summands:
            return self._reject(f"count {count} outside 1..{self.params.max_summands}")
        contributors = h.get("contributors")
        if not isinstance(contributors, list) or len(set(map(str, contributors))) != count:
            return self._reject(f"the aggregate must name {count} distinct contributors")
        try:
            tensor = hz.load_ciphertext(self._context, self.params, msg.payload, layout.length)
        except CiphertextRejectedError as exc:
            return self._reject(str(exc))
        values = hz.decrypt(self._context, self.params, tensor, layout.length)
        problem = self._verify(values, layout, round_, count)
        if problem:
            return self._reject(problem)
        flood = self.params.flood_std(count)
        grid = 2.0 ** math.floor(math.log2(flood))
        noisy = values + self.rng.normal((values.size,), std=flood, dtype=torch.float64).numpy()
        ints = np.rint(noisy / grid)
        dtype = "<i4" if np.abs(ints).max() < 2**31 - 1 else "<i8"
        return wire.encode(
            wire.Kind.CKKS_AGGREGATE,
            {
                "client": self.client_id,
                "round": round_,
                "grid": grid,
                "flood_std": flood,
                "length": layout.length,
                "dtype": dtype,
            },
            ints.astype(dtype).tobytes(),
        )

    def _verify(self, values: np.ndarray, layout: Layout, round_: int, count: int) -> str | None:
        if not np.isfinite(values).all():
            return "decrypted aggregate is not finite"
        err = hz.TAIL * self.params.error_std(count)
        if np.abs(values).max() > count + err:
            return (
                f"decrypted aggregate reaches {np.abs(values).max():.3g}, beyond the bound {count} of {count} "
                "contributions: a ciphertext is corrupted or under another key"
            )
        if abs(values[layout.count] - count) > 0.25:
            return f"decrypted contribution count {values[layout.count]:.3f} differs from the claimed {count}"
        assert self._mac_key is not None
        expected = tag_vectors(self._mac_key, round_, layout.dim) @ values[: layout.dim]
        # tag slot error and <r, e> each have the slot error std (r is unit norm)
        if np.abs(values[layout.tags] - expected).max() > math.sqrt(2.0) * err + 1e-12:
            return "authentication tags do not match: the aggregate was altered or mixes rounds"
        return None


def _package(secret_context: bytes, mac_key: bytes, fingerprint: str) -> bytes:
    head = json.dumps({"mac_key": _b64(mac_key), "fingerprint": fingerprint}).encode()
    return len(head).to_bytes(4, "little") + head + secret_context


def _unpackage(package: bytes) -> tuple[bytes, bytes, str]:
    n = int.from_bytes(package[:4], "little")
    head = json.loads(package[4 : 4 + n].decode())
    return package[4 + n :], _unb64(head["mac_key"], "mac key"), str(head["fingerprint"])


# ------------------------------------------------------------------ server half
class CKKSServer(ServerProtection):
    """The server half: holds the public context only; sums ciphertexts, has a key
    holder decrypt the sum, checks it, and learns nothing else."""

    name = NAME
    sees_individual_updates = False
    stages = 2  # the update, then (for one client) the decryption request

    def __init__(self, *, settings: CKKSSettings) -> None:
        self.settings = settings
        self.params = settings.params
        self.context = None  #: the public TenSEAL context (no secret key)
        self.public_context: bytes | None = None
        self.fingerprint: str | None = None
        self.key_holders: list[str] = []

    # --- set-up: key distribution through the server
    def setup(self, clients: Sequence[ClientLike], exchange: Exchange) -> None:
        sid = self.settings.settings_id
        adverts: dict[str, bytes] = {}
        for c in clients:
            reply = exchange.send(c, wire.encode(wire.Kind.CKKS_HELLO, {"settings": sid, **self.settings.describe()}))
            if reply is None:
                continue
            msg = wire.decode(reply, expect=wire.Kind.CKKS_ADVERT)
            if len(msg.payload) != 32 or msg.header.get("client") != c.client_id:
                raise ProtocolError(f"client {c.client_id!r} sent a malformed key advertisement")
            adverts[c.client_id] = msg.payload
        by_id = {c.client_id: c for c in clients}
        peers = {cid: _b64(pk) for cid, pk in adverts.items()}
        for generator in list(adverts):
            keygen = wire.encode(wire.Kind.CKKS_KEYGEN, {"settings": sid, "peers": peers})
            reply = exchange.send(by_id[generator], keygen)
            if reply is not None:
                break
        else:
            raise AggregationError("no client could generate the CKKS keys")
        msg = wire.decode(reply, expect=wire.Kind.CKKS_KEYGEN_REPLY)
        offsets = msg.header.get("parts")
        public = _unpack(offsets, msg.payload, "public_context")
        ctx = hz.load_context(public, self.params)
        if ctx.is_private():
            raise ProtocolError("the key generator sent the server a context holding a secret key")
        fingerprint = hz.context_fingerprint(public)
        if msg.header.get("fingerprint") != fingerprint:
            raise ProtocolError("public context does not match its fingerprint")
        self.context, self.public_context, self.fingerprint = ctx, public, fingerprint
        holders = [generator]
        for cid in adverts:
            if cid == generator:
                continue
            delivery = wire.encode(
                wire.Kind.CKKS_KEY_DELIVERY,
                {
                    "settings": sid,
                    "generator": generator,
                    "generator_key": peers[generator],
                    "fingerprint": fingerprint,
                },
                _unpack(offsets, msg.payload, f"to:{cid}"),
            )
            ack = exchange.send(by_id[cid], delivery)
            if ack is None:
                continue
            a = wire.decode(ack, expect=wire.Kind.CKKS_KEY_ACK)
            if a.header.get("fingerprint") != fingerprint:
                raise ProtocolError(f"client {cid!r} installed a different key set")
            holders.append(cid)
        self.key_holders = holders

    # --- one round
    def aggregate(
        self, clients: Sequence[ClientLike], global_message: bytes, dim: int, exchange: Exchange
    ) -> AggregateInput | None:
        if self.context is None:
            raise ProtocolError("CKKS set-up has not run")
        holders = set(self.key_holders)
        chosen = [c for c in clients if c.client_id in holders]
        replies = [(c, exchange.send(c, global_message, method="fit")) for c in chosen]
        received = [(c, r) for c, r in replies if r is not None]
        if not received:
            return None
        acc = None
        headers: list[dict[str, Any]] = []
        aux_keys: tuple[str, ...] | None = None
        update_bytes = 0
        layout_len = None
        for c, raw in received:
            msg = wire.decode(raw, expect=wire.Kind.CLIENT_UPDATE)
            h = msg.header
            if h.get("protect") != NAME or h.get("settings") != self.settings.settings_id:
                raise CiphertextRejectedError(
                    f"update from {c.client_id!r} sealed with {h.get('protect')!r}/{h.get('settings')!r}, "
                    f"expected {NAME!r}/{self.settings.settings_id!r}"
                )
            if h.get("fingerprint") != self.fingerprint:
                raise CiphertextRejectedError(f"update from {c.client_id!r} names another key set")
            if int(h.get("dim", -1)) != dim:
                raise CiphertextRejectedError(f"update from {c.client_id!r} has dim {h.get('dim')!r}, expected {dim}")
            keys = tuple(str(k) for k in h.get("aux_keys", []))
            if aux_keys is None:
                aux_keys = keys
            elif keys != aux_keys:
                raise CiphertextRejectedError(f"update from {c.client_id!r} carries counters {keys}, others {aux_keys}")
            layout_len = Layout(dim, keys).length
            tensor = hz.load_ciphertext(self.context, self.params, msg.payload, layout_len)
            if acc is None:
                acc = tensor
            else:
                acc += tensor  # in place; CKKSTensor.copy() would deep-copy the context
            update_bytes += len(raw)
            headers.append(h)
        assert aux_keys is not None and layout_len is not None
        layout = Layout(dim, aux_keys)
        count = len(headers)
        contributors = [c.client_id for c, _ in received]
        request = wire.encode(
            wire.Kind.CKKS_DECRYPT,
            {
                "settings": self.settings.settings_id,
                "round": exchange.round,
                "count": count,
                "dim": dim,
                "aux_keys": list(aux_keys),
                "contributors": contributors,
            },
            hz.serialize(acc),
        )
        values, decryptor, flood = self._decrypt(request, chosen, exchange, layout, count)
        s = self.settings
        scale = s.max_weight * s.clip
        total = torch.from_numpy(values[:dim] * scale).to(torch.float32)
        aux = {"weight": float(values[layout.weight] * s.max_weight)}
        for i, k in enumerate(aux_keys):
            aux[k] = float(values[layout.aux(i)])
        if not aux["weight"] > 0:
            raise CiphertextRejectedError(f"decrypted total weight {aux['weight']:.4g} is not positive")
        float_bytes = 4 * dim
        stats = {
            "preset": self.params.preset,
            "encryption": self.params.encryption,
            "poly_modulus_degree": self.params.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.params.coeff_mod_bit_sizes),
            "scale_bits": self.params.scale_bits,
            "ciphertexts_per_client": hz.num_ciphertexts(self.params, layout.length),
            "update_bytes_per_client": update_bytes / count,
            "bytes_ratio": update_bytes / count / float_bytes,
            "bytes_up_ratio": exchange.bytes_up / count / float_bytes,
            "clipped": int(round(float(values[layout.clipped]))),
            "clip": s.clip,
            "decryptor": decryptor,
            "flood_std": flood * scale,
            "max_error": self.params.max_error(count) * scale,
        }
        return AggregateInput(total, aux, count, None, headers, stats)

    def _decrypt(
        self, request: bytes, chosen: Sequence[ClientLike], exchange: Exchange, layout: Layout, count: int
    ) -> tuple[np.ndarray, str, float]:
        """Ask surviving key holders in turn until one releases the aggregate."""
        for holder in chosen:
            if exchange.gone(holder.client_id):
                continue
            reply = exchange.send(holder, request)
            if reply is None:
                continue
            msg = wire.decode(reply)
            if msg.kind == wire.Kind.CKKS_REJECT:
                raise CiphertextRejectedError(
                    f"key holder {holder.client_id!r} rejected the aggregate: {msg.header.get('reason')}"
                )
            if msg.kind != wire.Kind.CKKS_AGGREGATE:
                raise WireFormatError(f"expected CKKS_AGGREGATE, got {msg.kind.name}")
            grid = float(msg.header.get("grid", 0.0))
            flood = float(msg.header.get("flood_std", 0.0))
            if not (math.isfinite(grid) and 0 < grid <= flood <= 1.0):
                raise CiphertextRejectedError(f"key holder released an aggregate on grid {grid!r}")
            dtype = msg.header.get("dtype")
            if dtype not in ("<i4", "<i8"):
                raise WireFormatError(f"aggregate dtype must be <i4 or <i8, got {dtype!r}")
            width = np.dtype(dtype).itemsize
            if len(msg.payload) != width * layout.length:
                raise WireFormatError(
                    f"aggregate payload has {len(msg.payload)} bytes, expected {width * layout.length}"
                )
            values = np.frombuffer(msg.payload, dtype=dtype).astype(np.float64) * grid
            self._bound_check(values, layout, count, flood)
            return values, holder.client_id, flood
        raise AggregationError("no key holder survived to decrypt the aggregate")

    def _bound_check(self, values: np.ndarray, layout: Layout, count: int, flood: float) -> None:
        tol = hz.TAIL * flood + 1e-9
        if not np.isfinite(values).all() or np.abs(values).max() > count + tol:
            raise CiphertextRejectedError(f"released aggregate exceeds the bound {count} of {count} contributions")
        if abs(values[layout.count] - count) > 0.25:
            raise CiphertextRejectedError(
                f"released contribution count {values[layout.count]:.3f} differs from the {count} ciphertexts summed"
            )
        if not -tol <= values[layout.clipped] <= count + tol:
            raise CiphertextRejectedError("released clipping count is out of range")


# ------------------------------------------------------------------ factories
def client_factory(config: "RunConfig", client_id: str, rng: SecureRNG) -> CKKSClient:
    return CKKSClient(client_id=client_id, settings=ckks_settings(config), rng=rng)


def server_factory(config: "RunConfig", rng: SecureRNG) -> CKKSServer:
    return CKKSServer(settings=ckks_settings(config))
