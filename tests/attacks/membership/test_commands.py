"""securefl attack membership: outputs and usage errors."""

import json

from securefl.cli import main


def test_membership_writes_json_and_roc(tmp_path):
    out = tmp_path / "mia"
    args = ["attack", "membership", "--members", "40", "--epochs", "5", "--batch-size", "10", "--references", "1",
            "--out", str(out)]
    assert main(args) == 0
    data = json.loads((out / "membership.json").read_text())
    assert 0.0 <= data["auc"] <= 1.0 and set(data["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert set(data["attacks"]) == {"loss", "calibrated"}
    assert (out / "roc.png").stat().st_size > 1000


def test_usage_error_exits_2(capsys, tmp_path):
    assert main(["attack", "membership", "--dp", "client", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dp" in err
