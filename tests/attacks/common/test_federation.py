"""Rebuilding one party of a library federation (attacks.common.federation)."""

from __future__ import annotations

import torch

from attacks.common.federation import with_data, with_population
from securefl.config import RunConfig
from securefl.simulation import Simulation


def _sim():
    return Simulation(RunConfig.from_flat({"dataset": "synthetic", "clients": 4, "partition": "iid", "rounds": 1,
                                           "model": "logreg", "seed": 0}))


def test_with_data_keeps_everything_but_the_data():
    sim = _sim()
    client = sim.clients[1]
    same = with_data(client, client.x, client.y)
    for name in ("client_id", "task", "config", "dp", "protection", "ledger", "rng", "guard", "algorithm", "seed"):
        assert getattr(same, name) is getattr(client, name)
    w = sim.server.weights
    assert torch.equal(same.train(w, 1).update, client.train(w, 1).update)
    fewer = with_data(client, client.x[:5], client.y[:5])
    assert fewer.num_samples == 5 and not torch.equal(fewer.train(w, 1).update, client.train(w, 1).update)


def test_with_population_changes_only_the_population():
    sim = _sim()
    bigger = with_population(sim.server, 9)
    assert bigger.num_clients == 9 and bigger.expected_clients == 9.0
    for name in ("model", "config", "dp", "protection", "ledger", "eval_data", "rng", "reference"):
        assert getattr(bigger, name) is getattr(sim.server, name)
