"""End-to-end round time: every protection, with and without DP-SGD, at three model sizes.

One federated run per cell (digits, MLP whose hidden width sets the size, fixed
sampling of every client), timed per round with wall and process CPU time; the
first round (which also carries the protection's key set-up) is reported apart and
the median of the others is the round time. Ratios are against the unprotected run
with the same DP setting, measured in the same process.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

#: MLP hidden widths giving about 5k, 40k and 300k parameters on digits (64 -> h -> 10)
SIZES = {"5k": 64, "40k": 533, "300k": 4000}
PROTECTIONS = ("none", "ckks", "secagg")


def _params(hidden: int) -> int:
    return 64 * hidden + hidden + hidden * 10 + 10


def _cell(hidden: int, protect: str, dp: str, *, clients: int, rounds: int, seed: int) -> dict[str, Any]:
    from securefl.config import RunConfig
    from securefl.simulation import Simulation

    flat: dict[str, Any] = {
        "dataset": "digits", "clients": clients, "rounds": rounds, "model": "mlp", "hidden": hidden,
        "partition": "iid", "protect": protect, "seed": seed, "local_epochs": 1.0, "batch_size": 32,
    }  # fmt: skip
    if dp == "sample":
        flat.update(dp="sample", noise_multiplier=1.0, clip=1.0)
    if protect == "ckks" and hidden >= 2000:
        flat["ckks_preset"] = "large-model"
    marks: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as out:
        sim = Simulation(RunConfig.from_flat(flat), out_dir=out)
        marks.append((time.perf_counter(), time.process_time()))
        result = sim.run(on_round=lambda _res: marks.append((time.perf_counter(), time.process_time())))
    walls = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpus = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    later = slice(1, None) if rounds > 1 else slice(0, None)
    final = result.metrics["final"]
    return {
        "params": _params(hidden), "protect": protect, "dp": dp, "clients": clients, "rounds": rounds,
        "first_round_wall_s": round(walls[0], 4),
        "round_wall_s": round(statistics.median(walls[later]), 4),
        "round_cpu_s": round(statistics.median(cpus[later]), 4),
        "bytes_up_per_client_round": None if final["bytes_up"] is None else final["bytes_up"] // (clients * rounds),
        "accuracy": final["accuracy"],
    }  # fmt: skip


def run(*, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """The section as a JSON-ready dict (``quick``: two sizes, 5 clients, 3 rounds)."""
    sizes = {k: v for k, v in SIZES.items() if not quick or k != "300k"}
    clients, rounds = (5, 3) if quick else (10, 4)
    load_before = [round(v, 2) for v in os.getloadavg()]
    rows = []
    for label, hidden in sizes.items():
        for dp in ("none", "sample"):
            base = None
            for protect in PROTECTIONS:
                row = _cell(hidden, protect, dp, clients=clients, rounds=rounds, seed=seed)
                row["size"] = label
                base = row if protect == "none" else base
                assert base is not None
                row["wall_vs_none"] = round(row["round_wall_s"] / base["round_wall_s"], 2)
                row["cpu_vs_none"] = round(row["round_cpu_s"] / base["round_cpu_s"], 2)
                rows.append(row)
    return {
        "section": "e2e", "quick": quick, "loadavg_before": load_before,
        "loadavg_after": [round(v, 2) for v in os.getloadavg()], "rows": rows,
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| model | params | DP | protection | round wall (s) | round CPU (s) | x none (CPU) | first round (s) | bytes up / client / round |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        up = "-" if r["bytes_up_per_client_round"] is None else f"{r['bytes_up_per_client_round']:,}"
        lines.append(
            f"| MLP {r['size']} | {r['params']:,} | {r['dp']} | {r['protect']} | {r['round_wall_s']:.3f} | "
            f"{r['round_cpu_s']:.3f} | {r['cpu_vs_none']:.2f} | {r['first_round_wall_s']:.3f} | {up} |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str) -> None:
    """Round CPU time per protection and model size (log scale), one panel per DP setting."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    dps = sorted({r["dp"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(dps), figsize=(5 * len(dps), 3.6), dpi=110, squeeze=False)
    for ax, dp in zip(axes[0], dps):
        for protect in PROTECTIONS:
            rows = [r for r in result["rows"] if r["dp"] == dp and r["protect"] == protect]
            ax.plot([r["params"] for r in rows], [r["round_cpu_s"] for r in rows], "o-", label=protect)
        ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="round CPU time (s)", title=f"dp={dp}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
