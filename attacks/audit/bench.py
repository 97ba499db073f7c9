"""An empirical audit repeated over seeds: does the lower bound ever exceed the
accountant's upper bound on a real run? (``benchmarks/audit_seeds.py`` is its
command line; README, "A lower bound, from an attack".)"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

from attacks.audit.cases import EmpiricalAuditConfig
from attacks.audit.run import run_empirical_audit
from securefl._io import atomic_write_json
from securefl.config import RunConfig


def _summary(flat: dict[str, Any], audit: EmpiricalAuditConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    lbs = [r["epsilon_lower_bound"] for r in rows]
    return {
        "settings": {**flat, "canaries": audit.canaries, "canary_kind": rows[0]["canary_kind"], "score": rows[0]["score"]},
        "seeds": len(rows),
        "lower_bound_min": min(lbs),
        "lower_bound_mean": statistics.fmean(lbs),
        "lower_bound_max": max(lbs),
        "positive": sum(lb > 0 for lb in lbs),
        "upper_bound_max": max((r["epsilon_upper_bound"] or 0.0) for r in rows) if flat.get("dp") != "none" else None,
        "all_sound": all(r["sound"] for r in rows),
        "runs": rows,
    }


def seed_sweep(
    flat: dict[str, Any],
    audit: EmpiricalAuditConfig,
    seeds: range,
    *,
    out: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Audit the run of flat settings ``flat`` once per seed; the summary (with every
    run's report) is rewritten to ``out`` after each seed, so a long sweep can be
    watched and a crash loses at most one run."""
    if not seeds:
        raise ValueError("seed_sweep needs at least one seed")
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for seed in seeds:
        t0 = time.perf_counter()
        rep = run_empirical_audit(RunConfig.from_flat({**flat, "seed": seed}), audit)
        rep.pop("config")
        rep["seed"] = seed
        rows.append(rep)
        if log is not None:
            log(
                f"seed {seed}: eps_lb {rep['epsilon_lower_bound']:.3f} eps_ub {rep['epsilon_upper_bound']} "
                f"({rep['correct']}/{rep['guesses']}) estimate {rep.get('epsilon_estimate')} "
                f"{time.perf_counter() - t0:.0f}s\n"
            )
        summary = _summary(flat, audit, rows)
        if out is not None:
            atomic_write_json(out, summary)
    return summary
