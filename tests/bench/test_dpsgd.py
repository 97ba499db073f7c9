"""The DP-SGD section of ``securefl bench`` (securefl/bench/dpsgd.py): small settings,
checking the shape and the consistency of what it measures."""

from __future__ import annotations

import pytest

from securefl.bench import dpsgd as bench
from securefl.privacy import accounting


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_step_costs_time_every_mode_against_plain():
    r = bench.step_costs("mlp", repeats=3, warmup=1)
    assert r["params"] == 4810 and r["batch"] == bench.BATCH
    assert set(r["modes"]) == set(bench.MODES) and r["auto"] == "bk"
    assert r["plain_cpu_ms"] > 0 and r["noise_cpu_ms"] > 0
    for m in r["modes"].values():
        # a DP step does strictly more work than a plain one on the same batch
        assert m["cpu_ms"] > 0 and m["ratio_cpu"] > 1.0
        assert m["ratio_with_noise_cpu"] > m["ratio_cpu"]
    assert r["auto_ratio_cpu"] == r["modes"]["bk"]["ratio_cpu"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_accounting_overhead_of_a_short_run():
    r = bench.accounting_overhead(rounds=2)
    assert r["calls"]["record"] == 2 * r["clients"] and r["calls"]["training"] == 2 * r["clients"]
    assert r["calls"]["solve"] == 1  # one noise-multiplier solve: every client has the same sampling history
    assert 0 < r["epsilon"] <= 3.0
    assert r["training_cpu_s"] > 0 and r["accounting_cpu_s"] > 0
    assert r["overhead_cpu"] == pytest.approx(r["accounting_cpu_s"] / r["training_cpu_s"], rel=0.05, abs=1e-3)
    # the deferred ledger is written once per round, at the simulation's sync, not per record
    assert r["calls"]["sync"] == 2 and r["calls"]["persist"] == 1 + 2  # the empty ledger, then each round
    assert r["parts_cpu_s"]["persist"] <= r["parts_cpu_s"]["record"] + r["parts_cpu_s"]["sync"] + 1e-3
    # the accountant caches were cleared before the run: the solve was cold
    assert accounting.solve_noise_multiplier.cache_info().misses >= 1


def test_markdown_names_every_model_and_the_auto_mode():
    fake_modes = {m: {"cpu_ms": 1.0, "wall_ms": 1.0, "ratio_cpu": 2.0, "ratio_wall": 2.0, "ratio_with_noise_cpu": 3.0}
                  for m in bench.MODES}  # fmt: skip
    result = {
        "step_cost": [{"model": name, "params": 10, "plain_cpu_ms": 0.5, "modes": fake_modes, "auto": "ew"} for name in bench.MODELS],
        "accounting_overhead": {"rounds": 2, "model": "logreg", "clients": 10, "accounting_cpu_s": 0.1,
                                "training_cpu_s": 1.0, "overhead_cpu": 0.1, "parts_cpu_s": {}},
    }  # fmt: skip
    text = bench.markdown(result)
    assert all(f"| {name} |" in text for name in bench.MODELS)
    assert text.count("| yes |") == len(bench.MODELS) and "10.0%" in text
