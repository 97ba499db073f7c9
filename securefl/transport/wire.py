"""Versioned, length-checked messages.

Layout (little-endian)::

    magic   4 bytes  b"SFLW"
    version 1 byte   (1)
    kind    1 byte   (see Kind)
    hlen    4 bytes  header length
    plen    8 bytes  payload length
    header  hlen     UTF-8 JSON object
    payload plen     raw bytes (float32 vectors for plaintext updates)
    digest  32 bytes SHA-256 over everything before it

The digest catches truncation and accidental corruption; it is not
authentication (protections add their own). Every check failure raises
:class:`~securefl.exceptions.WireFormatError` and nothing from the message is used.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from securefl.exceptions import WireFormatError

MAGIC = b"SFLW"
VERSION = 1
_FIXED = struct.Struct("<4sBBIQ")
_DIGEST = 32
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 1 << 34
#: default limit on a whole message :func:`decode` accepts (header, payload, framing);
#: a caller that knows the model dimension passes a tighter ``max_size`` (see :func:`size_limit`)
MAX_MESSAGE = 1 << 31


class Kind(enum.IntEnum):
    GLOBAL_MODEL = 1
    CLIENT_UPDATE = 2
    REFUSAL = 3
    # CKKS aggregation (securefl.protections.ckks), 10-19
    CKKS_HELLO = 10
    CKKS_ADVERT = 11
    CKKS_KEYGEN = 12
    CKKS_KEYGEN_REPLY = 13
    CKKS_KEY_DELIVERY = 14
    CKKS_KEY_ACK = 15
    CKKS_DECRYPT = 16
    CKKS_AGGREGATE = 17
    CKKS_REJECT = 18
    # secure aggregation (securefl.crypto.secagg), 20-39; 20 and 21 (identity keys
    # collected by the server) were retired when identities moved to a pinned roster
    SECAGG_ADVERTISE_REQUEST = 22
    SECAGG_KEYS = 23
    SECAGG_SHARE_REQUEST = 24
    SECAGG_SHARES = 25
    SECAGG_MASKED_INPUT = 26
    SECAGG_CONSISTENCY_REQUEST = 27
    SECAGG_SIGNATURE = 28
    SECAGG_UNMASK_REQUEST = 29
    SECAGG_UNMASK = 30


@dataclass(frozen=True)
class Message:
    kind: Kind
    header: dict[str, Any]
    payload: bytes


def encode(kind: Kind, header: dict[str, Any], payload: bytes = b"") -> bytes:
    """Serialize one message."""
    hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(hb) > MAX_HEADER or len(payload) > MAX_PAYLOAD:
        raise WireFormatError("message too large")
    head = _FIXED.pack(MAGIC, VERSION, int(kind), len(hb), len(payload)) + hb
    digest = hashlib.sha256(head)
    digest.update(payload)
    return b"".join((head, payload, digest.digest()))  # one copy of a large payload, not two


def size_limit(dim: int, *, per_coordinate: int = 64, overhead: int = 1 << 22) -> int:
    """A message limit for a model of ``dim`` coordinates: ``per_coordinate`` bytes each
    (a float32 is 4, a CKKS slot far less, a masked ring element 8) plus ``overhead``."""
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
        raise WireFormatError(f"model dimension must be a non-negative integer, got {dim!r}")
    return min(MAX_MESSAGE, overhead + per_coordinate * dim)


def decode(data: bytes, *, expect: Kind | None = None, max_size: int | None = None) -> Message:
    """Parse and check one message; refuse one over ``max_size`` bytes
    (:data:`MAX_MESSAGE` by default) before reading any of it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireFormatError(f"expected bytes, got {type(data).__name__}")
    limit = MAX_MESSAGE if max_size is None else max_size
    if len(data) > limit:
        raise WireFormatError(f"message of {len(data)} bytes exceeds the limit of {limit} bytes")
    data = bytes(data)
    if len(data) < _FIXED.size + _DIGEST:
        raise WireFormatError(f"message of {len(data)} bytes is shorter than the fixed header")
    magic, version, kind, hlen, plen = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise WireFormatError("bad magic: not a securefl message")
    if version != VERSION:
        raise WireFormatError(f"unsupported message version {version}")
    try:
        kind = Kind(kind)
    except ValueError:
        raise WireFormatError(f"unknown message kind {kind}") from None
    if expect is not None and kind != expect:
        raise WireFormatError(f"expected a {expect.name} message, got {kind.name}")
    if hlen > MAX_HEADER or plen > MAX_PAYLOAD:
        raise WireFormatError("declared lengths exceed the limits")
    expected = _FIXED.size + hlen + plen + _DIGEST
    if len(data) != expected:
        raise WireFormatError(f"length mismatch: declared {expected} bytes, got {len(data)}")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise WireFormatError("digest mismatch: message corrupted")
    try:
        header = json.loads(body[_FIXED.size : _FIXED.size + hlen].decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireFormatError(f"header is not JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise WireFormatError("header must be a JSON object")
    return Message(kind, header, body[_FIXED.size + hlen :])


def vector_to_bytes(vector: torch.Tensor) -> bytes:
    """A 1-D tensor as little-endian float32 bytes."""
    return vector.detach().to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()


def bytes_to_vector(payload: bytes, length: int) -> torch.Tensor:
    """Inverse of :func:`vector_to_bytes`; checks the length and finiteness."""
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise WireFormatError(f"vector length expected a non-negative integer, got {length!r}")
    if len(payload) != 4 * length:
        raise WireFormatError(f"vector payload has {len(payload)} bytes, expected {4 * length}")
    arr = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    if not np.isfinite(arr).all():
        raise WireFormatError("vector payload contains NaN or infinity")
    return torch.from_numpy(arr)
