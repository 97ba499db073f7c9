"""Poisoning attacks: each attack's maths, the threat-model plumbing, and small runs."""

from __future__ import annotations

import json

import pytest
import torch

from attacks.poisoning import (
    ATTACKS,
    ALittleIsEnough,
    GaussianNoise,
    InnerProductManipulation,
    LabelFlip,
    MinMax,
    MinSum,
    RoundView,
    ScalingBackdoor,
    SignFlip,
    alie_z_max,
    apply_trigger,
    make_attack,
)
from attacks.poisoning_case import HonestObserver, MaliciousClient, PoisonCase, install
from attacks.poisoning_metrics import attack_success_rate, backdoor_success
from attacks.poisoning_run import poison_experiment, run_federation
from securefl.config import RunConfig
from securefl.data import load_dataset
from securefl.exceptions import ConfigValueError
from securefl.privacy.noise import SecureRNG
from securefl.simulation import Simulation



def _view(m=2, h=6, d=5, seed=0, honest=True, n=None):
    g = torch.Generator().manual_seed(seed)
    return RoundView(
        round=1,
        global_weights=torch.zeros(d),
        benign=torch.randn(m, d, generator=g),
        honest=torch.randn(h, d, generator=g) + 1.0 if honest else None,
        num_participants=n or m + h,
    )


def rng():
    return SecureRNG.from_seed(0, "test")


# ------------------------------------------------------------------ attack maths
def test_registry_and_unknown_parameter():
    assert set(ATTACKS) == {"none", "label_flip", "sign_flip", "gaussian", "backdoor", "alie", "ipm", "minmax", "minsum"}
    with pytest.raises(ConfigValueError) as info:
        make_attack("ipm", {"eps": 100})
    assert info.value.field == "attack_arg" and "epsilon" in info.value.reason
    with pytest.raises(ConfigValueError) as info:
        make_attack("nope")
    assert info.value.field == "attack"
    with pytest.raises(ConfigValueError) as info:
        make_attack("ipm", {"epsilon": -1})
    assert info.value.field == "epsilon"


def test_label_flip_all_and_targeted():
    y = torch.tensor([0, 1, 2, 9, 3])
    x = torch.zeros(5, 2)
    assert LabelFlip().poison_data(x, y, num_classes=10, rng=rng())[1].tolist() == [9, 8, 7, 0, 6]
    _, yt = LabelFlip(source=3, target=8).poison_data(x, y, num_classes=10, rng=rng())
    assert yt.tolist() == [0, 1, 2, 9, 8]
    with pytest.raises(ConfigValueError):
        LabelFlip(source=3)


def test_trigger_and_backdoor_data():
    x = torch.zeros(4, 1, 8, 8)
    t = apply_trigger(x)
    assert t[0, 0, -3:, -3:].tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert t[:, :, :5, :].abs().sum() == 0 and x.abs().sum() == 0  # input untouched
    assert apply_trigger(torch.zeros(2, 5))[1].tolist() == [0, 0, 1, 0, 1]  # tabular: last features
    with pytest.raises(ConfigValueError):
        apply_trigger(torch.zeros(2, 2))
    atk = ScalingBackdoor(target=7, poison_fraction=0.5)
    xp, yp = atk.poison_data(torch.rand(10, 1, 8, 8), torch.arange(10) % 3, num_classes=10, rng=rng())
    assert len(xp) == 15 and (yp[10:] == 7).all() and (yp[:10] == torch.arange(10) % 3).all()
    assert (xp[10:, 0, -1, -1] == 1).all()


def test_backdoor_scales_by_n_over_m_by_default():
    v = _view(m=2, h=8)
    assert torch.allclose(ScalingBackdoor().craft(v, rng()), v.benign * 5.0)
    assert torch.allclose(ScalingBackdoor(gamma=3.0).craft(v, rng()), v.benign * 3.0)


def test_sign_flip_and_gaussian():
    v = _view()
    assert torch.allclose(SignFlip(scale=2.0).craft(v, rng()), -2.0 * v.benign)
    big = RoundView(1, torch.zeros(20000), torch.zeros(2, 20000), None, 10)
    noise = GaussianNoise(std=3.0).craft(big, rng())
    assert abs(float(noise.std()) - 3.0) < 0.05 and abs(float(noise.mean())) < 0.05
    assert torch.equal(noise, GaussianNoise(std=3.0).craft(big, rng()))  # seeded stream


def test_alie_z_max_and_update():
    # n = 20, m = 4: s = floor(11) - 4 = 7, z = Phi^-1(13/20)
    assert alie_z_max(20, 4) == pytest.approx(0.38532, abs=1e-4)
    v = _view()
    out = ALittleIsEnough().craft(v, rng())
    z = alie_z_max(8, 2)
    expected = v.honest.mean(0) - z * v.honest.std(0)
    assert torch.allclose(out, expected.expand(2, -1), atol=1e-6)
    assert torch.allclose(ALittleIsEnough(z=1.5).craft(v, rng())[0], v.honest.mean(0) - 1.5 * v.honest.std(0), atol=1e-6)


def test_ipm_uses_honest_or_own_updates():
    v = _view()
    assert torch.allclose(InnerProductManipulation(epsilon=100).craft(v, rng())[1], -100 * v.honest.mean(0), atol=1e-4)
    own = _view(honest=False)
    assert torch.allclose(InnerProductManipulation(epsilon=0.5).craft(own, rng())[0], -0.5 * own.benign.mean(0), atol=1e-6)


@pytest.mark.parametrize("cls", [MinMax, MinSum])
@pytest.mark.parametrize("perturbation", ["unit", "std", "sign"])
def test_minmax_minsum_gamma_is_the_largest_feasible(cls, perturbation):
    v = _view(m=3, h=8, d=6, seed=3)
    atk = cls(perturbation=perturbation)
    g = atk.gamma(v)
    assert g > 0
    known = v.honest.double()
    mal = atk.craft(v, rng())[0].double()
    assert atk._ok(known, mal)
    from attacks.poisoning import _perturbation

    p = _perturbation(known, perturbation)
    assert not atk._ok(known, known.mean(0) + g * 1.01 * p)


# ------------------------------------------------------------------ cases
def _cfg(**kw):
    base = {"dataset": "synthetic", "clients": 10, "partition": "iid", "rounds": 3, "model": "logreg",
            "local_epochs": 1.0, "seed": 0}
    return RunConfig.from_flat({**base, **kw})


def test_install_swaps_last_clients_and_observes_honest_updates():
    sim = Simulation(_cfg())
    atk = InnerProductManipulation(epsilon=1.0)
    inst = install(sim, atk, PoisonCase(0.2, "omniscient"))
    assert inst.malicious_ids == ["client-8", "client-9"]
    assert all(isinstance(c, HonestObserver) for c in sim.clients[:8])
    assert all(isinstance(c, MaliciousClient) for c in sim.clients[8:])
    sim.run()
    hist = inst.coalition.history
    assert [h["honest_seen"] for h in hist] == [8, 8, 8]


def test_omniscient_coalition_must_answer_after_honest_clients():
    sim = Simulation(_cfg(rounds=1))
    install(sim, InnerProductManipulation(), PoisonCase(0.2, "omniscient"))
    sim.clients = sim.clients[-2:] + sim.clients[:-2]
    with pytest.raises(ConfigValueError) as info:
        sim.run()
    assert info.value.field == "knowledge"


def test_case_validation():
    with pytest.raises(ConfigValueError):
        PoisonCase(1.0)
    with pytest.raises(ConfigValueError):
        PoisonCase(0.2, "psychic")
    sim = Simulation(_cfg(clients=3))
    with pytest.raises(ConfigValueError, match="no honest"):
        install(sim, SignFlip(), PoisonCase(0.9))


def test_ipm_breaks_mean_but_not_median():
    data = load_dataset("synthetic", seed=0)
    clean = run_federation(_cfg(rounds=4), make_attack("none"), PoisonCase(0.0), data=data)
    mean = run_federation(_cfg(rounds=4), make_attack("ipm", {"epsilon": 100}), PoisonCase(0.2), data=data)
    median = run_federation(_cfg(rounds=4, aggregator="median", byzantine=2), make_attack("ipm", {"epsilon": 100}),
                            PoisonCase(0.2), data=data)
    assert clean["main_accuracy"] > 0.7
    assert mean["main_accuracy"] < clean["main_accuracy"] - 0.3
    assert median["main_accuracy"] > clean["main_accuracy"] - 0.1
    assert mean["mean_malicious_norm"] > 50 * mean["mean_benign_norm"]


def test_server_enforces_client_dp_clip_on_malicious_updates():
    res = run_federation(
        _cfg(rounds=2, dp="client", noise_multiplier=0.0, clip=0.1),
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


def test_backdoor_success_metric_on_a_constant_model():
    class Always(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), self.k), 10).float()

    y = torch.tensor([0, 0, 1, 2, 3])
    x = torch.zeros(5, 1, 8, 8)
    assert backdoor_success(Always(0), ScalingBackdoor(target=0), x, y) == 1.0  # 3 non-target inputs, all hit
    assert backdoor_success(Always(1), ScalingBackdoor(target=0), x, y) == 0.0
    assert attack_success_rate(SignFlip(), attacked_accuracy=0.3, clean_accuracy=0.9, targeted=None) == pytest.approx(0.6)


# ------------------------------------------------------------------ CLI and bench
def test_cli_poison_writes_contract(tmp_path, capsys):
    from securefl.cli import main

    rc = main(["attack", "poison", "--attack", "ipm", "--attack-arg", "epsilon=100", "--malicious-fraction", "0.2",
               "--aggregator", "mean", "--dataset", "synthetic", "--clients", "10", "--partition", "iid",
               "--rounds", "2", "--model", "logreg", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    data = json.loads((tmp_path / "poison.json").read_text())
    assert {"main_accuracy", "attack_success_rate", "clean_accuracy", "config"} <= set(data)
    assert data["attack_success_rate"] == pytest.approx(data["clean_accuracy"] - data["main_accuracy"])
    assert data["attack_params"] == {"epsilon": 100}
    rc = main(["attack", "poison", "--attack", "ipm", "--attack-arg", "eps=1", "--out", str(tmp_path)])
    assert rc == 2 and "--attack-arg" in capsys.readouterr().err


def test_bench_quick_writes_tables_and_plots(tmp_path):
    from attacks.poisoning_bench import run_suite

    res = run_suite(seeds=1, out=tmp_path, progress=False, quick=True, workers=1)
    for name in ("runs.csv", "summary.csv", "results.json", "poisoning.md", "accuracy.png", "attack_success.png"):
        assert (tmp_path / name).stat().st_size > 0
    acc = res["summary"]["main_accuracy"]
    assert acc["ipm_100"]["mean"] < acc["none"]["mean"] - 0.3
    assert res["summary"]["attack_success_rate"]["backdoor"]["mean"] > 0.8
    md = (tmp_path / "poisoning.md").read_text()
    assert "| **ipm_100** |" in md and "broken" in md


def test_malicious_clients_speak_secagg():
    """Under secure aggregation the coalition still submits through the protocol and
    the server, which sees only the sum, cannot filter it."""
    from securefl.protect import PROTECTIONS

    if "secagg" not in PROTECTIONS:
        pytest.skip("secagg not registered")
    cfg = _cfg(rounds=2, protect="secagg")
    clean = run_federation(cfg, make_attack("none"), PoisonCase(0.2))
    attacked = run_federation(cfg, make_attack("ipm", {"epsilon": 100}), PoisonCase(0.2))
    assert clean["aborted_rounds"] == 0 and attacked["aborted_rounds"] == 0
    assert attacked["main_accuracy"] < clean["main_accuracy"] - 0.3


def test_bench_dp_cells_are_reproducible():
    """The bench keys the DP noise from the seed, so a cell reruns to the same numbers."""
    from attacks.poisoning_bench import DEFENSES, QUICK_BASE, run_cell

    assert all(DEFENSES[d].get("reproducible_noise") for d in DEFENSES if DEFENSES[d].get("dp") == "client")
    task = {"attack": "backdoor", "defense": "dp_z2", "seed": 0, "base": {**QUICK_BASE, "rounds": 2},
            "malicious_fraction": 0.2, "knowledge": "omniscient"}
    a, b = run_cell(task), run_cell(task)
    assert a["epsilon"] is not None and a["epsilon"] > 0
    assert (a["main_accuracy"], a["targeted_success"]) == (b["main_accuracy"], b["targeted_success"])
