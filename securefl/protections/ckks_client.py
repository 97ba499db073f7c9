"""The client half of ``--protect ckks``: a key holder (see :mod:`securefl.protections.ckks`)."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from securefl.crypto import ckks_auth as auth
from securefl.crypto import ckks_keys as keys
from securefl.crypto import primitives as P
from securefl.crypto.ckks_auth import Layout
from securefl.crypto.encoding import b64, unb64
from securefl.crypto.hazmat import ckks_seal as hzs
from securefl.crypto.identity import Identity, Roster
from securefl.crypto.replay import RoundGuard
from securefl.exceptions import CiphertextRejectedError, ConfigValueError, ProtocolError, ReplayError
from securefl.privacy.noise import SecureRNG
from securefl.protections.base import ClientProtection
from securefl.protections.ckks import MAX_DIM, NAME, CKKSSettings, aux_keys_field, int_field, pack_parts
from securefl.transport import wire

__all__ = ["CKKSClient"]


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
        # numpy, one thread: torch's .double() and BLAS (np.linalg.norm) start thread
        # pools that compete with TenSEAL's encryption for the cores
        delta = np.array(weighted_update.detach().cpu().numpy(), dtype=np.float64).ravel()
        delta /= weight
        norm = math.sqrt(float(np.einsum("i,i->", delta, delta)))  # NaN/inf propagate
        if not math.isfinite(norm):
            if not np.isfinite(delta).all():
                raise ProtocolError("update is not finite")
            big = float(np.abs(delta).max())  # finite, but its square overflows
            norm = big * math.sqrt(float(np.einsum("i,i->", delta / big, delta / big)))
        factor = weight / s.max_weight / s.clip
        if norm > s.clip:
            factor *= s.clip / norm
        # an update clipped to exactly C upstream (DP-FedAvg) is not counted for float error
        clipped = norm > s.clip * (1 + 1e-6)
        self.clipped_rounds += int(clipped)
        delta *= factor
        x = np.clip(delta, -1.0, 1.0, out=delta)  # only float rounding reaches past 1
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
        round_ = int_field(header, "round")
        vec = np.zeros(layout.length, dtype=np.float64)
        vec[: layout.dim] = x
        vec[layout.weight] = weight / self.settings.max_weight
        vec[layout.clipped] = float(clipped)
        for i, k in enumerate(extra):
            vec[layout.aux(i)] = float(aux[k])
        vec[layout.participation.start + self._keys.holders.index(self.client_id)] = 1.0
        vec[layout.tags] = auth.tags(self._keys.mac_key, round_, layout, vec[: layout.body], [self.client_id])
        blob = hzs.encrypt(self._keys.context, self.params, vec)
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
        ctx = hzs.new_secret_context(self.params)
        secret = hzs.secret_context_bytes(ctx, self.params)
        mac_key = os.urandom(32)
        package = keys.pack(secret, mac_key, self.client_id, holders)
        sid = self.settings.settings_id
        parts = {"public_context": hzs.public_context_bytes(ctx, self.params)}
        for peer, public in publics.items():
            parts[f"to:{peer}"] = keys.seal_package(self._x25519, public, sid, self.client_id, peer, package)
        fp = keys.fingerprint(secret, mac_key, self.client_id, holders)
        self._keys = keys.KeySet(ctx, secret, mac_key, self.client_id, self.public_key, holders, fp)
        offsets, payload = pack_parts(parts)
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
        ctx = hzs.load_context(secret, self.params, secret=True)
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
        round_, dim = int_field(h, "round", minimum=1), int_field(h, "dim", minimum=1, maximum=MAX_DIM)
        layout = Layout(dim, aux_keys_field(h), len(ks.holders))
        if keys.decryptor_for(ks.holders, ks.fingerprint, round_) != self.client_id:
            return self._reject(f"this client is not the designated decryptor of round {round_}")
        try:
            self.guard.advance("ckks-decrypt", round_)  # at most one decryption per round, ever
        except ReplayError as exc:
            return self._reject(str(exc))
        try:
            tensor = hzs.load_ciphertext(ks.context, self.params, msg.payload, layout.length)
        except CiphertextRejectedError as exc:
            return self._reject(str(exc))
        values = hzs.decrypt(ks.context, self.params, tensor, layout.length)
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

