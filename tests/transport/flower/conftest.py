"""Flower for these tests: the ``securefl[flower]`` extra, installed by the test run
itself when missing (into the running interpreter, pinned by constraints.txt)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
APP = ROOT / "examples" / "flower_app"
FLOWER_REQUIREMENT = "flwr>=1.42,<2"
EXECUTABLES = ("flower-superlink", "flower-supernode", "flwr")


def _install() -> str | None:
    """Install Flower if it is missing; the reason it could not be, or None."""
    try:
        importlib.import_module("flwr.app")
        return None
    except ImportError:
        pass
    cmd = [sys.executable, "-m", "pip", "install", "-q", FLOWER_REQUIREMENT]
    if (ROOT / "constraints.txt").exists():
        cmd[4:4] = ["-c", str(ROOT / "constraints.txt")]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"pip could not run: {exc}"
    if out.returncode != 0:
        return f"`{' '.join(cmd)}` failed: {out.stderr.strip()[-500:]}"
    importlib.invalidate_caches()
    try:
        importlib.import_module("flwr.app")
    except ImportError as exc:
        return f"flwr installed but not importable: {exc}"
    return None


@pytest.fixture(scope="session")
def flower() -> Path:
    """Flower importable and its executables next to this interpreter (their folder)."""
    why = _install()
    if why is not None:
        pytest.skip(f"the securefl[flower] extra is not installed and could not be installed: {why}")
    bin_dir = Path(sys.executable).parent
    missing = [e for e in EXECUTABLES if not (bin_dir / e).exists()]
    if missing:
        pytest.skip(f"Flower is installed but {missing} are not in {bin_dir}")
    return bin_dir


def app_config(**overrides) -> dict:
    """The example app's run config with ``overrides`` (the run a test submits)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    data = tomllib.loads((APP / "pyproject.toml").read_text())
    return {**data["tool"]["flwr"]["app"]["config"], **overrides}


def wait_for_run(out_dir: Path, timeout: float, procs: dict) -> dict:
    """Wait for a ServerApp to write ``done`` (its metrics) or ``failed`` in ``out_dir``."""
    import json
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (out_dir / "failed").exists():
            pytest.fail(f"the ServerApp failed: {(out_dir / 'failed').read_text()}")
        if (out_dir / "done").exists():
            return json.loads((out_dir / "metrics.json").read_text())
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead:
            pytest.fail(f"Flower processes exited during the run: {dead}")
        time.sleep(0.2)
    pytest.fail(f"no result in {out_dir} after {timeout:g} s")


@pytest.fixture
def deployment(flower, tmp_path):
    """A SuperLink on 127.0.0.1 (free port); every process it or the test starts is
    stopped (SIGTERM, then SIGKILL, whole process groups) whatever the outcome."""
    from securefl.transport.flower.local import LocalDeployment

    d = LocalDeployment(tmp_path / "flower", bin_dir=flower)
    started: list = []
    try:
        d.start_superlink()
        yield d
    finally:
        started = list(d.procs.values()) + list(d.stopped)
        d.stop()
        assert all(p.poll() is not None for p in started), "a Flower process outlived the test"
        assert not _live_groups(started), "a process of a Flower process group outlived the test"


def _live_groups(procs: list) -> list[int]:
    """Process groups (one per started process) that still have a member, after a grace period."""
    import os
    import time

    deadline = time.monotonic() + 10
    while True:
        live = []
        for p in procs:
            try:
                os.killpg(p.pid, 0)
                live.append(p.pid)
            except ProcessLookupError:
                pass
            except PermissionError:
                live.append(p.pid)
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.2)
