"""Narrow rings for --compress quant:B: packing, unbiased rounding, no wrap."""

import numpy as np
import pytest

from securefl.crypto.secagg.common import SecAggSettings
from securefl.crypto.secagg.packing import NarrowFixedPoint, pack, packed_size, unpack
from securefl.exceptions import ConfigValueError, WireFormatError


@pytest.mark.parametrize("bits", [2, 7, 16, 25, 32, 33, 57, 64])
def test_pack_round_trips_in_exactly_bits_per_element(bits):
    rng = np.random.default_rng(bits)  # test data only
    dtype = np.uint32 if bits <= 32 else np.uint64
    values = rng.integers(0, 2**bits, size=20_001, dtype=np.uint64).astype(dtype)
    data = pack(values, bits)
    assert len(data) == packed_size(values.size, bits) == (values.size * bits + 7) // 8
    assert np.array_equal(unpack(data, bits, values.size, dtype), values)
    with pytest.raises(WireFormatError):
        unpack(data + b"\0", bits, values.size, dtype)


def test_pack_reduces_container_values_modulo_the_ring():
    v = np.array([2**25 + 5, 2**32 - 1], dtype=np.uint32)
    assert unpack(pack(v, 25), 25, 2, np.uint32).tolist() == [5, 2**25 - 1]


def test_ring_is_the_narrowest_the_sum_fits():
    codec = NarrowFixedPoint.for_levels(clients=20, bound=4096.0, clip=1.0, levels_bits=8)
    assert (codec.frac_bits, codec.bits, codec.container_bits) == (7, 25, 32)
    assert 20 * (4096 * 2**7 + 1) < 2 ** (codec.bits - 1) <= 2 * 20 * (4096 * 2**7 + 1)
    # worst case: every client at +bound or -bound decodes without wrapping
    for sign in (1, -1):
        ring = codec.encode(np.full(3, sign * 4096.0)).values
        total = sum(ring.astype(np.uint64) for _ in range(20)).astype(np.uint32)  # container arithmetic
        assert codec.decode(total).tolist() == [sign * 20 * 4096.0] * 3
    assert SecAggSettings(quant_bits=8, max_weight=1.0).codec(20).bits == 13
    with pytest.raises(ConfigValueError) as info:
        NarrowFixedPoint.for_levels(clients=2, bound=1.0, clip=1000.0, levels_bits=4)
    assert info.value.field == "compress"


def test_stochastic_quantization_is_unbiased_and_on_the_grid():
    codec = SecAggSettings(quant_bits=4, max_weight=1.0).codec(5)  # step 1/8
    step = codec.resolution
    assert step == 2.0**-3
    x = np.full(200_000, 0.3)
    q = codec.decode(codec.encode(x).values)
    assert set(np.unique(q).tolist()) == {0.25, 0.375}  # the two grid neighbours only
    # unbiased: E[q] = x; std of the mean <= step / 2 / sqrt(n) ~ 1.4e-4
    assert abs(q.mean() - 0.3) < 7e-4
    assert abs(np.mean(q == 0.375) - 0.4) < 0.005  # P(up) = fractional part (0.3 - 0.25) / step


def test_client_level_dp_rounding_stays_within_the_clip():
    from securefl.crypto.secagg.common import clip_input

    settings = SecAggSettings(clip=1.0, max_weight=1.0, quant_bits=6, l2_clip=True)
    codec = settings.codec(5)
    rng = np.random.default_rng(3)  # test data only
    x = rng.normal(size=100)
    x /= np.linalg.norm(x)  # exactly at the clip: rounding alone could push it over
    v, _ = clip_input(settings, x, 1.0, codec.resolution)
    assert np.linalg.norm(v) <= 1.0 - 10 * codec.resolution + 1e-12
    norms = [np.linalg.norm(codec.decode(codec.encode(v).values)) for _ in range(200)]
    assert max(norms) <= 1.0
    # without the margin the same rounding leaves the clip
    assert max(np.linalg.norm(codec.decode(codec.encode(x).values)) for _ in range(200)) > 1.0
    with pytest.raises(ConfigValueError, match="more bits"):
        clip_input(SecAggSettings(clip=1.0, max_weight=1.0, quant_bits=2, l2_clip=True), np.ones(10_000), 1.0, 0.5)
