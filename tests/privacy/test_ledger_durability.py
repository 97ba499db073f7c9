"""The ledger's durability modes (securefl/privacy/ledger.py): ``"record"`` writes
at every record, ``"deferred"`` only at ``sync()``, with the same entries."""

from __future__ import annotations

import pytest

from securefl.exceptions import BudgetExhaustedError, ConfigValueError
from securefl.privacy import ledger as ledger_module
from securefl.privacy.ledger import PrivacyLedger

RUNS = [("client-0", 1, 1.1, 0.02, 50), ("client-1", 1, 1.1, 0.02, 50), ("client-0", 2, 1.1, 0.02, 50),
        ("federation", 2, 0.9, 0.5, 1)]  # fmt: skip


def _record(ledger: PrivacyLedger, runs=RUNS) -> None:
    for subject, rnd, sigma, q, steps in runs:
        mech = "dp-fedavg" if subject == "federation" else "dp-sgd"
        ledger.record(subject=subject, round=rnd, mechanism=mech, noise_multiplier=sigma, sample_rate=q, steps=steps)


@pytest.fixture
def frozen_time(monkeypatch):
    monkeypatch.setattr(ledger_module, "round_time", lambda: 1700000000.0)


def test_deferred_writes_nothing_until_sync_then_what_record_mode_writes(tmp_path, frozen_time):
    eager = PrivacyLedger(tmp_path / "eager.json", budget=50.0)
    lazy = PrivacyLedger(tmp_path / "lazy.json", budget=50.0, durability="deferred")
    _record(eager)
    _record(lazy)
    assert not (tmp_path / "lazy.json").exists()  # nothing on disk before sync
    assert lazy.entries == eager.entries  # same entries, epsilons and hash chain in memory
    lazy.sync()
    assert (tmp_path / "lazy.json").read_bytes() == (tmp_path / "eager.json").read_bytes()
    assert PrivacyLedger.load(tmp_path / "lazy.json").entries == eager.entries


def test_deferred_file_lags_until_the_next_sync_and_sync_writes_only_when_dirty(tmp_path, monkeypatch):
    path = tmp_path / "ledger.json"
    lazy = PrivacyLedger(path, durability="deferred")
    _record(lazy, RUNS[:2])
    lazy.sync()
    writes = []
    real = ledger_module.atomic_write_bytes
    monkeypatch.setattr(ledger_module, "atomic_write_bytes", lambda p, data: (writes.append(p), real(p, data)))
    lazy.sync()
    assert writes == []  # clean: nothing to write
    _record(lazy, RUNS[2:])
    assert writes == [] and len(PrivacyLedger.load(path).entries) == 2
    lazy.sync()
    assert writes == [path] and PrivacyLedger.load(path).entries == lazy.entries
    eager = PrivacyLedger(tmp_path / "eager.json")
    _record(eager)
    assert len(writes) == 1 + len(RUNS)  # record mode: one write per record


def test_deferred_ledger_enforces_the_budget_as_record_mode_does(tmp_path):
    outcomes = []
    for mode in ("record", "deferred"):
        ledger = PrivacyLedger(tmp_path / f"{mode}.json", budget=1.0, durability=mode)
        with pytest.raises(BudgetExhaustedError) as err:
            for rnd in range(1, 100):
                _record(ledger, [("client-0", rnd, 1.0, 0.01, 100)])
        ledger.sync()
        outcomes.append((len(ledger.entries), err.value.would_be))
        assert len(PrivacyLedger.load(tmp_path / f"{mode}.json").entries) == len(ledger.entries)
    assert outcomes[0] == outcomes[1] and outcomes[0][0] == 2


def test_unknown_durability_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigValueError) as err:
        PrivacyLedger(tmp_path / "ledger.json", durability="never")
    assert err.value.field == "durability" and err.value.value == "never"
    assert PrivacyLedger(None).durability == "record"  # the default: every record durable at once
