"""One audit: the two-hypothesis audit of a DP-FedAvg release, and canary runs of a federation."""

from __future__ import annotations

import json

import pytest

from attacks.audit.cases import EmpiricalAuditConfig
from attacks.audit.metrics import gaussian_epsilon
from attacks.audit.run import audit_dp_fedavg_round, run_empirical_audit
from securefl.privacy import accounting
from securefl.privacy.noise import SecureRNG

DELTA = 1e-5


def test_two_hypothesis_audit_of_dp_fedavg_noise_is_sound():
    z = 1.0
    res = audit_dp_fedavg_round(noise_multiplier=z, trials=1500, rng=SecureRNG.from_seed(0, "t"))
    assert 0.3 < res.epsilon_lower_bound <= gaussian_epsilon(1 / z, DELTA)
    assert res.trials == 3000


def test_two_hypothesis_audit_catches_too_little_noise():
    # a mechanism that adds a tenth of the noise it claims: the audit proves the
    # claimed epsilon (z = 2) false
    claimed = gaussian_epsilon(1 / 2.0, DELTA)
    res = audit_dp_fedavg_round(noise_multiplier=0.2, trials=600, rng=SecureRNG.from_seed(1, "t"))
    assert res.epsilon_lower_bound > claimed + 1.0


# ----------------------------------------------------------- federated runs
# ----------------------------------------------------------- federated runs
def _run(**flat):
    from securefl.config import RunConfig

    base = {"dataset": "digits", "clients": 4, "rounds": 2, "model": "logreg", "local_epochs": 1.0, "seed": 0}
    return RunConfig.from_flat({**base, **flat})


def test_client_canaries_under_client_dp_stay_below_the_accountant(tmp_path):
    # z = 2.8 over 2 full-participation rounds: epsilon 2.03 (no noise-multiplier search)
    rep = run_empirical_audit(
        _run(dp="client", noise_multiplier=2.8, rounds=2), EmpiricalAuditConfig(canaries=200), out_dir=tmp_path
    )
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert rep["epsilon_upper_bound"] == ledger["entries"][-1]["epsilon"]["prv"]
    assert rep["epsilon_upper_bound"] == pytest.approx(accounting.prv_epsilon(((2.8, 1.0, 2),), DELTA)[2])
    assert [e["subject"] for e in ledger["entries"]] == ["federation", "federation"]
    assert 0.0 <= rep["epsilon_lower_bound"] <= rep["epsilon_upper_bound"] and rep["sound"]
    assert 0 < rep["epsilon_estimate"] < 6  # the one-shot estimate is near the truth, not a bound


@pytest.mark.slow
@pytest.mark.parametrize("score, data", [("gradient", "noise"), ("loss", "mislabelled")])
def test_example_canaries_run_end_to_end(tmp_path, score, data):
    cfg = EmpiricalAuditConfig(canaries=60, kind="example", score=score, canary_data=data)
    rep = run_empirical_audit(_run(dp="none", clients=2, rounds=1), cfg, out_dir=tmp_path)
    assert rep["canary_kind"] == "example" and rep["score"] == score and rep["canary_data"] == data
    assert rep["canaries"] == 60 and 0 < rep["included"] < 60
    assert 0 <= rep["correct"] <= rep["guesses"] <= 60 and rep["epsilon_lower_bound"] >= 0
