"""Tests of :mod:`securefl.privacy.client_dp` (DP-FedAvg clipping, noise and
adaptive clipping)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from securefl.exceptions import ConfigValueError
from securefl.privacy.client_dp import AdaptiveClipper, clip_update, noisy_average, update_noise_multiplier
from securefl.privacy.noise import SecureRNG

ALPHA = 1e-6
Z = stats.norm.isf(ALPHA / 2)

_floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=64)
_vectors = arrays(np.float64, st.integers(1, 64), elements=_floats)
_clips = st.floats(min_value=1e-4, max_value=1e4, allow_nan=False)


# ------------------------------------------------------------------ clipping
@settings(max_examples=200, deadline=None)
@given(v=_vectors, clip=_clips)
def test_clip_update_bounds_norm(v, clip):
    t = torch.from_numpy(v)
    out, norm = clip_update(t, clip)
    assert out.shape == t.shape and out.dtype == t.dtype
    true_norm = float(np.linalg.norm(v))
    assert norm == pytest.approx(true_norm, rel=1e-12, abs=1e-150)  # squares of subnormal entries underflow
    out_norm = float(out.norm())
    assert out_norm <= clip * (1 + 1e-9) + 1e-6
    if true_norm > clip:
        # scaled onto the sphere of radius clip, direction kept
        assert out_norm == pytest.approx(clip, rel=1e-9)
        torch.testing.assert_close(out, t * (clip / true_norm), rtol=1e-9, atol=1e-300)
    else:
        assert torch.equal(out, t)


@settings(max_examples=100, deadline=None)
@given(v=_vectors, scale=st.floats(min_value=0.0, max_value=1.0))
def test_clip_update_leaves_short_vectors_unchanged(v, scale):
    t = torch.from_numpy(v)
    norm = float(np.linalg.norm(v))
    clip = norm / scale if scale > 0 else norm + 1.0
    out, reported = clip_update(t, clip * (1 + 1e-12))  # relative: numpy and torch norms differ in the last bits
    assert torch.equal(out, t)
    assert reported == pytest.approx(norm, rel=1e-12, abs=1e-150)  # squares of subnormal entries underflow


def test_clip_update_float32_and_zero():
    t = torch.full((1000,), 3.0, dtype=torch.float32)
    out, norm = clip_update(t, 1.0)
    assert out.dtype == torch.float32
    assert norm == pytest.approx(math.sqrt(1000) * 3.0, rel=1e-7)
    assert float(out.double().norm()) <= 1.0 + 1e-6
    assert float(out.double().norm()) == pytest.approx(1.0, rel=1e-5)
    z = torch.zeros(10)
    out, norm = clip_update(z, 1.0)
    assert norm == 0.0 and torch.equal(out, z)


# ------------------------------------------------------------- noisy average
@pytest.mark.parametrize("z,clip,denominator", [(1.3, 0.7, 12.5), (0.5, 2.0, 100.0), (4.0, 0.1, 1.0)])
def test_noisy_average_noise_std(z, clip, denominator):
    d = 200_000
    out = noisy_average(torch.zeros(d, dtype=torch.float64), noise_multiplier=z, clip=clip, denominator=denominator, rng=SecureRNG())
    assert out.shape == (d,) and out.dtype == torch.float64
    x = out.numpy()
    sd = z * clip / denominator
    assert abs(float(x.mean())) <= Z * sd / math.sqrt(d)
    s = float(np.sum(x**2)) / sd**2  # ~ chi2(d) with known mean 0
    assert stats.chi2.ppf(ALPHA / 2, d) <= s <= stats.chi2.isf(ALPHA / 2, d)
    assert stats.kstest(x, "norm", args=(0.0, sd)).pvalue > ALPHA


def test_noisy_average_uses_fixed_denominator_and_keeps_dtype():
    total = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    out = noisy_average(total, noise_multiplier=0.0, clip=1.0, denominator=4.0, rng=SecureRNG())
    assert out.dtype == torch.float32 and out.shape == (3, 4)
    torch.testing.assert_close(out, total / 4.0, rtol=0, atol=0)
    # noise is added to the sum, then divided: signal + noise/m
    total = torch.linspace(-5, 5, 50_000, dtype=torch.float64)
    out = noisy_average(total, noise_multiplier=2.0, clip=1.5, denominator=10.0, rng=SecureRNG())
    resid = (out - total / 10.0).numpy()
    sd = 2.0 * 1.5 / 10.0
    s = float(np.sum(resid**2)) / sd**2
    assert stats.chi2.ppf(ALPHA / 2, resid.size) <= s <= stats.chi2.isf(ALPHA / 2, resid.size)


def test_noisy_average_reproducible_with_seeded_rng():
    total = torch.ones(100)
    a = noisy_average(total, noise_multiplier=1.0, clip=1.0, denominator=3.0, rng=SecureRNG.from_seed(5))
    b = noisy_average(total, noise_multiplier=1.0, clip=1.0, denominator=3.0, rng=SecureRNG.from_seed(5))
    c = noisy_average(total, noise_multiplier=1.0, clip=1.0, denominator=3.0, rng=SecureRNG.from_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------- adaptive clipping
def _clipper(initial=1.0, **kw):
    args = dict(target_quantile=0.5, lr=0.2, count_stddev=0.5, expected_clients=100.0)
    args.update(kw)
    return AdaptiveClipper(initial, **args)


def test_adaptive_clip_exact_update_without_count_noise():
    c = _clipper(2.0, target_quantile=0.3, lr=0.5, count_stddev=0.0, expected_clients=40.0)
    new = c.update(10, SecureRNG())
    assert new == c.clip == pytest.approx(2.0 * math.exp(-0.5 * (10 / 40 - 0.3)), rel=1e-12)
    # at the target fraction the clip does not move
    c.update(12, SecureRNG())
    assert c.clip == pytest.approx(new, rel=1e-12)


def test_adaptive_clip_moves_down_when_all_unclipped():
    c = _clipper(1.0)
    rng = SecureRNG()
    clips = [c.update(100, rng) for _ in range(5)]
    assert all(b < a for a, b in zip([1.0] + clips, clips))
    # geometric step exp(-lr * (1 - 0.5)) up to the count noise
    assert clips[0] == pytest.approx(math.exp(-0.1), rel=0.01)


def test_adaptive_clip_moves_up_when_none_unclipped():
    c = _clipper(1.0)
    rng = SecureRNG()
    clips = [c.update(0, rng) for _ in range(5)]
    assert all(b > a for a, b in zip([1.0] + clips, clips))
    assert clips[0] == pytest.approx(math.exp(0.1), rel=0.01)


def test_adaptive_clip_count_noise_has_configured_std():
    # log(new/old) = -lr * (count + N(0, s^2)) / m + lr * target: recover the noise
    lr, m, s, n = 0.1, 50.0, 3.0, 4000
    c = _clipper(1.0, target_quantile=0.5, lr=lr, count_stddev=s, expected_clients=m)
    rng = SecureRNG()
    noise = []
    for _ in range(n):
        old = c.clip
        new = c.update(25, rng)  # fraction 0.5 == target: only the noise moves it
        noise.append(-math.log(new / old) * m / lr)
    noise = np.array(noise)
    assert abs(noise.mean()) <= Z * s / math.sqrt(n)
    v = float(np.sum(noise**2)) / s**2
    assert stats.chi2.ppf(ALPHA / 2, n) <= v <= stats.chi2.isf(ALPHA / 2, n)


@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("initial", [1e-3, 1e3])
def test_adaptive_clip_converges_to_target_quantile(target, initial):
    # a fixed population of update norms, log-uniform over [0.1, 10]
    norms = np.exp(np.linspace(math.log(0.1), math.log(10.0), 200))
    m = float(len(norms))
    c = AdaptiveClipper(initial, target_quantile=target, lr=0.2, count_stddev=1.0, expected_clients=m)
    rng = SecureRNG()
    fractions = []
    for r in range(600):
        unclipped = int(np.sum(norms <= c.clip))
        c.update(unclipped, rng)
        if r >= 400:
            fractions.append(float(np.mean(norms <= c.clip)))
    assert abs(np.mean(fractions) - target) <= 0.01
    assert max(abs(f - target) for f in fractions) <= 0.03
    q = np.quantile(norms, target)
    assert q / 1.1 <= c.clip <= q * 1.1


# ------------------------------------------------------- update noise split
@pytest.mark.parametrize("z,sb", [(1.0, 2.0), (0.8, 5.0), (3.0, 10.0), (1.0, 0.51)])
def test_update_noise_multiplier_formula(z, sb):
    got = update_noise_multiplier(z, sb)
    assert got == pytest.approx((z**-2 - (2 * sb) ** -2) ** -0.5, rel=1e-12)
    assert got > z  # the update sum needs more noise than z alone
    # Andrew et al. Thm 1: splitting the budget recombines to exactly z
    assert (got**-2 + (2 * sb) ** -2) ** -0.5 == pytest.approx(z, rel=1e-12)


def test_update_noise_multiplier_zero_noise():
    assert update_noise_multiplier(0.0, 1.0) == 0.0


@pytest.mark.parametrize("z,sb", [(1.0, 0.5), (1.0, 0.4), (2.0, 0.99), (4.0, 1.0)])
def test_update_noise_multiplier_rejects_small_count_stddev(z, sb):
    with pytest.raises(ConfigValueError) as info:
        update_noise_multiplier(z, sb)
    assert isinstance(info.value, ValueError)
    assert info.value.field == "clip_count_stddev"
    assert info.value.value == sb


def test_update_noise_multiplier_zero_count_stddev_is_config_error():
    with pytest.raises(ConfigValueError):
        update_noise_multiplier(1.0, 0.0)
