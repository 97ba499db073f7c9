"""F6 (client part): a client answers each round number at most once, across restarts.

A server that can rerun round r with and without a victim subtracts the two sums.
SecureClient.fit advances its RoundGuard before it trains: a round at or below the
last one answered raises ReplayError, trains nothing and spends no budget.
"""

from __future__ import annotations

import json

import pytest
import torch

from securefl import DPConfig, PrivacyLedger, RunConfig, SecureClient, Simulation
from securefl.crypto.replay import RoundGuard
from securefl.exceptions import ReplayError
from securefl.models import build_model, get_flat
from securefl.protections import PROTECTIONS, Plaintext, ProtectionSpec
from securefl.transport import wire

DP = DPConfig(dp="sample", noise_multiplier=1.0)


def _client(digits, digits_parts, ledger: PrivacyLedger, guard: RoundGuard | None = None) -> SecureClient:
    idx = digits_parts[0]
    model_fn = lambda: build_model("logreg", digits.input_shape, 10, seed=0)  # noqa: E731
    return SecureClient(
        "client-0", digits.x_train[idx], digits.y_train[idx], model_fn=model_fn, dp=DP, ledger=ledger, guard=guard
    )


def _global(weights: torch.Tensor, round_: int) -> bytes:
    return wire.encode(wire.Kind.GLOBAL_MODEL, {"round": round_, "dim": weights.numel()}, wire.vector_to_bytes(weights))


@pytest.mark.parametrize("replayed", [3, 2, 1])
def test_replayed_round_is_refused_without_training_or_spend(digits, digits_parts, tmp_path, replayed):
    ledger = PrivacyLedger(tmp_path / "ledger.json", delta=1e-5)
    client = _client(digits, digits_parts, ledger)
    w = get_flat(client.model)
    client.fit(_global(w, 3))
    model_after, entries = get_flat(client.model).clone(), len(ledger.entries)
    with pytest.raises(ReplayError, match=f"round {replayed} is not after round 3"):
        client.fit(_global(torch.zeros_like(w), replayed))
    assert torch.equal(get_flat(client.model), model_after)  # no training from the replayed weights
    assert len(ledger.entries) == entries == 1
    assert len(PrivacyLedger.load(tmp_path / "ledger.json").entries) == 1  # no spend recorded on disk


def test_restarted_client_still_refuses_and_moves_on(digits, digits_parts, tmp_path):
    state = tmp_path / "client-0.rounds.json"
    ledger = PrivacyLedger(None, delta=1e-5)
    first = _client(digits, digits_parts, ledger, RoundGuard(state))
    w = get_flat(first.model)
    first.fit(_global(w, 3))
    del first  # the process restarts: only the state file survives
    again = _client(digits, digits_parts, ledger, RoundGuard(state))
    with pytest.raises(ReplayError):
        again.fit(_global(w, 3))
    assert len(ledger.entries) == 1
    wire.decode(again.fit(_global(w, 4)), expect=wire.Kind.CLIENT_UPDATE)
    assert len(ledger.entries) == 2 and RoundGuard(state).last("fit") == 4


def test_server_rerun_of_a_round_aborts_and_leaves_the_model(tmp_path):
    sim = Simulation(RunConfig.from_flat({"clients": 3, "rounds": 1, "model": "logreg"}), out_dir=tmp_path)
    first = sim.server.run_round(1, sim.clients)
    assert first.aborted is None
    w = sim.server.weights.clone()
    rerun = sim.server.run_round(1, sim.clients)  # e.g. with another cohort, to difference the sums
    assert rerun.aborted and "ReplayError" in rerun.aborted
    assert torch.equal(sim.server.weights, w)


def test_simulation_gives_each_client_one_persistent_guard(tmp_path, monkeypatch):
    seen: dict[str, dict] = {}

    def client_half(cfg, cid, rng, **party):
        seen[cid] = party
        return Plaintext()

    monkeypatch.setitem(PROTECTIONS, "none", ProtectionSpec(client=client_half, server=lambda cfg, rng, **_: Plaintext()))
    sim = Simulation(RunConfig.from_flat({"clients": 3, "rounds": 2, "model": "logreg"}), out_dir=tmp_path)
    for client in sim.clients:
        party = seen[client.client_id]
        assert party["guard"] is client.guard
        assert party["identity"].client_id == client.client_id and client.client_id in party["roster"]
        assert client.guard.path == tmp_path / "state" / f"{client.client_id}.rounds.json"
    sim.run()
    for client in sim.clients:
        data = json.loads(client.guard.path.read_text())
        assert data["last"]["fit"] == 2
    # a new run in the same directory is a new federation: it starts afresh
    again = Simulation(RunConfig.from_flat({"clients": 3, "rounds": 1, "model": "logreg"}), out_dir=tmp_path)
    assert all(c.guard.last("fit") is None for c in again.clients)
