"""DP defaults that need no tuning (securefl/defaults.py), measured over seeds.

Runs ``securefl train --dataset digits --clients 10 --rounds 30 --dp sample
--epsilon E --delta 1e-5 --seed S`` with no other flag (extra flags after ``--``
override the defaults, for tuning) for seeds 0-9, and prints the ten final
accuracies, their mean, min and max.

    python benchmarks/dp_defaults.py --epsilon 3
    python benchmarks/dp_defaults.py --epsilon 1
    python benchmarks/dp_defaults.py --epsilon 3 -- --model logreg
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def run_seed(epsilon: float, seed: int, dp: str, extra: list[str], out: Path) -> float:
    from securefl.cli import main

    argv = ["train", "--dataset", "digits", "--clients", "10", "--rounds", "30", "--dp", dp,
            "--epsilon", f"{epsilon:g}", "--delta", "1e-5", "--seed", str(seed), *extra,
            "--out", str(out), "--overwrite", "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    if rc != 0:
        raise SystemExit(f"securefl {' '.join(argv)} exited {rc}")
    return json.loads((out / "metrics.json").read_text())["final"]["accuracy"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epsilon", type=float, default=3.0)
    p.add_argument("--dp", default="sample", help="sample | client")
    p.add_argument("--seeds", type=int, default=10)
    ns = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    accs = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(ns.seeds):
            accs.append(run_seed(ns.epsilon, seed, ns.dp, extra, Path(tmp) / f"s{seed}"))
            print(f"seed {seed}: {accs[-1]:.4f}", flush=True)
    print(f"--dp {ns.dp} --epsilon {ns.epsilon:g} {' '.join(extra)}".rstrip())
    print("values:", " ".join(f"{a:.4f}" for a in accs))
    print(f"mean {statistics.mean(accs):.4f}  min {min(accs):.4f}  max {max(accs):.4f}  "
          f"std {statistics.pstdev(accs):.4f}  ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
