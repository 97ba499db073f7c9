"""securefl attack poison: the contract JSON and usage errors."""

from __future__ import annotations

import json

import pytest


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
