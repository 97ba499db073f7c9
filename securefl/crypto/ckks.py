"""CKKS-encrypted aggregation: the server sums updates it cannot read.

Roles (DESIGN.md section 4.1). The *key holders* are the clients: one of them
generates the CKKS secret key and a MAC key and hands them to every other client
sealed to that client's X25519 key (:mod:`securefl.crypto.ckks_keys`), relayed by
the server. The server only ever holds a public context, so it can add
ciphertexts but not decrypt them.

One round:

1. the server sends the global model (``fit``); each client trains, clips its
   update ``Delta_k`` to L2 norm ``C`` (counted), and encrypts
   ``x_k = (n_k / W) * Delta_k / C`` (every entry in [-1, 1]), its counters, a
   one-hot participation vector over the pinned key holders and MAC tags bound
   to the round and to itself (:mod:`securefl.crypto.ckks_auth`);
2. the server checks every ciphertext on receipt (parse, SEAL validity, shape,
   parameter id, key fingerprint) and adds them with ``+=``; fewer than
   ``min_clients`` contributions abort the round before anyone decrypts;
3. the round's one designated key holder (a rule every holder computes from the
   pinned key set) decrypts the sum at most once, refuses any round at or below
   the last it decrypted, checks that it holds at least ``min_clients`` distinct,
   genuine contributions of this round (participation and tags), floods it with
   Gaussian noise of ``2^flood_bits`` times the CKKS error from the OS CSPRNG and
   rounds it to a grid before releasing it (Li and Micciancio, Eurocrypt 2021:
   exact CKKS decryptions together with their ciphertexts reveal the secret key);
4. the server bound-checks the released sums and rescales them to
   ``sum n_k Delta_k`` and ``sum n_k``: that is all it learns.

Any failed check raises :class:`~securefl.exceptions.CiphertextRejectedError`,
which aborts the round and leaves the global model unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from securefl.crypto import ckks_auth as auth
from securefl.crypto import ckks_keys as keys
from securefl.crypto import primitives as P
from securefl.crypto.ckks_auth import Layout
from securefl.crypto.encoding import b64, unb64
from securefl.crypto.hazmat import ckks as hz
from securefl.crypto.identity import Identity, Roster
from securefl.crypto.replay import RoundGuard
from securefl.exceptions import (
    AggregationError,
    CiphertextRejectedError,
    ConfigValueError,
    ProtocolError,
    ReplayError,
    WireFormatError,
)
from securefl.privacy.noise import SecureRNG
from securefl.protect import AggregateInput, ClientLike, ClientProtection, Exchange, ServerProtection
from securefl.transport import wire

if TYPE_CHECKING:  # pragma: no cover
    from securefl.config import RunConfig

__all__ = ["CKKSClient", "CKKSServer", "CKKSSettings", "Layout", "ckks_settings"]

NAME = "ckks"
#: default bound on n_k for weighted FedAvg (1 under client-level DP, where weights are 1)
DEFAULT_MAX_WEIGHT = 1000.0
#: a forged contribution must pass the MAC tags with at most this chance
MAX_FORGERY = 2.0**-64


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class CKKSSettings:
    """What both halves agree on before the first round (``settings_id`` names it),
    plus ``min_clients``, each party's own floor on the cohort it helps release."""

    params: hz.CKKSParams
    clip: float
    max_weight: float
    min_clients: int = 3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigValueError("ckks_clip", self.clip, "must be a positive number")
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ConfigValueError("ckks_max_weight", self.max_weight, "must be a positive number")
        if isinstance(self.min_clients, bool) or not isinstance(self.min_clients, int) or self.min_clients < 2:
            raise ConfigValueError("min_clients", self.min_clients, "must be an integer >= 2")
        if self.min_clients > self.params.max_summands:
            raise ConfigValueError(
                "min_clients", self.min_clients, f"exceeds the {self.params.max_summands} clients a round can sum"
            )
        bound = auth.forgery_bound(self.error_std)
        if bound > MAX_FORGERY:
            raise ConfigValueError(
                "ckks_max_error",
                self.params.max_error(self.params.max_summands),
                f"lets a forged contribution pass the MAC tags with chance 2^{math.log2(bound):.0f}; lower it",
            )

    @property
    def error_std(self) -> float:
        """CKKS error of one slot in the largest sum (the verification tolerance)."""
        return self.params.error_std(self.params.max_summands)

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
    """The CKKS settings of a run. Under DP every weight is 1 (``max_weight`` 1).
    Under client-level DP each update is already clipped to the DP clip S, so the
    CKKS clip is S itself (with adaptive clipping the larger of S and ``ckks_clip``)
    and the encrypted clipped bit, which is released without noise, is always 0."""
    p, dp = config.protection, config.dp
    weight = p.ckks_max_weight
    if weight is None:
        weight = 1.0 if dp.dp != "none" else DEFAULT_MAX_WEIGHT
    clip = float(p.ckks_clip)
    if dp.dp == "client":
        clip = max(float(dp.clip), clip) if dp.adaptive_clip else float(dp.clip)
    if p.min_clients > config.clients:
        raise ConfigValueError("min_clients", p.min_clients, f"exceeds the federation's {config.clients} clients")
    return CKKSSettings(ckks_params(config), clip, float(weight), p.min_clients)


def _pack_parts(parts: dict[str, bytes]) -> tuple[dict[str, list[int]], bytes]:
    offsets, blob, at = {}, [], 0
    for key, data in parts.items():
        offsets[key] = [at, len(data)]
        blob.append(data)
        at += len(data)
    return offsets, b"".join(blob)


def _unpack_part(offsets: Any, payload: bytes, key: str) -> bytes:
    try:
        at, n = offsets[key]
        at, n = int(at), int(n)
    except (KeyError, TypeError, ValueError):
        raise ProtocolError(f"message has no part {key!r}") from None
    if at < 0 or n < 0 or at + n > len(payload):
        raise ProtocolError(f"part {key!r} lies outside the payload")
    return payload[at : at + n]


def _int_field(header: dict[str, Any], name: str) -> int:
    v = header.get(name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"message field {name!r} missing or not an integer")
    return v


# ------------------------------------------------------------------ client half
class CKKSClient(ClientProtection):
    """The client half: a key holder.

    Args:
        client_id: this client's name (its participation slot follows from it).
        settings: the federation's CKKS settings and this client's ``min_clients``.
        identity: this client's signing key; with ``roster`` its adverts are signed.
        roster: the members pinned out of band; every peer advert and the generator's
            key must carry a valid signature under it.
        guard: the client's round memory (shared with its SecureClient); decryption
            rounds must strictly increase across restarts.
    """

    name = NAME

    def __init__(
        self,
        *,
        client_id: str,
        settings: CKKSSettings,
        identity: Identity | None = None,
        roster: Roster | None = None,
        guard: RoundGuard | None = None,
    ) -> None:
        self.client_id = str(client_id)
        self.settings = settings
        self.params = settings.params
        if roster is not None:
            if identity is None or roster.members.get(self.client_id) != identity.verification_key:
                raise ConfigValueError("roster", self.client_id, "does not pin this client's own identity key")
        self.identity, self.roster = identity, roster
        self.guard = guard or RoundGuard()
        self._x25519, self.public_key = P.x25519_keypair()
        self._keys: keys.KeySet | None = None
        self.clipped_rounds = 0

    @property
    def ready(self) -> bool:
        return self._keys is not None

    @property
    def fingerprint(self) -> str | None:
        return self._keys.fingerprint if self._keys else None

    @property
    def holders(self) -> tuple[str, ...]:
        return self._keys.holders if self._keys else ()

    # --- sealing one update
    def _scaled(self, weighted_update: torch.Tensor, weight: float) -> tuple[np.ndarray, bool]:
        s = self.settings
        if not (math.isfinite(weight) and weight > 0):
            raise ProtocolError(f"update weight must be positive, got {weight!r}")
        if weight > s.max_weight:
            raise ConfigValueError(
                "ckks_max_weight",
                s.max_weight,
                f"client {self.client_id} has weight n_k={weight:g} above the bound; raise --ckks-max-weight",
            )
        delta = weighted_update.detach().double().numpy() / weight
        if not np.isfinite(delta).all():
            raise ProtocolError("update is not finite")
        norm = float(np.linalg.norm(delta))
        if norm > s.clip:
            delta = delta * (s.clip / norm)
        # an update clipped to exactly C upstream (DP-FedAvg) is not counted for float error
        clipped = norm > s.clip * (1 + 1e-6)
        self.clipped_rounds += int(clipped)
        x = np.clip(delta * (weight / s.max_weight / s.clip), -1.0, 1.0)  # only float rounding reaches past 1
        return x, clipped

    def seal(self, weighted_update: torch.Tensor, aux: dict[str, float], header: dict[str, Any]) -> bytes:
        if self._keys is None:
            raise ProtocolError(f"client {self.client_id!r} holds no CKKS key; set-up did not reach it")
        weight = float(aux.get("weight", 0.0))
        extra = sorted(k for k in aux if k != "weight")
        for k in extra:
            if not (math.isfinite(float(aux[k])) and abs(float(aux[k])) <= 1.0):
                raise ProtocolError(f"auxiliary counter {k!r}={aux[k]!r} must lie in [-1, 1] under CKKS")
        x, clipped = self._scaled(weighted_update, weight)
        layout = Layout(int(x.size), tuple(extra), len(self._keys.holders))
        round_ = _int_field(header, "round")
        vec = np.zeros(layout.length, dtype=np.float64)
        vec[: layout.dim] = x
        vec[layout.weight] = weight / self.settings.max_weight
        vec[layout.clipped] = float(clipped)
        for i, k in enumerate(extra):
            vec[layout.aux(i)] = float(aux[k])
        vec[layout.participation.start + self._keys.holders.index(self.client_id)] = 1.0
        vec[layout.tags] = auth.tags(self._keys.mac_key, round_, layout, vec[: layout.body], [self.client_id])
        blob = hz.encrypt(self._keys.context, self.params, vec)
        info = {"protect": NAME, "settings": self.settings.settings_id, "fingerprint": self.fingerprint}
        return wire.encode(wire.Kind.CLIENT_UPDATE, {**header, **info, "aux_keys": list(extra)}, blob)

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
        if msg.header.get("settings") != self.settings.settings_id:
            raise ProtocolError(
                f"server announces CKKS settings {msg.header.get('settings')!r}, "
                f"this client uses {self.settings.settings_id!r}"
            )
        return handler(msg)

    def _signature(self) -> str | None:
        if self.identity is None:
            return None
        transcript = keys.advert_transcript(self.settings.settings_id, self.client_id, self.public_key)
        return b64(self.identity.sign(transcript))

    def _check_advert(self, cid: str, public: bytes, sig: Any) -> None:
        """With a roster: ``cid`` is pinned and its X25519 key carries its signature."""
        if self.roster is None:
            return
        transcript = keys.advert_transcript(self.settings.settings_id, cid, public)
        if sig is None or not self.roster.verify(cid, unb64(sig, f"signature of {cid}"), transcript):
            raise ProtocolError(f"key advert of {cid!r} is not signed by its pinned identity key")

    def _hello(self, msg: wire.Message) -> bytes:
        return wire.encode(
            wire.Kind.CKKS_ADVERT, {"client": self.client_id, "sig": self._signature()}, self.public_key
        )

    def _check_holders(self, holders: tuple[str, ...]) -> None:
        if self.client_id not in holders:
            raise ProtocolError("the key set's holder list leaves this client out")
        if self.roster is not None:
            self.roster.check_members(holders, "the key set's holder list")
        if len(holders) < self.settings.min_clients:
            raise ProtocolError(
                f"{len(holders)} key holders, fewer than min_clients={self.settings.min_clients}: no sum could be released"
            )
        if self._keys is not None and holders != self._keys.holders:
            raise ProtocolError("a re-key must keep the pinned holder list")

    def _keygen(self, msg: wire.Message) -> bytes:
        """Generate the federation's secret context and seal it to every peer."""
        if self._keys is not None and self._keys.generator != self.client_id:
            raise ProtocolError("keys are already installed from another generator; refusing to generate new ones")
        peers = msg.header.get("peers")
        if not isinstance(peers, dict) or not all(isinstance(v, dict) for v in peers.values()):
            raise ProtocolError("CKKS_KEYGEN needs a peers mapping of adverts")
        publics: dict[str, bytes] = {}
        for peer, advert in peers.items():
            if peer == self.client_id:
                continue
            publics[str(peer)] = unb64(advert.get("pk"), f"public key of {peer}")
            self._check_advert(str(peer), publics[str(peer)], advert.get("sig"))
        holders = tuple(sorted({*publics, self.client_id}))
        self._check_holders(holders)
        ctx = hz.new_secret_context(self.params)
        secret = hz.secret_context_bytes(ctx, self.params)
        mac_key = os.urandom(32)
        package = keys.pack(secret, mac_key, self.client_id, holders)
        sid = self.settings.settings_id
        parts = {"public_context": hz.public_context_bytes(ctx, self.params)}
        for peer, public in publics.items():
            parts[f"to:{peer}"] = keys.seal_package(self._x25519, public, sid, self.client_id, peer, package)
        fp = keys.fingerprint(secret, mac_key, self.client_id, holders)
        self._keys = keys.KeySet(ctx, secret, mac_key, self.client_id, self.public_key, holders, fp)
        offsets, payload = _pack_parts(parts)
        header = {"client": self.client_id, "parts": offsets, "fingerprint": fp, "holders": list(holders)}
        return wire.encode(wire.Kind.CKKS_KEYGEN_REPLY, header, payload)

    def _delivery(self, msg: wire.Message) -> bytes:
        h = msg.header
        generator = str(h.get("generator"))
        generator_key = unb64(h.get("generator_key"), "generator key")
        if self._keys is not None and (generator, generator_key) != (self._keys.generator, self._keys.generator_key):
            raise ProtocolError("keys are already installed; only the pinned key generator may re-key")
        self._check_advert(generator, generator_key, h.get("generator_sig"))
        sid = self.settings.settings_id
        package = keys.open_package(self._x25519, generator_key, sid, generator, self.client_id, msg.payload)
        secret, mac_key, named, holders, fp = keys.unpack(package)
        if named != generator or generator not in holders:
            raise ProtocolError("key package names another generator")
        if h.get("fingerprint") != fp:
            raise ProtocolError("the server names another key set than the one the generator sealed")
        self._check_holders(holders)
        ctx = hz.load_context(secret, self.params, secret=True)
        if not ctx.is_private():
            raise ProtocolError("delivered CKKS context holds no secret key")
        self._keys = keys.KeySet(ctx, secret, mac_key, generator, generator_key, holders, fp)
        return wire.encode(wire.Kind.CKKS_KEY_ACK, {"client": self.client_id, "fingerprint": fp})

    def _reject(self, reason: str) -> bytes:
        return wire.encode(wire.Kind.CKKS_REJECT, {"client": self.client_id, "reason": reason})

    def _decrypt(self, msg: wire.Message) -> bytes:
        """Decrypt a summed ciphertext once, verify it, flood and round it, release it."""
        ks = self._keys
        if ks is None:
            return self._reject("this client holds no CKKS key")
        h = msg.header
        round_, dim = _int_field(h, "round"), _int_field(h, "dim")
        aux_keys = h.get("aux_keys", [])
        if not isinstance(aux_keys, list) or dim < 1:
            raise ProtocolError("CKKS_DECRYPT header needs dim and aux_keys")
        layout = Layout(dim, tuple(str(k) for k in aux_keys), len(ks.holders))
        if keys.decryptor_for(ks.holders, ks.fingerprint, round_) != self.client_id:
            return self._reject(f"this client is not the designated decryptor of round {round_}")
        try:
            self.guard.advance("ckks-decrypt", round_)  # at most one decryption per round, ever
        except ReplayError as exc:
            return self._reject(str(exc))
        try:
            tensor = hz.load_ciphertext(ks.context, self.params, msg.payload, layout.length)
        except CiphertextRejectedError as exc:
            return self._reject(str(exc))
        values = hz.decrypt(ks.context, self.params, tensor, layout.length)
        members, problem = auth.check(
            values,
            layout,
            mac_key=ks.mac_key,
            round_=round_,
            holders=list(ks.holders),
            min_clients=self.settings.min_clients,
            error_std=self.settings.error_std,
        )
        if problem:
            return self._reject(problem)
        flood = self.params.flood_std(len(members))
        grid = 2.0 ** math.floor(math.log2(flood))
        # flooding noise hides the secret key: always from the OS CSPRNG, never a seeded stream
        noisy = values + SecureRNG().normal((values.size,), std=flood, dtype=torch.float64).numpy()
        ints = np.rint(noisy / grid)
        dtype = "<i4" if np.abs(ints).max() < 2**31 - 1 else "<i8"
        header = {
            "client": self.client_id,
            "round": round_,
            "grid": grid,
            "flood_std": flood,
            "length": layout.length,
            "dtype": dtype,
        }
        return wire.encode(wire.Kind.CKKS_AGGREGATE, header, ints.astype(dtype).tobytes())


# ------------------------------------------------------------------ server half
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
        for c in clients:
            reply = exchange.send(c, wire.encode(wire.Kind.CKKS_HELLO, {"settings": sid, **self.settings.describe()}))
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
        public = _unpack_part(offsets, msg.payload, "public_context")
        ctx = hz.load_context(public, self.params)
        if ctx.is_private():
            raise ProtocolError("the key generator sent the server a context holding a secret key")
        fingerprint, holders = msg.header.get("fingerprint"), msg.header.get("holders")
        if not isinstance(fingerprint, str) or not isinstance(holders, list) or holders != sorted(set(map(str, holders))):
            raise ProtocolError("key generator reply needs a fingerprint and a sorted holder list")
        self.context, self.public_context = ctx, public
        self.fingerprint, self.key_holders = fingerprint, list(holders)
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
            delivery = wire.encode(wire.Kind.CKKS_KEY_DELIVERY, header, _unpack_part(offsets, msg.payload, f"to:{cid}"))
            ack = exchange.send(by_id[cid], delivery)
            if ack is not None and wire.decode(ack, expect=wire.Kind.CKKS_KEY_ACK).header.get("fingerprint") != fingerprint:
                raise ProtocolError(f"client {cid!r} installed a different key set")

    # --- one round
    def _add(self, got: _Received, cid: str, raw: bytes, dim: int) -> None:
        msg = wire.decode(raw, expect=wire.Kind.CLIENT_UPDATE)
        h = msg.header
        if h.get("protect") != NAME or h.get("settings") != self.settings.settings_id:
            raise CiphertextRejectedError(
                f"update from {cid!r} sealed with {h.get('protect')!r}/{h.get('settings')!r}, "
                f"expected {NAME!r}/{self.settings.settings_id!r}"
            )
        if h.get("fingerprint") != self.fingerprint:
            raise CiphertextRejectedError(f"update from {cid!r} names another key set")
        if h.get("dim") != dim:
            raise CiphertextRejectedError(f"update from {cid!r} has dim {h.get('dim')!r}, expected {dim}")
        aux_keys = tuple(str(k) for k in h.get("aux_keys", []))
        if got.aux_keys is not None and aux_keys != got.aux_keys:
            raise CiphertextRejectedError(f"update from {cid!r} carries counters {aux_keys}, others {got.aux_keys}")
        got.aux_keys = aux_keys
        layout = Layout(dim, aux_keys, len(self.key_holders))
        tensor = hz.load_ciphertext(self.context, self.params, msg.payload, layout.length)
        if got.acc is None:
            got.acc = tensor
        else:
            got.acc += tensor  # in place; CKKSTensor.copy() would deep-copy the context
        got.update_bytes += len(raw)
        got.headers.append(h)

    def aggregate(
        self, clients: Sequence[ClientLike], global_message: bytes, dim: int, exchange: Exchange
    ) -> AggregateInput | None:
        if self.context is None:
            raise ProtocolError("CKKS set-up has not run")
        holders = set(self.key_holders)
        got = _Received()
        for c in clients:
            if c.client_id in holders:
                raw = exchange.send(c, global_message, method="fit")
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
            hz.serialize(got.acc),
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
            "ciphertexts_per_client": hz.num_ciphertexts(self.params, layout.length),
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
        grid = float(msg.header.get("grid", 0.0))
        flood = float(msg.header.get("flood_std", 0.0))
        if not (math.isfinite(grid) and 0 < grid <= flood <= 1.0):
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


# ------------------------------------------------------------------ factories
def client_factory(
    config: "RunConfig",
    client_id: str,
    rng: SecureRNG | None = None,
    *,
    identity: Identity | None = None,
    roster: Roster | None = None,
    guard: RoundGuard | None = None,
) -> CKKSClient:
    """The client half of a run (``rng``, the DP noise stream, is not used: CKKS
    adds no DP noise, and its flooding noise always comes from the OS)."""
    return CKKSClient(client_id=client_id, settings=ckks_settings(config), identity=identity, roster=roster, guard=guard)


def server_factory(config: "RunConfig", rng: SecureRNG | None = None, *, roster: Roster | None = None) -> CKKSServer:
    return CKKSServer(settings=ckks_settings(config), roster=roster)
