"""Buffered asynchronous aggregation against synchronous FedAvg, in simulated time.

Digits, 20 clients whose mean task times are log-spaced from 1 to 10 (the slowest
10x slower than the fastest; log-normal jitter 0.3 per task). Synchronous FedAvg
runs ``--rounds`` rounds with every client (a round lasts as long as its slowest
client); its final accuracy is the target. FedBuff (``--mode async --buffer 5``)
(every client in flight: ``--concurrency 20``) runs ``--buffers`` server updates;
the ratio is the simulated time at which it first reaches the target minus one
point over the synchronous run's. Under ``--dp sample`` both spend each client's budget
over the same number of updates (``--max-updates`` = the synchronous rounds), so
every update carries the same noise.

    python benchmarks/async_vs_sync.py                     # secagg and ckks, no DP, seeds 0-2
    python benchmarks/async_vs_sync.py --dp sample --seeds 0   # with DP-SGD at epsilon 3

Writes benchmarks/results/async_vs_sync[_dp].json and .png (accuracy against
simulated time, one line per run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

COMMON = dict(dataset="digits", clients=20, latency_spread=10.0, latency_jitter=0.3)
OUT = Path(__file__).parent / "results"


def curve(**kw) -> list[tuple[float, float]]:
    """(simulated time, accuracy) after every round or buffer."""
    from securefl.config import RunConfig
    from securefl.simulation import Simulation

    res = Simulation(RunConfig.from_flat({**COMMON, **kw})).run()
    return [(r["schedule"]["sim_time"], r["accuracy"]) for r in res.metrics["rounds"] if r["accuracy"] is not None]


def compare(protect: str, seed: int, rounds: int, buffers: int, dp: dict) -> dict:
    t0 = time.perf_counter()
    sync = curve(protect=protect, seed=seed, rounds=rounds, **dp)
    t1 = time.perf_counter()
    extra = {"max_updates": rounds} if dp else {}
    asyn = curve(protect=protect, seed=seed, rounds=buffers, mode="async", buffer=5, concurrency=20, **dp, **extra)
    t2 = time.perf_counter()
    target = sync[-1][1]
    hit = next(((t, a) for t, a in asyn if a >= target - 0.01), None)
    return {
        "protect": protect, "seed": seed, "sync": sync, "async": asyn,
        "sync_accuracy": target, "sync_time": sync[-1][0],
        "async_hit_time": hit[0] if hit else None, "async_hit_accuracy": hit[1] if hit else None,
        "ratio": hit[0] / sync[-1][0] if hit else None,
        "async_final_accuracy": asyn[-1][1], "wall_seconds": [round(t1 - t0, 1), round(t2 - t1, 1)],
    }


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protects = sorted({r["protect"] for r in runs})
    fig, axes = plt.subplots(1, len(protects), figsize=(5.5 * len(protects), 3.6), dpi=110, squeeze=False)
    for ax, protect in zip(axes[0], protects):
        for r in (r for r in runs if r["protect"] == protect):
            for key, style in (("sync", "-"), ("async", "--")):
                t, a = zip(*r[key])
                label = f"{'FedAvg (sync)' if key == 'sync' else 'FedBuff K=5'}, seed {r['seed']}"
                ax.plot(t, a, style, lw=1.2, label=label, color="tab:blue" if key == "sync" else "tab:orange",
                        alpha=0.5 + 0.5 / (1 + r["seed"]))
        ax.set_title(f"{title}, protect={protect}")
        ax.set_xlabel("simulated time (fastest client's task = 1)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protect", default="secagg,ckks")
    p.add_argument("--dp", default="none", choices=["none", "sample"])
    p.add_argument("--epsilon", type=float, default=3.0)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rounds", type=int, default=30, help="synchronous rounds (30)")
    p.add_argument("--buffers", type=int, default=120, help="asynchronous server updates (120)")
    a = p.parse_args(argv)
    dp = {"dp": "sample", "epsilon": a.epsilon} if a.dp == "sample" else {}
    runs = []
    for protect in a.protect.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            r = compare(protect, seed, a.rounds, a.buffers, dp)
            runs.append(r)
            print(f"{protect:6s} seed {seed}: sync {r['sync_accuracy']:.4f} at t={r['sync_time']:.1f}; "
                  f"async reaches {r['async_hit_accuracy']} at t={r['async_hit_time']} (ratio {r['ratio']}); "
                  f"async final {r['async_final_accuracy']:.4f}; wall {r['wall_seconds']} s", flush=True)
    for protect in a.protect.split(","):
        ratios = [r["ratio"] for r in runs if r["protect"] == protect and r["ratio"] is not None]
        reached = sum(r["ratio"] is not None for r in runs if r["protect"] == protect)
        if ratios:
            print(f"{protect}: reached in {reached} of {len(ratios)} seeds; time ratio mean {statistics.mean(ratios):.3f}, "
                  f"range {min(ratios):.3f}-{max(ratios):.3f}")
    suffix = "_dp" if dp else ""
    OUT.mkdir(exist_ok=True)
    (OUT / f"async_vs_sync{suffix}.json").write_text(json.dumps({"settings": {**COMMON, **dp, **vars(a)}, "runs": runs}, indent=1))
    plot(runs, OUT / f"async_vs_sync{suffix}.png", "DP-SGD eps=%g" % a.epsilon if dp else "no DP")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
