"""Summarise a membership-inference sweep into a Markdown table (mean ± std over seeds).

The sweep (each run writes RUN/membership.json):

    for s in 0 1 2; do
      securefl attack membership --seed $s --out benchmarks/results/membership/none_s$s
      for nm in 1 2 4 8; do
        securefl attack membership --seed $s --dp sample --noise-multiplier $nm \
            --out benchmarks/results/membership/dp${nm}_s$s
      done
    done
    python benchmarks/membership_table.py benchmarks/results/membership > benchmarks/results/membership/table.md
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def table(root: Path) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for f in sorted(root.glob("*/membership.json")):
        groups[f.parent.name.rsplit("_s", 1)[0]].append(json.loads(f.read_text()))

    def key(name: str) -> float:
        return -1.0 if name == "none" else float(name[2:])

    lines = [
        "| target | sigma | epsilon (RDP, delta 1e-5) | train / test acc | AUC loss | AUC calibrated | TPR@1% FPR | TPR@0.1% FPR | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(groups, key=key):
        runs = groups[name]

        def mean(f):
            return statistics.mean(f(r) for r in runs)

        def std(f):
            return statistics.stdev([f(r) for r in runs]) if len(runs) > 1 else 0.0

        eps = runs[0]["epsilon"]
        loss = lambda r: r["attacks"]["loss"]["auc"]  # noqa: E731
        cal = lambda r: r["attacks"]["calibrated"]["auc"]  # noqa: E731
        lines.append(
            f"| {'no DP' if eps is None else 'DP-SGD'} | {runs[0]['noise_multiplier'] or '-'} | "
            f"{'-' if eps is None else f'{eps:.1f}'} | "
            f"{mean(lambda r: r['train_accuracy']):.2f} / {mean(lambda r: r['test_accuracy']):.2f} | "
            f"{mean(loss):.3f} ± {std(loss):.3f} | {mean(cal):.3f} ± {std(cal):.3f} | "
            f"{mean(lambda r: r['tpr_at_fpr']['0.01']):.3f} | {mean(lambda r: r['tpr_at_fpr']['0.001']):.3f} | {len(runs)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/membership")))
