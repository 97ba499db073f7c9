"""Fuzz targets: the wire format (every message any party receives goes through it)."""

from __future__ import annotations

import struct

import torch
from hypothesis import given
from hypothesis import strategies as st

from securefl.transport import wire
from tests.fuzz.harness import contained, fuzz_settings, json_values, mutate_bytes, mutate_message

VALID = [
    wire.encode(wire.Kind.GLOBAL_MODEL, {"round": 1, "dim": 3}, wire.vector_to_bytes(torch.ones(3))),
    wire.encode(wire.Kind.CLIENT_UPDATE, {"round": 2, "client": "c0", "dim": 2}, b"\x00" * 8),
    wire.encode(wire.Kind.SECAGG_SHARES, {"round": 1, "shares": {"c1": "AAAA"}}),
]


@fuzz_settings(4000)
@given(st.binary(max_size=128))
def test_decode_random_bytes(blob):
    contained("wire.decode random bytes", lambda: wire.decode(blob))


@fuzz_settings(1000)
@given(st.data())
def test_decode_mutated_messages(data):
    raw = data.draw(st.sampled_from(VALID))
    mutated = mutate_message(data, raw, ["round", "dim", "client"])
    contained("wire.decode mutated", lambda: wire.decode(mutated, expect=data.draw(st.sampled_from([None, *wire.Kind]))))


@fuzz_settings(1000)
@given(st.data())
def test_decode_forged_fixed_header(data):
    """Lengths, version, kind and magic set to anything, digest recomputed."""
    raw = data.draw(st.sampled_from(VALID))
    magic = data.draw(st.sampled_from([wire.MAGIC, b"SFLX"]))
    version = data.draw(st.integers(0, 255))
    kind = data.draw(st.integers(0, 255))
    hlen = data.draw(st.integers(0, 2**32 - 1))
    plen = data.draw(st.integers(0, 2**64 - 1))
    body = struct.pack("<4sBBIQ", magic, version, kind, hlen, plen) + raw[18:-32]
    body = mutate_bytes(data, body) if data.draw(st.booleans()) else body
    import hashlib

    contained("wire.decode forged lengths", lambda: wire.decode(body + hashlib.sha256(body).digest()))


@fuzz_settings(500)
@given(st.binary(max_size=64), st.one_of(st.integers(-5, 20), json_values))
def test_bytes_to_vector(payload, length):
    contained("wire.bytes_to_vector", lambda: wire.bytes_to_vector(payload, length))


@fuzz_settings(300)
@given(st.sampled_from(list(wire.Kind)), st.dictionaries(st.text(max_size=5), json_values, max_size=4), st.binary(max_size=32))
def test_encode_decode_round_trip(kind, header, payload):
    raw = contained("wire.encode/decode round trip", lambda: wire.encode(kind, header, payload))
    if isinstance(raw, bytes):
        msg = wire.decode(raw)
        assert msg.kind == kind and msg.payload == payload


@fuzz_settings(400)
@given(st.data())
def test_plaintext_server_opens_mutated_updates(data):
    """Plaintext.open (``--protect none``): the server's parser of clear updates."""
    from securefl.exceptions import AggregationError, ProtocolError, WireFormatError
    from securefl.protections.base import Plaintext

    half = Plaintext()
    good = half.seal(torch.ones(3), {"weight": 2.0, "unclipped": 1.0}, {"round": 1, "client": "c0", "dim": 3})
    raw = mutate_message(data, good, ["aux", "protect", "round", "dim"])
    contained("plaintext server: open", lambda: half.open([good, raw], 3), (AggregationError, WireFormatError, ProtocolError))
