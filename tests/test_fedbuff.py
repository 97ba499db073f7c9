"""Buffered asynchronous aggregation (securefl.fedbuff): the staleness bound, one
protected aggregation per buffer, clean aborts, and the accounting of its DP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm

from securefl.config import RunConfig
from securefl.exceptions import ConfigValueError
from securefl.fedbuff import STALENESS_WEIGHTS, LatencyModel, StalenessPolicy
from securefl.privacy.events import FEDERATION
from securefl.simulation import Simulation

SMALL = dict(model="logreg", clients=8, local_epochs=1.0, latency_spread=10.0, latency_jitter=0.3)


def _async(**kw) -> RunConfig:
    return RunConfig.from_flat({**SMALL, "mode": "async", "buffer": 3, **kw})


# ------------------------------------------------------------------ staleness bound
@pytest.mark.parametrize("protect", ["none", "secagg"])
def test_no_update_older_than_the_bound_is_applied(protect):
    # every client in flight, speeds 1..50: many arrivals are staler than 1 step
    sim = Simulation(_async(protect=protect, rounds=12, concurrency=8, max_staleness=1, latency_spread=50.0))
    res = sim.run()
    engine = sim.engine
    assert engine is not None and engine.stale_refused > 0  # the bound was exercised
    assert engine.applied_staleness and max(engine.applied_staleness) <= 1
    assert 1 in engine.applied_staleness  # stale-but-allowed updates were taken (weighted)
    for row in res.metrics["rounds"]:
        assert max(row["schedule"]["staleness"]) <= 1
    times = [row["schedule"]["sim_time"] for row in res.metrics["rounds"]]
    assert times == sorted(times) and times[0] > 0


def test_staleness_weights_never_amplify():
    for name, w in STALENESS_WEIGHTS.items():
        assert w(0) == 1.0 and all(0 < w(s) <= 1 for s in range(100)), name
    assert StalenessPolicy("inverse", 5).factor(4) == pytest.approx(0.2)


# ------------------------------------------------------------------ buffers under protections
def test_buffer_below_the_secagg_threshold_aborts_cleanly():
    # a fifth of the clients vanish mid-protocol: about half the buffers fall below the cohort floor
    sim = Simulation(_async(protect="secagg", rounds=10, dropout=0.2, min_clients=3))
    versions = []
    sim.engine.flush = _recording(sim.engine, versions)
    res = sim.run()
    rows = res.metrics["rounds"]
    aborted = [i for i, r in enumerate(rows) if r["aborted"]]
    applied = [i for i, r in enumerate(rows) if not r["aborted"]]
    assert aborted and applied and len(rows) == 10
    for i in aborted:  # the model did not move and the version did not advance
        before, after = versions[i]
        assert before[0] == after[0] and torch.equal(before[1], after[1])
    for i in applied:
        assert versions[i][1][0] == versions[i][0][0] + 1


def _recording(engine, versions):
    flush = engine.flush

    def wrapped(round_):
        before = (engine.version, engine.server.weights.clone())
        out = flush(round_)
        versions.append((before, (engine.version, engine.server.weights.clone())))
        return out

    return wrapped


def test_ckks_buffer_is_one_encrypted_sum():
    sim = Simulation(_async(protect="ckks", rounds=4))
    res = sim.run()
    rows = res.metrics["rounds"]
    assert all(r["participants"] == 3 and not r["aborted"] for r in rows)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] - 0.05
    final = res.metrics["final"]
    assert final["bytes_up_per_client_round"] == pytest.approx(final["bytes_up"] / 12, abs=0.1)
    assert final["sim_time"] == rows[-1]["schedule"]["sim_time"] > 0


def test_async_buffer_must_hold_a_protected_cohort():
    with pytest.raises(ConfigValueError, match="buffer"):
        _async(protect="secagg", buffer=2, min_clients=3)
    with pytest.raises(ConfigValueError, match="concurrency"):
        _async(concurrency=2)
    with pytest.raises(ConfigValueError, match="aggregator"):
        _async(aggregator="median")


# ------------------------------------------------------------------ privacy accounting
def _gdp_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a mu-GDP mechanism (Balle & Wang 2018)."""

    def d(e: float) -> float:
        return float(norm.cdf(-e / mu + mu / 2) - np.exp(e + norm.logcdf(-e / mu - mu / 2)))

    return brentq(lambda e: d(e) - delta, 0.0, 100.0, xtol=1e-10)


def test_async_client_level_epsilon_matches_a_direct_computation():
    # T buffers, each a Gaussian mechanism of sensitivity S and noise z S with no
    # amplification by sampling: their composition is exactly sqrt(T)/z-GDP
    z, rounds = 2.0, 6
    sim = Simulation(_async(dp="client", noise_multiplier=z, clip=1.0, rounds=rounds))
    res = sim.run()
    entries = [e for e in res.ledger.entries if e["subject"] == FEDERATION]
    assert len(entries) == rounds and all(e["sample_rate"] == 1.0 for e in entries)
    assert sim.server.expected_clients == 3.0  # the fixed denominator is the buffer
    exact = _gdp_epsilon(math.sqrt(rounds) / z, res.ledger.delta)
    spent = res.ledger.spent(FEDERATION)
    assert exact <= spent.prv <= exact + 0.05
    assert res.metrics["final"]["epsilon"] == pytest.approx(spent.prv)


def test_async_sample_dp_never_exceeds_a_clients_budget():
    cfg = _async(dp="sample", epsilon=2.0, rounds=12, max_updates=2, clients=6, concurrency=6)
    sim = Simulation(cfg)
    res = sim.run()
    for c in sim.clients:
        mine = [e for e in res.ledger.entries if e["subject"] == c.client_id]
        assert len(mine) <= 2
        assert res.ledger.spent(c.client_id).prv <= 2.0 * 1.001
    # budgets run out: clients are retired and the run ends early, cleanly
    assert sim.engine.retired
    assert len(res.metrics["rounds"]) < 12


def test_latency_model_is_seeded_and_spans_the_spread():
    a = LatencyModel(20, spread=10.0, jitter=0.0, seed=3)
    b = LatencyModel(20, spread=10.0, jitter=0.0, seed=3)
    assert np.array_equal(a.means, b.means)
    assert a.means.min() == pytest.approx(1.0) and a.means.max() == pytest.approx(10.0)
    assert [a.duration(k) for k in range(20)] == list(a.means)
    c = LatencyModel(20, spread=10.0, jitter=0.5, seed=3)
    draws = np.array([c.duration(0) for _ in range(4000)]) / c.means[0]
    assert np.log(draws).std() == pytest.approx(0.5, rel=0.1)


def test_async_buffers_compose_with_compression():
    # every member of a buffer gets the buffer's protocol round, so all pick the
    # same shared-seed coordinates and the masked sum still adds up
    plain = Simulation(_async(protect="secagg", rounds=6)).run()
    packed = Simulation(_async(protect="secagg", rounds=6, compress="randk:0.2+quant:8")).run()
    rows = packed.metrics["rounds"]
    assert not any(r["aborted"] for r in rows)
    assert rows[-1]["accuracy"] > 0.25  # chance is 0.1; measured 0.40-0.48 after 6 buffers
    assert packed.metrics["final"]["bytes_up"] < 0.6 * plain.metrics["final"]["bytes_up"]


def test_a_synchronous_round_lasts_as_long_as_its_slowest_client():
    cfg = RunConfig.from_flat({**SMALL, "latency_jitter": 0.0, "rounds": 3})
    rows = Simulation(cfg).run().metrics["rounds"]
    # every client each round, mean times log-spaced up to the spread of 10
    assert [r["schedule"]["sim_time"] for r in rows] == pytest.approx([10.0, 20.0, 30.0])
