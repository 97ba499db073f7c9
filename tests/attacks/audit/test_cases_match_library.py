"""The audited federation is the library's Simulation: with every canary excluded its
release equals the library's own run for the same settings and seeded SecureRNGs
(example canaries), or the library's DP-FedAvg over a population that counts the
canaries (client canaries). An audit that rebuilt the federation its own way, or
trained its clients differently, fails these tests."""

from __future__ import annotations

import numpy as np
import torch

from attacks.audit.cases import EmpiricalAuditConfig, build_federation
from securefl.config import RunConfig
from securefl.simulation import Simulation


def _run(**flat):
    base = {"dataset": "digits", "clients": 3, "rounds": 2, "model": "logreg", "local_epochs": 1.0, "seed": 1,
            "reproducible_noise": True}
    return RunConfig.from_flat({**base, **flat})


def test_example_canary_federation_without_canaries_is_the_library_run(tmp_path):
    run = _run(dp="sample", noise_multiplier=1.0, sample_rate=0.2)
    audit = EmpiricalAuditConfig(canaries=30, kind="example", score="loss", canary_data="noise").resolved("sample")
    audited = build_federation(run, audit, np.zeros(30, dtype=bool), out_dir=tmp_path / "audit")
    got = audited.sim.run()
    want = Simulation(run, out_dir=tmp_path / "plain").run()
    assert torch.equal(got.server.weights, want.server.weights)
    assert got.metrics["final"]["epsilon"] == want.metrics["final"]["epsilon"]
    assert [e["epsilon"] for e in got.ledger.entries] == [e["epsilon"] for e in want.ledger.entries]


def test_included_example_canaries_are_trained_on_by_their_client():
    run = _run(dp="none")
    audit = EmpiricalAuditConfig(canaries=6, kind="example", score="loss", canary_data="noise").resolved("none")
    included = np.array([True, False, True, True, False, False])
    sim = build_federation(run, audit, included).sim
    plain = Simulation(run)
    # canary j on client j mod 3: client 0 holds canaries 0 and 3, client 1 none, client 2 canary 2
    assert [c.num_samples - p.num_samples for c, p in zip(sim.clients, plain.clients)] == [2, 0, 1]


def test_client_canaries_join_the_population_of_the_library_dp_fedavg():
    run = _run(dp="client", noise_multiplier=0.0, clip=0.5, rounds=1)
    audit = EmpiricalAuditConfig(canaries=7, kind="client").resolved("client")
    audited = build_federation(run, audit, np.zeros(7, dtype=bool))
    assert audited.sim.server.num_clients == 3 + 7 and len(audited.sim.clients) == 10
    start = audited.sim.server.weights.clone()
    got = audited.sim.run().server.weights - start
    plain = Simulation(run)
    want = plain.run().server.weights - start
    # every canary dropped out; the library's denominator is the expected participants, canaries included
    torch.testing.assert_close(got, want * 3 / 10, rtol=1e-5, atol=1e-8)
