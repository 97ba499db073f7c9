"""End-to-end federated runs in one process."""

import json

import pytest

from securefl import PrivacyLedger, RunConfig, Simulation

ROUND_KEYS = {"round", "accuracy", "loss", "epsilon", "bytes_up", "bytes_down", "seconds"}


def test_plain_run_learns_and_writes_metrics(tmp_path):
    cfg = RunConfig.from_flat({"rounds": 8, "seed": 0})
    res = Simulation(cfg, out_dir=tmp_path).run()
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m) >= {"config", "rounds", "final"}
    assert len(m["rounds"]) == 8 and all(ROUND_KEYS <= set(r) for r in m["rounds"])
    assert set(m["final"]) >= {"accuracy", "epsilon", "delta"}
    assert m["final"]["accuracy"] > 0.85
    assert m["rounds"][-1]["accuracy"] > m["rounds"][0]["accuracy"]
    assert m["final"]["epsilon"] is None
    # every client uploads at least its float32 update each round
    dim = res.server.weights.numel()
    assert all(r["bytes_up"] >= 10 * 4 * dim for r in m["rounds"])
    assert all(r["bytes_down"] >= 10 * 4 * dim for r in m["rounds"])
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert PrivacyLedger.load(tmp_path / "ledger.json").entries == []


def test_dp_sample_run_stays_within_every_clients_budget(tmp_path):
    cfg = RunConfig.from_flat(
        {"rounds": 4, "dp": "sample", "epsilon": 2.0, "sample_rate": 0.3, "local_epochs": 1.0, "model": "logreg"}
    )
    Simulation(cfg, out_dir=tmp_path).run()
    m = json.loads((tmp_path / "metrics.json").read_text())
    ledger = PrivacyLedger.load(tmp_path / "ledger.json")
    assert len(m["final"]["clients"]) == 10
    for cid, c in m["final"]["clients"].items():
        assert 1.8 <= c["epsilon"] <= 2.0  # the budget is used, never exceeded
        assert c["epsilon_rdp"] >= c["epsilon_prv_lower"]
        assert ledger.spent(cid).prv == pytest.approx(c["epsilon"])
        assert c["rounds"] == 4
    assert m["final"]["epsilon"] == pytest.approx(max(c["epsilon"] for c in m["final"]["clients"].values()))
    eps = [r["epsilon"] for r in m["rounds"]]
    assert eps == sorted(eps)


def test_dp_client_adaptive_run(tmp_path):
    cfg = RunConfig.from_flat(
        {
            "rounds": 6,
            "clients": 20,
            "fraction": 0.5,
            "sampling": "poisson",
            "dp": "client",
            "epsilon": 4.0,
            "clip": 0.5,
            "adaptive_clip": True,
            "model": "logreg",
        }
    )
    Simulation(cfg, out_dir=tmp_path).run()
    m = json.loads((tmp_path / "metrics.json").read_text())
    clips = [r["clip"] for r in m["rounds"]]
    assert len(set(clips)) > 1
    assert m["final"]["epsilon"] <= 4.0
    ledger = PrivacyLedger.load(tmp_path / "ledger.json")
    assert ledger.subjects() == ["federation"] and len(ledger.entries) == 6


def test_reproducible_noise_is_opt_in():
    base = {"rounds": 2, "dp": "sample", "noise_multiplier": 1.0, "sample_rate": 0.5, "local_epochs": 1.0, "model": "logreg"}
    acc = lambda flat: Simulation(RunConfig.from_flat(flat)).run().server.weights  # noqa: E731
    a, b = acc({**base, "reproducible_noise": True}), acc({**base, "reproducible_noise": True})
    assert (a == b).all()
    c, d = acc(base), acc(base)
    assert not (c == d).all()


def test_regression_task_runs():
    cfg = RunConfig.from_flat({"dataset": "linreg", "model": "linreg", "rounds": 5, "partition": "iid", "lr": 0.05})
    m = Simulation(cfg).run().metrics
    assert m["final"]["accuracy"] is None
    assert m["rounds"][-1]["loss"] < 0.1 * m["rounds"][0]["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_must_show_plain_accuracy(seed):
    m = Simulation(RunConfig.from_flat({"rounds": 30, "seed": seed})).run().metrics
    assert m["final"]["accuracy"] >= 0.95


@pytest.mark.slow
def test_must_show_dp_sample_accuracy():
    """Demo settings over seeds 0-2. The DP noise is fresh on every run: over ten seeds
    we measured a mean of 0.885 (min 0.872), and the DP defaults (the same recipe with an
    EMA) 0.889 with a standard deviation of 0.014 across runs. The mean of three then
    varies by about 0.008, so the check sits three of those below the measured mean, and
    a single run four standard deviations below it: an unlucky draw does not fail it."""
    from securefl.cli import DEMO_SETTINGS

    accs = []
    for seed in (0, 1, 2):
        m = Simulation(RunConfig.from_flat({**DEMO_SETTINGS, "seed": seed})).run().metrics
        assert all(c["epsilon"] <= 3.0 for c in m["final"]["clients"].values())
        accs.append(m["final"]["accuracy"])
    assert sum(accs) / 3 >= 0.86 and min(accs) >= 0.83
