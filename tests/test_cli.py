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
