"""Malicious clients that do not attack release exactly what the library's honest
clients release: the case changes who is malicious, never how a client trains,
weights or seals its update."""

from __future__ import annotations

import pytest
import torch

from attacks.poisoning.attacks import NoAttack
from attacks.poisoning.cases import MaliciousClient, PoisonCase, install
from securefl.simulation import Simulation


@pytest.mark.parametrize("knowledge", ["own", "omniscient"])
def test_no_attack_coalition_releases_what_honest_clients_release(run_config, knowledge):
    cfg = run_config(rounds=2)
    plain = Simulation(cfg).run()
    sim = Simulation(cfg)
    installed = install(sim, NoAttack(), PoisonCase(0.2, knowledge))
    assert len(installed.malicious_ids) == 2 and isinstance(sim.clients[-1], MaliciousClient)
    attacked = sim.run()
    assert torch.equal(plain.server.weights, attacked.server.weights)
    assert [r.accuracy for r in plain.results] == [r.accuracy for r in attacked.results]


def test_coalition_member_trains_as_the_library_client_does(run_config):
    """A malicious client's benign update is the library client's own update on the same data."""
    cfg = run_config(rounds=1)
    honest = Simulation(cfg)
    weights = honest.server.weights.clone()
    want = honest.clients[-1].train(weights, 1).update
    engine = install(Simulation(cfg), NoAttack(), PoisonCase(0.1, "own")).coalition.members["client-9"]
    assert torch.equal(engine.train(weights, 1).update, want)
