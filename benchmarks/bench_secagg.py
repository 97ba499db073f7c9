"""Cost of secure aggregation (``--protect secagg``): client masking and server unmasking.

Default mode (the README figures): the ``secagg`` section of ``securefl bench``
(:func:`securefl.bench.secagg.run`): client masking at n=100 (complete graph) and
n=1000 (SecAgg+) with d=1M beside a plain AES-CTR reference in the same process,
server unmasking on the complete graph at n=300 and n=1000 (d=10k, with and
without 10% dropout), and SecAgg+ server time from n=100 to 1000 with the fitted
log-log exponent. Medians of repeats, CPU (``time.process_time``) and wall time,
load average noted. Writes JSON and, next to it, the Markdown table and a plot:

    python benchmarks/bench_secagg.py benchmarks/results/bench_secagg.json [--quick]

``--case n:k`` mode runs the whole protocol with every client in this process
(``k = 0``: complete graph; ``k > 0``: SecAgg+ with ``k`` neighbours), a
``--dropout`` fraction vanishing after sharing their keys, and reports a client's
masked-input time (median over clients), the per-peer mask cost, every server
stage and the upload per client against float32:

    python benchmarks/bench_secagg.py out.json --dim 1000000 --case 100:0 1000:20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from securefl.bench import secagg as section
from securefl.crypto.secagg.common import SecAggSettings
from securefl.protections.secagg import SecAggClientProtection, SecAggServerProtection
from securefl.crypto.secagg.server import SecAggServer
from securefl.privacy.noise import SecureRNG
from securefl.protections import Exchange
from securefl.transport import wire


class _Client:
    """A client whose weighted update is a fixed vector; times its masking stage."""

    def __init__(self, cid: str, settings: SecAggSettings, update: torch.Tensor) -> None:
        self.client_id = cid
        self.protection = SecAggClientProtection(client_id=cid, settings=settings, rng=SecureRNG())
        self.update = update
        self.seconds: float | None = None
        self.cpu_seconds: float | None = None

    def fit(self, message: bytes) -> bytes:
        msg = wire.decode(message, expect=wire.Kind.GLOBAL_MODEL)
        self.protection.begin(msg.header)
        t0, c0 = time.perf_counter(), time.process_time()
        out = self.protection.seal(self.update, {"weight": 1.0}, {"round": msg.header["round"]})
        self.seconds, self.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        return out

    def handle(self, message: bytes) -> bytes:
        return self.protection.handle(message)


def _timed_server(stage_times: dict[str, float], stage_cpu: dict[str, float]):
    """Wrap SecAggServer's collect_* methods to time each server stage."""
    originals = {}
    for name in ("collect_keys", "collect_shares", "collect_masked", "collect_unmask"):
        original = getattr(SecAggServer, name)
        originals[name] = original

        def timed(self, *args, __orig=original, __name=name, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return __orig(self, *args, **kw)
            finally:
                stage_times[__name] = stage_times.get(__name, 0.0) + time.perf_counter() - t0
                stage_cpu[__name] = stage_cpu.get(__name, 0.0) + time.process_time() - c0

        setattr(SecAggServer, name, timed)
    return originals


def bench_case(n: int, k: int, dim: int, dropout: float, threshold: float) -> dict:
    settings = SecAggSettings(clip=1.0, max_weight=1.0, threshold=threshold, neighbors=k)
    rng = np.random.default_rng(0)  # benchmark data, not secret
    update = torch.from_numpy(rng.uniform(-1, 1, dim))
    clients = [_Client(f"c{i:04d}", settings, update) for i in range(n)]
    server = SecAggServerProtection(settings=settings)
    drops = sorted(rng.choice(n, size=int(round(dropout * n)), replace=False).tolist())
    exchange = Exchange(1, {f"c{i:04d}": 3 for i in drops})  # gone before the masked input
    gm = wire.encode(wire.Kind.GLOBAL_MODEL, {"round": 1, "dim": dim}, wire.vector_to_bytes(torch.zeros(dim)))
    stage_times: dict[str, float] = {}
    stage_cpu: dict[str, float] = {}
    originals = _timed_server(stage_times, stage_cpu)
    try:
        t0 = time.perf_counter()
        agg = server.aggregate(clients, gm, dim, exchange)
        wall = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(SecAggServer, name, fn)
    survivors = [c for c in clients if c.seconds is not None]
    expected = update.double() * len(survivors)
    err = float((agg.total.double() - expected).abs().max())
    mask_seconds = [c.seconds for c in survivors]
    mask_cpu = [c.cpu_seconds for c in survivors]
    peers = agg.stats["neighbors"]
    # the encoding alone (no masks), to split the client's time (best CPU time of 3)
    encode_s = float("inf")
    for _ in range(3):
        c0 = time.process_time()
        settings.codec(n).encode(update.numpy())
        encode_s = min(encode_s, time.process_time() - c0)
    med = statistics.median(mask_seconds)
    med_cpu = statistics.median(mask_cpu)
    return {
        "clients": n,
        "neighbors": peers,
        "graph": "complete" if k == 0 else "secagg+",
        "threshold": agg.stats["threshold"],
        "dim": dim,
        "dropped_before_masking": len(drops),
        "client_masked_input_cpu_ms_median": round(1e3 * med_cpu, 2),
        "client_masked_input_wall_ms_median": round(1e3 * med, 2),
        "client_encode_cpu_ms": round(1e3 * encode_s, 2),
        "client_mask_cpu_ms_per_peer": round(1e3 * max(med_cpu - encode_s, 0.0) / (peers + 1), 3),
        "server_unmask_cpu_s": round(stage_cpu["collect_unmask"], 3),
        "server_unmask_wall_s": round(stage_times["collect_unmask"], 3),
        "server_stage_cpu_s": {k2: round(v, 3) for k2, v in stage_cpu.items()},
        "round_wall_s": round(wall, 2),
        "bytes_up_per_client": agg.stats["bytes_up_per_client"],
        "masked_input_ratio": agg.stats["masked_input_ratio"],
        "key_bytes_per_client": agg.stats["key_bytes_per_client"],
        "max_abs_error": err,
        "survivors": agg.count,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="JSON file to write (the Markdown table and plot go next to it)")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    ap.add_argument("--case", nargs="+", help="n:k pairs: the whole protocol, every client (k=0: complete graph)")
    ap.add_argument("--dim", type=int, default=1_000_000, help="with --case")
    ap.add_argument("--dropout", type=float, default=0.1, help="with --case")
    ap.add_argument("--threshold", type=float, default=0.6, help="with --case")
    ns = ap.parse_args(argv)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    if not ns.case:
        doc = section.run(quick=ns.quick)
        ns.out.write_text(json.dumps(doc, indent=2) + "\n")
        md = section.markdown(doc)
        ns.out.with_suffix(".md").write_text(md)
        section.plot(doc, str(ns.out.with_suffix(".png")))
        print(md)
        return 0
    results = []
    for case in ns.case:
        n, k = (int(v) for v in case.split(":"))
        res = bench_case(n, k, ns.dim, ns.dropout, ns.threshold)
        print(json.dumps(res), file=sys.stderr)
        results.append(res)
    doc = {
        "benchmark": "secagg",
        "machine": section.machine(),
        "note": "single process; CPU times (process_time) are the figures to compare, wall "
        "times on a shared machine include waiting for a core",
        "results": results,
    }
    ns.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
