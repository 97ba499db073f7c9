"""Fixed-point encoding into Z_(2^bits): no wrap, unbiased rounding, counted saturation."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from securefl.crypto.quantize import MIN_FRAC_BITS, FixedPoint
from securefl.exceptions import ConfigValueError, ProtocolError
from securefl.privacy.noise import SecureRNG


@settings(max_examples=40, deadline=None)
@given(
    clients=st.integers(1, 2000),
    bound=st.floats(1e-3, 1e5),
    bits=st.sampled_from([32, 64]),
)
def test_sum_of_extremes_never_wraps(clients, bound, bits):
    try:
        fp = FixedPoint.for_sum(clients=clients, bound=bound, bits=bits)
    except ConfigValueError as exc:  # not enough room: refused, never silently coarse
        assert exc.field == "secagg_bits" and bits == 32
        return
    assert fp.frac_bits >= MIN_FRAC_BITS
    for sign in (1.0, -1.0):
        one = fp.encode(np.full(4, sign * bound)).values
        total = np.zeros(4, dtype=fp.dtype)
        for _ in range(min(clients, 50)):
            total = total + one
        # the rest of the clients at once (exact integer arithmetic in the ring)
        total = (total.astype(object) + (clients - min(clients, 50)) * one.astype(object)) % fp.modulus
        total = np.array([int(v) for v in total], dtype=np.uint64).astype(fp.dtype)
        decoded = fp.decode(total)
        assert np.allclose(decoded, sign * bound * clients, rtol=1e-9, atol=clients * fp.resolution)
        # one more unit of headroom is still below the wrap point
        assert int(fp.signed(total)[0]) * sign > 0


def test_frac_bits_shrink_with_clients_and_bound():
    a = FixedPoint.for_sum(clients=10, bound=4096.0)
    b = FixedPoint.for_sum(clients=1000, bound=4096.0)
    c = FixedPoint.for_sum(clients=10, bound=1.0)
    assert a.frac_bits == 15 and b.frac_bits == 9 and c.frac_bits == 27
    assert FixedPoint.for_sum(clients=1000, bound=4096.0, bits=64).frac_bits == 41
    with pytest.raises(ConfigValueError, match="64 bits"):
        FixedPoint.for_sum(clients=5000, bound=4096.0)


def test_stochastic_rounding_is_unbiased_and_exact_on_grid():
    fp = FixedPoint(32, 2, 10.0)  # grid step 0.25
    x = np.full(40_000, 0.1)  # 40% of the way from 0 to 0.25
    dec = fp.decode(fp.encode(x).values)
    assert set(np.unique(dec)) == {0.0, 0.25}
    assert abs(dec.mean() - 0.1) < 0.005  # 6 sigma of the Bernoulli mean
    on_grid = np.array([-2.5, -0.25, 0.0, 0.75, 9.75])
    assert np.array_equal(fp.decode(fp.encode(on_grid).values), on_grid)


def test_saturation_is_counted_not_silent():
    fp = FixedPoint.for_sum(clients=3, bound=1.0)
    enc = fp.encode(np.array([0.5, 1.5, -3.0, -1.0, 1.0]))
    assert enc.saturated == 2
    assert np.allclose(fp.decode(enc.values), [0.5, 1.0, -1.0, -1.0, 1.0], atol=fp.resolution)


def test_non_finite_refused_and_two_complement_round_trip():
    fp = FixedPoint.for_sum(clients=2, bound=1.0)
    with pytest.raises(ProtocolError, match="NaN"):
        fp.encode(np.array([0.0, np.nan]))
    ints = np.array([-(2**30), -1, 0, 1, 2**30], dtype=np.int64)
    assert np.array_equal(fp.signed(fp.wrap(ints)), ints)
    assert fp.wrap(np.array([-1])).dtype == np.uint32 and int(fp.wrap(np.array([-1]))[0]) == 2**32 - 1


@pytest.mark.parametrize("kw", [{"bits": 16, "frac_bits": 2, "bound": 1.0}, {"bits": 32, "frac_bits": 31, "bound": 1.0}, {"bits": 32, "frac_bits": 2, "bound": -1.0}])
def test_invalid_codecs_refused(kw):
    with pytest.raises(ConfigValueError):
        FixedPoint(**kw)


def test_rounding_takes_no_generator_and_differs_between_calls():
    """F8: the rounding coins come from os.urandom; a seeded generator cannot be
    passed, and two encodings of the same off-grid vector round differently."""
    fp = FixedPoint(32, 2, 10.0)
    with pytest.raises(TypeError):
        fp.encode(np.zeros(3), SecureRNG.from_seed(0))  # type: ignore[call-arg]
    x = np.full(256, 0.1)
    assert not np.array_equal(fp.encode(x).values, fp.encode(x).values)
