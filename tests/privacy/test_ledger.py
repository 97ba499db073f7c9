"""Tests of :mod:`securefl.privacy.ledger` (persisted, hash-chained privacy ledger)."""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
from pathlib import Path

import pytest

import securefl._io
from securefl.exceptions import AccountingError, BudgetExhaustedError, ConfigValueError, LedgerError, PrivacyError
from securefl.privacy import accounting as A
from securefl.privacy import ledger as L
from securefl.privacy.ledger import PrivacyLedger

DELTA = 1e-5
# full-batch runs keep the PRV accountant fast; (sigma, q, steps)
RUNS = [
    ("alice", "dp-sgd", (2.0, 1.0, 10)),
    ("bob", "dp-sgd", (3.0, 1.0, 5)),
    ("alice", "dp-sgd", (2.0, 1.0, 10)),
    ("federation", "dp-fedavg", (4.0, 1.0, 3)),
    ("alice", "dp-sgd", (1.5, 1.0, 2)),
]


def _record_all(ledger: PrivacyLedger, runs=RUNS) -> list[dict]:
    out = []
    for i, (subject, mech, (z, q, steps)) in enumerate(runs):
        out.append(ledger.record(subject=subject, round=i, mechanism=mech, noise_multiplier=z, sample_rate=q, steps=steps))
    return out


@pytest.fixture(scope="module")
def _built(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "ledger.json"
    _record_all(PrivacyLedger(path, delta=DELTA))
    return path


@pytest.fixture
def ledger_file(_built, tmp_path) -> Path:
    path = tmp_path / "ledger.json"
    shutil.copyfile(_built, path)
    return path


def _rewrite(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------- persistence
def test_record_persists_immediately(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, delta=DELTA)
    assert not path.exists()  # nothing written before the first record
    for i, (subject, mech, (z, q, steps)) in enumerate(RUNS[:3]):
        entry = ledger.record(subject=subject, round=i, mechanism=mech, noise_multiplier=z, sample_rate=q, steps=steps)
        on_disk = json.loads(path.read_text())
        assert on_disk["format"] == "securefl-ledger" and on_disk["delta"] == DELTA
        assert len(on_disk["entries"]) == i + 1
        assert on_disk["entries"][-1] == entry
        reloaded = PrivacyLedger.load(path)
        assert reloaded.entries == ledger.entries
        assert reloaded.entries[-1]["subject"] == subject
        assert reloaded.entries[-1]["noise_multiplier"] == z
        assert reloaded.entries[-1]["steps"] == steps


def test_reopen_continues_chain(ledger_file):
    ledger = PrivacyLedger(ledger_file, delta=DELTA)
    assert len(ledger.entries) == len(RUNS)
    assert ledger.history("alice") == ((2.0, 1.0, 20), (1.5, 1.0, 2))
    ledger.record(subject="bob", round=9, mechanism="dp-sgd", noise_multiplier=3.0, sample_rate=1.0, steps=5)
    again = PrivacyLedger.load(ledger_file)
    assert len(again.entries) == len(RUNS) + 1
    assert again.entries[-1]["prev"] == again.entries[-2]["hash"]
    assert again.history("bob") == ((3.0, 1.0, 10),)


def test_reopen_with_other_delta_is_refused(ledger_file):
    with pytest.raises(LedgerError):
        PrivacyLedger(ledger_file, delta=1e-6)


def test_in_memory_ledger_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ledger = PrivacyLedger(None, delta=DELTA)
    _record_all(ledger, RUNS[:2])
    assert len(ledger.entries) == 2
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_no_temp_files(tmp_path):
    folder = tmp_path / "store"
    path = folder / "ledger.json"
    _record_all(PrivacyLedger(path, delta=DELTA))
    assert sorted(p.name for p in folder.iterdir()) == ["ledger.json"]


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, delta=DELTA)
    _record_all(ledger, RUNS[:2])
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(securefl._io.os, "replace", boom)
    with pytest.raises(OSError):
        ledger.record(subject="carol", round=5, mechanism="dp-sgd", noise_multiplier=2.0, sample_rate=1.0, steps=1)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]
    PrivacyLedger.load(path)


def test_unknown_mechanism_rejected_without_write(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, delta=DELTA)
    with pytest.raises(LedgerError):
        ledger.record(subject="a", round=0, mechanism="laplace", noise_multiplier=1.0, sample_rate=1.0, steps=1)
    assert ledger.entries == [] and not path.exists()


# ------------------------------------------------------- cumulative epsilon
def test_entry_epsilon_is_cumulative_per_subject(ledger_file):
    ledger = PrivacyLedger.load(ledger_file)
    histories: dict[str, list] = {}
    last: dict[str, dict] = {}
    for i, (entry, (subject, mech, run)) in enumerate(zip(ledger.entries, RUNS)):
        assert entry["seq"] == i and entry["subject"] == subject and entry["mechanism"] == mech
        assert entry["delta"] == DELTA
        histories.setdefault(subject, []).append(run)
        expected = A.epsilon(histories[subject], DELTA).as_dict()
        assert entry["epsilon"] == pytest.approx(expected, rel=1e-12)
        if subject in last:
            for key in ("prv", "rdp", "prv_lower", "prv_estimate"):
                assert entry["epsilon"][key] > last[subject][key]
        last[subject] = entry["epsilon"]
    # bob's entry is unaffected by alice's earlier spend
    assert ledger.entries[1]["epsilon"]["prv"] == pytest.approx(A.epsilon([(3.0, 1.0, 5)], DELTA).prv)
    assert ledger.spent("alice").prv == ledger.entries[4]["epsilon"]["prv"]
    assert ledger.subjects() == ["alice", "bob", "federation"]
    assert ledger.spent("nobody").prv == 0.0


# ------------------------------------------------------------------ budget
def test_budget_exhaustion_raises_before_writing(tmp_path):
    path = tmp_path / "ledger.json"
    one = A.epsilon([(2.0, 1.0, 10)], DELTA).prv
    two = A.epsilon([(2.0, 1.0, 20)], DELTA).prv
    budget = (one + two) / 2
    ledger = PrivacyLedger(path, delta=DELTA, budget=budget)
    ledger.record(subject="alice", round=0, mechanism="dp-sgd", noise_multiplier=2.0, sample_rate=1.0, steps=10)
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    with pytest.raises(BudgetExhaustedError) as info:
        ledger.record(subject="alice", round=1, mechanism="dp-sgd", noise_multiplier=2.0, sample_rate=1.0, steps=10)
    err = info.value
    assert isinstance(err, PrivacyError)
    assert err.client_id == "alice" and err.budget == budget
    assert err.spent == pytest.approx(one) and err.would_be == pytest.approx(two)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert len(ledger.entries) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]
    # another subject still has budget; and the budget is stored with the ledger
    ledger.record(subject="bob", round=1, mechanism="dp-sgd", noise_multiplier=2.0, sample_rate=1.0, steps=10)
    reopened = PrivacyLedger(path, delta=DELTA)
    assert reopened.budget == budget
    with pytest.raises(BudgetExhaustedError):
        reopened.check_budget("bob", 2.0, 1.0, 10)
    assert reopened.check_budget("bob", 2.0, 1.0, 0) == pytest.approx(one)


def test_budget_refuses_first_run_without_creating_file(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, delta=DELTA, budget=0.5)
    with pytest.raises(BudgetExhaustedError):
        ledger.record(subject="a", round=0, mechanism="dp-fedavg", noise_multiplier=1.0, sample_rate=1.0, steps=1)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_budget_can_be_bypassed_explicitly(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.json", delta=DELTA, budget=0.5)
    entry = ledger.record(
        subject="a", round=0, mechanism="dp-sgd", noise_multiplier=1.0, sample_rate=1.0, steps=1, enforce_budget=False
    )
    assert entry["epsilon"]["prv"] > 0.5
    assert len(PrivacyLedger.load(tmp_path / "l.json").entries) == 1


def test_budget_uses_ledger_accountant(tmp_path):
    prv = A.epsilon([(2.0, 1.0, 10)], DELTA).prv
    rdp = A.epsilon([(2.0, 1.0, 10)], DELTA).rdp
    assert prv < rdp
    budget = (prv + rdp) / 2
    PrivacyLedger(None, delta=DELTA, budget=budget, accountant="prv").check_budget("a", 2.0, 1.0, 10)
    with pytest.raises(BudgetExhaustedError):
        PrivacyLedger(None, delta=DELTA, budget=budget, accountant="rdp").check_budget("a", 2.0, 1.0, 10)


# --------------------------------------------------------------- tampering
def _bump(value):
    if value is None:  # an unset budget
        return 1.0
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.5 + 0.25
    if isinstance(value, str):
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value):  # a hex digest
            return value[:-1] + ("0" if value[-1] != "0" else "1")
        return value + "x"
    raise AssertionError(f"no mutation for {value!r}")


ENTRY_FIELDS = [
    "seq", "subject", "round", "mechanism", "noise_multiplier", "sample_rate", "steps",
    "delta", "budget", "accountant", "time", "prev", "hash",
    "epsilon.prv", "epsilon.rdp", "epsilon.prv_lower", "epsilon.prv_estimate",
]  # fmt: skip


def test_entry_fields_are_all_covered(ledger_file):
    # keeps ENTRY_FIELDS in step with what the ledger writes
    entry = json.loads(ledger_file.read_text())["entries"][0]
    flat = {k for k, v in entry.items() if not isinstance(v, dict)}
    flat |= {f"{k}.{s}" for k, v in entry.items() if isinstance(v, dict) for s in v}
    assert flat == set(ENTRY_FIELDS)


@pytest.mark.parametrize("index", [0, 2, len(RUNS) - 1])
@pytest.mark.parametrize("field", ENTRY_FIELDS)
def test_tampered_field_detected(ledger_file, index, field):
    def tamper(data):
        entry = data["entries"][index]
        if "." in field:
            outer, inner = field.split(".")
            entry[outer][inner] = _bump(entry[outer][inner])
        else:
            entry[field] = _bump(entry[field])

    _rewrite(ledger_file, tamper)
    with pytest.raises(LedgerError):
        PrivacyLedger.load(ledger_file)
    with pytest.raises(LedgerError):
        PrivacyLedger(ledger_file, delta=DELTA)


@pytest.mark.parametrize("field", ["epsilon", "subject", "steps", "time", "hash", "prev", "seq"])
def test_removed_field_detected(ledger_file, field):
    _rewrite(ledger_file, lambda d: d["entries"][1].pop(field))
    with pytest.raises(LedgerError):
        PrivacyLedger.load(ledger_file)


def test_added_field_detected(ledger_file):
    _rewrite(ledger_file, lambda d: d["entries"][1].update(note="harmless?"))
    with pytest.raises(LedgerError):
        PrivacyLedger.load(ledger_file)


@pytest.mark.parametrize("index", range(len(RUNS) - 1))
def test_deleted_entry_detected(ledger_file, index):
    _rewrite(ledger_file, lambda d: d["entries"].pop(index))
    with pytest.raises(LedgerError):
        PrivacyLedger.load(ledger_file)


@pytest.mark.parametrize("renumber", [False, True])
@pytest.mark.parametrize("order", [(1, 0, 2, 3, 4), (0, 2, 1, 3, 4), (4, 0, 1, 2, 3), (4, 3, 2, 1, 0)])
def test_reordered_entries_detected(ledger_file, order, renumber):
    def tamper(data):
        data["entries"] = [data["entries"][i] for i in order]
        if renumber:  # hide the reordering from the sequence-number check
            for seq, entry in enumerate(data["entries"]):
                entry["seq"] = seq

    _rewrite(ledger_file, tamper)
    with pytest.raises(LedgerError):
        PrivacyLedger.load(ledger_file)


def test_decreasing_epsilon_detected_even_with_valid_chain(ledger_file):
    # rebuild the chain consistently after lowering alice's third-run epsilon:
    # only the monotonicity check can catch this
    def tamper(data):
        entries = data["entries"]
        entries[2]["epsilon"]["prv"] = entries[0]["epsilon"]["prv"] / 2
        prev = L.genesis(data["delta"], data["budget"], data["accountant"])
        for e in entries:
            body = {k: v for k, v in e.items() if k not in ("prev", "hash")}
            e["prev"], e["hash"] = prev, L._entry_hash(prev, body)
            prev = e["hash"]

    _rewrite(ledger_file, tamper)
    with pytest.raises(LedgerError, match="went down"):
        PrivacyLedger.load(ledger_file)


def test_untampered_copy_loads(ledger_file):
    # control for the tampering tests: a JSON round trip alone is accepted
    _rewrite(ledger_file, lambda d: None)
    assert len(PrivacyLedger.load(ledger_file).entries) == len(RUNS)


# ------------------------------------------------------------ not a ledger
@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json at all {",
        b"\x00\xff\xfe garbage \x80",
        b"[]",
        b'"securefl-ledger"',
        b"null",
        b"[" * 100_000,
        b'{"entries": []}',
        b'{"format": "something-else", "version": 2, "delta": 1e-5, "budget": null, "accountant": "prv", "entries": []}',
        b'{"format": "securefl-ledger", "version": 3, "delta": 1e-5, "budget": null, "accountant": "prv", "entries": []}',
        b'{"format": "securefl-ledger", "version": true, "delta": 1e-5, "budget": null, "accountant": "prv", "entries": []}',
        b'{"format": "securefl-ledger", "version": 2, "delta": 1e-5, "budget": null, "accountant": "prv", "entries": [1]}',
        b'{"format": "securefl-ledger", "version": 2, "delta": 1e-5, "budget": null, "accountant": "prv", "entries": [{"seq": 0}]}',
    ],
)
def test_non_ledger_files_raise_ledger_error(tmp_path, content):
    path = tmp_path / "ledger.json"
    path.write_bytes(content)
    with pytest.raises(LedgerError):
        PrivacyLedger.load(path)


def test_missing_file_raises_ledger_error(tmp_path):
    with pytest.raises(LedgerError):
        PrivacyLedger.load(tmp_path / "absent.json")


_HEADER = {"format": "securefl-ledger", "version": 2, "delta": 1e-5, "budget": 3.0, "accountant": "prv", "entries": []}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"delta": None}, "delta"),
        ({"entries": 5}, "entries"),
        ({"delta": "abc"}, "delta"),
        ({"delta": 2.0}, "delta"),
        ({"delta": float("nan")}, "delta"),
        ({"budget": "x"}, "budget"),
        ({"budget": float("nan")}, "budget"),
        ({"budget": float("inf")}, "budget"),
        ({"budget": -1.0}, "budget"),
        ({"budget": 0}, "budget"),
        ({"budget": True}, "budget"),
        ({"budget": 10**400}, "budget"),
        ({"accountant": "gdp"}, "accountant"),
        ({"note": "hi"}, "note"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else v,
)
def test_malformed_header_raises_ledger_error(tmp_path, change, field):
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({**_HEADER, **change}))
    with pytest.raises(LedgerError, match=f"'{field}'") as info:
        PrivacyLedger.load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("field", ["delta", "budget", "accountant"])
def test_missing_header_field_raises_ledger_error(tmp_path, field):
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({k: v for k, v in _HEADER.items() if k != field}))
    with pytest.raises(LedgerError, match=f"'{field}' is missing"):
        PrivacyLedger.load(path)


def test_version_1_ledger_is_refused_with_a_reason(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({**_HEADER, "version": 1}))
    with pytest.raises(LedgerError, match="unsupported ledger version 1; .*binds delta, budget and accountant"):
        PrivacyLedger.load(path)


def test_empty_ledger_round_trips_with_validated_header(tmp_path):
    path = tmp_path / "ledger.json"
    PrivacyLedger(path, delta=DELTA, budget=2.5, accountant="rdp").save()
    again = PrivacyLedger.load(path)
    assert (again.delta, again.budget, again.accountant, again.entries) == (DELTA, 2.5, "rdp", [])
    # nothing is bound by an empty ledger: a run may set its own budget over it
    assert PrivacyLedger(path, delta=DELTA, budget=4.0).budget == 4.0


@pytest.mark.parametrize(
    "kwargs, field",
    [({"budget": float("nan")}, "budget"), ({"budget": -2.0}, "budget"), ({"delta": 0.0}, "delta"),
     ({"accountant": "gdp"}, "accountant")],
)  # fmt: skip
def test_constructor_rejects_invalid_settings(kwargs, field):
    with pytest.raises(ConfigValueError) as info:
        PrivacyLedger(None, **kwargs)
    assert info.value.field == field


def test_settings_are_read_only():
    ledger = PrivacyLedger(None, delta=DELTA, budget=1.0)
    with pytest.raises(AttributeError):
        ledger.budget = 1e9  # type: ignore[misc]


@pytest.mark.parametrize(
    "field, value",
    [("noise_multiplier", float("nan")), ("noise_multiplier", 1e-9), ("noise_multiplier", -1.0),
     ("sample_rate", 0.0), ("sample_rate", 1.5), ("steps", 0), ("mechanism", "laplace"), ("subject", "")],
)  # fmt: skip
def test_record_rejects_invalid_runs_without_writing(tmp_path, field, value):
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, delta=DELTA)
    run = {"subject": "a", "round": 0, "mechanism": "dp-sgd", "noise_multiplier": 2.0, "sample_rate": 1.0, "steps": 1}
    with pytest.raises(LedgerError, match=field):
        ledger.record(**{**run, field: value})
    assert ledger.entries == [] and not path.exists()


def test_record_refuses_a_prv_grid_beyond_the_limit(tmp_path):
    # sigma = 0.001 at q = 0.5 would need ~6e8 grid points (~100 GB): refused up front
    ledger = PrivacyLedger(tmp_path / "l.json", delta=DELTA)
    with pytest.raises(AccountingError, match="grid points"):
        ledger.record(subject="a", round=0, mechanism="dp-sgd", noise_multiplier=1e-3, sample_rate=0.5, steps=1,
                      enforce_budget=False)  # fmt: skip
    assert ledger.entries == []


@pytest.mark.parametrize(
    "history", [((2.0, 1.0, 10),), ((1.0, 0.01, 500),), ((3.0, 0.5, 7), (1.0, 0.01, 100)), ((0.8, 1.0, 3),)]
)
def test_prv_grid_points_matches_the_accountant(history, monkeypatch):
    # the cost guard must predict what accounting.prv_epsilon really allocates
    from securefl.privacy import prv

    sizes = []
    real = prv.self_composed

    def spy(q, sigma, domain, steps):
        composed = real(q, sigma, domain, steps)
        sizes.append(len(composed.pmf))
        return composed

    monkeypatch.setattr(prv, "self_composed", spy)
    A.clear_caches()
    A.prv_epsilon(A.normalize(history), DELTA)
    assert len(sizes) == len(history)
    assert L.prv_grid_points(history, DELTA) == sum(sizes)


# ---------------------------------------------------------- cost of recording (issue 15)
def test_saved_text_is_plain_json_dumps_and_follows_in_memory_changes(tmp_path):
    """Each entry is serialized once; the file stays byte for byte ``json.dumps(indent=2)``."""
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, delta=DELTA, budget=50.0)
    for i, run in enumerate(RUNS):
        entry = _record_all(ledger, [run])[0]
        assert entry is ledger.entries[-1] and len(ledger.entries) == i + 1
        assert path.read_text() == json.dumps(ledger.to_dict(), indent=2) + "\n"
    again = PrivacyLedger.load(path)
    assert again.dumps() == path.read_text()
    # a replaced entry list (or an entry re-chained in memory) is serialized afresh
    again.entries = again.entries[:2]
    assert again.dumps() == json.dumps(again.to_dict(), indent=2) + "\n"
    changed = dict(again.entries[1], hash="0" * 64)
    again.entries[1] = changed
    assert '"hash": "' + "0" * 64 in again.dumps()


def test_history_index_follows_appends_and_replacements(tmp_path):
    ledger = PrivacyLedger(None, delta=DELTA)
    _record_all(ledger)
    assert ledger.history("alice") == ((2.0, 1.0, 20), (1.5, 1.0, 2))
    assert ledger.history("bob") == ((3.0, 1.0, 5),) and ledger.history("nobody") == ()
    ledger.entries = ledger.entries[:1]
    assert ledger.history("alice") == ((2.0, 1.0, 10),) and ledger.history("bob") == ()


def test_record_computes_each_accountant_once(monkeypatch):
    """The enforcing accountant is evaluated once per record (its value reused for the
    entry), the other once for the entry; the PRV cost check runs once."""
    calls = {"prv": 0, "rdp": 0, "cost": 0}
    prv, rdp, cost = A.prv_epsilon, A.rdp_epsilon, L.check_prv_cost

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(A, "prv_epsilon", functools.lru_cache(count("prv", prv.__wrapped__)))  # count misses
    monkeypatch.setattr(A, "rdp_epsilon", count("rdp", rdp))
    monkeypatch.setattr(L, "check_prv_cost", count("cost", cost))
    for steps, accountant in ((3, "prv"), (4, "rdp")):
        ledger = PrivacyLedger(None, delta=DELTA, budget=50.0, accountant=accountant)
        ledger.record(subject="a", round=1, mechanism="dp-sgd", noise_multiplier=2.0, sample_rate=1.0, steps=steps)
        # PRV once (RDP, the cheap one, again for the entry when it enforces); the cost check once
        assert calls == {"prv": 1, "rdp": 1 if accountant == "prv" else 2, "cost": 1}, accountant
        calls.update(prv=0, rdp=0, cost=0)
