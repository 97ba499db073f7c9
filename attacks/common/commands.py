"""``securefl attack bench --suite NAME``: run one benchmark suite over several seeds.

A suite is a function ``run_suite(*, seeds, out, progress, quick) -> dict`` in the
``bench`` module of its attack family (one that also takes ``model`` and ``dataset``
runs on a user's ``--model`` / ``--dataset``, ``MODULE:CALLABLE``), registered in :data:`SUITES` by dotted path
(imported only when chosen). Each suite writes its own CSV, JSON, Markdown table and plots under
``out`` and returns the JSON it wrote.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from pathlib import Path

from securefl.exceptions import ConfigValueError
from securefl.userspec import check_spec, is_user_spec

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
    suite = getattr(importlib.import_module(module), func)
    user = {k: getattr(ns, k) for k in ("model", "dataset", "setting") if getattr(ns, k, None) is not None}
    for key, value in user.items():
        if key not in inspect.signature(suite).parameters:
            raise ConfigValueError(key, value, f"suite {ns.suite!r} runs its own {key} only")
        if key != "setting" and is_user_spec(value):
            check_spec(key, value)
    result = suite(seeds=ns.seeds, out=Path(ns.out), progress=not ns.no_progress, quick=ns.quick, **user)
    print(json.dumps(result.get("summary", result), indent=2, default=str))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="run an attack x defense x privacy benchmark suite")
    p.add_argument("--suite", required=True, help="benchmark suite: " + ", ".join(sorted(SUITES)))
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell (3)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (runs/bench)")
    p.add_argument("--quick", action="store_true", help="a reduced grid (for smoke tests)")
    p.add_argument("--model", default=None, help="your own model factory as MODULE:CALLABLE, in place of the suite's")
    p.add_argument("--dataset", default=None, help="your own dataset as MODULE:CALLABLE, in place of the suite's")
    p.add_argument("--setting", default=None,
                   help="poisoning: default | literature (ReLU MLP, worker momentum 0.9, one step per round) (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)
