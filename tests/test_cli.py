"""The securefl command: usage errors, outputs, TOML, demo, and crash safety."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from securefl import PrivacyLedger
from securefl.cli import main


@pytest.mark.parametrize(
    "args, flag, value",
    [
        (["--clients", "0"], "--clients", "0"),
        (["--clients", "abc"], "--clients", "abc"),
        (["--dp", "bogus"], "--dp", "bogus"),
        (["--epsilon", "-1", "--dp", "sample"], "--epsilon", "-1"),
        (["--delta", "1.5"], "--delta", "1.5"),
        (["--fraction", "0"], "--fraction", "0"),
        (["--dataset", "mnist"], "--dataset", "mnist"),
        (["--protect", "rot13"], "--protect", "rot13"),
        (["--dp", "sample"], "--epsilon", "None"),
        (["--lr", "1e300"], "--lr", "1e+300"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(["train", "--out", str(tmp_path), "--no-progress", *args]))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert flag in err and value in err
    assert not (tmp_path / "metrics.json").exists()


def test_unknown_toml_key_and_missing_file(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = 2\nnot_a_setting = 3\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "--not-a-setting" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "--config" in capsys.readouterr().err


def test_train_with_toml_and_override(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[data]\ndataset = "breast_cancer"\nclients = 4\nmodel = "logreg"\n[server]\nrounds = 5\n')
    out = tmp_path / "out"
    assert main(["train", "--config", str(cfg), "--rounds", "3", "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["dataset"] == "breast_cancer" and m["config"]["clients"] == 4
    assert len(m["rounds"]) == 3  # the flag beats the file
    assert m["final"]["accuracy"] > 0.8
    assert "final accuracy" in capsys.readouterr().out


def test_demo_runs_both_jobs(tmp_path, capsys):
    assert main(["demo", "--rounds", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "FedAvg + DP-SGD" in out and "client-9" in out
    for sub in ("plain", "dp-sgd"):
        assert (tmp_path / sub / "metrics.json").exists()
    assert len(PrivacyLedger.load(tmp_path / "dp-sgd" / "ledger.json").entries) == 20


def test_ledger_survives_kill_9(tmp_path):
    """A training process killed with SIGKILL mid-run leaves a valid ledger that
    records at least the spend of every round it completed."""
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "securefl", "train", "--dp", "sample", "--noise-multiplier", "1.2",
        "--clients", "5", "--rounds", "400", "--model", "logreg", "--local-epochs", "1",
        "--out", str(out), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.time() + 240
        completed = 0
        while time.time() < deadline and completed < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                completed = len(json.loads((out / "metrics.json").read_text())["rounds"])
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        assert completed >= 3, "training did not get going in time"
        time.sleep(0.3)  # land inside a later round
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    metrics = json.loads((out / "metrics.json").read_text())  # never torn
    ledger = PrivacyLedger.load(out / "ledger.json")  # verifies the hash chain
    done = len(metrics["rounds"])
    assert done >= 3
    for cid, reported in metrics["final"]["clients"].items():
        spent = ledger.spent(cid)
        assert spent.prv >= reported["epsilon"] - 1e-12
        assert spent.rdp >= reported["epsilon_rdp"] - 1e-12
        assert len([e for e in ledger.entries if e["subject"] == cid]) >= done
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ commands that cannot work
def _one_line_usage_error(capsys, argv, code=2):
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(argv))
    assert info.value.code == code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err + captured.out
    return err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--clients", "1"], "--clients"),
        (["--protect", "secagg", "--clients", "4", "--fraction", "0.5"], "--min-clients"),
        (["--protect", "ckks", "--clients", "4", "--fraction", "0.5"], "--min-clients"),
        (["--protect", "ckks", "--clients", "5", "--ckks-max-clients", "3"], "--ckks-max-clients"),
        (["--epsilon", "3"], "--epsilon"),
        (["--noise-multiplier", "1.0"], "--noise-multiplier"),
        (["--clip", "2"], "--clip"),
        (["--accountant", "rdp"], "--accountant"),
    ],
)
def test_unworkable_runs_refused_before_training(args, needle, capsys, tmp_path):
    out = tmp_path / "out"
    err = _one_line_usage_error(capsys, ["train", "--out", str(out), "--no-progress", *args])
    assert needle in err
    assert not out.exists()  # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "toml, needle",
    [
        ('[sever]\nrounds = 2\n', "[sever]"),
        ('[server]\nepsilon = 3.0\n', "[dp]"),
        ('[data]\nrounds = 2\n', "[server]"),
        ('[dp]\nepsilon = 3.0\n', "--epsilon"),  # a DP setting without dp = "sample"/"client"
    ],
)
def test_bad_toml_sections_refused(toml, needle, capsys, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(toml)
    out = tmp_path / "out"
    err = _one_line_usage_error(capsys, ["train", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert needle in err
    assert not out.exists()


def test_out_that_is_a_file_refused(capsys, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    for out in (f, f / "sub"):
        err = _one_line_usage_error(capsys, ["train", "--out", str(out), "--no-progress", "--rounds", "1"])
        assert "--out" in err and str(out) in err
    assert f.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_refused(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        err = _one_line_usage_error(capsys, ["train", "--out", str(ro / "run"), "--no-progress"])
        assert "--out" in err and "not writable" in err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


SMALL = ["--dataset", "breast_cancer", "--clients", "3", "--model", "logreg", "--rounds", "1",
         "--local-epochs", "0.2", "--no-progress"]  # fmt: skip


def test_existing_ledger_never_overwritten_without_flag(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ledger.json").write_text("previous run")
    (out / "metrics.json").write_text("previous metrics")
    err = _one_line_usage_error(capsys, ["train", "--out", str(out), *SMALL])
    assert "--out" in err and "--overwrite" in err and "--resume" in err
    assert (out / "ledger.json").read_text() == "previous run"
    assert (out / "metrics.json").read_text() == "previous metrics"
    assert sorted(p.name for p in out.iterdir()) == ["ledger.json", "metrics.json"]
    # the demo refuses too
    (tmp_path / "demo" / "dp-sgd").mkdir(parents=True)
    (tmp_path / "demo" / "dp-sgd" / "ledger.json").write_text("previous run")
    err = _one_line_usage_error(capsys, ["demo", "--out", str(tmp_path / "demo"), "--rounds", "1", "--no-progress"])
    assert "--overwrite" in err and not (tmp_path / "demo" / "plain").exists()


def test_overwrite_replaces_a_previous_run(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL]) == 0
    first = PrivacyLedger.load(out / "ledger.json")
    assert main(["train", "--out", str(out), *SMALL]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--overwrite", "--seed", "1", *SMALL]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == 1
    PrivacyLedger.load(out / "ledger.json")  # a valid, new ledger
    assert first is not None


def test_simulation_refuses_a_previous_run_unless_overwrite(tmp_path):
    from securefl import RunConfig, Simulation
    from securefl.exceptions import ConfigValueError

    config = RunConfig.from_flat({"dataset": "breast_cancer", "clients": 3, "model": "logreg", "rounds": 1})
    Simulation(config, out_dir=tmp_path).run()
    before = (tmp_path / "ledger.json").read_bytes()
    with pytest.raises(ConfigValueError) as info:
        Simulation(config, out_dir=tmp_path, overwrite=False)
    assert info.value.field == "out_dir" and "overwrite=True" in str(info.value)
    assert (tmp_path / "ledger.json").read_bytes() == before
    Simulation(config, out_dir=tmp_path, overwrite=True).run()
    assert PrivacyLedger.load(tmp_path / "ledger.json") is not None


def test_all_aborted_run_exits_non_zero_with_one_line(capsys, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--clients", "3", "--rounds", "2", "--model", "logreg",
            "--local-epochs", "0.1", "--protect", "secagg", "--min-clients", "2", "--dropout", "0.99", "--no-progress"]  # fmt: skip
    err = _one_line_usage_error(capsys, argv, code=1)
    assert "aborted" in err and "no round was aggregated" in err
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert all(r["aborted"] for r in rounds)


def test_check_outcome_more_than_half_aborted():
    from securefl.cli import check_outcome

    def m(flags):
        return {"rounds": [{"aborted": "x" if f else None} for f in flags]}

    assert check_outcome(m([0, 0, 1])) is None
    assert check_outcome(m([0, 1])) is None  # exactly half
    assert "2 of 3 rounds aborted" in check_outcome(m([1, 0, 1]))
    assert "all 2 rounds aborted" in check_outcome(m([1, 1]))


def test_audit_pld_without_dp_accounting_says_how_to_install(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--dp", "sample", "--noise-multiplier", "1.0", *SMALL]) == 0
    capsys.readouterr()
    for name in [m for m in sys.modules if m == "dp_accounting" or m.startswith("dp_accounting.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # import fails as if not installed
    err = _one_line_usage_error(capsys, ["audit", "budget", str(out / "ledger.json"), "--pld"])
    assert "pip install dp-accounting" in err


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"securefl {version('securefl')}"
