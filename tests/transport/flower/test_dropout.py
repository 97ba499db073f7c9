"""A SuperNode killed during secure aggregation's masked-input stage is a dropout:
the round completes with the exact sum of the survivors (Bonawitz et al., CCS 2017:
the dead client's pairwise masks are removed through its Shamir shares).

Without DP, local training is deterministic (seeded shuffles, one thread), so the
test recomputes each client's update in this process and checks the server's new
model against the mean of the survivors' updates, to secure aggregation's fixed-point
resolution, and not against the mean with the dead client's update.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tests.transport.flower.conftest import APP, app_config, wait_for_run

NODES = 4
VICTIM = NODES - 1


def _wait_for_fit(state_dir, procs, timeout: float = 240.0) -> None:
    """Block until the node's worker has been handed its masked-input (``fit``) message."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for log in state_dir.glob("runs/*/worker.log"):
            if " fit " in log.read_text():
                return
        if any(p.poll() is not None for p in procs.values()):
            pytest.fail("a Flower process exited before the masked-input stage")
        time.sleep(0.02)
    pytest.fail("the victim never reached the masked-input stage")


def _updates(config, root) -> tuple[torch.Tensor, list[np.ndarray], list[float]]:
    """The initial weights and every client's clipped weighted update, recomputed here."""
    from securefl.build import protection_settings
    from securefl.models import get_flat
    from securefl.transport.flower.parties import NodeSettings, node_client, server_party

    w0 = get_flat(server_party(config, root / "recompute-server", None).model).clone()
    clip = protection_settings(config).clip
    updates, weights = [], []
    for k in range(NODES):
        client = node_client(config, NodeSettings(k, root / f"recompute-{k}"), root / f"recompute-{k}" / "run")
        res = client.train(w0.clone(), 1)
        n = float(res.num_samples)
        updates.append(np.clip(res.update.double().numpy() * n, -n * clip, n * clip))
        weights.append(n)
    return w0, updates, weights


def test_killed_supernode_is_a_dropout_and_the_survivors_sum_is_exact(deployment):
    from securefl.transport.flower.parties import run_settings

    root = deployment.root / "kill"
    for k in range(NODES):
        deployment.start_node(f"kill-node-{k}", {"partition-id": k, "state-dir": str(root / f"node-{k}"), "federations": "kill"})
    run_config = app_config(
        protect="secagg", dp="none", rounds=1, clients=NODES, federation="kill", **{"local-epochs": 5.0},
        **{"min-clients": 3, "out-dir": str(root / "out"), "stage-timeout": 30.0},
    )
    deployment.flwr_run(APP, run_config)
    _wait_for_fit(root / f"node-{VICTIM}" / "kill", deployment.procs)
    deployment.kill_node(f"kill-node-{VICTIM}")  # SIGKILL: the SuperNode, its ClientApp and its worker
    metrics = wait_for_run(root / "out", 240, deployment.procs)

    row = metrics["rounds"][0]
    assert row["aborted"] is None
    assert row["dropped"] == [f"client-{VICTIM}"]
    assert row["participants"] == NODES - 1 and row["protection"]["survivors"] == NODES - 1

    config, _ = run_settings(run_config)
    w0, updates, weights = _updates(config, root)
    w1 = torch.load(root / "out" / "model.pt").double().numpy()
    survivors = range(NODES - 1)
    expected = w0.double().numpy() + sum(updates[k] for k in survivors) / sum(weights[k] for k in survivors)
    with_victim = w0.double().numpy() + sum(updates) / sum(weights)
    # each survivor's coordinates are rounded to the ring's grid (2^-frac_bits), then summed exactly
    tol = (NODES - 1) * 2.0 ** -row["protection"]["frac_bits"] / sum(weights[k] for k in survivors) + 1e-6
    assert np.max(np.abs(w1 - expected)) <= tol
    assert np.max(np.abs(w1 - with_victim)) > 100 * tol
