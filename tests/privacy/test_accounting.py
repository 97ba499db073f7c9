"""Tests of :mod:`securefl.privacy.accounting` against closed forms and an
independent accountant (Google's ``dp_accounting`` PLD)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from securefl.exceptions import ConfigValueError
from securefl.privacy import accounting as A

DELTA = 1e-5


# ------------------------------------------------------------ exact references
def gdp_delta(eps: float, mu: float) -> float:
    """Exact delta(eps) of a mu-GDP mechanism (Balle & Wang 2018, Thm. 8)."""
    return float(norm.cdf(-eps / mu + mu / 2) - np.exp(eps + norm.logcdf(-eps / mu - mu / 2)))


def gdp_epsilon(mu: float, delta: float) -> float:
    if gdp_delta(0.0, mu) <= delta:
        return 0.0
    return brentq(lambda e: gdp_delta(e, mu) - delta, 0.0, 10 * mu * mu + 100, xtol=1e-12)


@functools.lru_cache(maxsize=None)
def pld_epsilon(history: tuple, delta: float) -> float:
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting.pld import PLDAccountant

    acc = PLDAccountant()
    for z, q, steps in history:
        event = dp_accounting.GaussianDpEvent(z)
        if q < 1:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return float(acc.get_epsilon(delta))


def test_gdp_reference_sanity():
    # the reference itself: delta(eps) decreasing in eps and the inversion is exact
    mu = 1.5
    assert gdp_delta(1.0, mu) > gdp_delta(2.0, mu) > 0
    e = gdp_epsilon(mu, DELTA)
    assert gdp_delta(e, mu) == pytest.approx(DELTA, rel=1e-6)


# --------------------------------------------- (a) full batch: exact Gaussian
@pytest.mark.parametrize("z,steps", [(1.0, 1), (2.0, 10), (5.0, 100), (0.8, 4), (10.0, 1000)])
def test_full_batch_matches_exact_gaussian(z, steps):
    exact = gdp_epsilon(math.sqrt(steps) / z, DELTA)
    r = A.epsilon(((z, 1.0, steps),), DELTA)
    assert r.delta == DELTA
    assert exact <= r.prv <= exact + 0.05
    assert r.prv_lower <= exact
    # a genuine interval around the estimate: the reported value is its upper end
    assert r.prv_lower < r.prv_estimate < r.prv
    assert r.prv_estimate == pytest.approx(exact, abs=0.02)
    assert r.rdp >= exact
    # RDP of the full-batch Gaussian is alpha*T/(2 z^2); the reported bound must be
    # at least as good as the classic conversion over the same orders
    orders = np.array(A.RDP_ORDERS, dtype=float)
    classic = np.min(orders * steps / (2 * z * z) + math.log(1 / DELTA) / (orders - 1))
    assert r.rdp <= classic + 1e-9
    assert r.rdp <= exact * 1.3 + 0.5  # not absurdly loose


# --------------------------------------------- (b) subsampled: independent PLD
@pytest.mark.parametrize(
    "history",
    [((1.1, 0.3, 50),), ((0.8, 0.01, 1000),), ((1.0, 0.5, 10), (2.0, 0.2, 20))],
    ids=["q0.3-z1.1-T50", "q0.01-z0.8-T1000", "heterogeneous"],
)
def test_subsampled_matches_pld(history):
    ref = pld_epsilon(history, DELTA)
    r = A.epsilon(history, DELTA)
    assert abs(r.prv - ref) <= max(0.03 * ref, 0.05)
    assert r.prv_lower <= ref + 0.05
    assert r.rdp >= ref - 0.01
    assert r.rdp <= 1.5 * ref


def test_epsilon_under_and_report_accessors():
    h = ((1.1, 0.3, 50),)
    r = A.epsilon(h, DELTA)
    assert A.epsilon_under("prv", h, DELTA) == r.prv == r.get("prv")
    assert A.epsilon_under("rdp", h, DELTA) == r.rdp == r.get("rdp")
    assert r.as_dict() == {"prv": r.prv, "prv_lower": r.prv_lower, "prv_estimate": r.prv_estimate, "rdp": r.rdp}
    with pytest.raises(ConfigValueError):
        A.epsilon_under("gaussian-clt", h, DELTA)


# ------------------------------------------------- (c) solve_noise_multiplier
@pytest.mark.parametrize(
    "target,q,steps,accountant",
    [(2.0, 1.0, 10, "prv"), (1.0, 1.0, 3, "rdp"), (2.0, 0.05, 100, "prv"), (3.0, 0.02, 500, "rdp")],
)
def test_solve_noise_multiplier_tight(target, q, steps, accountant):
    sigma = A.solve_noise_multiplier(target, DELTA, q, steps, accountant=accountant)
    assert sigma > 0
    assert A.epsilon_under(accountant, ((sigma, q, steps),), DELTA) <= target
    assert A.epsilon_under(accountant, ((sigma * (1 - 0.01), q, steps),), DELTA) > target


def test_solve_noise_multiplier_full_batch_near_exact():
    target, steps = 2.0, 10
    sigma = A.solve_noise_multiplier(target, DELTA, 1.0, steps)
    mu_star = brentq(lambda mu: gdp_delta(target, mu) - DELTA, 1e-3, 50)
    z_star = math.sqrt(steps) / mu_star  # the exact smallest noise multiplier
    assert z_star <= sigma <= z_star * 1.02


def test_solve_noise_multiplier_rejects_bad_targets():
    with pytest.raises(ConfigValueError):
        A.solve_noise_multiplier(0.0, DELTA, 0.1, 10)
    with pytest.raises(ConfigValueError):
        A.solve_noise_multiplier(-1.0, DELTA, 0.1, 10)
    with pytest.raises(ConfigValueError):
        A.solve_noise_multiplier(1.0, DELTA, 0.1, 0)


# ---------------------------------------------------------------- (d) normalize
def test_normalize_merges_consecutive_equal_entries():
    raw = [(1.0, 0.1, 5), (1.0, 0.1, 3), (2.0, 0.1, 4), (1.0, 0.1, 0), (2.0, 0.1, 1), (2.0, 0.2, 2)]
    out = A.normalize(raw)
    assert out == ((1.0, 0.1, 8), (2.0, 0.1, 5), (2.0, 0.2, 2))
    assert all(isinstance(s, float) and isinstance(q, float) and isinstance(n, int) for s, q, n in out)
    # non-consecutive equal entries are kept apart (order is preserved)
    assert A.normalize([(1, 0.1, 2), (2, 0.1, 2), (1, 0.1, 2)]) == ((1.0, 0.1, 2), (2.0, 0.1, 2), (1.0, 0.1, 2))
    assert A.normalize([]) == ()
    assert A.normalize([(1.0, 0.1, 0), (2.0, 0.3, -1)]) == ()
    # idempotent
    assert A.normalize(out) == out


def test_merged_and_unmerged_histories_have_same_epsilon():
    unmerged = [(1.0, 0.2, 7), (1.0, 0.2, 13), (1.0, 0.2, 0)]
    merged = [(1.0, 0.2, 20)]
    a, b = A.epsilon(unmerged, DELTA), A.epsilon(merged, DELTA)
    assert a == b
    assert a.prv == pytest.approx(pld_epsilon(((1.0, 0.2, 20),), DELTA), rel=0.03)


def test_composition_is_order_independent():
    # not merged by normalize, but composition commutes
    a = A.epsilon([(1.0, 0.2, 5), (3.0, 0.2, 5), (1.0, 0.2, 5)], DELTA)
    b = A.epsilon([(1.0, 0.2, 10), (3.0, 0.2, 5)], DELTA)
    assert a.rdp == pytest.approx(b.rdp, rel=1e-9)
    assert abs(a.prv - b.prv) <= 0.03
    assert a.prv_lower <= b.prv and b.prv_lower <= a.prv


# ------------------------------------------------- (e) monotonicity and errors
def test_epsilon_monotone_in_steps():
    for q, steps in ((1.0, (1, 2, 5, 20, 100)), (0.1, (10, 11, 40))):
        reports = [A.epsilon(((1.0, q, t),), DELTA) for t in steps]
        for lo, hi in zip(reports, reports[1:]):
            assert hi.prv > lo.prv
            assert hi.rdp > lo.rdp
    # and adding a further entry never lowers it
    assert A.epsilon(((1.0, 0.1, 40), (5.0, 1.0, 1)), DELTA).prv >= reports[-1].prv


def test_epsilon_monotone_in_noise_and_delta():
    prv = [A.epsilon(((z, 1.0, 10),), DELTA).prv for z in (0.8, 1.0, 2.0, 4.0)]
    assert prv == sorted(prv, reverse=True) and len(set(prv)) == 4
    by_delta = [A.epsilon(((1.0, 1.0, 10),), d).rdp for d in (1e-8, 1e-5, 1e-2)]
    assert by_delta == sorted(by_delta, reverse=True)


def test_zero_noise_is_infinite():
    r = A.epsilon(((0.0, 0.1, 10),), DELTA)
    assert r.prv == r.prv_lower == r.prv_estimate == r.rdp == math.inf
    r = A.epsilon(((1.0, 0.1, 10), (0.0, 0.5, 1)), DELTA)
    assert r.prv == math.inf and r.rdp == math.inf


def test_empty_history_is_zero():
    r = A.epsilon((), DELTA)
    assert (r.prv, r.prv_lower, r.prv_estimate, r.rdp) == (0.0, 0.0, 0.0, 0.0)
    assert A.epsilon(((1.0, 0.1, 0),), DELTA).prv == 0.0


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 1.5])
def test_bad_delta_raises_config_value_error(delta):
    for accountant in ("prv", "rdp"):
        with pytest.raises(ConfigValueError) as info:
            A.epsilon_under(accountant, ((1.0, 0.1, 10),), delta)
        assert isinstance(info.value, ValueError)
        assert info.value.field == "delta"
    with pytest.raises(ValueError):
        A.epsilon(((1.0, 0.1, 10),), delta)


@pytest.mark.parametrize("entry,field", [((1.0, 0.0, 10), "sample_rate"), ((1.0, 1.5, 10), "sample_rate"), ((-1.0, 0.1, 10), "noise_multiplier")])
def test_bad_history_entries_raise(entry, field):
    for accountant in ("prv", "rdp"):
        with pytest.raises(ConfigValueError) as info:
            A.epsilon_under(accountant, (entry,), DELTA)
        assert info.value.field == field
