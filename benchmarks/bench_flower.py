"""securefl secagg vs Flower's own SecAgg+ workflow, on one machine, in one run.

Both run on a real Flower deployment (one SuperLink, N SuperNodes on 127.0.0.1,
started by :class:`securefl.transport.flower.local.LocalDeployment`), on the same
model (the digits MLP), the same IID partitions of N clients, the same local
training (securefl's, without DP) and the same number of rounds:

* securefl: ``examples/flower_app`` with ``protect="secagg"`` (32-bit ring, all
  clients neighbours, threshold 0.6, masks from ChaCha20 keyed by X25519 agreements);
* Flower: ``benchmarks/flower_secaggplus_app`` (``secaggplus_mod`` on the clients,
  ``SecAggPlusWorkflow(num_shares=N, reconstruction_threshold=3)`` with FedAvg).

Reported per round: bytes per client (record payloads both ways; securefl's are its
wire messages, Flower's its records' arrays, bytes, strings and 8 bytes per number)
and round time (first message of the round pushed -> last reply pulled). Round time
is dominated by Flower's own message latency (a SuperNode polls every 3 s and starts
a ClientApp process per message), which both pay; securefl's ClientApp is a relay to a
per-node worker (see securefl.transport.flower.node), Flower's imports torch in the
ClientApp process of every message.

    python benchmarks/bench_flower.py --clients 4 --rounds 3 --out benchmarks/results/flower.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECUREFL_APP = ROOT / "examples" / "flower_app"
BASELINE_APP = ROOT / "benchmarks" / "flower_secaggplus_app"


def _wait(out: Path, timeout: float) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (out / "failed").exists():
            raise RuntimeError((out / "failed").read_text())
        if (out / "done").exists():
            return json.loads((out / "metrics.json").read_text())
        time.sleep(0.5)
    raise TimeoutError(f"no result in {out} after {timeout:g} s")


def _nodes(dep, tag: str, clients: int) -> list[str]:
    names = [f"{tag}-{k}" for k in range(clients)]
    for k, name in enumerate(names):
        dep.start_node(name, {"partition-id": k, "state-dir": str(dep.root / tag / f"node-{k}"), "federations": tag})
    return names


def run_securefl(dep, clients: int, rounds: int) -> list[dict]:
    names = _nodes(dep, "securefl", clients)
    out = dep.root / "securefl" / "out"
    try:
        dep.flwr_run(SECUREFL_APP, {"protect": "secagg", "dp": "none", "clients": clients, "rounds": rounds,
                                    "federation": "securefl", "out-dir": str(out)})
        metrics = _wait(out, 1800)
    finally:
        dep.stop(names)
    return [{"round": r["round"], "bytes_per_client": (r["bytes_up"] + r["bytes_down"]) / clients,
             "bytes_up_per_client": r["bytes_up"] / clients, "seconds": r["seconds"], "accuracy": r["accuracy"]}
            for r in metrics["rounds"]]


def run_flower(dep, clients: int, rounds: int) -> list[dict]:
    names = _nodes(dep, "flower", clients)
    out = dep.root / "flower" / "out"
    try:
        dep.flwr_run(BASELINE_APP, {"clients": clients, "rounds": rounds, "federation": "flower", "out-dir": str(out)})
        metrics = _wait(out, 1800)
    finally:
        dep.stop(names)
    return [{"round": int(r["round"]), "bytes_per_client": (r["bytes_up"] + r["bytes_down"]) / clients,
             "bytes_up_per_client": r["bytes_up"] / clients, "seconds": r["seconds"]}
            for r in metrics["rounds"] if str(r["round"]).isdigit() and int(r["round"]) >= 1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from securefl.transport.flower.local import LocalDeployment

    with tempfile.TemporaryDirectory(prefix="bench-flower-") as tmp:
        dep = LocalDeployment(Path(tmp))
        try:
            dep.start_superlink()
            ours = run_securefl(dep, args.clients, args.rounds)
            theirs = run_flower(dep, args.clients, args.rounds)
        finally:
            dep.stop()
    result = {"clients": args.clients, "rounds": args.rounds, "securefl_secagg": ours, "flower_secaggplus": theirs}
    print(f"{'round':>5} {'securefl KB/client':>19} {'flower KB/client':>17} {'securefl s':>11} {'flower s':>9}")
    for a, b in zip(ours, theirs):
        print(f"{a['round']:>5} {a['bytes_per_client'] / 1e3:>19.1f} {b['bytes_per_client'] / 1e3:>17.1f} "
              f"{a['seconds']:>11.1f} {b['seconds']:>9.1f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
