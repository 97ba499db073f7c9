"""Poisoning cases: who is malicious, what the coalition sees, how it joins a federation."""

from __future__ import annotations

import pytest

from attacks.poisoning.attacks import InnerProductManipulation, SignFlip, make_attack
from attacks.poisoning.cases import HonestObserver, MaliciousClient, PoisonCase, install
from attacks.poisoning.run import run_federation
from securefl.exceptions import ConfigValueError
from securefl.simulation import Simulation


def test_install_swaps_last_clients_and_observes_honest_updates(run_config):
    sim = Simulation(run_config())
    atk = InnerProductManipulation(epsilon=1.0)
    inst = install(sim, atk, PoisonCase(0.2, "omniscient"))
    assert inst.malicious_ids == ["client-8", "client-9"]
    assert all(isinstance(c, HonestObserver) for c in sim.clients[:8])
    assert all(isinstance(c, MaliciousClient) for c in sim.clients[8:])
    sim.run()
    hist = inst.coalition.history
    assert [h["honest_seen"] for h in hist] == [8, 8, 8]


def test_omniscient_coalition_must_answer_after_honest_clients(run_config):
    sim = Simulation(run_config(rounds=1))
    install(sim, InnerProductManipulation(), PoisonCase(0.2, "omniscient"))
    sim.clients = sim.clients[-2:] + sim.clients[:-2]
    with pytest.raises(ConfigValueError) as info:
        sim.run()
    assert info.value.field == "knowledge"


def test_case_validation(run_config):
    with pytest.raises(ConfigValueError):
        PoisonCase(1.0)
    with pytest.raises(ConfigValueError):
        PoisonCase(0.2, "psychic")
    sim = Simulation(run_config(clients=3))
    with pytest.raises(ConfigValueError, match="no honest"):
        install(sim, SignFlip(), PoisonCase(0.9))


def test_malicious_clients_speak_secagg(run_config):
    """Under secure aggregation the coalition still submits through the protocol and
    the server, which sees only the sum, cannot filter it."""
    from securefl.protections import PROTECTIONS

    if "secagg" not in PROTECTIONS:
        pytest.skip("secagg not registered")
    cfg = run_config(rounds=2, protect="secagg")
    clean = run_federation(cfg, make_attack("none"), PoisonCase(0.2))
    attacked = run_federation(cfg, make_attack("ipm", {"epsilon": 100}), PoisonCase(0.2))
    assert clean["aborted_rounds"] == 0 and attacked["aborted_rounds"] == 0
    assert attacked["main_accuracy"] < clean["main_accuracy"] - 0.3
