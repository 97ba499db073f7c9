"""The simulation's deferred ledger (securefl/simulation.py): written once per round,
before anything of the round leaves the process, and when a round is interrupted."""

from __future__ import annotations

import pytest

from securefl.build import build
from securefl.config import RunConfig
from securefl.privacy.ledger import PrivacyLedger
from securefl.simulation import Simulation

FLAT = {"dataset": "digits", "clients": 4, "rounds": 3, "model": "logreg", "local_epochs": 0.5,
        "dp": "sample", "noise_multiplier": 1.0}  # fmt: skip


def _on_disk(out) -> list[dict]:
    return PrivacyLedger.load(out / "ledger.json").entries


def test_ledger_on_disk_equals_memory_after_every_round_with_one_write_per_round(tmp_path, monkeypatch):
    sim = Simulation(RunConfig.from_flat(FLAT), out_dir=tmp_path)
    assert sim.ledger.durability == "deferred"
    writes = []
    real = PrivacyLedger.save
    monkeypatch.setattr(PrivacyLedger, "save", lambda self: (writes.append(len(self.entries)), real(self)))
    seen = []

    def on_round(res) -> None:  # the round's results leave the process here
        seen.append(len(sim.ledger.entries))
        assert _on_disk(tmp_path) == sim.ledger.entries

    sim.run(on_round=on_round)
    assert seen == [4, 8, 12] and writes == seen  # one write per round, none per record
    assert _on_disk(tmp_path) == sim.ledger.entries


def test_async_buffers_sync_the_ledger_too(tmp_path):
    flat = {**FLAT, "clients": 6, "mode": "async", "buffer": 3}
    sim = Simulation(RunConfig.from_flat(flat), out_dir=tmp_path)
    counts = []

    def on_round(res) -> None:
        counts.append(len(sim.ledger.entries))
        assert _on_disk(tmp_path) == sim.ledger.entries

    sim.run(on_round=on_round)
    assert counts and counts[-1] > 0


def test_a_round_interrupted_in_a_clients_fit_leaves_its_charges_on_disk(tmp_path):
    sim = Simulation(RunConfig.from_flat(FLAT), out_dir=tmp_path)
    victim = sim.clients[2]
    real_fit = victim.fit

    def fit_then_ctrl_c(message: bytes) -> bytes:
        reply = real_fit(message)  # the client records its spend, then Ctrl-C lands
        if sim.protocol_round >= 2:
            raise KeyboardInterrupt
        return reply

    victim.fit = fit_then_ctrl_c
    with pytest.raises(KeyboardInterrupt):
        sim.run()
    entries = _on_disk(tmp_path)
    assert entries == sim.ledger.entries and sim.completed == 1
    assert [e["round"] for e in entries if e["subject"] == victim.client_id] == [1, 2]


def test_build_alone_keeps_a_ledger_durable_at_every_record(tmp_path):
    fed = build(RunConfig.from_flat(FLAT), out_dir=tmp_path)  # a caller that never syncs
    assert fed.ledger.durability == "record"
