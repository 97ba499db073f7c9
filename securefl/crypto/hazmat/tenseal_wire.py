"""Receipt check of a serialized TenSEAL ``CKKSTensorProto`` before TenSEAL parses it.

TenSEAL's C++ loader trusts the protobuf's structure: a two-byte message holding
an empty ciphertext field (``b"\\n\\x00"``) crashes the whole process with a
segmentation fault, which no ``except`` can contain. So a ciphertext from another
party reaches TenSEAL only in the exact layout :func:`securefl.crypto.hazmat.ckks_seal.encrypt`
writes; anything else raises :class:`~securefl.exceptions.CiphertextRejectedError`.
:func:`pack_tensor` writes that layout around SEAL ciphertexts saved outside TenSEAL
(seeded symmetric ciphertexts, which TenSEAL's own encryption cannot produce).
"""

from __future__ import annotations

import struct
from typing import Any

from securefl.crypto.hazmat.ckks import CKKSParams
from securefl.exceptions import CiphertextRejectedError

__all__ = ["check_tensor_encoding", "pack_tensor", "tensor_fields"]

_SEAL_MAGIC = b"\x5e\xa1"
_SEAL_HEADER = struct.Struct("<2sBBBBHQ")  # magic, header size, major, minor, compression, reserved, size


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def pack_tensor(ciphertexts: list[bytes], scale: float, slots: int) -> bytes:
    """A TenSEAL ``CKKSTensorProto`` of ``k`` batched SEAL ciphertexts, field for
    field as TenSEAL writes it: shape ``[k]`` (absent for one), the ciphertexts, the
    scale and the batch size (SEAL's loader expands a seeded ciphertext's seed)."""
    out = []
    if len(ciphertexts) > 1:
        shape = _put_varint(len(ciphertexts))
        out += [b"\x0a", _put_varint(len(shape)), shape]
    for ct in ciphertexts:
        out += [b"\x12", _put_varint(len(ct)), ct]
    out += [b"\x19", struct.pack("<d", scale), b"\x20", _put_varint(slots)]
    return b"".join(out)


def _varint(data: bytes | memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise CiphertextRejectedError("ciphertext rejected on receipt: malformed tensor encoding")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def tensor_fields(data: bytes | memoryview) -> list[tuple[int, int, Any]]:
    """The (field, wire type, value) sequence of a protobuf message; only the wire
    types TenSEAL writes (varint, 64-bit, length-delimited). Values are views of
    ``data`` when it is a memoryview (no copy of the ciphertexts)."""
    out, at = [], 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wtype = key >> 3, key & 7
        if wtype == 0:
            value, at = _varint(data, at)
        elif wtype == 1:
            if at + 8 > len(data):
                raise CiphertextRejectedError("ciphertext rejected on receipt: tensor encoding is truncated")
            value, at = data[at : at + 8], at + 8
        elif wtype == 2:
            n, at = _varint(data, at)
            if at + n > len(data):
                raise CiphertextRejectedError("ciphertext rejected on receipt: tensor encoding is truncated")
            value, at = data[at : at + n], at + n
        else:
            raise CiphertextRejectedError(f"ciphertext rejected on receipt: unexpected wire type {wtype}")
        out.append((number, wtype, value))
    return out


def check_tensor_encoding(data: bytes, params: CKKSParams, k: int) -> None:
    """Check a TenSEAL CKKSTensorProto field by field before TenSEAL parses it: its
    C++ loader trusts the structure (a two-byte message with an empty field crashes
    the process), so only the exact layout :func:`encrypt` writes reaches it: shape
    ``[k]`` (absent for one ciphertext), ``k`` SEAL ciphertexts whose own headers
    declare their lengths, the agreed scale and the batch size of ``slots``."""
    fields = tensor_fields(memoryview(data))
    shape = [bytes(v) for f, t, v in fields if f == 1 and t == 2]  # packed varints, as TenSEAL writes
    cts = [v for f, t, v in fields if f == 2 and t == 2]
    scales = [v for f, t, v in fields if f == 3 and t == 1]
    batch = [v for f, t, v in fields if f == 4 and t == 0]
    expected = [] if k == 1 else [struct.pack("B", k)] if k < 128 else None
    if len(fields) != len(shape) + len(cts) + len(scales) + len(batch) or (expected is not None and shape != expected):
        raise CiphertextRejectedError("ciphertext rejected on receipt: unexpected tensor fields or shape")
    if expected is None and (len(shape) != 1 or _varint(shape[0], 0) != (k, len(shape[0]))):
        raise CiphertextRejectedError("ciphertext rejected on receipt: unexpected tensor shape")
    if len(cts) != k or len(scales) != 1 or batch != [params.slots]:
        raise CiphertextRejectedError(
            f"ciphertext rejected on receipt: {len(cts)} ciphertexts, expected {k} with one scale and batch size"
        )
    if struct.unpack("<d", scales[0])[0] != 2.0**params.scale_bits:
        raise CiphertextRejectedError("ciphertext rejected on receipt: not at the agreed scale")
    for ct in cts:
        if len(ct) < _SEAL_HEADER.size:
            raise CiphertextRejectedError("ciphertext rejected on receipt: truncated SEAL ciphertext")
        magic, hsize, major, _minor, _compr, _res, size = _SEAL_HEADER.unpack_from(ct)
        if magic != _SEAL_MAGIC or hsize != _SEAL_HEADER.size or major != 4 or size != len(ct):
            raise CiphertextRejectedError("ciphertext rejected on receipt: malformed SEAL ciphertext header")
