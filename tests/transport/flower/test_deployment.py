"""securefl over a real Flower deployment on 127.0.0.1 (securefl.transport.flower).

One SuperLink and four SuperNodes; each protection is a federation of its own (its
own ledger on every node, empty at the start as in the simulation), all three
submitted with ``flwr run`` and running at the same time; each run is compared with the in-process simulation of the same
configuration and seed. ``reproducible-noise`` derives every party's DP noise from
the seed, so the two runs draw the same noise and differ only by secure aggregation's
and CKKS's own randomness (rounding coins, encryption noise).
"""

from __future__ import annotations

import time

import pytest

from tests.transport.flower.conftest import APP, app_config, wait_for_run

NODES = 4
ROUNDS = 3
PROTECTIONS = ("none", "ckks", "secagg")
#: the target for the whole test on an idle 2-core machine (README reports measurements);
#: the hard limit leaves room for a machine shared with other jobs
TARGET_S, LIMIT_S = 300, 600


def _run_config(deployment, protect: str) -> dict:
    return app_config(
        protect=protect, rounds=ROUNDS, clients=NODES, dp="sample", epsilon=8.0, federation=protect,
        **{"reproducible-noise": True, "out-dir": str(deployment.root / protect / "out"), "stage-timeout": 120.0},
    )


def _check_ledgers(root, protect: str) -> None:
    """The ledgers stayed on the nodes: one per node and federation, holding only its own client."""
    for k in range(NODES):
        ledger = (root / f"node-{k}" / protect / "ledger.json").read_text()
        assert f'"client-{k}"' in ledger and all(f'"client-{j}"' not in ledger for j in range(NODES) if j != k)
    assert '"subject"' not in (root / protect / "out" / "ledger.json").read_text()  # the server's holds no client spend


def test_flower_matches_simulation(deployment):
    """Four SuperNodes, each a member of three federations (none, ckks, secagg, each
    with its own ledger on the node), run the three at the same time; each matches
    its simulation."""
    from securefl.simulation import Simulation
    from securefl.transport.flower.parties import run_settings

    t0 = time.monotonic()
    for k in range(NODES):
        deployment.start_node(f"node-{k}", {"partition-id": k, "state-dir": str(deployment.root / f"node-{k}"),
                                            "federations": " ".join(PROTECTIONS)})
    configs = {p: _run_config(deployment, p) for p in PROTECTIONS}
    for protect in PROTECTIONS:
        deployment.flwr_run(APP, configs[protect])
    # the in-process runs of the same configurations, while the deployed ones wait on the network
    simulated = {p: Simulation(run_settings(configs[p])[0]).run().metrics for p in PROTECTIONS}
    deployed = {p: wait_for_run(deployment.root / p / "out", LIMIT_S - (time.monotonic() - t0), deployment.procs)
                for p in PROTECTIONS}
    seconds = time.monotonic() - t0
    for protect in PROTECTIONS:
        rows, final, sim = deployed[protect]["rounds"], deployed[protect]["final"], simulated[protect]["final"]
        assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
        assert all(r["aborted"] is None and r["participants"] == NODES and not r["dropped"] for r in rows)
        assert final["epsilon"] is not None and final["epsilon"] == sim["epsilon"]
        assert [r["epsilon"] for r in rows] == [r["epsilon"] for r in simulated[protect]["rounds"]]
        assert abs(final["accuracy"] - sim["accuracy"]) <= 0.02
        assert final["accuracy"] > 0.5  # it learned
        assert sorted(final["clients"]) == [f"client-{k}" for k in range(NODES)]
        _check_ledgers(deployment.root, protect)
        print(f"{protect}: deployed acc={final['accuracy']:.4f} eps={final['epsilon']:.6f} | "
              f"simulated acc={sim['accuracy']:.4f} eps={sim['epsilon']:.6f} | "
              f"stages {deployed[protect]['final']['transport']['stage_seconds']}")
    print(f"all three: {seconds:.1f} s (target: under {TARGET_S} s on an otherwise idle 2-core machine)")
