"""Durability: checkpoints, ``--resume`` after SIGKILL, and Ctrl-C (securefl.checkpoint)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from securefl import PrivacyLedger
from securefl.checkpoint import CHECKPOINT, RUN_FILE
from securefl.cli import main
from securefl.config import RunConfig
from securefl.privacy.events import FEDERATION
from securefl.simulation import Simulation

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _entries(path: Path) -> list[dict]:
    return PrivacyLedger.load(path).entries if path.exists() else []


def _start(args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "securefl", "train", *args, "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)


def _wait_for_progress(proc: subprocess.Popen, ledger: Path, seen: int, deadline: float) -> None:
    """Until the ledger holds more entries than ``seen`` (or the process ends)."""
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(_entries(ledger)) > seen:
                return
        except Exception:  # a ledger being replaced is read again
            pass
        time.sleep(0.02)


RUN = [
    "--dataset", "digits", "--clients", "5", "--rounds", "30", "--model", "logreg", "--local-epochs", "0.5",
    "--dp", "sample", "--epsilon", "4", "--protect", "secagg", "--lr", "0.5", "--clip", "1.0",
]  # fmt: skip


def test_sigkill_at_random_points_then_resume(tmp_path):
    """Killed with SIGKILL at random points (at least 5 times), the run resumes each
    time and ends with every round, a verifying ledger, no spend lost, and an
    epsilon that never went down."""
    out, ledger = tmp_path / "run", tmp_path / "run" / "ledger.json"
    rng = random.Random(20261130)
    proc, kills, snapshots = _start([*RUN, "--out", str(out)]), 0, []
    deadline = time.time() + 420
    while kills < 6 and time.time() < deadline:
        _wait_for_progress(proc, ledger, len(snapshots[-1]) if snapshots else 0, deadline)
        time.sleep(rng.uniform(0.0, 0.4))  # land anywhere: mid-training, mid-protocol, mid-write
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        snapshots.append(_entries(ledger))  # loading verifies the hash chain of what was left
        proc = _start(["--resume", str(out)])
    stdout, stderr = proc.communicate(timeout=max(10, deadline - time.time()))
    assert kills >= 5, f"only {kills} kills landed before the run ended"
    assert proc.returncode == 0, stderr.decode()
    final = _entries(ledger)
    for snap in snapshots:  # no spend is ever lost: each snapshot is a prefix of the final ledger
        assert [e["hash"] for e in final[: len(snap)]] == [e["hash"] for e in snap]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, 31))
    protocol = [r.get("protocol_round", r["round"]) for r in metrics["rounds"]]
    assert protocol == sorted(set(protocol))  # no round number answered twice
    eps = [r["epsilon"] for r in metrics["rounds"]]
    assert all(b >= a for a, b in zip(eps, eps[1:])), eps
    for cid in {e["subject"] for e in final}:
        rounds = [e["round"] for e in final if e["subject"] == cid]
        assert rounds == sorted(set(rounds))  # one charge per protocol round, in order
    audit = subprocess.run(
        [sys.executable, "-m", "securefl", "audit", "budget", str(ledger)], capture_output=True, env=ENV, timeout=120
    )
    assert audit.returncode == 0, audit.stderr.decode()


def test_ctrl_c_ends_with_one_line_and_an_intact_ledger(tmp_path):
    out, ledger = tmp_path / "run", tmp_path / "run" / "ledger.json"
    proc = _start([*RUN, "--rounds", "200", "--out", str(out)])
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (out / CHECKPOINT).exists():
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()
    lines = stderr.decode().strip().splitlines()
    assert [line for line in lines if "interrupted" in line] == lines[-1:], lines
    assert "interrupted after" in lines[-1] and f"--resume {out}" in lines[-1]
    assert "Traceback" not in stderr.decode()
    entries = PrivacyLedger.load(ledger).entries  # verifies
    assert entries and not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    audit = subprocess.run(
        [sys.executable, "-m", "securefl", "audit", "budget", str(ledger)], capture_output=True, env=ENV, timeout=120
    )
    assert audit.returncode == 0, audit.stderr.decode()


# ------------------------------------------------------------------ in-process resume
def _interrupt_after(n: int):
    def on_round(res) -> None:
        if res.round >= n:
            raise KeyboardInterrupt

    return on_round


def test_resume_restores_model_optimizer_and_clip(tmp_path):
    flat = {
        "dataset": "digits", "clients": 4, "rounds": 4, "model": "logreg", "local_epochs": 0.5,
        "server_opt": "fedadam", "server_lr": 0.1, "ema": 0.5, "dp": "client", "noise_multiplier": 0.5,
        "adaptive_clip": True, "clip": 0.5,
    }  # fmt: skip
    sim = Simulation(RunConfig.from_flat(flat), out_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        sim.run(on_round=_interrupt_after(2))
    back = Simulation.resume(tmp_path)
    assert back.completed == 2 and back.rounds == sim.rounds
    assert torch.equal(back.server.weights, sim.server.weights)
    assert torch.equal(back.server.released, sim.server.released)
    assert not torch.equal(back.server.released, back.server.weights)  # the moving average came back too
    assert torch.equal(back.server.optimizer.m, sim.server.optimizer.m)
    assert torch.equal(back.server.optimizer.v, sim.server.optimizer.v)
    assert back.server.clip == sim.server.clip != 0.5  # the adaptive clip moved and was kept
    result = back.run()
    assert [r["round"] for r in result.metrics["rounds"]] == [1, 2, 3, 4]
    assert result.metrics["rounds"][:2] == sim.rounds[:2]


def test_interrupted_central_dp_round_is_charged_once(tmp_path):
    """Under client-level DP with central noise, a round whose aggregate was never
    released keeps its one charge; the resumed run does not charge it again."""
    flat = {"dataset": "digits", "clients": 4, "rounds": 3, "model": "logreg", "local_epochs": 0.5,
            "dp": "client", "epsilon": 5.0, "clip": 0.5}  # fmt: skip
    sim = Simulation(RunConfig.from_flat(flat), out_dir=tmp_path)
    real = sim.server.protection.aggregate

    def dies_in_round_2(chosen, down, dim, exchange):
        if exchange.round >= 2:
            raise KeyboardInterrupt  # after the round's charge, before its release
        return real(chosen, down, dim, exchange)

    sim.server.protection.aggregate = dies_in_round_2
    with pytest.raises(KeyboardInterrupt):
        sim.run()
    assert [e["round"] for e in sim.ledger.entries if e["subject"] == FEDERATION] == [1, 2]
    result = Simulation.resume(tmp_path).run()
    charges = [e for e in PrivacyLedger.load(tmp_path / "ledger.json").entries if e["subject"] == FEDERATION]
    assert len(charges) == 3 and not any(r["aborted"] for r in result.metrics["rounds"])
    assert [r.get("protocol_round") for r in result.metrics["rounds"]] == [None, 3, 4]


def test_interrupted_sample_dp_round_is_charged_again(tmp_path):
    """A client's update may have left in the interrupted round: its spend stays and
    the redone round is charged again (epsilon never below the uninterrupted run's)."""
    flat = {"dataset": "digits", "clients": 4, "rounds": 3, "model": "logreg", "local_epochs": 0.5,
            "dp": "sample", "noise_multiplier": 1.0}  # fmt: skip
    sim = Simulation(RunConfig.from_flat(flat), out_dir=tmp_path)
    real = sim.server.protection.aggregate

    def dies_after_fit(chosen, down, dim, exchange):
        if exchange.round >= 2:
            for c in chosen:
                c.fit(down)  # every client records its spend and answers
            raise KeyboardInterrupt
        return real(chosen, down, dim, exchange)

    sim.server.protection.aggregate = dies_after_fit
    with pytest.raises(KeyboardInterrupt):
        sim.run()
    result = Simulation.resume(tmp_path).run()
    ledger = PrivacyLedger.load(tmp_path / "ledger.json")
    for c in result.clients:
        assert [e["round"] for e in ledger.entries if e["subject"] == c.client_id] == [1, 2, 3, 4]


# ------------------------------------------------------------------ bad resumes
def _one_line(capsys, argv, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    args = ["train", "--dataset", "digits", "--clients", "3", "--rounds", "2", "--model", "logreg"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    return out


def test_resume_refuses_run_flags(capsys, finished):
    err = _one_line(capsys, ["train", "--resume", str(finished), "--rounds", "9"])
    assert "--rounds" in err and "--resume" in err
    err = _one_line(capsys, ["train", "--resume", str(finished), "--overwrite"])
    assert "--overwrite" in err


def test_resume_of_a_finished_run_changes_nothing(capsys, finished):
    before = PrivacyLedger.load(finished / "ledger.json").entries
    assert main(["train", "--resume", str(finished), "--no-progress"]) == 0
    assert PrivacyLedger.load(finished / "ledger.json").entries == before


def test_resume_of_a_folder_without_a_run(capsys, tmp_path):
    err = _one_line(capsys, ["train", "--resume", str(tmp_path)])
    assert "--resume" in err and RUN_FILE in err


def test_resume_refuses_a_corrupt_checkpoint(capsys, tmp_path, finished):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / CHECKPOINT).write_bytes(b"\x80\x02not a checkpoint")
    err = _one_line(capsys, ["train", "--resume", str(copy)])
    assert "--resume" in err and "checkpoint" in err
