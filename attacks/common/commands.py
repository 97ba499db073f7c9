"""``securefl attack bench --suite NAME``: run one benchmark suite over several seeds.

A suite is a function ``run_suite(*, seeds, out, progress, quick) -> dict`` in the
``bench`` module of its attack family, registered in :data:`SUITES` by dotted path
(imported only when chosen). Each suite writes its own CSV, JSON, Markdown table and plots under
``out`` and returns the JSON it wrote.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from securefl.exceptions import ConfigValueError

#: suite name -> "module:function"
SUITES: dict[str, str] = {
    "poisoning": "attacks.poisoning.bench:run_suite",
    "inversion": "attacks.inversion.bench:run_suite",
    "membership": "attacks.membership.bench:run_suite",
}


def run(ns: argparse.Namespace) -> int:
    if ns.suite not in SUITES:
        raise ConfigValueError("suite", ns.suite, f"must be one of {', '.join(sorted(SUITES)) or '(none)'}")
    if ns.seeds < 1:
        raise ConfigValueError("seeds", ns.seeds, "must be >= 1")
    module, func = SUITES[ns.suite].split(":")
    result = getattr(importlib.import_module(module), func)(
        seeds=ns.seeds, out=Path(ns.out), progress=not ns.no_progress, quick=ns.quick
    )
    print(json.dumps(result.get("summary", result), indent=2, default=str))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="run an attack x defense x privacy benchmark suite")
    p.add_argument("--suite", required=True, help="benchmark suite: " + ", ".join(sorted(SUITES)))
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell (3)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (runs/bench)")
    p.add_argument("--quick", action="store_true", help="a reduced grid (for smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)
