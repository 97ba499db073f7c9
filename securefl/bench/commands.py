"""``securefl bench [--quick] --out DIR``: what privacy costs, measured on this machine.

Each section is a module of :mod:`securefl.bench` with ``run(quick=...) -> dict``
(JSON-ready) and, optionally, ``markdown(result) -> str`` and ``plot(result, path)``.
The command runs the chosen sections one after another in this process, and writes
``bench.json`` (every number, with the machine and its load), ``bench.md`` (the
tables) and one PNG per section that plots.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from securefl.bench import timing

#: section name -> module; the order is the order they run in
SECTIONS: dict[str, str] = {
    "dpsgd": "securefl.bench.dpsgd",
    "ckks": "securefl.bench.ckks",
    "secagg": "securefl.bench.secagg",
    "e2e": "securefl.bench.e2e",
}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import numpy as np
    import torch

    return {**timing.machine(torch=torch.__version__, numpy=np.__version__), "torch_threads": torch.get_num_threads()}


def _sections(value: str) -> list[str]:
    names = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown section {bad[0] if bad else value!r} (sections: {', '.join(SECTIONS)})")
    return names


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="measure what each protection and DP costs on this machine")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a few minutes)")
    p.add_argument("--out", type=Path, default=Path("bench"), help="output folder (bench)")
    p.add_argument("--sections", type=_sections, default=list(SECTIONS), help=f"comma-separated: {','.join(SECTIONS)}")
    p.set_defaults(handler=cmd_bench)


def run_sections(names: list[str], *, quick: bool, log=None) -> dict[str, Any]:
    """Run the named sections; their results, keyed by name, with the machine."""
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "sections": {}}
    for name in names:
        module = importlib.import_module(SECTIONS[name])
        t0 = time.perf_counter()
        if log:
            log(f"securefl bench: {name} ...")
        out = module.run(quick=quick)
        out["section_seconds"] = round(time.perf_counter() - t0, 1)
        results["sections"][name] = out
    results["machine_after"] = machine()
    return results


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    """bench.json, bench.md and the plots; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "bench.json", out / "bench.md"]
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    md = [
        "# securefl bench",
        "",
        f"{m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']} "
        f"({m['torch_threads']} threads); load average before {m['loadavg']}, after {results['machine_after']['loadavg']}"
        f"{' (--quick)' if results['quick'] else ''}.",
    ]
    for name, result in results["sections"].items():
        module = importlib.import_module(SECTIONS[name])
        md += ["", f"## {name} ({result.get('section_seconds')} s)", ""]
        render = getattr(module, "markdown", None)
        md.append(render(result) if render else "```json\n" + json.dumps(result, indent=1)[:4000] + "\n```")
        plot = getattr(module, "plot", None)
        if plot is not None:
            path = out / f"{name}.png"
            plot(result, str(path))
            written.append(path)
    (out / "bench.md").write_text("\n".join(md) + "\n")
    return written


def cmd_bench(ns: argparse.Namespace) -> int:
    from securefl.cli import check_out

    check_out(ns.out, overwrite=True)  # a file or an unwritable place is refused before measuring
    results = run_sections(ns.sections, quick=ns.quick, log=lambda s: print(s, file=sys.stderr))
    written = write_report(results, ns.out)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
