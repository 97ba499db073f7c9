"""securefl attack invert / membership / bench --suite inversion: outputs and usage errors."""

import json

import pytest

from attacks.commands.bench import SUITES
from securefl.cli import main


def test_invert_writes_json_and_grid(tmp_path, capsys):
    out = tmp_path / "inv"
    assert main(["attack", "invert", "--method", "analytic", "--images", "3", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "inversion.json").read_text())
    for key in ("psnr", "ssim", "mse", "label_accuracy", "baseline_psnr"):
        assert key in data
    assert data["psnr"] > 60 and data["label_accuracy"] == 1.0 and data["images"] == 3
    assert data["psnr"] > data["baseline_psnr"] + 30
    assert (out / "reconstructions.png").stat().st_size > 1000
    assert "median PSNR" in capsys.readouterr().out


def test_invert_under_dp_reports_the_clip(tmp_path):
    out = tmp_path / "dp"
    args = ["attack", "invert", "--method", "analytic", "--images", "2", "--dp", "sample", "--clip", "0.1",
            "--noise-multiplier", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    data = json.loads((out / "inversion.json").read_text())
    assert data["case"]["noise_multiplier"] == 1.0 and data["clipped_fraction"] == 1.0
    assert data["psnr"] < data["baseline_psnr"] + 3


def test_membership_writes_json_and_roc(tmp_path):
    out = tmp_path / "mia"
    args = ["attack", "membership", "--members", "40", "--epochs", "5", "--batch-size", "10", "--references", "1",
            "--out", str(out)]
    assert main(args) == 0
    data = json.loads((out / "membership.json").read_text())
    assert 0.0 <= data["auc"] <= 1.0 and set(data["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert set(data["attacks"]) == {"loss", "calibrated"}
    assert (out / "roc.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "args, flag",
    [
        (["attack", "invert", "--method", "gan"], "--method"),
        (["attack", "invert", "--protect", "rot13"], "--protect"),
        (["attack", "invert", "--dp", "sample", "--clip", "-1"], "--clip"),
        (["attack", "membership", "--dp", "client"], "--dp"),
    ],
)
def test_usage_errors_exit_2(args, flag, capsys, tmp_path):
    assert main([*args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err


def test_inversion_suite_is_registered():
    assert SUITES["inversion"] == "attacks.inversion_bench:run_suite"


@pytest.mark.slow
def test_inversion_bench_quick_grid(tmp_path):
    from attacks.inversion_bench import run_suite

    result = run_suite(seeds=1, out=tmp_path, progress=False, quick=True)
    s = result["summary"]
    assert s["no_defense"]["analytic_psnr"] > 30 and s["no_defense"]["idlg_label_accuracy"] == 1.0
    assert s["clipping_only"]["holds"]
    assert set(s["batch_sweep"]["by_batch"]) == {"1", "8"}
    assert s["batch_sweep"]["by_batch"]["8"]["one_client"] and s["batch_sweep"]["by_batch"]["8"]["aggregate"]
    for name in ("inversion.json", "inversion.csv", "inversion.md", "psnr_vs_noise.png", "psnr_vs_batch.png"):
        assert (tmp_path / name).exists()


def test_batch_sweep_verdict_finds_where_the_aggregate_hides():
    from attacks.inversion_bench import METHODS, _verdicts

    def row(cell, method, psnr, batch=1, protect="none", sigma=None):
        return {"cell": cell, "method": method, "psnr": psnr, "baseline_psnr": 12.0, "batch_size": batch,
                "protect": protect, "noise_multiplier": sigma, "label_accuracy": 1.0, "clipped_fraction": 1.0,
                "beats_baseline": psnr > 13.0, "psnr_over_baseline": psnr - 12.0, "images": 20}

    rows = [row("none", m, 100.0) for m in METHODS] + [row("clip", m, 70.0, sigma=0.0) for m in METHODS]
    aggregate = {1: 28.0, 2: 14.0, 4: 12.0, 8: 9.0}
    for b, p in aggregate.items():
        cell = "aggregate" if b == 1 else "aggregate_batch"
        rows += [row(cell, m, p if m == "dlg" else 5.0, batch=b, protect="secagg") for m in METHODS]
        rows += [row(cell, m, 99.0, batch=b, protect="ckks") for m in METHODS]  # a copy, ignored
        if b > 1:
            rows += [row("batch", m, 50.0, batch=b) for m in METHODS]
    sweep = _verdicts(rows)["batch_sweep"]
    assert sweep["aggregate_hides_from_batch"] == 4
    assert sweep["by_batch"]["2"]["aggregate_beaten_by"] == ["dlg"]
    assert set(sweep["by_batch"]["8"]["one_client_beaten_by"]) == set(METHODS)
