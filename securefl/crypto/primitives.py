"""The raw primitives of secure aggregation, all from the ``cryptography`` package.

* key agreement: X25519, with the shared secret run through HKDF-SHA256 and a
  context label, so one Diffie-Hellman value never keys two different things;
* signatures: Ed25519 (the malicious-server option of Bonawitz et al., CCS 2017);
* authenticated encryption: ChaCha20-Poly1305 with a random 96-bit nonce and
  associated data that binds the round, the sender and the recipient;
* the one key-wrap: X25519 agreement + HKDF + ChaCha20-Poly1305 (:func:`wrap`,
  :func:`unwrap`), which seals CKKS key packages and secure-aggregation shares;
* the mask PRG: AES-256 in counter mode keyed by HKDF output, expanded into a
  vector of uniform integers modulo 2^32 or 2^64;
* a keyed ChaCha20 keystream (:func:`keystream`, :func:`uniforms`) for secret
  values both ends derive from one key (the CKKS MAC's vectors and offsets).

Nothing here uses numpy or Python ``random`` for secret material.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefl.exceptions import CryptoUsageError, ProtocolError

KEY_BYTES = 32
NONCE_BYTES = 12
_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NOENC = serialization.NoEncryption()
_DTYPES = {32: np.dtype("<u4"), 64: np.dtype("<u8")}


def hkdf(secret: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 with a fixed protocol salt."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=b"securefl-secagg-v1", info=info).derive(secret)


# ------------------------------------------------------------------ X25519
def x25519_keypair() -> tuple[bytes, bytes]:
    """A fresh (private, public) X25519 pair as raw 32-byte strings."""
    sk = X25519PrivateKey.generate()
    return sk.private_bytes(_RAW, _RAW_PRIV, _NOENC), sk.public_key().public_bytes(_RAW, _RAW_PUB)


def x25519_public(private: bytes) -> bytes:
    """The public key of a raw private key (used to check a reconstructed key)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(_RAW, _RAW_PUB)


def agree(private: bytes, peer_public: bytes, info: bytes) -> bytes:
    """A 32-byte key shared by the two ends: HKDF(X25519(private, peer_public), info)."""
    try:
        peer = X25519PublicKey.from_public_bytes(peer_public)
        raw = X25519PrivateKey.from_private_bytes(private).exchange(peer)
    except ValueError as exc:  # wrong length or a low-order point
        raise ProtocolError(f"invalid X25519 key: {exc}") from None
    return hkdf(raw, info)


# ------------------------------------------------------------------ Ed25519
def ed25519_keypair() -> tuple[bytes, bytes]:
    """A fresh (signing, verification) Ed25519 pair as raw 32-byte strings."""
    sk = Ed25519PrivateKey.generate()
    return sk.private_bytes(_RAW, _RAW_PRIV, _NOENC), sk.public_key().public_bytes(_RAW, _RAW_PUB)


def sign(signing_key: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(signing_key).sign(message)


def verify(verification_key: bytes, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(verification_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# ------------------------------------------------------------------ AEAD
def associated_data(round_: int, sender: str, recipient: str) -> bytes:
    """What every share ciphertext is bound to (length-prefixed, unambiguous)."""
    if not isinstance(round_, int) or isinstance(round_, bool) or not 0 <= round_ < 2**64:
        raise ProtocolError(f"round {round_!r} is not an unsigned 64-bit integer")
    s, r = sender.encode(), recipient.encode()
    return b"securefl-secagg-share-v1" + struct.pack("<QI", round_, len(s)) + s + struct.pack("<I", len(r)) + r


def seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """ChaCha20-Poly1305 with a random nonce; returns nonce || ciphertext || tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def open_(key: bytes, blob: bytes, ad: bytes) -> bytes:
    """Decrypt and authenticate :func:`seal`'s output; :class:`ProtocolError` if it fails."""
    if len(blob) < NONCE_BYTES + 16:
        raise ProtocolError("share ciphertext is too short")
    try:
        return ChaCha20Poly1305(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ad)
    except InvalidTag:
        raise ProtocolError("share ciphertext failed authentication (wrong round, sender, recipient or key)") from None


def wrap(private: bytes, peer_public: bytes, info: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """The key-wrap: seal ``plaintext`` to the holder of ``peer_public`` under the
    X25519 secret agreed with ``private`` (through HKDF with ``info``), binding ``ad``."""
    return seal(agree(private, peer_public, info), plaintext, ad)


def unwrap(private: bytes, peer_public: bytes, info: bytes, blob: bytes, ad: bytes) -> bytes:
    """Open :func:`wrap`'s output; :class:`ProtocolError` if it fails authentication."""
    return open_(agree(private, peer_public, info), blob, ad)


# ------------------------------------------------------------------ keyed streams
def keystream(key: bytes, n: int) -> bytes:
    """The first ``n`` bytes of the ChaCha20 keystream of ``key`` (nonce and counter
    zero): a PRG for values both ends derive from one secret key, each key used
    for one purpose only."""
    if len(key) != KEY_BYTES:
        raise CryptoUsageError("a keystream key must be 32 bytes")
    return Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor().update(bytes(n))


def uniforms(key: bytes, n: int) -> np.ndarray:
    """``n`` float64 uniforms in (0, 1) from :func:`keystream` (52 bits each,
    ``(k + 0.5) * 2^-52``, exact in float64)."""
    raw = np.frombuffer(keystream(key, 8 * n), dtype="<u8")
    return ((raw >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52


# ------------------------------------------------------------------ mask PRG
def mask(seed: bytes, length: int, bits: int, info: bytes) -> np.ndarray:
    """``length`` uniform integers modulo ``2^bits`` from AES-256-CTR keyed by
    HKDF(seed, info). The counter block starts at zero: every key is used once.
    The array is read-only (it views the keystream without a copy)."""
    dtype = _DTYPES[bits]
    key = hkdf(seed, b"securefl-secagg-mask-v1" + info)
    enc = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()
    stream = enc.update(bytes(length * dtype.itemsize))
    return np.frombuffer(stream, dtype=dtype)


_CHUNK = 1 << 18  # 256 KiB of keystream at a time: stays in cache between AES and the add


def add_mask(acc: np.ndarray, seed: bytes, info: bytes, *, subtract: bool = False) -> None:
    """``acc += mask(seed, len(acc), bits, info)`` (or ``-=``) in place, modulo 2^bits,
    streaming the keystream in cache-sized chunks instead of materialising it."""
    bits = acc.dtype.itemsize * 8
    if acc.dtype != _DTYPES.get(bits) or not acc.flags.c_contiguous or not acc.flags.writeable:
        raise CryptoUsageError("acc must be a writeable, contiguous little-endian uint32 or uint64 vector")
    key = hkdf(seed, b"securefl-secagg-mask-v1" + info)
    enc = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()
    total = acc.nbytes
    zeros = bytes(min(_CHUNK, total))
    out = bytearray(len(zeros) + 16)
    view = np.frombuffer(out, dtype=acc.dtype)
    op = np.subtract if subtract else np.add
    step = len(zeros) // acc.itemsize
    for start in range(0, acc.size, step):
        stop = min(start + step, acc.size)
        nbytes = (stop - start) * acc.itemsize
        enc.update_into(zeros if nbytes == len(zeros) else zeros[:nbytes], out)
        seg = acc[start:stop]
        op(seg, view[: stop - start], out=seg)
