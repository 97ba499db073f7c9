"""Bring your own model and data: ``--model`` / ``--dataset MODULE:CALLABLE`` in every
entry point, the Python API taking a factory and a dataset object, and the checks
that refuse what cannot run (one line, exit 2)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from securefl import RunConfig, Simulation
from securefl.build import check, check_ckks_size
from securefl.cli import main
from securefl.data import as_federated, load_dataset
from securefl.exceptions import ConfigValueError
from securefl.userspec import load_callable
from tests.helpers import byo_model

ROOT = Path(__file__).resolve().parents[1]
HELPER = "tests/helpers/byo_model.py"
MODEL, DATA = f"{HELPER}:factory", f"{HELPER}:digits"
USER = ["--model", MODEL, "--dataset", DATA]


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the specs are paths relative to the working directory


def _calls() -> dict[str, int]:
    """The call counters of the helper file as securefl imported it (by path)."""
    return load_callable("model", MODEL).__globals__["CALLS"]


def _ok(argv: list[str], capsys) -> str:
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


# ------------------------------------------------------------------ every entry point
def test_train_runs_the_users_model_with_dp_sample_and_secagg(tmp_path, capsys):
    before = dict(_calls())
    _ok(["train", *USER, "--clients", "4", "--rounds", "2", "--partition", "iid", "--dp", "sample", "--epsilon", "3",
         "--protect", "secagg", "--out", str(tmp_path), "--no-progress"], capsys)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["config"]["model"] == MODEL and m["config"]["dataset"] == DATA
    assert m["final"]["accuracy"] is not None and m["final"]["epsilon"] <= 3.0
    assert _calls()["factory"] > before["factory"] and _calls()["digits"] > before["digits"]
    assert sum(p["size"] for p in m["partition"]) == 1437  # securefl split the user's 1797 examples 80/20


def test_attack_invert_on_the_users_model(tmp_path, capsys):
    before = _calls()["factory"]
    out = _ok(["attack", "invert", *USER, "--images", "1", "--iterations", "20", "--restarts", "1",
               "--out", str(tmp_path), "--no-progress"], capsys)
    result = json.loads((tmp_path / "inversion.json").read_text())
    assert result["case"]["model"] == MODEL and result["images"] == 1 and "PSNR" in out
    assert _calls()["factory"] > before


def test_attack_poison_on_the_users_model(tmp_path, capsys):
    before = _calls()["factory"]
    _ok(["attack", "poison", "--attack", "sign_flip", *USER, "--clients", "5", "--rounds", "2", "--partition", "iid",
         "--aggregator", "median", "--byzantine", "1", "--out", str(tmp_path), "--no-progress"], capsys)
    result = json.loads((tmp_path / "poison.json").read_text())
    assert result["config"]["model"] == MODEL and 0.0 <= result["main_accuracy"] <= 1.0
    assert _calls()["factory"] > before


def test_audit_empirical_on_the_users_model(tmp_path, capsys):
    before = _calls()["factory"]
    _ok(["audit", "empirical", *USER, "--clients", "4", "--rounds", "2", "--partition", "iid", "--dp", "sample",
         "--epsilon", "3", "--canaries", "20", "--out", str(tmp_path), "--no-progress"], capsys)
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["config"]["model"] == MODEL and report["canaries"] == 20 and report["sound"]
    assert _calls()["factory"] > before


def test_attack_membership_on_the_users_model(tmp_path, capsys):
    before = _calls()["factory"]
    _ok(["attack", "membership", *USER, "--members", "30", "--epochs", "2", "--batch-size", "10", "--references", "1",
         "--out", str(tmp_path)], capsys)
    assert json.loads((tmp_path / "membership.json").read_text())["auc"] is not None
    assert _calls()["factory"] > before


# ------------------------------------------------------------------ refusals
def test_batchnorm_under_dp_sample_is_refused_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "securefl", "train", "--model", f"{HELPER}:batchnorm", "--dataset", DATA,
         "--clients", "4", "--rounds", "1", "--dp", "sample", "--epsilon", "3", "--out", str(tmp_path / "run"),
         "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "'1' (BatchNorm2d)" in errors[0] and "GroupNorm" in errors[0] and "--model" in errors[0]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_batchnorm_is_fine_without_dp_and_refused_by_invert_under_dp(tmp_path, capsys):
    config = RunConfig.from_flat({"model": f"{HELPER}:batchnorm", "dataset": DATA, "clients": 3, "rounds": 1})
    check(config)  # no DP: BatchNorm trains
    code = main(["attack", "invert", "--model", f"{HELPER}:batchnorm", "--dataset", DATA, "--dp", "sample",
                 "--images", "1", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "BatchNorm2d" in err


@pytest.mark.parametrize(
    "flag, spec, words",
    [
        ("--model", "tests/helpers/missing.py:factory", "not found"),
        ("--model", f"{HELPER}:nothing_here", "defines no 'nothing_here'"),
        ("--model", "no_such_module_xyz:factory", "no module named"),
        ("--model", f"{HELPER}:not_a_module", "not a torch.nn.Module"),
        ("--model", f"{HELPER}:three_outputs", "10 classes"),
        ("--model", f"{HELPER}:", "MODULE:CALLABLE"),
        ("--dataset", f"{HELPER}:not_a_module", "must return"),
        ("--dataset", f"{HELPER}:CALLS", "not a callable"),
    ],
)
def test_bad_user_code_is_one_line_naming_the_flag(flag, spec, words, tmp_path, capsys):
    argv = ["train", "--clients", "3", "--rounds", "1", "--out", str(tmp_path), "--no-progress", flag, spec]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert flag in err and words in err and repr(spec) in err
    assert not (tmp_path / "ledger.json").exists()


def test_model_too_large_for_the_ckks_preset_names_one_that_fits(monkeypatch):
    """An encrypted update must fit one wire message. For a large model a larger ring has
    less overhead per parameter: with the limit set between what the user's model
    needs under small-model and under standard, the error names standard."""
    import securefl.build as build_module
    from securefl.build import ckks_params
    from securefl.protections.ckks import max_update_bytes

    config = RunConfig.from_flat({"model": f"{HELPER}:wide", "dataset": DATA, "clients": 3, "protect": "ckks"})
    dim = sum(p.numel() for p in byo_model.wide().parameters())
    standard = RunConfig.from_flat({**config.to_flat(), "ckks_preset": "standard"})
    need = {c.protection.ckks_preset: max_update_bytes(ckks_params(c), dim, 3) for c in (config, standard)}
    assert need["small-model"] > need["standard"]
    monkeypatch.setattr(build_module, "MAX_MESSAGE", need["standard"])
    with pytest.raises(ConfigValueError) as info:
        check(config)
    assert info.value.field == "ckks_preset" and f"{dim:,}-parameter" in info.value.reason
    assert "use --ckks-preset standard" in info.value.reason
    check(standard)  # fits: no error
    monkeypatch.setattr(build_module, "MAX_MESSAGE", need["standard"] // 2)
    with pytest.raises(ConfigValueError, match="use --protect secagg"):
        check_ckks_size(config, dim)  # no preset carries it in one message
    monkeypatch.undo()
    check_ckks_size(config, dim)


# ------------------------------------------------------------------ the Python API
def test_api_takes_a_factory_and_a_dataset_object():
    x, y = byo_model.digits()
    config = RunConfig.from_flat({"clients": 3, "rounds": 2, "partition": "iid", "seed": 1})
    result = Simulation(config, model=byo_model.factory, data=(x, y)).run()
    assert any(isinstance(m, nn.Conv2d) for m in result.server.model.modules())
    assert result.metrics["config"]["model"] == "tests.helpers.byo_model:factory"
    assert result.metrics["final"]["accuracy"] > 0.2  # 10 classes: above chance after two rounds
    sim = Simulation(config, model=byo_model.factory, data=byo_model.digits_split())
    assert len(sim.data.x_train) == 1500 and len(sim.data.x_test) == 297  # the user's split is kept


def test_api_refuses_a_batchnorm_factory_under_dp():
    config = RunConfig.from_flat({"clients": 3, "rounds": 1, "dp": "sample", "epsilon": 3.0})
    with pytest.raises(ConfigValueError, match="BatchNorm2d") as info:
        Simulation(config, model=byo_model.batchnorm, data=byo_model.digits())
    assert info.value.field == "model"


def test_one_set_is_split_with_the_runs_seed():
    x, y = byo_model.digits()
    a, b, c = (as_federated((x, y), test_fraction=0.2, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.x_test, b.x_test) and not torch.equal(a.x_test, c.x_test)
    assert (a.num_classes, a.task, a.input_shape, len(a.x_test)) == (10, "classification", (1, 8, 8), 360)
    assert torch.equal(torch.bincount(a.y_test), torch.bincount(c.y_test))  # stratified by label


def test_user_data_forms_and_refusals():
    reg = load_dataset(f"{HELPER}:regression", seed=3)
    assert reg.task == "regression" and reg.num_classes == 0 and reg.y_train.shape[1] == 1
    ds = as_federated(TensorDataset(torch.rand(50, 4), torch.randint(0, 3, (50,))), seed=0)
    assert ds.input_shape == (4,) and len(ds.x_train) + len(ds.x_test) == 50
    with pytest.raises(ConfigValueError, match="targets"):
        as_federated((torch.rand(5, 2), torch.arange(4)))
    with pytest.raises(ConfigValueError, match=">= 0"):
        as_federated((torch.rand(10, 2), torch.arange(10) - 5))
    with pytest.raises(ConfigValueError, match="must return"):
        as_federated({"x": 1})


def test_example_file_trains_through_the_api():
    proc = subprocess.run([sys.executable, "examples/byo/model_and_data.py"], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    acc = float(proc.stdout.strip().rsplit(" ", 4)[1])
    assert "relu_cnn" in proc.stdout and acc > 0.5


def test_attack_bench_suite_takes_the_users_model_and_data(tmp_path, capsys):
    before = _calls()["factory"]
    _ok(["attack", "bench", "--suite", "membership", "--quick", "--seeds", "1", *USER, "--out", str(tmp_path),
         "--no-progress"], capsys)
    assert json.loads((tmp_path / "results.json").read_text())["recipe"]["model"] == MODEL
    assert _calls()["factory"] > before


def test_a_toml_file_may_name_user_code(tmp_path, capsys):
    (tmp_path / "run.toml").write_text(f'[data]\nmodel = "{MODEL}"\ndataset = "{DATA}"\nclients = 3\n[server]\nrounds = 1\n')
    _ok(["train", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["config"]["model"] == MODEL


def test_inversion_bench_keeps_the_analytic_attack_only_where_it_applies():
    from attacks.inversion.cases import analytic_applies

    assert not analytic_applies(MODEL, (1, 8, 8), 10)  # a convnet: no fully connected first layer
    assert analytic_applies("mlp", (1, 8, 8), 10)
