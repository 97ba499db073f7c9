"""Repeat ``securefl audit empirical`` over seeds; write one JSON of all results.

Checks the audit's soundness claim on a real run: across seeds the lower bound
must never exceed the accountant's upper bound. Example::

    PYTHONPATH=. .venv/bin/python benchmarks/audit_seeds.py --dp client --epsilon 2 --canaries 1000 \\
        --rounds 10 --seeds 10 --out benchmarks/results/audit_client_eps2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from attacks.audit import EmpiricalAuditConfig, run_empirical_audit
from securefl._io import atomic_write_json
from securefl.config import RunConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dp", default="client")
    p.add_argument("--epsilon", type=float, default=2.0)
    p.add_argument("--canaries", type=int, default=1000)
    p.add_argument("--canary-kind", default=None)
    p.add_argument("--score", default=None)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/audit_seeds.json"))
    ns = p.parse_args(argv)
    flat = {"dataset": ns.dataset, "rounds": ns.rounds, "dp": ns.dp}
    if ns.dp != "none":
        flat["epsilon"] = ns.epsilon
    audit = EmpiricalAuditConfig(canaries=ns.canaries, kind=ns.canary_kind, score=ns.score)
    rows = []
    for seed in range(ns.first_seed, ns.first_seed + ns.seeds):
        t0 = time.perf_counter()
        rep = run_empirical_audit(RunConfig.from_flat({**flat, "seed": seed}), audit)
        rep.pop("config")
        rep["seed"] = seed
        rows.append(rep)
        sys.stderr.write(
            f"seed {seed}: eps_lb {rep['epsilon_lower_bound']:.3f} eps_ub {rep['epsilon_upper_bound']} "
            f"({rep['correct']}/{rep['guesses']}) estimate {rep.get('epsilon_estimate')} "
            f"{time.perf_counter() - t0:.0f}s\n"
        )
        lbs = [r["epsilon_lower_bound"] for r in rows]
        summary = {
            "settings": {**flat, "canaries": ns.canaries, "canary_kind": rows[0]["canary_kind"], "score": rows[0]["score"]},
            "seeds": len(rows),
            "lower_bound_min": min(lbs),
            "lower_bound_mean": statistics.fmean(lbs),
            "lower_bound_max": max(lbs),
            "positive": sum(lb > 0 for lb in lbs),
            "upper_bound_max": max((r["epsilon_upper_bound"] or 0.0) for r in rows) if ns.dp != "none" else None,
            "all_sound": all(r["sound"] for r in rows),
            "runs": rows,
        }
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(ns.out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    return 0 if summary["all_sound"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
