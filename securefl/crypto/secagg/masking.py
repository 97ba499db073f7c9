"""Adding many PRG masks to one vector (the client's stage 3 of Bonawitz et al.,
CCS 2017; the server's unmasking): the same masks, bit for bit, as
:func:`securefl.crypto.primitives.add_mask` applied one after another, in a
cache-friendly order.

Mask after mask over a vector of megabytes streams the whole accumulator through
memory once per mask. Here the accumulator is walked once, chunk by chunk; for each
chunk every mask's AES-256-CTR stream (one encryptor per mask, each advancing its
own counter) writes the next keystream bytes into one small buffer, which is added
(or subtracted) while both are still in cache.

The keystream comes from OpenSSL's AES-GCM encryptor of zeros under a zero 96-bit IV,
the tag discarded: GCM's counter blocks are ``IV || 2``, ``IV || 3``, ... (NIST SP
800-38D, section 7.1), i.e. blocks 2, 3, ... of the CTR stream from counter 0, and
OpenSSL's stitched AES-NI/VAES GCM code produces them about twice as fast as its CTR
code (measured in the README). The first two blocks come from CTR itself. The 32-bit
GCM counter would wrap after 2^32 blocks (64 GiB per mask), far above any vector.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.crypto import primitives as P
from securefl.exceptions import CryptoUsageError, ProtocolError

#: keystream bytes per mask per step: the accumulator chunk, the keystream and the zeros
#: it encrypts fit in L2 (256 KiB measured 3% faster than 128 KiB at n=100, d=1M)
CHUNK = 1 << 18
#: the HKDF label of :func:`securefl.crypto.primitives.add_mask` (the same keys)
_LABEL = b"securefl-secagg-mask-v1"
_DTYPES = {np.dtype("<u4"), np.dtype("<u8")}
#: keystream bytes before GCM's first counter block (CTR counters 0 and 1)
_HEAD = 32
_SCRATCH = threading.local()


def scratch(count: int, dtype: Any) -> np.ndarray:
    """An uninitialised ``count``-element vector (like :func:`numpy.empty`) in a buffer
    kept per thread and reused by the next call: a fresh vector of megabytes costs
    a page fault per 4 KiB page and an unmap each call (several ms of system CPU at
    d = 1M). The caller must be done with it before its thread calls again."""
    nbytes = count * np.dtype(dtype).itemsize
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = _SCRATCH.buf = np.empty(max(nbytes, 1), dtype=np.uint8)
    return buf[:nbytes].view(dtype)


def agree_many(private: bytes, peer_publics: Sequence[bytes], info: bytes) -> list[bytes]:
    """``[primitives.agree(private, pk, info) for pk in peer_publics]`` with the
    private key parsed once (parsing an X25519 key costs about as much as the
    exchange itself)."""
    try:
        key = X25519PrivateKey.from_private_bytes(private)
        return [P.hkdf(key.exchange(X25519PublicKey.from_public_bytes(pk)), info) for pk in peer_publics]
    except ValueError as exc:  # wrong length or a low-order point
        raise ProtocolError(f"invalid X25519 key: {exc}") from None


def _stream(seed: bytes, info: bytes) -> tuple[bytes, Any]:
    """The mask's AES-256-CTR keystream (counter 0 upward) as its first
    :data:`_HEAD` bytes and a GCM encryptor whose output on zeros continues it."""
    key = P.hkdf(seed, _LABEL + info)
    head = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(_HEAD))
    return head, Cipher(algorithms.AES(key), modes.GCM(bytes(12))).encryptor()


def add_masks(acc: np.ndarray, masks: Sequence[tuple[bytes, bytes, bool]]) -> None:
    """``acc += sum of +-mask(seed, info)`` modulo 2^bits, in place, for each
    ``(seed, info, subtract)`` in ``masks``: equal to calling
    :func:`~securefl.crypto.primitives.add_mask` once per entry."""
    if acc.dtype not in _DTYPES or not acc.flags.c_contiguous or not acc.flags.writeable:
        raise CryptoUsageError("acc must be a writeable, contiguous little-endian uint32 or uint64 vector")
    streams = [(*_stream(seed, info), subtract) for seed, info, subtract in masks]
    if not streams or acc.size == 0:
        return
    zeros = bytes(min(CHUNK, acc.nbytes))
    out = bytearray(len(zeros) + 16)
    rest = memoryview(out)[_HEAD:]
    view = np.frombuffer(out, dtype=acc.dtype)
    step = len(zeros) // acc.itemsize
    for start in range(0, acc.size, step):
        stop = min(start + step, acc.size)
        nbytes = (stop - start) * acc.itemsize
        data = zeros if nbytes == len(zeros) else zeros[:nbytes]
        seg, ks = acc[start:stop], view[: stop - start]
        for head, enc, subtract in streams:
            if start:
                enc.update_into(data, out)
            else:  # the first chunk: CTR blocks 0 and 1, then the GCM stream
                k = min(_HEAD, nbytes)
                out[:k] = head[:k]
                if nbytes > k:
                    enc.update_into(memoryview(data)[k:], rest)
            (np.subtract if subtract else np.add)(seg, ks, out=seg)
