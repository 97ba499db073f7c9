"""securefl attack bench --suite poisoning: the quick matrix and reproducible DP cells."""

from __future__ import annotations

from attacks.common.commands import SUITES


def test_poisoning_suite_is_registered():
    assert SUITES["poisoning"] == "attacks.poisoning.bench:run_suite"


def test_bench_quick_writes_tables_and_plots(tmp_path):
    from attacks.poisoning.bench import run_suite

    res = run_suite(seeds=1, out=tmp_path, progress=False, quick=True, workers=1)
    for name in ("runs.csv", "summary.csv", "results.json", "poisoning.md", "accuracy.png", "attack_success.png"):
        assert (tmp_path / name).stat().st_size > 0
    acc = res["summary"]["main_accuracy"]
    assert acc["ipm_100"]["mean"] < acc["none"]["mean"] - 0.3
    assert res["summary"]["attack_success_rate"]["backdoor"]["mean"] > 0.8
    md = (tmp_path / "poisoning.md").read_text()
    assert "| **ipm_100** |" in md and "broken" in md


def test_bench_dp_cells_are_reproducible():
    """The bench keys the DP noise from the seed, so a cell reruns to the same numbers."""
    from attacks.poisoning.bench import DEFENSES, QUICK_BASE, run_cell

    assert all(DEFENSES[d].get("reproducible_noise") for d in DEFENSES if DEFENSES[d].get("dp") == "client")
    task = {"attack": "backdoor", "defense": "dp_z2", "seed": 0, "base": {**QUICK_BASE, "rounds": 2},
            "malicious_fraction": 0.2, "knowledge": "omniscient"}
    a, b = run_cell(task), run_cell(task)
    assert a["epsilon"] is not None and a["epsilon"] > 0
    assert (a["main_accuracy"], a["targeted_success"]) == (b["main_accuracy"], b["targeted_success"])
