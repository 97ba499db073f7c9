"""securefl attack bench --suite membership: the sweep behind the README's table."""

import json

from attacks.common.commands import SUITES


def test_membership_suite_is_registered():
    assert SUITES["membership"] == "attacks.membership.bench:run_suite"


def test_quick_sweep_writes_every_run_and_the_table(tmp_path):
    from attacks.membership.bench import run_suite

    result = run_suite(seeds=1, out=tmp_path, progress=False, quick=True)
    assert set(result["summary"]) == {"none", "dp8"}
    assert result["summary"]["none"]["epsilon"] is None and result["summary"]["dp8"]["epsilon"] > 0
    for name in ("none_s0", "dp8_s0"):
        data = json.loads((tmp_path / name / "membership.json").read_text())
        assert set(data["attacks"]) == {"loss", "calibrated"}
    for name in ("runs.csv", "summary.csv", "membership.md", "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| **dp8** |" in (tmp_path / "membership.md").read_text()
