"""securefl attack bench --suite inversion: registration, the quick grid, the verdicts."""

import pytest

from attacks.common.commands import SUITES


def test_inversion_suite_is_registered():
    assert SUITES["inversion"] == "attacks.inversion.bench:run_suite"


@pytest.mark.slow
def test_inversion_bench_quick_grid(tmp_path):
    from attacks.inversion.bench import run_suite

    result = run_suite(seeds=1, out=tmp_path, progress=False, quick=True)
    s = result["summary"]
    assert s["no_defense"]["analytic_psnr"] > 30 and s["no_defense"]["idlg_label_accuracy"] == 1.0
    assert s["clipping_only"]["holds"]
    assert set(s["batch_sweep"]["by_batch"]) == {"1", "8"}
    assert s["batch_sweep"]["by_batch"]["8"]["one_client"] and s["batch_sweep"]["by_batch"]["8"]["aggregate"]
    for name in ("inversion.json", "inversion.csv", "inversion.md", "psnr_vs_noise.png", "psnr_vs_batch.png"):
        assert (tmp_path / name).exists()


def test_batch_sweep_verdict_finds_where_the_aggregate_hides():
    from attacks.inversion.bench import METHODS, _verdicts

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
