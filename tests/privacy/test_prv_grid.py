"""PRV epsilons on shared grids (issue 15): :func:`accounting.prv_grid` sizes the
grid for the step count rounded up to a power of two, so a run's rounds reuse
cached discretizations (:mod:`securefl.privacy.prv`). Every epsilon must stay a
sound bound and within the accountant's ``eps_error`` of the per-history grid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from securefl.exceptions import LedgerError
from securefl.privacy import accounting as A
from securefl.privacy import audit_budget as B
from securefl.privacy import ledger as L
from securefl.privacy import prv
from securefl.privacy.ledger import PrivacyLedger

from .test_accounting import gdp_epsilon

DELTA, EPS_ERROR = 1e-5, 0.01

HISTORIES = [
    ((2.99, 1.0, 1),), ((2.99, 1.0, 7),), ((2.99, 1.0, 10),), ((0.8, 1.0, 3),), ((4.0, 1.0, 3), (2.0, 1.0, 2)),
    ((1.0, 0.05, 3),), ((1.0, 0.05, 100),), ((3.0, 0.5, 7), (1.0, 0.01, 100)), ((2.0, 0.1, 20), (3.0, 1.0, 2)),
    ((0.7, 0.3, 13), (1.2, 0.05, 40), (2.0, 1.0, 3)),
]  # fmt: skip


@pytest.mark.parametrize("delta", [DELTA, 1e-8])
@pytest.mark.parametrize("history", HISTORIES)
def test_shared_grid_epsilons_stay_within_eps_error_of_the_per_history_grid(history, delta):
    A.clear_caches()
    fast = A.prv_epsilon(history, delta)
    exact = A.prv_epsilon(history, delta, EPS_ERROR, True)
    assert fast != exact  # a different grid (a stubbed fast path would return the same numbers)
    for a, b in zip(fast, exact):
        assert abs(a - b) <= EPS_ERROR
        assert abs(a - b) <= 1e-4  # measured: <= 2e-6
    assert fast[0] <= exact[2] and exact[0] <= fast[2]  # both enclose the true epsilon


@pytest.mark.parametrize("delta", [DELTA, 1e-8])
@pytest.mark.parametrize("history", [h for h in HISTORIES if all(q == 1 for _, q, _ in h)] + [((1.5, 1.0, 33),)])
def test_full_batch_bounds_enclose_the_exact_gdp_epsilon(history, delta):
    mu = math.sqrt(sum(n / sigma**2 for sigma, _, n in history))
    exact = gdp_epsilon(mu, delta)
    lower, _, upper = A.prv_epsilon(history, delta)
    assert lower <= exact <= upper <= exact + 2 * EPS_ERROR + 1e-3
    assert A.gdp_epsilon(mu, delta) == pytest.approx(exact, abs=1e-9)


def test_grid_is_valid_for_the_history_and_fft_friendly():
    from scipy.fft import next_fast_len

    for history in HISTORIES:
        own, grid = A.prv_grid(history, EPS_ERROR, DELTA / 1000, True), A.prv_grid(history, EPS_ERROR, DELTA / 1000)
        assert grid.dt <= own.dt * (1 + 1e-12)  # a mesh for at least as many steps
        assert grid.t_min <= own.t_min + 1e-12 and grid.t_max >= own.t_max - 1e-12  # a domain at least as wide
        assert grid.size % 2 == 0 and next_fast_len(grid.size, real=True) == grid.size
        assert grid.t_min == pytest.approx(-(grid.size // 2 - 1) * grid.dt, abs=1e-9)  # zero where Opacus' FFT expects


def test_rounds_share_grids_and_discretizations(monkeypatch):
    A.clear_caches()
    made = []
    real = prv._discretize
    monkeypatch.setattr(prv, "_discretize", lambda *a: made.append(a[3].size) or real(*a))
    for rounds in range(1, 17):
        A.prv_epsilon(((2.5, 1.0, rounds),), DELTA)
    assert len(made) == 5  # grids for 1, 2, 4, 8, 16 steps, not one per round
    made.clear()
    A.prv_epsilon(((2.5, 1.0, 16),), DELTA, 0.1)  # another eps_error: another grid
    assert len(made) == 1


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # Opacus' q = 1 branch
def test_closed_form_mean_matches_quadrature():
    for sigma in (0.5, 2.99, 30.0):
        grid = A.prv_grid(((sigma, 1.0, 16),), EPS_ERROR, DELTA / 1000)
        truncated = prv.truncated_prv(1.0, sigma, grid.t_min, grid.t_max)
        assert prv.truncated_mean(1.0, sigma, truncated) == pytest.approx(truncated.mean(), rel=1e-12, abs=1e-15)


def test_discretization_cache_is_bounded(monkeypatch):
    A.clear_caches()
    monkeypatch.setattr(prv, "CACHE_BYTES", 2 * 2**20)
    for sigma in np.linspace(1.0, 3.0, 12):
        A.prv_epsilon(((float(sigma), 1.0, 16),), DELTA)  # ~0.5 MB each
    assert 0 < prv._cache_size[0] <= 2 * 2**20 and len(prv._cache) < 12
    prv.clear_cache()
    assert prv._cache_size[0] == 0 and not prv._cache


@pytest.mark.parametrize("steps", [1, 10, 50])
def test_gdp_verdict_never_contradicts_the_full_accountant(steps):
    decided = 0
    for sigma in (0.8, 1.0, 2.0, 3.0, 4.4, 8.0):
        fine = A.epsilon_under("prv", ((sigma, 1.0, steps),), DELTA)
        for target in (fine - 0.3, fine - 0.03, fine - 0.001, fine + 0.001, fine + 0.03, fine + 0.3):
            verdict = A._gdp_verdict(sigma, steps, DELTA, target)
            if verdict is not None:
                decided += 1
                assert verdict == (fine > target), (sigma, target, fine)
    assert decided >= 12


def _ledger(tmp_path, epsilon_of) -> PrivacyLedger:
    """A ledger of two clients' rounds whose entries carry ``epsilon_of(history)``, re-chained."""
    ledger = PrivacyLedger(None, delta=DELTA, budget=None)
    for rnd in range(5):
        for subject, (z, q) in {"a": (2.0, 1.0), "b": (1.5, 0.3)}.items():
            ledger.record(subject=subject, round=rnd, mechanism="dp-sgd", noise_multiplier=z, sample_rate=q, steps=3)
    prev = ledger.genesis
    for i, entry in enumerate(ledger.entries):
        history = A.normalize((e["noise_multiplier"], e["sample_rate"], e["steps"])
                              for e in ledger.entries[: i + 1] if e["subject"] == entry["subject"])  # fmt: skip
        body = {k: v for k, v in entry.items() if k not in ("prev", "hash")}
        body["epsilon"] = {**body["epsilon"], "prv": epsilon_of(history)}
        ledger.entries[i] = {**body, "prev": prev, "hash": L._entry_hash(prev, body)}
        prev = ledger.entries[i]["hash"]
    ledger.path = tmp_path / "ledger.json"
    ledger.save()
    return PrivacyLedger.load(ledger.path)


def test_audit_accepts_current_and_pre_shared_grid_ledgers_and_rejects_forgeries(tmp_path):
    current = _ledger(tmp_path, lambda h: A.prv_epsilon(h, DELTA)[2])
    assert B.budget_report(current)["epsilon_upper_bound"] == current.entries[-2]["epsilon"]["prv"]
    old = _ledger(tmp_path, lambda h: A.prv_epsilon(h, DELTA, EPS_ERROR, True)[2])  # written before issue 15
    assert old.entries[-1]["epsilon"]["prv"] != current.entries[-1]["epsilon"]["prv"]
    B.budget_report(old)
    forged = _ledger(tmp_path, lambda h: A.prv_epsilon(h, DELTA)[2] - 1e-4)
    with pytest.raises(LedgerError, match="does not follow from its history"):
        B.budget_report(forged)
