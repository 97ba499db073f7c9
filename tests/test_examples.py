"""Every example runs as a script, in under a minute, and shows what it claims."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name, *args):
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, time.perf_counter() - t0


def test_linear_regression_reaches_least_squares():
    out, _ = _run("linear_regression_fedavg.py")
    last = out.strip().splitlines()[-1]
    distance = float(last.rsplit(" ", 1)[1])
    assert distance < 0.02, last


def test_digits_dp_sgd(tmp_path):
    out, _ = _run("digits_dp_sgd.py", str(tmp_path))
    acc = float(out.splitlines()[0].split()[2])
    assert acc > 0.8
    eps = [float(line.split()[3]) for line in out.splitlines() if line.startswith("client-")]
    assert len(eps) == 10 and max(eps) <= 3.0


def test_noniid_table():
    out, _ = _run("noniid_digits.py")
    rows = {line[:18].strip(): [float(x) for x in line[18:].split()] for line in out.splitlines()[1:]}
    assert set(rows) == {"iid", "dirichlet 0.1", "2 shards/client"}
    # label skew costs plain FedAvg accuracy relative to IID
    assert rows["dirichlet 0.1"][0] < rows["iid"][0]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_every_example_has_a_test(path):
    assert path.name in Path(__file__).read_text()


def test_secure_aggregation_matches_plaintext():
    out, _ = _run("secure_aggregation.py")
    lines = out.strip().splitlines()
    assert float(lines[0].rsplit(" ", 1)[1]) < 1e-5  # masked FedAvg == plaintext up to rounding
    assert lines[-1].startswith("with dropout 0.25: accuracy")
    ratios = [float(line.split()[3]) for line in lines[2:-1] if line.split()[1] != "-"]
    assert ratios and all(r <= 1.05 for r in ratios)
