"""Adaptive poisoning attacks in both named settings of the poisoning bench.

Runs Min-Max (Shejwalkar and Houmansadr 2021) and IPM (Xie et al. 2019, epsilon 0.1
and 100) against FedAvg's mean, trimmed mean and centered clipping with radius 1
(Karimireddy et al. 2021), next to each defense's clean accuracy, over 3 seeds in the
``default`` and the ``literature`` setting (attacks/poisoning/settings.py), and writes
one table of main-task accuracy, mean ± sample std over the seeds:

    python benchmarks/poisoning_settings.py            # -> docs/results/poisoning/settings.md

Each setting's runs, summary and heatmaps go under ``--out``/<setting>/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ["none", "minmax", "ipm_0.1", "ipm_100"]
DEFENSES = ["mean", "trimmed_mean", "centered_clip_r1"]
SETTINGS = ["default", "literature"]


def _cell(summary: list[dict], attack: str, defense: str) -> str:
    row = next(r for r in summary if r["attack"] == attack and r["defense"] == defense)
    return f"{row['main_accuracy']:.2f} ± {row['main_accuracy_std']:.2f}"


def table(results: dict[str, dict]) -> list[str]:
    """Markdown rows: one per attack, one column per (setting, defense)."""
    head = ["attack"] + [f"{s}: {d}" for s in results for d in DEFENSES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in ATTACKS:
        label = "none (clean)" if a == "none" else a
        cells = [_cell(results[s]["matrix"], a, d) for s in results for d in DEFENSES]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from attacks.poisoning.bench import run_suite
    from attacks.poisoning.settings import SETTINGS as NAMED

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "poisoning")
    ns = p.parse_args(argv)
    results, timing = {}, []
    for name in SETTINGS:
        t0 = time.perf_counter()
        results[name] = run_suite(seeds=ns.seeds, out=ns.out / name, progress=False, workers=ns.workers,
                                  setting=name, attacks=ATTACKS, defenses=DEFENSES)
        timing.append(f"{name} {time.perf_counter() - t0:.0f} s")
    md = [
        "# Adaptive attacks in both settings",
        "",
        "Main-task accuracy, mean ± sample std over seeds "
        f"0-{ns.seeds - 1}; 20 clients, 4 of them malicious with full knowledge of the round's honest updates.",
        "",
        *(f"- **{n}**: {NAMED[n].summary}." for n in SETTINGS),
        "",
        *table(results),
        "",
        f"Wall time with {ns.workers} worker(s): {', '.join(timing)}. "
        "Reproduce: `python benchmarks/poisoning_settings.py`.",
        "",
    ]
    (ns.out / "settings.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
