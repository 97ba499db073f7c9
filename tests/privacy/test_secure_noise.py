"""Tests of the floating-point-safe DP noise (exact discrete Gaussian on a grid).

Every statistical check draws from a seeded ``SecureRNG.from_seed`` stream, so it
is deterministic and cannot flake; the acceptance regions are still set for a
false-failure probability of ``ALPHA`` each, so the seeds are not cherry-picked.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from securefl.config import RunConfig
from securefl.exceptions import RandomnessError
from securefl.privacy.client_dp import noisy_average
from securefl.privacy.dpsgd import SecureDPOptimizer
from securefl.privacy.noise import (
    GRID_BITS,
    SecureRNG,
    bernoulli_exp,
    discrete_gaussian,
    discrete_laplace,
    effective_noise_multiplier,
    noise_grid,
    noisy_on_grid,
)
from securefl.simulation import Simulation

ALPHA = 1e-6
ZQ = stats.norm.isf(ALPHA / 2)  # ~4.89
N = 1_000_000


def _dgauss_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """Exact N_Z(0, sigma^2) pmf on ``support`` (normaliser summed far into the tails)."""
    k = np.arange(-int(60 * sigma) - 60, int(60 * sigma) + 61)
    z = np.exp(-(k.astype(float) ** 2) / (2 * sigma**2)).sum()
    return np.exp(-(support.astype(float) ** 2) / (2 * sigma**2)) / z


def _binom_ok(count: int, n: int, p: float) -> bool:
    lo, hi = stats.binom.ppf(ALPHA / 2, n, p), stats.binom.isf(ALPHA / 2, n, p)
    return lo <= count <= hi


# ------------------------------------------------ one million draws vs the target
@pytest.fixture(scope="module")
def million():
    std = 1.7
    x = SecureRNG.from_seed(2024, "test-secure-noise").secure_gaussian((N,), std).numpy()
    return std, x


def test_secure_noise_is_exactly_on_a_power_of_two_grid(million):
    std, x = million
    grid = noise_grid(std)
    assert math.frexp(grid)[0] == 0.5 and 2**GRID_BITS <= std / grid < 2 ** (GRID_BITS + 1)
    k = x / grid
    assert np.array_equal(k, np.rint(k))  # every value an integer multiple of the grid
    assert np.max(np.abs(k)) < 2**53  # so exactly representable in float64
    assert len(np.unique(x)) > N // 2  # and not a coarse lattice


def test_secure_noise_mean_variance_and_tails(million):
    std, x = million
    s = math.ceil(std / noise_grid(std))
    true_std = s * noise_grid(std)  # >= std by less than one grid step
    assert std <= true_std < std * (1 + 2.0**-GRID_BITS)
    # mean: N(0, std^2 / N)
    assert abs(x.mean()) <= ZQ * true_std / math.sqrt(N)
    # variance: sum x^2 / sigma^2 ~ chi2(N); the discrete Gaussian's variance differs
    # from sigma^2 by < 1e-100 relative at s >= 2^22 (CKS 2020, Cor. 23)
    chi = float(np.sum(x**2)) / true_std**2
    assert stats.chi2.ppf(ALPHA / 2, N) <= chi <= stats.chi2.isf(ALPHA / 2, N)
    assert abs(x.var() / true_std**2 - 1) < 0.01
    # tails P(|X| > k sigma), k = 1..4, within binomial acceptance bounds
    for k in (1, 2, 3, 4):
        count = int(np.sum(np.abs(x) > k * true_std))
        assert _binom_ok(count, N, 2 * stats.norm.sf(k)), (k, count)
    # power: a 2% larger scale is rejected by the same variance check
    chi_wrong = float(np.sum(x**2)) / (1.02 * true_std) ** 2
    assert not stats.chi2.ppf(ALPHA / 2, N) <= chi_wrong <= stats.chi2.isf(ALPHA / 2, N)


# ------------------------------------------------ exact pmf for small sigma
@pytest.mark.parametrize("sigma", [1, 3])
def test_discrete_gaussian_matches_exact_pmf(sigma):
    n = 400_000
    y = discrete_gaussian(SecureRNG.from_seed(sigma, "pmf"), n, sigma)
    assert y.dtype == np.int64
    lo, hi = -4 * sigma, 4 * sigma
    support = np.arange(lo, hi + 1)
    p = _dgauss_pmf(sigma, support)
    observed = np.array([np.sum(y == v) for v in support] + [np.sum((y < lo) | (y > hi))])
    expected = n * np.append(p, 1 - p.sum())
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 < stats.chi2.isf(ALPHA, len(observed) - 1)
    # the continuous-Gaussian pmf on the integers is a *different* law for sigma = 1
    if sigma == 1:
        q = stats.norm.cdf(support + 0.5) - stats.norm.cdf(support - 0.5)
        e2 = n * np.append(q, 1 - q.sum())
        assert float(np.sum((observed - e2) ** 2 / e2)) > stats.chi2.isf(ALPHA, len(observed) - 1)


def test_discrete_laplace_matches_exact_pmf():
    n, t = 300_000, 2
    y = discrete_laplace(SecureRNG.from_seed(7, "lap"), n, t)
    support = np.arange(-10, 11)
    w = np.exp(-np.abs(support) / t)
    norm = (1 - math.exp(-1 / t)) / (1 + math.exp(-1 / t))
    p = w * norm
    observed = np.array([np.sum(y == v) for v in support] + [np.sum(np.abs(y) > 10)])
    expected = n * np.append(p, 1 - p.sum())
    assert float(np.sum((observed - expected) ** 2 / expected)) < stats.chi2.isf(ALPHA, len(observed) - 1)


@pytest.mark.parametrize("num,den", [(0, 1), (1, 3), (1, 1), (5, 2)])
def test_bernoulli_exp_is_exp_minus_gamma(num, den):
    n = 200_000
    b = bernoulli_exp(SecureRNG.from_seed(num * 10 + den, "bexp"), np.full(n, num), np.full(n, den))
    assert _binom_ok(int(b.sum()), n, math.exp(-num / den))


def test_below_array_is_unbiased_and_in_range():
    rng = SecureRNG.from_seed(3, "below")
    b = np.array([1, 2, 3, 7, 2**40 + 3] * 20_000, dtype=np.uint64)
    x = rng.below_array(b)
    assert np.all(x < b)
    threes = x[b == 3]
    assert stats.chisquare(np.bincount(threes.astype(np.int64), minlength=3)).pvalue > ALPHA


# ------------------------------------------------ the noisy query
def test_noisy_on_grid_rounds_the_query_and_covers_the_inflation():
    rng = SecureRNG.from_seed(11, "query")
    z, clip = 1.1, 0.8
    q = torch.linspace(-3, 3, 5000, dtype=torch.float32) * math.pi
    out = noisy_on_grid(q, noise_multiplier=z, clip=clip, rng=rng)
    grid = noise_grid(z * clip)
    k = out.numpy() / grid
    assert out.dtype == torch.float64 and np.array_equal(k, np.rint(k))
    # the released value carries nothing of q below the grid: queries that round to
    # the same grid point give the same output under the same keystream
    on = torch.arange(-2500, 2500, dtype=torch.float64) * 37 * grid
    outs = [
        noisy_on_grid(on + off * grid, noise_multiplier=z, clip=clip, rng=SecureRNG.from_seed(1), dim=5000)
        for off in (0.0, 0.125, -0.25, 0.49)
    ]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    # the charged multiplier z is a lower bound of what the mechanism achieves
    s = math.ceil(z * (clip + math.sqrt(q.numel()) * grid) / grid)
    assert s * grid / (clip + math.sqrt(q.numel()) * grid) >= z
    assert effective_noise_multiplier(s * grid / clip, clip, q.numel(), grid) >= z
    assert effective_noise_multiplier(z, clip, 10**6, grid) == pytest.approx(z, rel=1e-3)


def test_noisy_on_grid_zero_noise_and_bad_inputs():
    rng = SecureRNG.from_seed(0)
    t = torch.randn(10)
    assert torch.equal(noisy_on_grid(t, noise_multiplier=0.0, clip=1.0, rng=rng), t.double())
    with pytest.raises(RandomnessError):
        noisy_on_grid(torch.tensor([1e300]), noise_multiplier=1.0, clip=1.0, rng=rng)
    with pytest.raises(RandomnessError):
        rng.secure_gaussian((3,), 1.0, grid=0.3)
    with pytest.raises(RandomnessError):
        discrete_gaussian(rng, 3, 0)


def test_dp_paths_use_the_discrete_sampler():
    rng_seed = 5
    p = torch.nn.Parameter(torch.zeros(300))
    opt = SecureDPOptimizer(
        torch.optim.SGD([p], lr=1.0), noise_multiplier=2.0, max_grad_norm=0.5, expected_batch_size=1,
        rng=SecureRNG.from_seed(rng_seed),
    )
    p.summed_grad = torch.zeros(300)
    opt.add_noise()
    ref = noisy_on_grid(torch.zeros(300), noise_multiplier=2.0, clip=0.5, rng=SecureRNG.from_seed(rng_seed))
    assert torch.equal(p.grad, ref.float())
    avg = noisy_average(torch.zeros(300), noise_multiplier=1.0, clip=2.0, denominator=4.0, rng=SecureRNG.from_seed(1))
    ref = noisy_on_grid(torch.zeros(300), noise_multiplier=1.0, clip=2.0, rng=SecureRNG.from_seed(1)) / 4.0
    assert torch.equal(avg, ref.float())


# ------------------------------------------------ noise is not a function of --seed
def test_unseeded_noise_differs_and_seeded_noise_reproduces():
    a, b = SecureRNG().secure_gaussian((64,), 1.0), SecureRNG().secure_gaussian((64,), 1.0)
    assert not torch.equal(a, b)
    c = SecureRNG.from_seed(9).secure_gaussian((64,), 1.0)
    d = SecureRNG.from_seed(9).secure_gaussian((64,), 1.0)
    assert torch.equal(c, d)


def test_run_without_reproducible_noise_is_not_a_function_of_seed():
    base = {"rounds": 1, "dp": "sample", "noise_multiplier": 1.0, "sample_rate": 0.5, "local_epochs": 1.0,
            "model": "logreg", "seed": 3}
    weights = lambda flat: Simulation(RunConfig.from_flat(flat)).run().server.weights  # noqa: E731
    a, b = weights(base), weights(base)
    assert not torch.equal(a, b)
    c, d = weights({**base, "reproducible_noise": True}), weights({**base, "reproducible_noise": True})
    assert torch.equal(c, d)


def test_rng_method_matches_module_sampler():
    a = SecureRNG.from_seed(4).discrete_gaussian(1000, 50)
    b = discrete_gaussian(SecureRNG.from_seed(4), 1000, 50)
    assert np.array_equal(a, b)
