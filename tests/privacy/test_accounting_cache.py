"""The accounting caches and the noise solver's coarse shortcut (issue 15): every
cached or shortcut answer must equal the one computed from scratch."""

from __future__ import annotations

import pytest

from securefl.privacy import accounting as A
from securefl.privacy.ledger import PrivacyLedger

DELTA = 1e-5

#: a mix: full batch and subsampled, one and two segments, one history split two
#: ways (the same after normalize), and neighbours differing in one field only
HISTORIES = [
    ((4.0, 1.0, 3),),
    ((4.0, 1.0, 2), (4.0, 1.0, 1)),  # normalizes to the one above
    ((4.0, 1.0, 4),),
    ((4.5, 1.0, 3),),
    ((2.0, 0.1, 20),),
    ((2.0, 0.2, 20),),
    ((2.0, 0.1, 20), (3.0, 1.0, 2)),
    ((3.0, 1.0, 2), (2.0, 0.1, 21)),
]


def _solve_reference(target: float, delta: float, q: float, steps: int, accountant: str = "prv", tol: float = 0.005):
    """The solver as it was before the shortcut: every comparison by the full accountant."""

    def eps(sigma: float) -> float:
        return A.epsilon_under(accountant, ((sigma, q, steps),), delta)

    lo, hi = 0.0, 1.0
    while eps(hi) > target:
        lo, hi = hi, hi * 2
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        if eps(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def test_cached_epsilons_equal_uncached_for_a_mix_of_histories():
    A.clear_caches()
    for delta in (DELTA, 1e-6):
        for _ in range(2):  # second pass: every answer comes from the caches
            for h in HISTORIES:
                norm = A.normalize(h)
                assert A.rdp_epsilon(h, delta) == A._rdp_to_epsilon(norm, delta)
                assert A.prv_epsilon(norm, delta) == A.prv_epsilon.__wrapped__(norm, delta)
                for eps_error in (0.01, 0.1):
                    args = (norm, eps_error, delta / 1000)
                    assert A._prv_domain_size(*args) == A._prv_domain_size.__wrapped__(*args)
                report = A.epsilon(h, delta)
                lo, est, hi = A.prv_epsilon.__wrapped__(norm, delta)
                assert (report.prv_lower, report.prv_estimate, report.prv, report.rdp) == (
                    lo, est, hi, A._rdp_to_epsilon(norm, delta),
                )
    # distinct histories got distinct answers (a cache keyed on too little would merge them)
    values = {A.normalize(h): A.rdp_epsilon(h, DELTA) for h in HISTORIES}
    assert len(set(values.values())) == len(values) == len(HISTORIES) - 1


def test_clear_caches_empties_every_cache():
    A.rdp_epsilon(HISTORIES[0], DELTA)
    A.prv_epsilon(HISTORIES[0], DELTA)
    A.solve_noise_multiplier(3.0, DELTA, 1.0, 3)
    A.clear_caches()
    for fn in (A.prv_epsilon, A._rdp_epsilon, A._rdp_one_step, A._prv_domain_size, A.solve_noise_multiplier):
        assert fn.cache_info().currsize == 0


def test_ledger_epsilons_equal_a_cold_recomputation(tmp_path):
    # interleaved subjects with different schedules: each entry's report must be
    # its own subject's history, as computed with every cache cleared
    A.clear_caches()
    ledger = PrivacyLedger(tmp_path / "l.json", delta=DELTA, budget=50.0, accountant="prv")
    runs = {"a": (4.0, 1.0, 1), "b": (2.0, 0.1, 10), "c": (4.0, 1.0, 2)}
    for rnd in range(3):
        for subject, (z, q, n) in runs.items():
            ledger.record(subject=subject, round=rnd, mechanism="dp-sgd", noise_multiplier=z, sample_rate=q, steps=n)
    loaded = PrivacyLedger.load(tmp_path / "l.json")
    seen: dict[str, list] = {}
    for entry in loaded.entries:
        seen.setdefault(entry["subject"], []).append((entry["noise_multiplier"], entry["sample_rate"], entry["steps"]))
        A.clear_caches()
        assert entry["epsilon"] == A.epsilon(tuple(seen[entry["subject"]]), DELTA).as_dict()


@pytest.mark.parametrize(
    "target,q,steps",
    [(3.0, 1.0, 10), (1.0, 1.0, 10), (8.0, 1.0, 5), (0.5, 1.0, 3), (2.0, 0.05, 100), (3.0, 0.2, 20)],
)
def test_solver_shortcut_returns_the_reference_sigma(target, q, steps, monkeypatch):
    A.clear_caches()
    calls = []
    real = A.epsilon_under
    monkeypatch.setattr(A, "epsilon_under", lambda *a: calls.append(a) or real(*a))
    fast = A.solve_noise_multiplier(target, DELTA, q, steps)
    fine_calls = len(calls)
    A.clear_caches()
    assert fast == _solve_reference(target, DELTA, q, steps)
    assert fine_calls < len(calls) - fine_calls  # the shortcut decided some comparisons


@pytest.mark.parametrize("eps_error", A._COARSE_EPS_ERRORS)
@pytest.mark.parametrize("q,steps", [(1.0, 10), (0.1, 30)])
def test_coarse_verdict_never_contradicts_the_full_accountant(q, steps, eps_error):
    decided = 0
    for sigma in (0.8, 1.0, 1.5, 2.0, 3.0, 4.0, 4.4, 5.0, 8.0):
        fine = A.epsilon_under("prv", ((sigma, q, steps),), DELTA)
        for target in (fine - 0.3, fine - 0.05, fine - 0.02, fine, fine + 0.02, fine + 0.05, fine + 0.3):
            verdict = A._coarse_verdict(sigma, q, steps, DELTA, target, eps_error)
            if verdict is not None:
                decided += 1
                assert verdict == (fine > target), (sigma, target, fine)
    assert decided > 0
