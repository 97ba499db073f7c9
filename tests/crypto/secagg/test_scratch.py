"""The client's reused output vector (:func:`securefl.crypto.secagg.masking.scratch`)
and the encoder's ``within`` hint: cheaper masking, the same messages."""

import threading

import numpy as np
import pytest

from securefl.crypto import quantize
from securefl.crypto.quantize import FixedPoint
from securefl.crypto.secagg.masking import scratch
from securefl.exceptions import ProtocolError


def test_scratch_is_reused_within_a_thread_and_private_to_it():
    a = scratch(1000, np.uint32)
    assert a.shape == (1000,) and a.dtype == np.uint32 and a.flags.c_contiguous and a.flags.writeable
    b = scratch(500, np.uint64)  # the same buffer, another view of it
    assert np.shares_memory(a, b)
    bigger = scratch(10_000, np.uint32)  # grows when too small
    assert bigger.shape == (10_000,)
    other = []
    t = threading.Thread(target=lambda: other.append(scratch(1000, np.uint32)))
    t.start()
    t.join()
    assert not np.shares_memory(other[0], scratch(1000, np.uint32))


@pytest.fixture
def fixed_coins(monkeypatch):
    monkeypatch.setattr(quantize, "_coin_key", lambda: bytes(range(32)))


def test_within_hint_gives_the_same_encoding(fixed_coins):
    fp = FixedPoint(32, 20, 2.0)
    v = np.random.default_rng(1).uniform(-2.0, 2.0, 5000)  # test data, not secret
    plain = fp.encode(v)
    hinted = fp.encode(v, within=2.0)
    assert np.array_equal(plain.values, hinted.values) and hinted.saturated == 0


def test_within_above_the_bound_still_clips_and_refuses(fixed_coins):
    fp = FixedPoint(32, 20, 1.0)
    enc = fp.encode(np.array([3.0, -0.5]), within=5.0)  # the hint does not cover the bound: scanned
    assert enc.saturated == 1 and fp.signed(enc.values)[0] == 1 << 20
    with pytest.raises(ProtocolError):
        fp.encode(np.array([np.nan]), within=5.0)
    # a hint within the bound is trusted: no scan, so no clipping (the caller's promise)
    assert fp.encode(np.array([1.5]), within=1.0).saturated == 0
