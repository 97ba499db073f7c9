"""The secure-aggregation bench section: real protocol objects, sums checked, the
AES reference beside the masking, and the growth fit (at toy sizes)."""

import json

import pytest

from securefl.bench import secagg as B


def test_server_round_unmasks_the_plaintext_sum_and_times_every_stage():
    r = B.server_round(24, 0, 200, 0.1, unmask_repeats=2)
    assert r["graph"] == "complete" and r["neighbors"] == 23 and r["dropped"] == 2
    assert 0 <= r["max_abs_error"] <= r["error_bound"]  # the decoded sum is the plaintext sum
    assert set(r["stage_cpu_s"]) == {"collect_keys", "collect_shares", "collect_masked", "collect_unmask"}
    assert r["unmask_repeats"] == 2 and r["unmask_cpu_s"] > 0


def test_client_masking_is_measured_beside_the_aes_reference():
    r = B.client_masking(6, 0, 50_000, repeats=2, with_flower=False)
    assert r["masks"] == 6 and r["repeats"] == 2  # five pairwise masks and the self mask
    assert r["cpu_ms"] > 0 and r["aes_ref_cpu_ms"] > 0
    assert r["ratio_to_aes_cpu"] == pytest.approx(r["cpu_ms"] / r["aes_ref_cpu_ms"], rel=0.1, abs=0.05)  # ms rounded to 0.01


def test_growth_fit_and_markdown():
    g = B.secagg_plus_growth((20, 40), 100, 0.1, 1)
    assert [p["clients"] for p in g["points"]] == [20, 40]
    assert all(p["max_abs_error"] < 1e-3 for p in g["points"])
    assert isinstance(g["exponent"], float) and g["n_log_n_exponent"] > 1
    result = {
        "machine": B.machine(),
        "loadavg_after": [0.0, 0.0, 0.0],
        "client_masking": [B.client_masking(5, 0, 1000, 1, with_flower=False)],
        "server_complete_graph": [B.server_round(10, 0, 100, 0.0)],
        "secagg_plus_growth": g,
    }
    md = B.markdown(json.loads(json.dumps(result)))
    assert sum(line.startswith("| --- |") for line in md.splitlines()) == 3 and f"{g['exponent']}" in md


def test_flower_reference_masks_the_same_vector_when_flwr_is_installed():
    pytest.importorskip("flwr")
    import numpy as np

    run = B.flower_reference(3, np.linspace(-1, 1, 100))
    out = run()
    assert len(out) == 2 and all(isinstance(b, bytes) for b in out)  # the weight factor and the vector
    assert out != run()  # fresh private mask each time
