"""``securefl attack bench --suite membership``: membership inference against DP-SGD noise.

The sweep behind the README's table: for every seed, the target trained without DP
and with DP-SGD at each noise multiplier of ``SIGMAS``, with the recipe of
``securefl attack membership`` (``RECIPE``: an MLP on 100 members for 100 epochs,
4 reference models). Writes ``OUT/<target>_s<seed>/membership.json`` (the layout
``benchmarks/membership_table.py`` reads), ``runs.csv``, ``summary.csv`` (mean and
std over seeds), ``membership.md`` and ``results.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from attacks.common import report
from attacks.membership.cases import MembershipConfig
from attacks.membership.run import run
from securefl._io import atomic_write_json
from securefl.data import load_dataset, load_digits

RECIPE: dict[str, Any] = {"members": 100, "epochs": 100, "batch_size": 20, "lr": 0.2, "hidden": 128, "references": 4}
QUICK_RECIPE: dict[str, Any] = {"members": 40, "epochs": 5, "batch_size": 10, "lr": 0.2, "hidden": 32, "references": 1}
SIGMAS = (1.0, 2.0, 4.0, 8.0)
QUICK_SIGMAS = (8.0,)
VALUES = ["epsilon", "train_accuracy", "test_accuracy", "auc", "auc_loss", "auc_calibrated", "tpr_1pct", "tpr_01pct"]


def _targets(quick: bool) -> list[tuple[str, dict[str, Any]]]:
    """(name, settings) of every target: no DP, then DP-SGD per noise multiplier."""
    sigmas = QUICK_SIGMAS if quick else SIGMAS
    return [("none", {})] + [(f"dp{s:g}", {"dp": "sample", "noise_multiplier": s}) for s in sigmas]


def _row(target: str, seed: int, summary: dict[str, Any]) -> dict[str, Any]:
    attacks = summary["attacks"]
    return {
        "target": target,
        "seed": seed,
        "noise_multiplier": summary["noise_multiplier"],
        "epsilon": summary["epsilon"],
        "train_accuracy": summary["train_accuracy"],
        "test_accuracy": summary["test_accuracy"],
        "auc": summary["auc"],
        "auc_loss": attacks["loss"]["auc"],
        "auc_calibrated": attacks["calibrated"]["auc"] if "calibrated" in attacks else None,
        "tpr_1pct": summary["tpr_at_fpr"]["0.01"],
        "tpr_01pct": summary["tpr_at_fpr"]["0.001"],
    }


def run_suite(
    *, seeds: int, out: Path, progress: bool, quick: bool, model: str | None = None, dataset: str | None = None
) -> dict[str, Any]:
    """Run every target over ``seeds`` seeds and write the tables under ``out``;
    ``model`` and ``dataset`` (``MODULE:CALLABLE`` or built-in names) replace the MLP and digits."""
    from tqdm import tqdm

    out = Path(out)
    data = load_dataset(dataset, seed=0) if dataset else load_digits(seed=0)
    recipe = {**(QUICK_RECIPE if quick else RECIPE), **({"model": model} if model else {})}
    targets = _targets(quick)
    rows = []
    t0 = time.perf_counter()
    with tqdm(total=seeds * len(targets), unit="run", disable=not progress, dynamic_ncols=True) as bar:
        for seed in range(seeds):
            for name, settings in targets:
                summary = run(data, MembershipConfig(**recipe, **settings, seed=seed)).summary()
                atomic_write_json(out / f"{name}_s{seed}" / "membership.json", summary)
                rows.append(_row(name, seed, summary))
                bar.update(1)
    table = report.mean_over_seeds(rows, ["target"], VALUES)
    report.write_csv(out / "runs.csv", rows)
    report.write_csv(out / "summary.csv", table)
    names = [r["target"] for r in table]
    columns = ["epsilon", "train_accuracy", "test_accuracy", "auc_loss", "auc_calibrated", "tpr_1pct"]
    matrix = [[r[c] for c in columns] for r in table]
    md = [
        "# Membership inference vs DP-SGD (digits, MLP)",
        "",
        f"Mean over {seeds} seed(s); epsilon from the RDP accountant at delta 1e-5; recipe {recipe}.",
        "",
        report.markdown_table(names, columns, matrix, corner="target", fmt=lambda v: "–" if v is None else f"{v:.3f}"),
        "",
    ]
    (out / "membership.md").write_text("\n".join(md))
    result = {"suite": "membership", "seeds": seeds, "quick": quick, "recipe": recipe,
              "seconds": time.perf_counter() - t0, "runs": rows, "summary": {r["target"]: r for r in table}}
    report.write_json(out / "results.json", result)
    return result
