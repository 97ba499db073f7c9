"""Tests of :mod:`attacks.audit` (empirical epsilon lower bounds)."""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from attacks import audit as A
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
    got = A.one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta)
    want = float(_ref_p_value(m, r, v, eps, delta))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_pure_dp_p_value_is_the_binomial_tail():
    p = math.exp(2) / (1 + math.exp(2))
    got = A.one_run_p_value(canaries=100, guesses=40, correct=35, epsilon=2.0, delta=0.0)
    assert got == pytest.approx(stats.binom.sf(34, 40, p), rel=1e-12)
    # the delta correction only ever adds
    with_delta = A.one_run_p_value(canaries=100, guesses=40, correct=35, epsilon=2.0, delta=1e-3)
    assert with_delta > got


def test_all_correct_pure_dp_bound_has_closed_form():
    # p^r = beta  =>  eps = logit(beta^(1/r))
    for r in (10, 100, 500):
        p = 0.05 ** (1 / r)
        want = math.log(p / (1 - p))
        got = A.one_run_epsilon_lower_bound(canaries=2 * r, guesses=r, correct=r, delta=0.0, confidence=0.95)
        assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("m, r, v", [(1000, 100, 95), (1000, 500, 500), (300, 150, 120), (1000, 200, 120)])
def test_lower_bound_is_where_the_reference_p_value_crosses_beta(m, r, v):
    eps = A.one_run_epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=DELTA, confidence=0.95)
    assert eps > 0
    assert _ref_p_value(m, r, v, eps, DELTA) < 0.05  # still rejected at the bound
    assert _ref_p_value(m, r, v, eps + 1e-6, DELTA) >= 0.05 - 1e-9  # and not just above it
    for below in np.linspace(0, eps, 7):  # every smaller epsilon is rejected too
        assert _ref_p_value(m, r, v, float(below), DELTA) < 0.05


def test_no_evidence_gives_zero():
    assert A.one_run_epsilon_lower_bound(canaries=1000, guesses=100, correct=50, delta=DELTA) == 0.0
    assert A.one_run_epsilon_lower_bound(canaries=1000, guesses=0, correct=0, delta=DELTA) == 0.0


def test_bad_counts_are_rejected():
    with pytest.raises(ConfigValueError, match="correct"):
        A.one_run_epsilon_lower_bound(canaries=10, guesses=5, correct=6, delta=DELTA)
    with pytest.raises(ConfigValueError, match="guesses"):
        A.one_run_p_value(canaries=10, guesses=11, correct=1, epsilon=1.0, delta=DELTA)
    with pytest.raises(ConfigValueError, match="confidence"):
        A.one_run_epsilon_lower_bound(canaries=10, guesses=5, correct=5, delta=DELTA, confidence=1.0)


def test_guess_picks_extremes_and_abstains():
    scores = np.array([0.1, 5.0, -3.0, 2.0, 0.0, -1.0])
    assert A.guess(scores, 2, 1).tolist() == [0, 1, -1, 1, 0, 0]
    assert A.guess(scores, 0, 2).tolist() == [0, 0, -1, 0, 0, -1]


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
    true_eps = A.gaussian_epsilon(1 / sigma, DELTA)
    bounds = []
    for trial in range(12):
        scores, included = _gaussian_trial(trial, sigma)
        res = A.one_run_audit(scores, included, delta=DELTA, confidence=0.95, k_pos=100, k_neg=100)
        assert res.guesses == 200 and res.canaries == 1000
        bounds.append(res.epsilon_lower_bound)
    # sound: at 95% confidence at most a rare trial may exceed; this audit never does here
    assert max(bounds) <= true_eps
    # non-trivial: a real fraction of the truth
    assert np.mean(bounds) > (0.8 if sigma == 1.0 else 2.0)


def test_bound_is_large_without_noise():
    scores, included = _gaussian_trial(0, 0.0)
    res = A.one_run_audit(scores, included, delta=DELTA)
    assert res.correct == res.guesses
    assert res.epsilon_lower_bound > 4.0
    assert res.candidates == len(A.guess_sizes(1000))


def test_bonferroni_costs_something_against_a_fixed_guess():
    scores, included = _gaussian_trial(0, 0.0)
    fixed = A.one_run_audit(scores, included, delta=DELTA, k_pos=300, k_neg=300)
    auto = A.one_run_audit(scores, included, delta=DELTA)
    assert auto.k_pos == 300 and auto.k_neg == 300
    assert fixed.epsilon_lower_bound > auto.epsilon_lower_bound


def test_random_scores_give_no_evidence():
    rng = SecureRNG.from_seed(3, "test")
    included = rng.bernoulli(0.5, 1000)
    res = A.one_run_audit(rng.uniform(1000), included, delta=DELTA)
    assert res.epsilon_lower_bound < 0.5


# ------------------------------------------------------ Gaussian epsilon, estimate
@pytest.mark.parametrize("mu", [0.3, 1.0, 2.5])
def test_gaussian_epsilon_matches_prv_accountant(mu):
    lo, _, hi = accounting.prv_epsilon(((1 / mu, 1.0, 1),), DELTA)
    eps = A.gaussian_epsilon(mu, DELTA)
    assert lo - 1e-9 <= eps <= hi + 1e-9
    assert A.gaussian_delta(eps, mu) == pytest.approx(DELTA, rel=1e-6)


def test_one_shot_estimate_recovers_mu():
    rng = SecureRNG.from_seed(1, "test")
    out = rng.normal((4000,), dtype=torch.float64).numpy()
    inn = 1.5 + rng.normal((4000,), dtype=torch.float64).numpy()
    est = A.one_shot_estimate(inn, out, DELTA)
    assert est["mu"] == pytest.approx(1.5, abs=0.1)
    assert est["epsilon_estimate"] == pytest.approx(A.gaussian_epsilon(est["mu"], DELTA))


# ------------------------------------------------------------- two hypotheses
@pytest.mark.parametrize("k, n", [(0, 20), (3, 20), (20, 20), (17, 200)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n):
    # a one-sided 97.5% bound is one end of the two-sided 95% exact interval
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = A.clopper_pearson(k, n, 0.975)
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


def test_two_hypothesis_audit_of_dp_fedavg_noise_is_sound():
    z = 1.0
    res = A.audit_dp_fedavg_round(noise_multiplier=z, trials=1500, rng=SecureRNG.from_seed(0, "t"))
    assert 0.3 < res.epsilon_lower_bound <= A.gaussian_epsilon(1 / z, DELTA)
    assert res.trials == 3000


def test_two_hypothesis_audit_catches_too_little_noise():
    # a mechanism that adds a tenth of the noise it claims: the audit proves the
    # claimed epsilon (z = 2) false
    claimed = A.gaussian_epsilon(1 / 2.0, DELTA)
    res = A.audit_dp_fedavg_round(noise_multiplier=0.2, trials=600, rng=SecureRNG.from_seed(1, "t"))
    assert res.epsilon_lower_bound > claimed + 1.0


# ----------------------------------------------------------- federated runs
def _run(**flat):
    from securefl.config import RunConfig

    base = {"dataset": "digits", "clients": 4, "rounds": 2, "model": "logreg", "local_epochs": 1.0, "seed": 0}
    return RunConfig.from_flat({**base, **flat})


def test_client_canaries_under_client_dp_stay_below_the_accountant(tmp_path):
    # z = 2.8 over 2 full-participation rounds: epsilon 2.03 (no noise-multiplier search)
    rep = A.run_empirical_audit(
        _run(dp="client", noise_multiplier=2.8, rounds=2), A.EmpiricalAuditConfig(canaries=200), out_dir=tmp_path
    )
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert rep["epsilon_upper_bound"] == ledger["entries"][-1]["epsilon"]["prv"]
    assert rep["epsilon_upper_bound"] == pytest.approx(accounting.prv_epsilon(((2.8, 1.0, 2),), DELTA)[2])
    assert [e["subject"] for e in ledger["entries"]] == ["federation", "federation"]
    assert 0.0 <= rep["epsilon_lower_bound"] <= rep["epsilon_upper_bound"] and rep["sound"]
    assert 0 < rep["epsilon_estimate"] < 6  # the one-shot estimate is near the truth, not a bound


def test_inclusion_coins_follow_the_seed():
    a = A.SecureRNG.from_seed(5, "audit-inclusion").bernoulli(0.5, 64)
    b = A.SecureRNG.from_seed(5, "audit-inclusion").bernoulli(0.5, 64)
    c = A.SecureRNG.from_seed(6, "audit-inclusion").bernoulli(0.5, 64)
    assert (a == b).all() and not (a == c).all()


def test_example_canaries_are_mislabelled_and_leave_the_real_data():
    x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    y = torch.arange(20) % 4
    idx, cx, cy = A.example_canaries(x, y, 8, 4, SecureRNG.from_seed(0, "c"))
    assert len(set(idx.tolist())) == 8
    assert torch.equal(cx, x[idx]) and (cy != y[idx]).all()


@pytest.mark.parametrize(
    "kwargs, dp, field",
    [
        ({"canaries": 1}, "none", "canaries"),
        ({"kind": "sample"}, "none", "canary_kind"),
        ({"kind": "client"}, "sample", "canary_kind"),
        ({"kind": "client", "score": "loss"}, "client", "score"),
        ({"confidence": 1.5}, "none", "confidence"),
        ({"canaries": 10, "k_pos": 8, "k_neg": 5}, "none", "k_pos"),
    ],
)
def test_bad_audit_settings_name_the_field(kwargs, dp, field):
    with pytest.raises(ConfigValueError) as info:
        A.EmpiricalAuditConfig(**kwargs).resolved(dp)
    assert info.value.field == field


def test_cli_without_dp_gives_a_large_bound_and_the_contract_json(tmp_path, capsys):
    from securefl import cli

    # the MLP has 4,810 parameters: the random directions of 200 canaries barely interfere
    code = cli.main([
        "audit", "empirical", "--canaries", "200", "--dp", "none", "--dataset", "digits", "--model", "mlp",
        "--clients", "3", "--rounds", "1", "--local-epochs", "1", "--seed", "2",
        "--out", str(tmp_path), "--no-progress",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    data = json.loads(out)
    for key in ("epsilon_lower_bound", "epsilon_upper_bound", "delta", "confidence", "canaries", "guesses", "correct"):
        assert key in data
    assert data["canaries"] == 200 and data["confidence"] == 0.95 and data["canary_kind"] == "client"
    assert data["epsilon_upper_bound"] is None
    assert data["correct"] >= data["guesses"] - 2
    assert data["epsilon_lower_bound"] > 2.5
    assert "epsilon >=" in err and json.loads((tmp_path / "audit.json").read_text())["correct"] == data["correct"]
    assert (tmp_path / "audit_scores.png").read_bytes()[:4] == b"\x89PNG"
    code = cli.main(["audit", "empirical", "--dp", "sample", "--epsilon", "1", "--canary-kind", "client", "--out", str(tmp_path)])
    assert code == 2 and "--canary-kind" in capsys.readouterr().err


def test_per_example_gradients_match_autograd():
    from securefl.models import build_model, get_flat

    model = build_model("mlp", (8,), 3, hidden=5, seed=0)
    rng = SecureRNG.from_seed(0, "g")
    x = rng.normal((4, 8))
    y = torch.tensor([0, 2, 1, 2])
    got = A._per_example_grads(model, x, y)
    assert got.shape == (4, get_flat(model).numel())
    for i in range(4):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        want = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        assert torch.allclose(got[i], want, atol=1e-6)


def test_gradient_alignment_scorer_rewards_a_step_along_the_negative_gradient():
    from securefl.models import build_model, get_flat

    model = build_model("logreg", (6,), 3, seed=0)
    rng = SecureRNG.from_seed(1, "g")
    x, y = rng.normal((5, 6)), torch.tensor([0, 1, 2, 0, 1])
    start = get_flat(model)
    scorer = A.SCORERS["gradient"]("gradient", model, start, x=x, y=y)
    scorer.before_round(start)
    step = -A._per_example_grads(model, x[2:3], y[2:3])[0]
    scorer.after_round(start + 0.1 * step / step.norm())
    scores = scorer.final(start)
    assert int(np.argmax(scores)) == 2 and scores[2] == pytest.approx(0.1, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("score, data", [("gradient", "noise"), ("loss", "mislabelled")])
def test_example_canaries_run_end_to_end(tmp_path, score, data):
    cfg = A.EmpiricalAuditConfig(canaries=60, kind="example", score=score, canary_data=data)
    rep = A.run_empirical_audit(_run(dp="none", clients=2, rounds=1), cfg, out_dir=tmp_path)
    assert rep["canary_kind"] == "example" and rep["score"] == score and rep["canary_data"] == data
    assert rep["canaries"] == 60 and 0 < rep["included"] < 60
    assert 0 <= rep["correct"] <= rep["guesses"] <= 60 and rep["epsilon_lower_bound"] >= 0


def test_one_shot_estimate_without_data_is_null_not_nan():
    assert A.one_shot_estimate(np.array([1.0]), np.array([0.0, 0.1]), DELTA) == {"mu": None, "epsilon_estimate": None}
    assert A.one_shot_estimate(np.ones(3), np.ones(3), DELTA)["epsilon_estimate"] is None


def test_cli_mechanism_audit(capsys):
    from securefl import cli

    assert cli.main(["audit", "mechanism", "--noise-multiplier", "0.5", "--trials", "400"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trials"] == 800 and data["sound"]
    assert 1.0 < data["epsilon_lower_bound"] <= data["epsilon_upper_bound"]
    assert data["epsilon_upper_bound"] == pytest.approx(A.gaussian_epsilon(2.0, DELTA), abs=0.02)
    assert cli.main(["audit", "mechanism", "--noise-multiplier", "0"]) == 2
    assert "--noise-multiplier" in capsys.readouterr().err
