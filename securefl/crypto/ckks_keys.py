"""CKKS key distribution among the key holders: what is signed, sealed and pinned.

One client (the *generator*) makes the federation's CKKS secret key and a MAC key
and seals both to every other key holder with X25519 + HKDF + ChaCha20-Poly1305
(the key-wrap of :mod:`securefl.crypto.primitives`), the associated data binding the settings, the
sender and the recipient. The server relays the sealed packages and holds a public
context only.

A key set is named by its *fingerprint*, a SHA-256 commitment to the secret key
bytes, the MAC key, the generator and the holder list, so two key sets never share
a fingerprint (the public context of the secret-key modes holds no key material and
cannot serve). A client installs one key set per federation and pins it with its
generator's X25519 key; a later package is accepted only from that pinned generator
for the same holders (an authenticated re-key).

With a :class:`~securefl.crypto.identity.Roster`, every advertised X25519 key is
signed by the advertiser's pinned Ed25519 key, so the server can neither add a
holder of its own nor stand in for the generator. Without one, the first set-up
trusts the server's relay (trust on first use; SECURITY.md).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from securefl.crypto.encoding import b64, unb64
from securefl.crypto import primitives as P
from securefl.exceptions import ProtocolError

_WRAP_INFO = b"securefl-ckks-keywrap-v2"


def _lp(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<I", len(raw)) + raw


def advert_transcript(settings_id: str, client_id: str, x25519_public: bytes) -> bytes:
    """The bytes a key holder signs to advertise its X25519 key."""
    return b"securefl-ckks-advert-v1" + _lp(settings_id) + _lp(client_id) + x25519_public


def fingerprint(secret_context: bytes, mac_key: bytes, generator: str, holders: tuple[str, ...]) -> str:
    """A commitment to one key set: differs for every secret key and holder list."""
    h = hashlib.sha256(b"securefl-ckks-keyset-v2")
    for part in (secret_context, mac_key, generator.encode(), json.dumps(list(holders)).encode()):
        h.update(struct.pack("<Q", len(part)) + part)
    return h.hexdigest()


@dataclass(frozen=True, repr=False)
class KeySet:
    """What a key holder installs: never serialized except sealed to a holder."""

    context: Any  #: TenSEAL (or seeded) context with the secret key
    secret_context: bytes
    mac_key: bytes
    generator: str
    generator_key: bytes  #: the generator's X25519 public key, pinned
    holders: tuple[str, ...]  #: sorted; index = participation slot
    fingerprint: str

    def __repr__(self) -> str:
        return f"KeySet({self.fingerprint[:16]}..., holders={len(self.holders)})"


def pack(secret_context: bytes, mac_key: bytes, generator: str, holders: tuple[str, ...]) -> bytes:
    head = json.dumps(
        {
            "mac_key": b64(mac_key),
            "generator": generator,
            "holders": list(holders),
            "fingerprint": fingerprint(secret_context, mac_key, generator, holders),
        }
    ).encode()
    return struct.pack("<I", len(head)) + head + secret_context


def unpack(package: bytes) -> tuple[bytes, bytes, str, tuple[str, ...], str]:
    """(secret context, MAC key, generator, holders, fingerprint), the fingerprint
    recomputed and checked against the one the generator wrote."""
    try:
        n = struct.unpack("<I", package[:4])[0]
        head = json.loads(package[4 : 4 + n].decode())
        holders = tuple(str(h) for h in head["holders"])
        mac_key, generator, claimed = unb64(head["mac_key"], "mac key"), str(head["generator"]), str(head["fingerprint"])
    except (struct.error, ValueError, KeyError, TypeError):
        raise ProtocolError("key package is malformed") from None
    secret = package[4 + n :]
    if len(mac_key) != 32 or list(holders) != sorted(set(holders)):
        raise ProtocolError("key package is malformed")
    if fingerprint(secret, mac_key, generator, holders) != claimed:
        raise ProtocolError("key package does not match its own fingerprint")
    return secret, mac_key, generator, holders, claimed


def _ad(settings_id: str, sender: str, recipient: str) -> bytes:
    return _WRAP_INFO + _lp(settings_id) + _lp(sender) + _lp(recipient)


def seal_package(private: bytes, recipient_public: bytes, settings_id: str, sender: str, recipient: str, package: bytes) -> bytes:
    """AEAD-encrypt a key package to one recipient (static-static X25519: only the
    two ends can open it, and the recipient knows it came from ``sender``'s key)."""
    return P.wrap(private, recipient_public, _WRAP_INFO, package, _ad(settings_id, sender, recipient))


def open_package(private: bytes, sender_public: bytes, settings_id: str, sender: str, recipient: str, sealed: bytes) -> bytes:
    try:
        return P.unwrap(private, sender_public, _WRAP_INFO, sealed, _ad(settings_id, sender, recipient))
    except ProtocolError:
        raise ProtocolError(f"key package from {sender!r} fails authentication") from None


def decryptor_for(holders: tuple[str, ...], fingerprint_: str, round_: int) -> str:
    """The one key holder that may decrypt round ``round_``'s aggregate. Every holder
    computes the same answer from the pinned key set, so a server cannot collect two
    decryptions of different subsets of one round from two holders."""
    digest = hashlib.sha256(b"securefl-ckks-decryptor-v1" + fingerprint_.encode() + struct.pack("<Q", round_)).digest()
    return holders[int.from_bytes(digest[:8], "little") % len(holders)]
