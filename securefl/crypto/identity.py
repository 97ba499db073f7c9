"""Long-term client identities and the roster that pins them out of band.

A malicious server can invent participants: give a victim a cohort made of the
victim plus identities the server controls, and every signature checks out because
the server also handed out the keys to check them with. The defence is a *roster*
distributed outside the server's reach (a file the federation operator gives every
client, or an API object): client id -> Ed25519 verification key. A client refuses
any cohort that names an identity outside its roster, and any advertised key that is
not signed by the roster's key for that id.

* :class:`Identity` is a client's signing key (never serialized to the server; it
  can be saved to a private file for a deployment).
* :class:`Roster` is public: ids and verification keys only. Its JSON form is
  ``{"format": "securefl-roster", "version": 1, "members": {id: base64 vk}}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from securefl.crypto.encoding import b64, unb64
from securefl.crypto import primitives as P
from securefl.exceptions import ConfigTypeError, ConfigValueError, ProtocolError

ROSTER_FORMAT = "securefl-roster"
ROSTER_VERSION = 1


@dataclass(frozen=True, repr=False)
class Identity:
    """A client's long-term Ed25519 signing key. ``repr`` shows no secret."""

    client_id: str
    signing_key: bytes
    verification_key: bytes

    @classmethod
    def generate(cls, client_id: str) -> "Identity":
        sk, vk = P.ed25519_keypair()  # OS CSPRNG inside the cryptography package
        return cls(str(client_id), sk, vk)

    def sign(self, message: bytes) -> bytes:
        return P.sign(self.signing_key, message)

    def __repr__(self) -> str:
        return f"Identity({self.client_id!r}, vk={self.verification_key.hex()[:16]}...)"

    def save(self, path: str | os.PathLike) -> None:
        """Write the signing key to a file readable by its owner only."""
        data = json.dumps({"client": self.client_id, "signing_key": b64(self.signing_key)}).encode()
        fd = os.open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Identity":
        try:
            data = json.loads(Path(path).read_text())
            sk = unb64(data["signing_key"], "signing_key")
            cid = str(data["client"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigValueError("identity", str(path), f"not a securefl identity file ({exc})") from None
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives import serialization

        try:
            vk = Ed25519PrivateKey.from_private_bytes(sk).public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        except ValueError:
            raise ConfigValueError("identity", str(path), "signing key must be 32 bytes") from None
        return cls(cid, sk, vk)


@dataclass(frozen=True)
class Roster:
    """The federation's members and their verification keys, pinned out of band.

    Args:
        members: client id -> 32-byte Ed25519 verification key.
    """

    members: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.members, Mapping):
            raise ConfigTypeError("roster", type(self.members).__name__, "must map client ids to verification keys")
        clean: dict[str, bytes] = {}
        for cid, vk in self.members.items():
            if not isinstance(cid, str) or not cid:
                raise ConfigTypeError("roster", cid, "client ids must be non-empty strings")
            if not isinstance(vk, (bytes, bytearray)) or len(vk) != 32:
                raise ConfigValueError("roster", cid, "each verification key must be 32 bytes")
            clean[cid] = bytes(vk)
        if len(set(clean.values())) != len(clean):
            raise ConfigValueError("roster", sorted(clean), "two members share a verification key")
        object.__setattr__(self, "members", MappingProxyType(dict(sorted(clean.items()))))

    @classmethod
    def of(cls, identities: Iterable[Identity]) -> "Roster":
        """The roster of these identities (what an operator distributes)."""
        return cls({i.client_id: i.verification_key for i in identities})

    def __contains__(self, client_id: object) -> bool:
        return client_id in self.members

    def __len__(self) -> int:
        return len(self.members)

    def key(self, client_id: str) -> bytes:
        """The pinned verification key of ``client_id``; ProtocolError if unknown."""
        vk = self.members.get(client_id)
        if vk is None:
            raise ProtocolError(f"{client_id!r} is not in this client's pinned roster")
        return vk

    def check_members(self, ids: Iterable[str], what: str) -> None:
        """Refuse a list naming anyone outside the roster."""
        unknown = sorted({i for i in ids if i not in self.members})  # O(len(ids)) dict lookups
        if unknown:
            raise ProtocolError(f"{what} names identities outside the pinned roster: {unknown}")

    def verify(self, client_id: str, signature: bytes, message: bytes) -> bool:
        vk = self.members.get(client_id)
        return vk is not None and P.verify(vk, signature, message)

    # --------------------------------------------------------------- files
    def to_json(self) -> dict[str, Any]:
        return {
            "format": ROSTER_FORMAT,
            "version": ROSTER_VERSION,
            "members": {cid: b64(vk) for cid, vk in self.members.items()},
        }

    def save(self, path: str | os.PathLike) -> None:
        from securefl._io import atomic_write_json

        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Roster":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigValueError("roster", str(path), f"cannot read roster: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != ROSTER_FORMAT or data.get("version") != ROSTER_VERSION:
            raise ConfigValueError("roster", str(path), f"not a {ROSTER_FORMAT} v{ROSTER_VERSION} file")
        members = data.get("members")
        if not isinstance(members, dict):
            raise ConfigValueError("roster", str(path), "members must map client ids to base64 keys")
        try:
            return cls({str(k): unb64(v, f"key of {k}") for k, v in members.items()})
        except ProtocolError as exc:
            raise ConfigValueError("roster", str(path), str(exc)) from None


