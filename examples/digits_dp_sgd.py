"""Federated DP-SGD on the digits data: every client trains with Opacus and a
per-client budget of epsilon=3 at delta=1e-5, recorded in a ledger.

Run: python examples/digits_dp_sgd.py [OUT_DIR]
"""

from __future__ import annotations

import sys

from securefl import RunConfig, Simulation
from securefl.cli import DEMO_SETTINGS


def main(out_dir: str | None = "runs/example-dp-sgd", rounds: int = 30, seed: int = 0) -> dict:
    config = RunConfig.from_flat({**DEMO_SETTINGS, "rounds": rounds, "seed": seed})
    result = Simulation(config, out_dir=out_dir).run()
    final = result.metrics["final"]
    print(f"test accuracy {final['accuracy']:.4f} after {rounds} rounds")
    print(f"{'client':<10}{'n_k':>6}{'sigma':>8}{'eps (PRV)':>11}{'eps (RDP)':>11}")
    for client in result.clients:
        spent = result.ledger.spent(client.client_id)
        print(
            f"{client.client_id:<10}{client.num_samples:>6}{client.noise_multiplier:>8.3f}"
            f"{spent.prv:>11.3f}{spent.rdp:>11.3f}"
        )
    if out_dir:
        print(f"ledger: {out_dir}/ledger.json; metrics: {out_dir}/metrics.json")
    return result.metrics


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/example-dp-sgd")
