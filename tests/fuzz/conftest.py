"""Fuzz harness: every target counts its cases; the session prints the total,
the time and how many targets let an exception other than securefl's escape."""

from __future__ import annotations

from tests.fuzz import harness

_FAILED: set[str] = set()
_SECONDS = [0.0]  #: time spent in fuzz tests (setup, call, teardown)


def pytest_runtest_logreport(report) -> None:
    if "tests/fuzz/" not in report.nodeid.replace("\\", "/"):
        return
    _SECONDS[0] += report.duration
    if report.failed:
        _FAILED.add(report.nodeid)


def pytest_terminal_summary(terminalreporter) -> None:
    if not harness.COUNTS:
        return
    total = sum(harness.COUNTS.values())
    tr = terminalreporter
    tr.section("fuzz cases")
    for name, n in sorted(harness.COUNTS.items()):
        tr.write_line(f"{name:40s} {n:7d}")
    elapsed = _SECONDS[0]
    tr.write_line(
        f"fuzz cases: {total} in total across {len(harness.COUNTS)} targets in {elapsed:.1f} s; "
        f"{len(_FAILED)} failing fuzz test(s) (an escape fails its test)"
    )
