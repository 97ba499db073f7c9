"""Poisoning runs: a clean and an attacked federation, small enough for the suite."""

from __future__ import annotations

from attacks.poisoning.attacks import ScalingBackdoor, make_attack
from attacks.poisoning.cases import PoisonCase
from attacks.poisoning.run import poison_experiment, run_federation
from securefl.config import RunConfig
from securefl.data import load_dataset


def test_ipm_breaks_mean_but_not_median(run_config):
    data = load_dataset("synthetic", seed=0)
    clean = run_federation(run_config(rounds=4), make_attack("none"), PoisonCase(0.0), data=data)
    mean = run_federation(run_config(rounds=4), make_attack("ipm", {"epsilon": 100}), PoisonCase(0.2), data=data)
    median = run_federation(run_config(rounds=4, aggregator="median", byzantine=2), make_attack("ipm", {"epsilon": 100}),
                            PoisonCase(0.2), data=data)
    assert clean["main_accuracy"] > 0.7
    assert mean["main_accuracy"] < clean["main_accuracy"] - 0.3
    assert median["main_accuracy"] > clean["main_accuracy"] - 0.1
    assert mean["mean_malicious_norm"] > 50 * mean["mean_benign_norm"]


def test_server_enforces_client_dp_clip_on_malicious_updates(run_config):
    res = run_federation(
        run_config(rounds=2, dp="client", noise_multiplier=0.0, clip=0.1),
        make_attack("sign_flip", {"scale": 1000.0}),
        PoisonCase(0.2),
    )
    # two malicious clients per round exceed the clip and are clipped by the server
    assert res["server_clipped"] >= 4


def test_backdoor_succeeds_against_mean_and_metrics_exclude_target():
    data = load_dataset("digits", seed=0)
    cfg = RunConfig.from_flat({"dataset": "digits", "clients": 10, "partition": "iid", "rounds": 4,
                               "local_epochs": 1.0, "seed": 0})
    out = poison_experiment(cfg, ScalingBackdoor(target=0), PoisonCase(0.2), data=data)
    assert out["targeted"] and out["attack_success_rate"] == out["attacked"]["targeted_success"]
    assert out["attack_success_rate"] > 0.8
    assert out["clean"]["targeted_success"] < 0.3
    assert out["main_accuracy"] > 0.6


def test_norm_bounding_removes_the_backdoor_scaling():
    """Sun et al. 2019: bounding every update's norm takes away model replacement's
    boost; what is left is the unscaled poisoned update, a fraction of the success."""
    data = load_dataset("digits", seed=0)
    success = {}
    for agg in ("mean", "norm_bound"):
        cfg = RunConfig.from_flat({"dataset": "digits", "clients": 10, "partition": "iid", "rounds": 6,
                                   "local_epochs": 1.0, "seed": 0, "aggregator": agg})
        success[agg] = run_federation(cfg, ScalingBackdoor(target=0), PoisonCase(0.2), data=data)["targeted_success"]
    unscaled_cfg = RunConfig.from_flat({"dataset": "digits", "clients": 10, "partition": "iid", "rounds": 6,
                                        "local_epochs": 1.0, "seed": 0})
    unscaled = run_federation(unscaled_cfg, ScalingBackdoor(target=0, gamma=1.0), PoisonCase(0.2), data=data)
    assert success["mean"] > 0.9
    assert success["norm_bound"] <= 0.5 * success["mean"]
    assert unscaled["targeted_success"] <= 0.5 * success["mean"]
