"""Adding many PRG masks to one vector (the client's stage 3 of Bonawitz et al.,
CCS 2017; the server's unmasking): the same masks, bit for bit, as
:func:`securefl.crypto.primitives.add_mask` applied one after another, in a
cache-friendly order.

Mask after mask over a vector of megabytes streams the whole accumulator through
memory once per mask. Here the accumulator is walked once, chunk by chunk; for each
chunk every mask's AES-256-CTR stream (one encryptor per mask, each advancing its
own counter) writes the next keystream bytes into one small buffer, which is added
(or subtracted) while both are still in cache.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.crypto import primitives as P
from securefl.exceptions import CryptoUsageError, ProtocolError

#: keystream bytes per mask per step: the accumulator chunk and the keystream fit in L2
CHUNK = 1 << 17
#: the HKDF label of :func:`securefl.crypto.primitives.add_mask` (the same keys)
_LABEL = b"securefl-secagg-mask-v1"
_DTYPES = {np.dtype("<u4"), np.dtype("<u8")}


def agree_many(private: bytes, peer_publics: Sequence[bytes], info: bytes) -> list[bytes]:
    """``[primitives.agree(private, pk, info) for pk in peer_publics]`` with the
    private key parsed once (parsing an X25519 key costs about as much as the
    exchange itself)."""
    try:
        key = X25519PrivateKey.from_private_bytes(private)
        return [P.hkdf(key.exchange(X25519PublicKey.from_public_bytes(pk)), info) for pk in peer_publics]
    except ValueError as exc:  # wrong length or a low-order point
        raise ProtocolError(f"invalid X25519 key: {exc}") from None


def add_masks(acc: np.ndarray, masks: Sequence[tuple[bytes, bytes, bool]]) -> None:
    """``acc += sum of +-mask(seed, info)`` modulo 2^bits, in place, for each
    ``(seed, info, subtract)`` in ``masks``: equal to calling
    :func:`~securefl.crypto.primitives.add_mask` once per entry."""
    if acc.dtype not in _DTYPES or not acc.flags.c_contiguous or not acc.flags.writeable:
        raise CryptoUsageError("acc must be a writeable, contiguous little-endian uint32 or uint64 vector")
    streams = [
        (Cipher(algorithms.AES(P.hkdf(seed, _LABEL + info)), modes.CTR(bytes(16))).encryptor(), subtract)
        for seed, info, subtract in masks
    ]
    if not streams or acc.size == 0:
        return
    zeros = bytes(min(CHUNK, acc.nbytes))
    out = bytearray(len(zeros) + 16)
    view = np.frombuffer(out, dtype=acc.dtype)
    step = len(zeros) // acc.itemsize
    for start in range(0, acc.size, step):
        stop = min(start + step, acc.size)
        nbytes = (stop - start) * acc.itemsize
        data = zeros if nbytes == len(zeros) else zeros[:nbytes]
        seg, ks = acc[start:stop], view[: stop - start]
        for enc, subtract in streams:
            enc.update_into(data, out)
            (np.subtract if subtract else np.add)(seg, ks, out=seg)
