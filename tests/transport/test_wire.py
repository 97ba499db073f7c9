"""Wire format: round trips, and every malformed message raises WireFormatError."""

from __future__ import annotations

import hashlib
import json
import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.exceptions import WireFormatError
from securefl.transport import wire
from securefl.transport.wire import Kind, Message, bytes_to_vector, decode, encode, vector_to_bytes

FIXED = 4 + 1 + 1 + 4 + 8  # magic, version, kind, hlen, plen

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
headers = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
kinds = st.sampled_from(list(Kind))
payloads = st.binary(max_size=300)


def _reseal(body: bytes) -> bytes:
    """Attach a correct digest so that only the check under test can fail."""
    return body + hashlib.sha256(body).digest()


def _raw(magic=wire.MAGIC, version=wire.VERSION, kind=int(Kind.CLIENT_UPDATE), header=b"{}", payload=b"", hlen=None, plen=None):
    fixed = struct.pack(
        "<4sBBIQ", magic, version, kind, len(header) if hlen is None else hlen, len(payload) if plen is None else plen
    )
    return _reseal(fixed + header + payload)


@pytest.fixture
def message():
    header = {"round": 3, "dim": 4, "client": "client-7", "aux": {"weight": 12.0}}
    return encode(Kind.CLIENT_UPDATE, header, vector_to_bytes(torch.tensor([1.0, -2.5, 3.25, 0.0])))


# ------------------------------------------------------------------ round trips
@settings(max_examples=100, deadline=None)
@given(kind=kinds, header=headers, payload=payloads)
def test_encode_decode_round_trip(kind, header, payload):
    data = encode(kind, header, payload)
    assert isinstance(data, bytes)
    msg = decode(data)
    assert isinstance(msg, Message)
    assert msg.kind == kind and isinstance(msg.kind, Kind)
    assert msg.header == header
    assert msg.payload == payload
    assert decode(data, expect=kind) == msg
    assert decode(bytearray(data)) == msg and decode(memoryview(data)) == msg


@settings(max_examples=50, deadline=None)
@given(kind=kinds, header=headers, payload=payloads)
def test_layout(kind, header, payload):
    data = encode(kind, header, payload)
    hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert data[:4] == b"SFLW" and data[4] == 1 and data[5] == int(kind)
    assert struct.unpack_from("<IQ", data, 6) == (len(hb), len(payload))
    assert len(data) == FIXED + len(hb) + len(payload) + 32
    assert data[FIXED : FIXED + len(hb)] == hb
    assert data[FIXED + len(hb) : -32] == payload
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()


def test_encoding_is_canonical():
    a = encode(Kind.GLOBAL_MODEL, {"b": 1, "a": 2})
    b = encode(Kind.GLOBAL_MODEL, {"a": 2, "b": 1})
    assert a == b


finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(finite_f32, max_size=200))
def test_vector_round_trip(values):
    vec = torch.tensor(values, dtype=torch.float32)
    payload = vector_to_bytes(vec)
    assert len(payload) == 4 * len(values)
    back = bytes_to_vector(payload, len(values))
    assert back.dtype == torch.float32 and back.shape == (len(values),)
    assert torch.equal(back, vec)
    # and through a whole message
    msg = decode(encode(Kind.GLOBAL_MODEL, {"dim": len(values)}, payload))
    assert torch.equal(bytes_to_vector(msg.payload, msg.header["dim"]), vec)


def test_vector_bytes_are_little_endian_float32():
    vec = torch.tensor([1.0, -2.0, 0.1], dtype=torch.float64, requires_grad=True)
    assert vector_to_bytes(vec) == struct.pack("<3f", 1.0, -2.0, 0.1)
    back = bytes_to_vector(struct.pack("<2f", 0.5, 7.0), 2)
    assert back.tolist() == [0.5, 7.0]
    back.add_(1.0)  # the result is writable and owns its memory


# ------------------------------------------------------------------ corruption
def _corruptions(data: bytes, positions, masks=(0x01, 0x80, 0xFF)):
    for pos in positions:
        for mask in masks:
            bad = bytearray(data)
            bad[pos] ^= mask
            yield pos, bytes(bad)


def test_every_single_byte_corruption_is_rejected(message):
    for pos, bad in _corruptions(message, range(len(message))):
        with pytest.raises(WireFormatError):
            decode(bad)
        with pytest.raises(WireFormatError):
            decode(bad, expect=Kind.CLIENT_UPDATE)


@settings(max_examples=150, deadline=None)
@given(
    kind=kinds,
    header=headers,
    payload=payloads,
    where=st.floats(0, 1, exclude_max=True),
    mask=st.integers(1, 255),
)
def test_random_single_byte_corruption_is_rejected(kind, header, payload, where, mask):
    data = bytearray(encode(kind, header, payload))
    pos = int(where * len(data))
    data[pos] ^= mask
    with pytest.raises(WireFormatError):
        decode(bytes(data))


def test_every_truncation_is_rejected(message):
    for n in range(len(message)):
        with pytest.raises(WireFormatError):
            decode(message[:n])


@settings(max_examples=60, deadline=None)
@given(kind=kinds, header=headers, payload=payloads, extra=st.binary(min_size=1, max_size=40))
def test_truncation_and_appended_bytes_rejected(kind, header, payload, extra):
    data = encode(kind, header, payload)
    with pytest.raises(WireFormatError):
        decode(data[: len(data) - len(extra)])
    with pytest.raises(WireFormatError):
        decode(data + extra)
    with pytest.raises(WireFormatError):
        decode(data[:-1])


@pytest.mark.parametrize("byte", [0, 1, 0xFF])
def test_appended_byte_rejected(message, byte):
    with pytest.raises(WireFormatError, match="length"):
        decode(message + bytes([byte]))


def test_empty_and_non_bytes_rejected():
    with pytest.raises(WireFormatError):
        decode(b"")
    for bad in ("SFLW", None, 42, [1, 2, 3]):
        with pytest.raises(WireFormatError):
            decode(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("magic", [b"SFLX", b"\x00\x00\x00\x00", b"WLFS", b"sflw"])
def test_wrong_magic_rejected_even_with_valid_digest(magic):
    assert decode(_raw()).header == {}
    with pytest.raises(WireFormatError, match="magic"):
        decode(_raw(magic=magic))


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version_rejected_even_with_valid_digest(version):
    with pytest.raises(WireFormatError, match="version"):
        decode(_raw(version=version))


@pytest.mark.parametrize("kind", [0, 4, 255])
def test_unknown_kind_rejected_even_with_valid_digest(kind):
    with pytest.raises(WireFormatError, match="kind"):
        decode(_raw(kind=kind))


@pytest.mark.parametrize("sent", list(Kind))
@pytest.mark.parametrize("expected", list(Kind))
def test_wrong_expected_kind_rejected(sent, expected):
    data = encode(sent, {"x": 1}, b"abc")
    if sent == expected:
        assert decode(data, expect=expected).kind == sent
    else:
        with pytest.raises(WireFormatError, match=expected.name):
            decode(data, expect=expected)


def test_declared_lengths_must_match_with_valid_digest():
    with pytest.raises(WireFormatError, match="length"):
        decode(_raw(header=b"{}", hlen=3))
    with pytest.raises(WireFormatError, match="length"):
        decode(_raw(payload=b"abcd", plen=3))
    with pytest.raises(WireFormatError, match="limits"):
        decode(_raw(hlen=wire.MAX_HEADER + 1))
    with pytest.raises(WireFormatError, match="limits"):
        decode(_raw(plen=wire.MAX_PAYLOAD + 1))
    with pytest.raises(WireFormatError):
        decode(_raw(plen=2**64 - 1))


@pytest.mark.parametrize(
    "header",
    [b"not json", b"[1, 2]", b'"str"', b"null", b"3", b"\xff\xfe", b'{"a": 1', b""],
    ids=repr,
)
def test_bad_header_rejected_even_with_valid_digest(header):
    with pytest.raises(WireFormatError, match="header"):
        decode(_raw(header=header))


def test_encode_rejects_oversized_header(monkeypatch):
    monkeypatch.setattr(wire, "MAX_HEADER", 16)
    with pytest.raises(WireFormatError, match="too large"):
        encode(Kind.REFUSAL, {"reason": "x" * 32})


def test_deeply_nested_header_rejected():
    with pytest.raises(WireFormatError):
        decode(_raw(header=b"[" * 100_000))


# ------------------------------------------------------------------ vector payloads
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("pos", [0, 2, 4])
def test_non_finite_vector_payload_rejected(bad, pos):
    values = [0.5, 1.0, -2.0, 3.0, 4.0]
    values[pos] = bad
    payload = struct.pack("<5f", *values)
    # it survives the envelope (the digest covers raw bytes) but not decoding as a vector
    msg = decode(encode(Kind.CLIENT_UPDATE, {"dim": 5}, payload))
    with pytest.raises(WireFormatError, match="NaN or infinity"):
        bytes_to_vector(msg.payload, 5)
    with pytest.raises(WireFormatError):
        bytes_to_vector(vector_to_bytes(torch.tensor(values)), 5)


def test_nan_payload_bit_patterns_rejected():
    # a quiet NaN, a signalling NaN and a negative NaN
    for bits in (0x7FC00000, 0x7F800001, 0xFFC00000):
        payload = struct.pack("<f", 1.0) + struct.pack("<I", bits)
        with pytest.raises(WireFormatError):
            bytes_to_vector(payload, 2)


@pytest.mark.parametrize("nbytes,length", [(16, 3), (16, 5), (15, 4), (17, 4), (0, 1), (4, 0), (16, -4)])
def test_wrong_length_vector_payload_rejected(nbytes, length):
    payload = np.ones(nbytes // 4, dtype="<f4").tobytes() + b"\x00" * (nbytes % 4)
    assert len(payload) == nbytes
    with pytest.raises(WireFormatError, match="expected"):
        bytes_to_vector(payload, length)


def test_empty_vector_ok():
    assert bytes_to_vector(b"", 0).shape == (0,)
    assert vector_to_bytes(torch.zeros(0)) == b""
