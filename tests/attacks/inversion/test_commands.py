"""securefl attack invert: outputs and usage errors."""

import json

import pytest

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


@pytest.mark.parametrize(
    "args, flag",
    [
        (["attack", "invert", "--method", "gan"], "--method"),
        (["attack", "invert", "--protect", "rot13"], "--protect"),
        (["attack", "invert", "--dp", "sample", "--clip", "-1"], "--clip"),
    ],
)
def test_usage_errors_exit_2(args, flag, capsys, tmp_path):
    assert main([*args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err
