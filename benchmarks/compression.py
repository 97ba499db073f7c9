"""Update compression under secure aggregation: bytes up and accuracy over seeds.

Runs ``securefl train --dataset digits --clients 20 --protect secagg --rounds 30
--seed S --compress C`` for each compression C and seeds 0,1,2, and writes
benchmarks/results/compression.json: per run the final accuracy, total bytes up
(every stage, key agreement included), the masked-input bytes per client and the
accuracy after every round against the bytes sent so far; per C the means over
seeds and their ratio to ``--compress none``; and compression.png, accuracy against
bytes per client for each C. Extra flags after
``--`` go to every run (e.g. ``-- --hidden 256``).

    python benchmarks/compression.py
    python benchmarks/compression.py --compress none randk:0.1+quant:8 -- --hidden 256
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path


def run(compress: str, seed: int, args: argparse.Namespace, extra: list[str], out: Path) -> dict:
    from securefl.cli import main

    argv = ["train", "--dataset", "digits", "--clients", str(args.clients), "--protect", "secagg",
            "--rounds", str(args.rounds), "--seed", str(seed), "--compress", compress, *extra,
            "--out", str(out), "--overwrite", "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    if rc != 0:
        raise SystemExit(f"securefl {' '.join(argv)} exited {rc}")
    metrics = json.loads((out / "metrics.json").read_text())
    rounds = metrics["rounds"]
    return {
        "compress": compress,
        "seed": seed,
        "accuracy": metrics["final"]["accuracy"],
        "bytes_up": sum(r["bytes_up"] for r in rounds),
        "masked_input_bytes": statistics.mean(r["protection"]["masked_input_bytes"] for r in rounds),
        "key_bytes_per_client": statistics.mean(r["protection"]["key_bytes_per_client"] for r in rounds),
        "ring_bits": rounds[-1]["protection"]["bits"],
        "saturated": sum(r["protection"]["saturated"] for r in rounds),
        "aborted": sum(1 for r in rounds if r.get("aborted")),
        # (cumulative bytes up per client, accuracy) after every round, for the plot
        "curve": [
            (sum(q["bytes_up"] for q in rounds[: i + 1]) / args.clients, r["accuracy"]) for i, r in enumerate(rounds)
        ],
    }


def plot(runs: list[dict], path: Path) -> None:
    """Accuracy against bytes sent per client, one line per compression level (seed mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    for c in dict.fromkeys(r["compress"] for r in runs):
        curves = [r["curve"] for r in runs if r["compress"] == c]
        n = min(len(k) for k in curves)
        x = [statistics.mean(k[i][0] for k in curves) / 1e3 for i in range(n)]
        y = [statistics.mean(k[i][1] for k in curves) for i in range(n)]
        ax.plot(x, y, "o-", ms=2.5, lw=1.2, label=c)
    ax.set_xscale("log")
    ax.set_xlabel("bytes up per client, cumulative (KB, all secagg stages)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title("digits, 20 clients, --protect secagg")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compress", nargs="+", default=["none", "randk:0.1+quant:8"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "compression.json")
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.compress:
            for s in args.seeds:
                runs.append(run(c, s, args, extra, Path(tmp) / f"{c}-{s}".replace(":", "_")))
                print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for c in args.compress:
        rs = [r for r in runs if r["compress"] == c]
        summary[c] = {k: statistics.mean(r[k] for r in rs) for k in ("accuracy", "bytes_up", "masked_input_bytes")}
    base = summary.get("none")
    if base:
        for c, row in summary.items():
            row["bytes_up_ratio"] = row["bytes_up"] / base["bytes_up"]
            row["masked_input_ratio"] = row["masked_input_bytes"] / base["masked_input_bytes"]
            row["accuracy_delta_points"] = 100 * (row["accuracy"] - base["accuracy"])
    result = {"command": " ".join(["python benchmarks/compression.py", *argv]), "extra": extra,
              "clients": args.clients, "rounds": args.rounds, "seeds": args.seeds, "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, args.out.with_suffix(".png"))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
