"""securefl audit empirical / mechanism: the contract JSON and usage errors."""

from __future__ import annotations

import json

import pytest

from attacks.audit.metrics import gaussian_epsilon

DELTA = 1e-5


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


def test_cli_mechanism_audit(capsys):
    from securefl import cli

    assert cli.main(["audit", "mechanism", "--noise-multiplier", "0.5", "--trials", "400"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trials"] == 800 and data["sound"]
    assert 1.0 < data["epsilon_lower_bound"] <= data["epsilon_upper_bound"]
    assert data["epsilon_upper_bound"] == pytest.approx(gaussian_epsilon(2.0, DELTA), abs=0.02)
    assert cli.main(["audit", "mechanism", "--noise-multiplier", "0"]) == 2
    assert "--noise-multiplier" in capsys.readouterr().err
