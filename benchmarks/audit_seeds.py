"""Repeat ``securefl audit empirical`` over seeds; write one JSON of all results.

Checks the audit's soundness claim on a real run: across seeds the lower bound
must never exceed the accountant's upper bound (the sweep is
:func:`attacks.audit.bench.seed_sweep`). Example::

    PYTHONPATH=. .venv/bin/python benchmarks/audit_seeds.py --dp client --epsilon 2 --canaries 1000 \\
        --rounds 10 --seeds 10 --out benchmarks/results/audit_client_eps2.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attacks.audit.bench import seed_sweep
from attacks.audit.cases import EmpiricalAuditConfig


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
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    seeds = range(ns.first_seed, ns.first_seed + ns.seeds)
    summary = seed_sweep(flat, audit, seeds, out=ns.out, log=sys.stderr.write)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    return 0 if summary["all_sound"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
