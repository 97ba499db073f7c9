"""Throughput and bytes of CKKS-encrypted aggregation (``--protect ckks``).

For each client count and preset: one client's encode + encrypt + serialize of a
``--dim`` vector (values/s), the server's receipt check + sum of every client's
ciphertexts (value-additions/s; with and without deserialization), and the key
holder's decrypt + verify + noise flooding (values/s), plus bytes per client
against float32 and the worst released error against the plaintext sum.

Encrypting 100 distinct 1M-value updates would dominate the run, so ``--distinct``
updates are encrypted and their ciphertexts cycled among the clients for the
deserialize and add timings (the cost of an addition does not depend on the
plaintext). The full protocol round, the key holder's decryption and the error
are measured on the distinct updates only: replayed ciphertexts carry correlated
CKKS errors, which the key holder's authentication-tag check rightly refuses.

Wall-clock figures on a shared machine are noisy; the ``*_per_cpu_s`` figures
divide by the process's CPU time (all threads) instead.

The ``vs-raw`` section (:func:`securefl.bench.ckks.run`, also ``securefl bench``'s
CKKS section) sets securefl's encrypt, load, add and decrypt beside raw TenSEAL on
the same parameters and NVFlare's preset, and times a digits round against
plaintext (README "Performance: CKKS").

    python benchmarks/bench_ckks.py benchmarks/results/bench_ckks.json --dim 1000000 --clients 10 100
    python benchmarks/bench_ckks.py benchmarks/results/bench_ckks.json --sections vs-raw [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from securefl.crypto.ckks_keys import decryptor_for
from securefl.crypto.ckks_auth import Layout
from securefl.crypto.hazmat import ckks as hz
from securefl.crypto.hazmat import ckks_seal as hzs
from securefl.protections import Exchange
from securefl.protections.ckks import CKKSSettings
from securefl.protections.ckks_client import CKKSClient
from securefl.protections.ckks_server import CKKSServer
from securefl.transport import wire


class _Replay:
    """A key holder whose update is a prepared ciphertext (cycled among clients)."""

    def __init__(self, client_id: str, protection: CKKSClient, sealed: bytes) -> None:
        self.client_id = client_id
        self.protection = protection
        self.sealed = sealed

    def fit(self, message: bytes) -> bytes:
        return self.sealed

    def handle(self, message: bytes) -> bytes:
        return self.protection.handle(message)


def _timed(fn, repeat: int = 1):
    """Best wall-clock seconds of ``repeat`` calls, the CPU seconds of that call
    (all threads of this process), and the result."""
    best, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall = time.perf_counter() - t0
        if wall < best:
            best, cpu = wall, time.process_time() - c0
    return best, cpu, out


def bench_one(
    dim: int, clients: int, preset: str, encryption: str, distinct: int, repeat: int, max_error: float = 1e-3
) -> dict:
    params = hz.derive_params(preset, max_summands=clients, max_error=max_error, encryption=encryption)
    settings = CKKSSettings(params, clip=1.0, max_weight=1.0)
    holders = [CKKSClient(client_id=f"c{i}", settings=settings) for i in range(clients)]
    server = CKKSServer(settings=settings)
    setup_s, _, _ = _timed(lambda: server.setup([_Replay(h.client_id, h, b"") for h in holders], Exchange(0)))

    rng = np.random.default_rng(0)  # benchmark data, not secrets
    updates = []
    for _ in range(min(distinct, clients)):
        u = rng.normal(size=dim)
        updates.append(u / np.linalg.norm(u) * 0.9)
    header = {"round": 1, "client": "c0", "dim": dim}
    enc_s, enc_cpu, sealed0 = _timed(
        lambda: holders[0].seal(torch.from_numpy(updates[0]), {"weight": 1.0}, header), repeat
    )
    sealed = [sealed0] + [
        holders[i].seal(torch.from_numpy(updates[i]), {"weight": 1.0}, {**header, "client": f"c{i}"})
        for i in range(1, len(updates))
    ]
    length = Layout(dim, (), len(holders)).length
    payloads = [wire.decode(s).payload for s in sealed]

    # server: receipt checks + deserialization, then in-place sums, streamed
    # client by client as the server does (never all ciphertexts in memory)
    load_s = add_s = load_cpu = add_cpu = 0.0
    acc = None
    for i in range(clients):
        t0, c0 = time.perf_counter(), time.process_time()
        tensor = hzs.load_ciphertext(server.context, params, payloads[i % len(payloads)], length)
        t1, c1 = time.perf_counter(), time.process_time()
        if acc is None:
            acc = tensor
        else:
            acc += tensor
        t2, c2 = time.perf_counter(), time.process_time()
        load_s += t1 - t0
        add_s += t2 - t1
        load_cpu += c1 - c0
        add_cpu += c2 - c1
        del tensor

    # the whole protocol round (decode, check, sum, decrypt request, verify,
    # flood, release) over the distinct updates only: replayed ciphertexts carry
    # correlated errors, which the key holder's tag check rightly refuses
    k = len(sealed)
    reps = [_Replay(f"c{i}", holders[i], sealed[i]) for i in range(k)]
    round_s, round_cpu, agg = _timed(lambda: server.aggregate(reps, b"", dim, Exchange(1)))
    err = float(np.abs(agg.total.double().numpy() - sum(updates)).max())

    # key holder alone: decrypt + verify + flood + round a sum of independent
    # ciphertexts; each round is decrypted once, by its designated holder, so every
    # repetition seals and sums a fresh round
    def decrypt_round(r: int) -> tuple[float, float]:
        partial = None
        for i in range(k):
            blob = holders[i].seal(torch.from_numpy(updates[i]), {"weight": 1.0}, {**header, "round": r, "client": f"c{i}"})
            t = hzs.load_ciphertext(server.context, params, wire.decode(blob).payload, length)
            if partial is None:
                partial = t
            else:
                partial += t
        request = wire.encode(
            wire.Kind.CKKS_DECRYPT,
            {"settings": settings.settings_id, "round": r, "dim": dim, "aux_keys": []},
            hzs.serialize(partial),
        )
        holder = holders[int(decryptor_for(tuple(server.key_holders), server.fingerprint, r)[1:])]
        t0, c0 = time.perf_counter(), time.process_time()
        released = wire.decode(holder.handle(request))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert released.kind == wire.Kind.CKKS_AGGREGATE, released.header
        return wall, cpu

    dec_s, dec_cpu = min(decrypt_round(r) for r in range(2, 2 + repeat))
    del acc

    update_bytes = len(sealed0)
    return {
        "dim": dim,
        "clients": clients,
        "preset": preset,
        "encryption": encryption,
        "params": params.describe(),
        "ciphertexts_per_client": hzs.num_ciphertexts(params, length),
        "setup_seconds": setup_s,
        "encrypt_seconds": enc_s,
        "encrypt_values_per_s": dim / enc_s,
        "encrypt_values_per_cpu_s": dim / enc_cpu,
        "deserialize_seconds": load_s,
        "aggregate_add_seconds": add_s,
        "aggregate_additions_per_s": (clients - 1) * dim / add_s,
        "aggregate_additions_per_cpu_s": (clients - 1) * dim / add_cpu,
        "aggregate_with_deserialize_additions_per_s": (clients - 1) * dim / (add_s + load_s),
        "aggregate_with_deserialize_additions_per_cpu_s": (clients - 1) * dim / (add_cpu + load_cpu),
        "decrypt_seconds": dec_s,
        "decrypt_values_per_s": dim / dec_s,
        "decrypt_values_per_cpu_s": dim / dec_cpu,
        "protocol_round_clients": k,
        "protocol_round_seconds": round_s,
        "protocol_round_cpu_seconds": round_cpu,
        "bytes_per_client": update_bytes,
        "bytes_ratio_vs_float32": update_bytes / (4 * dim),
        "max_abs_error_vs_plaintext_sum": err,
        "error_bound": params.max_error(k),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="JSON file to write")
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--presets", nargs="+", default=["large-model"])
    ap.add_argument("--encryption", nargs="+", default=["symmetric", "seeded"], choices=hz.ENCRYPTIONS)
    ap.add_argument("--max-error", type=float, default=1e-3)
    ap.add_argument("--distinct", type=int, default=4, help="distinct client updates encrypted (protocol round size)")
    ap.add_argument("--repeat", type=int, default=1, help="best of N timings of encryption")
    ap.add_argument("--sections", nargs="+", default=["throughput", "vs-raw"], choices=["throughput", "vs-raw"])
    ap.add_argument("--quick", action="store_true", help="vs-raw: 40k values only, fewer repeats")
    ns = ap.parse_args(argv)
    old = json.loads(ns.out.read_text()) if ns.out.exists() else {}
    results = old.get("results", []) if "throughput" not in ns.sections else []
    runs = [(p, e, m) for p in ns.presets for e in ns.encryption for m in ns.clients] if "throughput" in ns.sections else []
    for preset, encryption, m in runs:
        row = bench_one(ns.dim, m, preset, encryption, ns.distinct, ns.repeat, ns.max_error)
        results.append(row)
        print(
            f"{preset:<12} {encryption:<10} clients {m:>4}: "
            f"encrypt {row['encrypt_values_per_s'] / 1e6:6.2f} M values/s "
            f"({row['encrypt_values_per_cpu_s'] / 1e6:.2f} per CPU-s), "
            f"add {row['aggregate_additions_per_s'] / 1e6:7.1f} M/s "
            f"({row['aggregate_additions_per_cpu_s'] / 1e6:.1f} per CPU-s) "
            f"({row['aggregate_with_deserialize_additions_per_s'] / 1e6:5.1f} M/s with deserialize), "
            f"decrypt {row['decrypt_values_per_s'] / 1e6:5.2f} M values/s, "
            f"{row['bytes_ratio_vs_float32']:.2f}x float32, max error {row['max_abs_error_vs_plaintext_sum']:.2e}",
            file=sys.stderr,
        )
    import tenseal

    doc = {
        "benchmark": "ckks",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg": [round(v, 2) for v in os.getloadavg()]},
        "tenseal": tenseal.__version__,
        "results": results,
    }
    if "vs-raw" in ns.sections:
        from securefl.bench.ckks import run

        doc["vs_raw"] = run(quick=ns.quick)
        _print_vs_raw(doc["vs_raw"])
    elif "vs_raw" in old:
        doc["vs_raw"] = old["vs_raw"]
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(doc, indent=2))
    return 0


def _print_vs_raw(res: dict) -> None:
    for r in res["ops"]:
        ours, raw = r["securefl"], r["raw_tenseal"]
        cells = "  ".join(f"{k} {ours[k]['cpu_ms']:.1f}/{raw[k]['cpu_ms']:.1f} ms ({r['cpu_ratio'][k]:.2f}x)"
                          for k in ("encrypt", "load", "add", "decrypt"))
        print(f"{r['dim']:>8} {r['encryption']:<10} {cells}  upload {r['upload_x_float32']:.2f}x float32", file=sys.stderr)
    rnd = res["round"]
    print(f"round ({rnd['params']} params): none {rnd['none']['cpu_ms']:.0f} ms, ckks {rnd['ckks']['cpu_ms']:.0f} ms CPU "
          f"({rnd['cpu_ratio']:.2f}x; wall {rnd['wall_ratio']:.2f}x); targets reached: {res['reached']}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
