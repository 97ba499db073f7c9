"""The audit's statistics: one-run bounds against a 50-digit reference, soundness on a
Gaussian mechanism, the Gaussian epsilon, the one-shot estimate, Clopper-Pearson."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from attacks.audit.metrics import (
    clopper_pearson,
    gaussian_delta,
    gaussian_epsilon,
    guess,
    guess_sizes,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    one_shot_estimate,
)
from securefl.exceptions import ConfigValueError
from securefl.privacy import accounting
from securefl.privacy.noise import SecureRNG

DELTA = 1e-5


# ------------------------------------------------------------ exact reference
def _ref_p_value(m: int, r: int, v: int, eps: float, delta: float) -> mpmath.mpf:
    """Theorem 3.1 of Steinke, Nasr, Jagielski (2023) in 50-digit arithmetic."""
    with mpmath.workdps(50):
        p = mpmath.e ** eps / (1 + mpmath.e ** eps)
        pmf = [mpmath.binomial(r, j) * p**j * (1 - p) ** (r - j) for j in range(r + 1)]
        tails = [mpmath.mpf(0)] * (r + 2)  # tails[w] = P[B >= w]
        for j in range(r, -1, -1):
            tails[j] = tails[j + 1] + pmf[j]
        f = lambda w: tails[max(w, 0)]  # noqa: E731
        if v == 0:
            return mpmath.mpf(1)
        alpha = max((f(v - i) - f(v)) / i for i in range(1, m + 1))
        return min(mpmath.mpf(1), f(v) + 2 * m * delta * alpha)


@pytest.mark.parametrize(
    "m, r, v, eps, delta",
    [
        (1000, 100, 90, 1.5, 1e-5),
        (1000, 100, 100, 3.0, 1e-5),
        (200, 60, 45, 0.7, 1e-3),
        (500, 300, 280, 2.5, 0.0),
        (50, 20, 11, 0.1, 1e-2),
        (2000, 400, 399, 5.0, 1e-6),
    ],
)
def test_p_value_matches_high_precision_reference(m, r, v, eps, delta):
    got = one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta)
    want = float(_ref_p_value(m, r, v, eps, delta))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_pure_dp_p_value_is_the_binomial_tail():
    p = math.exp(2) / (1 + math.exp(2))
    got = one_run_p_value(canaries=100, guesses=40, correct=35, epsilon=2.0, delta=0.0)
    assert got == pytest.approx(stats.binom.sf(34, 40, p), rel=1e-12)
    # the delta correction only ever adds
    with_delta = one_run_p_value(canaries=100, guesses=40, correct=35, epsilon=2.0, delta=1e-3)
    assert with_delta > got


def test_all_correct_pure_dp_bound_has_closed_form():
    # p^r = beta  =>  eps = logit(beta^(1/r))
    for r in (10, 100, 500):
        p = 0.05 ** (1 / r)
        want = math.log(p / (1 - p))
        got = one_run_epsilon_lower_bound(canaries=2 * r, guesses=r, correct=r, delta=0.0, confidence=0.95)
        assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("m, r, v", [(1000, 100, 95), (1000, 500, 500), (300, 150, 120), (1000, 200, 120)])
def test_lower_bound_is_where_the_reference_p_value_crosses_beta(m, r, v):
    eps = one_run_epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=DELTA, confidence=0.95)
    assert eps > 0
    assert _ref_p_value(m, r, v, eps, DELTA) < 0.05  # still rejected at the bound
    assert _ref_p_value(m, r, v, eps + 1e-6, DELTA) >= 0.05 - 1e-9  # and not just above it
    for below in np.linspace(0, eps, 7):  # every smaller epsilon is rejected too
        assert _ref_p_value(m, r, v, float(below), DELTA) < 0.05


def test_no_evidence_gives_zero():
    assert one_run_epsilon_lower_bound(canaries=1000, guesses=100, correct=50, delta=DELTA) == 0.0
    assert one_run_epsilon_lower_bound(canaries=1000, guesses=0, correct=0, delta=DELTA) == 0.0


def test_bad_counts_are_rejected():
    with pytest.raises(ConfigValueError, match="correct"):
        one_run_epsilon_lower_bound(canaries=10, guesses=5, correct=6, delta=DELTA)
    with pytest.raises(ConfigValueError, match="guesses"):
        one_run_p_value(canaries=10, guesses=11, correct=1, epsilon=1.0, delta=DELTA)
    with pytest.raises(ConfigValueError, match="confidence"):
        one_run_epsilon_lower_bound(canaries=10, guesses=5, correct=5, delta=DELTA, confidence=1.0)


def test_guess_picks_extremes_and_abstains():
    scores = np.array([0.1, 5.0, -3.0, 2.0, 0.0, -1.0])
    assert guess(scores, 2, 1).tolist() == [0, 1, -1, 1, 0, 0]
    assert guess(scores, 0, 2).tolist() == [0, 0, -1, 0, 0, -1]


# ------------------------------------------- soundness on a Gaussian mechanism
def _gaussian_trial(trial: int, sigma: float, m: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """An isolated Gaussian mechanism: canary i adds 1 to coordinate i when
    included; the output is that vector plus N(0, sigma^2) noise (secure noise)."""
    rng = SecureRNG.from_seed(trial, "test-gaussian-audit")
    included = rng.bernoulli(0.5, m)
    noise = rng.normal((m,), sigma, dtype=torch.float64).numpy()
    return included.astype(np.float64) + noise, included


@pytest.mark.parametrize("sigma", [1.0, 0.5])
def test_lower_bound_is_sound_and_non_trivial_on_gaussian_mechanism(sigma):
    true_eps = gaussian_epsilon(1 / sigma, DELTA)
    bounds = []
    for trial in range(12):
        scores, included = _gaussian_trial(trial, sigma)
        res = one_run_audit(scores, included, delta=DELTA, confidence=0.95, k_pos=100, k_neg=100)
        assert res.guesses == 200 and res.canaries == 1000
        bounds.append(res.epsilon_lower_bound)
    # sound: at 95% confidence at most a rare trial may exceed; this audit never does here
    assert max(bounds) <= true_eps
    # non-trivial: a real fraction of the truth
    assert np.mean(bounds) > (0.8 if sigma == 1.0 else 2.0)


def test_bound_is_large_without_noise():
    scores, included = _gaussian_trial(0, 0.0)
    res = one_run_audit(scores, included, delta=DELTA)
    assert res.correct == res.guesses
    assert res.epsilon_lower_bound > 4.0
    assert res.candidates == len(guess_sizes(1000))


def test_bonferroni_costs_something_against_a_fixed_guess():
    scores, included = _gaussian_trial(0, 0.0)
    fixed = one_run_audit(scores, included, delta=DELTA, k_pos=300, k_neg=300)
    auto = one_run_audit(scores, included, delta=DELTA)
    assert auto.k_pos == 300 and auto.k_neg == 300
    assert fixed.epsilon_lower_bound > auto.epsilon_lower_bound


def test_random_scores_give_no_evidence():
    rng = SecureRNG.from_seed(3, "test")
    included = rng.bernoulli(0.5, 1000)
    res = one_run_audit(rng.uniform(1000), included, delta=DELTA)
    assert res.epsilon_lower_bound < 0.5


# ------------------------------------------------------ Gaussian epsilon, estimate
@pytest.mark.parametrize("mu", [0.3, 1.0, 2.5])
def test_gaussian_epsilon_matches_prv_accountant(mu):
    lo, _, hi = accounting.prv_epsilon(((1 / mu, 1.0, 1),), DELTA)
    eps = gaussian_epsilon(mu, DELTA)
    assert lo - 1e-9 <= eps <= hi + 1e-9
    assert gaussian_delta(eps, mu) == pytest.approx(DELTA, rel=1e-6)


def test_one_shot_estimate_recovers_mu():
    rng = SecureRNG.from_seed(1, "test")
    out = rng.normal((4000,), dtype=torch.float64).numpy()
    inn = 1.5 + rng.normal((4000,), dtype=torch.float64).numpy()
    est = one_shot_estimate(inn, out, DELTA)
    assert est["mu"] == pytest.approx(1.5, abs=0.1)
    assert est["epsilon_estimate"] == pytest.approx(gaussian_epsilon(est["mu"], DELTA))


# ------------------------------------------------------------- two hypotheses
@pytest.mark.parametrize("k, n", [(0, 20), (3, 20), (20, 20), (17, 200)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n):
    # a one-sided 97.5% bound is one end of the two-sided 95% exact interval
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = clopper_pearson(k, n, 0.975)
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


def test_one_shot_estimate_without_data_is_null_not_nan():
    assert one_shot_estimate(np.array([1.0]), np.array([0.0, 0.1]), DELTA) == {"mu": None, "epsilon_estimate": None}
    assert one_shot_estimate(np.ones(3), np.ones(3), DELTA)["epsilon_estimate"] is None
