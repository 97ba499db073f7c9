"""Throughput and bytes of CKKS-encrypted aggregation (``--protect ckks``).

For each client count and preset: one client's encode + encrypt + serialize of a
``--dim`` vector (values/s), the server's receipt check + sum of every client's
ciphertexts (value-additions/s; with and without deserialization), and the key
holder's decrypt + verify + noise flooding (values/s), plus bytes per client
against float32 and the worst released error against the plaintext sum.

Encrypting 100 distinct 1M-value updates would dominate the run, so ``--distinct``
updates are encrypted and their ciphertexts cycled among the clients: the cost of
an addition does not depend on the plaintext.

    python benchmarks/bench_ckks.py results/bench_ckks.json --dim 1000000 --clients 10 100
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

from securefl.crypto import ckks
from securefl.crypto.hazmat import ckks as hz
from securefl.protect import Exchange
from securefl.transport import wire


class _Replay:
    """A key holder whose update is a prepared ciphertext (cycled among clients)."""

    def __init__(self, client_id: str, protection: ckks.CKKSClient, sealed: bytes) -> None:
        self.client_id = client_id
        self.protection = protection
        self.sealed = sealed

    def fit(self, message: bytes) -> bytes:
        return self.sealed

    def handle(self, message: bytes) -> bytes:
        return self.protection.handle(message)


def _timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_one(dim: int, clients: int, preset: str, encryption: str, distinct: int, repeat: int) -> dict:
    params = hz.derive_params(preset, max_summands=clients, max_error=1e-3, encryption=encryption)
    settings = ckks.CKKSSettings(params, clip=1.0, max_weight=1.0)
    holders = [ckks.CKKSClient(client_id=f"c{i}", settings=settings) for i in range(clients)]
    server = ckks.CKKSServer(settings=settings)
    setup_s, _ = _timed(lambda: server.setup([_Replay(h.client_id, h, b"") for h in holders], Exchange(0)))

    rng = np.random.default_rng(0)  # benchmark data, not secrets
    updates = []
    for _ in range(min(distinct, clients)):
        u = rng.normal(size=dim)
        updates.append(u / np.linalg.norm(u) * 0.9)
    header = {"round": 1, "client": "c0", "dim": dim}
    enc_s, sealed0 = _timed(
        lambda: holders[0].seal(torch.from_numpy(updates[0]), {"weight": 1.0}, header), repeat
    )
    sealed = [sealed0] + [
        holders[i].seal(torch.from_numpy(updates[i]), {"weight": 1.0}, {**header, "client": f"c{i}"})
        for i in range(1, len(updates))
    ]
    length = ckks.Layout(dim, ()).length
    payloads = [wire.decode(s).payload for s in sealed]

    # server: receipt checks + deserialization, then in-place sums, streamed
    # client by client as the server does (never all ciphertexts in memory)
    load_s = add_s = 0.0
    acc = None
    for i in range(clients):
        t0 = time.perf_counter()
        tensor = hz.load_ciphertext(server.context, params, payloads[i % len(payloads)], length)
        t1 = time.perf_counter()
        if acc is None:
            acc = tensor
        else:
            acc += tensor
        t2 = time.perf_counter()
        load_s += t1 - t0
        add_s += t2 - t1
        del tensor

    # the whole server round (decode, check, sum, decrypt request, release)
    reps = [_Replay(f"c{i}", holders[i], sealed[i % len(sealed)]) for i in range(clients)]
    round_s, agg = _timed(lambda: server.aggregate(reps, b"", dim, Exchange(1)))

    # key holder alone: decrypt + verify + flood + round
    request = wire.encode(
        wire.Kind.CKKS_DECRYPT,
        {
            "settings": settings.settings_id,
            "round": 1,
            "count": clients,
            "dim": dim,
            "aux_keys": [],
            "contributors": [f"c{i}" for i in range(clients)],
        },
        hz.serialize(acc),
    )
    dec_s, reply = _timed(lambda: holders[1].handle(request))
    assert wire.decode(reply).kind == wire.Kind.CKKS_AGGREGATE

    expected = sum(updates[i % len(updates)] for i in range(clients))
    err = float(np.abs(agg.total.double().numpy() - expected).max())
    update_bytes = len(sealed0)
    return {
        "dim": dim,
        "clients": clients,
        "preset": preset,
        "encryption": encryption,
        "params": params.describe(),
        "ciphertexts_per_client": hz.num_ciphertexts(params, length),
        "setup_seconds": setup_s,
        "encrypt_seconds": enc_s,
        "encrypt_values_per_s": dim / enc_s,
        "deserialize_seconds": load_s,
        "aggregate_add_seconds": add_s,
        "aggregate_additions_per_s": (clients - 1) * dim / add_s,
        "aggregate_with_deserialize_additions_per_s": (clients - 1) * dim / (add_s + load_s),
        "decrypt_seconds": dec_s,
        "decrypt_values_per_s": dim / dec_s,
        "server_round_seconds": round_s,
        "bytes_per_client": update_bytes,
        "bytes_ratio_vs_float32": update_bytes / (4 * dim),
        "max_abs_error_vs_plaintext_sum": err,
        "error_bound": params.max_error(clients),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="JSON file to write")
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--presets", nargs="+", default=["large-model", "small-model"])
    ap.add_argument("--encryption", default="symmetric", choices=hz.ENCRYPTIONS)
    ap.add_argument("--distinct", type=int, default=4, help="distinct client updates encrypted")
    ap.add_argument("--repeat", type=int, default=1, help="best of N timings of encryption")
    ns = ap.parse_args(argv)
    results = []
    for preset in ns.presets:
        for m in ns.clients:
            row = bench_one(ns.dim, m, preset, ns.encryption, ns.distinct, ns.repeat)
            results.append(row)
            print(
                f"{preset:<12} clients {m:>4}: encrypt {row['encrypt_values_per_s'] / 1e6:6.2f} M values/s, "
                f"add {row['aggregate_additions_per_s'] / 1e6:7.1f} M/s "
                f"({row['aggregate_with_deserialize_additions_per_s'] / 1e6:5.1f} M/s with deserialize), "
                f"decrypt {row['decrypt_values_per_s'] / 1e6:5.2f} M values/s, "
                f"{row['bytes_ratio_vs_float32']:.2f}x float32, max error {row['max_abs_error_vs_plaintext_sum']:.2e}",
                file=sys.stderr,
            )
    import tenseal

    doc = {
        "benchmark": "ckks",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "tenseal": tenseal.__version__,
        "results": results,
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
