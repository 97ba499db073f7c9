"""`securefl bench`: the command's plumbing and the end-to-end section (securefl.bench.commands, .e2e)."""

import json
import sys
import types

import pytest

from securefl.bench import commands, e2e
from securefl.cli import main


@pytest.fixture
def fake_section(monkeypatch):
    calls = []
    mod = types.ModuleType("securefl_fake_section")

    def run(*, quick=False):
        calls.append(quick)
        return {"section": "fake", "value": 41 + quick}

    mod.run = run
    mod.markdown = lambda r: f"| value |\n| --- |\n| {r['value']} |"
    monkeypatch.setitem(sys.modules, "securefl_fake_section", mod)
    monkeypatch.setitem(commands.SECTIONS, "fake", "securefl_fake_section")
    return calls


def test_bench_writes_json_and_markdown_from_the_sections_it_ran(fake_section, tmp_path, capsys):
    assert main(["bench", "--quick", "--sections", "fake", "--out", str(tmp_path)]) == 0
    assert fake_section == [True]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["sections"]["fake"]["value"] == 42 and data["quick"] is True
    assert data["machine"]["cpus"] >= 1 and len(data["machine"]["loadavg"]) == 3
    md = (tmp_path / "bench.md").read_text()
    assert "## fake" in md and "| 42 |" in md


def test_unknown_section_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "--sections", "nope", "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err


def test_out_that_is_a_file_is_refused_before_measuring(fake_section, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["bench", "--sections", "fake", "--out", str(target)]) == 2
    assert fake_section == []


def test_e2e_cell_times_real_rounds():
    row = e2e._cell(16, "secagg", "sample", clients=3, rounds=2, seed=0)
    assert row["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert row["round_cpu_s"] > 0 and row["first_round_wall_s"] > 0
    assert row["bytes_up_per_client_round"] > 4 * row["params"] * 0.9  # masked vectors went up
    assert 0.0 <= row["accuracy"] <= 1.0


@pytest.mark.slow
def test_quick_bench_of_every_section(tmp_path):
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert set(data["sections"]) == set(commands.SECTIONS)
