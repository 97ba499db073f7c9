"""Fuzz target: loading a ledger file (PrivacyLedger.load), with entries and
header fields mutated and the hash chain recomputed so the field checks, not
only the chain, are reached."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securefl.privacy import ledger as L
from securefl.privacy import ledger_format as LF
from securefl.privacy.ledger import PrivacyLedger
from tests.fuzz.harness import contained, fuzz_settings, json_values, mutate_bytes, mutate_header

RUNS = [("alice", "dp-sgd", 2.0, 1.0, 10), ("bob", "dp-sgd", 3.0, 1.0, 5), ("alice", "dp-sgd", 2.0, 1.0, 3)]
ENTRY_FIELDS = sorted(LF.ENTRY_FIELDS - {"prev", "hash"}) + ["epsilon.prv", "epsilon.rdp"]


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    path = tmp_path_factory.mktemp("ledger") / "ledger.json"
    ledger = PrivacyLedger(path, delta=1e-5, budget=50.0)
    for i, (subject, mech, z, q, steps) in enumerate(RUNS):
        ledger.record(subject=subject, round=i, mechanism=mech, noise_multiplier=z, sample_rate=q, steps=steps)
    return json.loads(path.read_text())


def rechain(data: dict) -> None:
    """Recompute genesis-linked hashes over whatever the entries now hold."""
    entries = data.get("entries")
    if not isinstance(entries, list):
        return
    try:
        prev = L.genesis(data["delta"], data["budget"], data["accountant"])
    except Exception:
        prev = "0" * 64
    for e in entries:
        if not isinstance(e, dict):
            continue
        e["prev"] = prev
        body = {k: v for k, v in e.items() if k not in ("prev", "hash")}
        try:
            e["hash"] = prev = L._entry_hash(prev, body)
        except (TypeError, ValueError):
            pass


def _mutate_entry(data, entry: dict) -> None:
    name = data.draw(st.sampled_from(ENTRY_FIELDS))
    value = data.draw(json_values)
    if name.startswith("epsilon.") and isinstance(entry.get("epsilon"), dict):
        entry["epsilon"][name.split(".", 1)[1]] = value
    elif data.draw(st.integers(0, 5)) == 0:
        entry.pop(name, None)
    else:
        entry[name] = value


@fuzz_settings(400)
@given(st.data())
def test_load_mutated_ledger(valid, tmp_path_factory, data):
    doc = copy.deepcopy(valid)
    how = data.draw(st.sampled_from(["entry", "entry", "header", "entries", "bytes"]))
    if how == "entry":
        for _ in range(data.draw(st.integers(1, 3))):
            _mutate_entry(data, doc["entries"][data.draw(st.integers(0, len(doc["entries"]) - 1))])
    elif how == "header":
        doc = mutate_header(data, doc, sorted(LF.HEADER_FIELDS))
    elif how == "entries":
        i = data.draw(st.integers(0, len(doc["entries"])))
        doc["entries"].insert(i, data.draw(json_values))
    if data.draw(st.booleans()):
        rechain(doc)
    text = json.dumps(doc)
    if how == "bytes":
        blob = mutate_bytes(data, text.encode())
    else:
        blob = text.encode()
    path = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())) / "ledger.json"
    path.write_bytes(blob)
    contained("ledger: load", lambda: PrivacyLedger.load(path))


@fuzz_settings(250)
@given(
    st.one_of(st.text(max_size=4), json_values),
    json_values,
    st.one_of(st.sampled_from(["dp-sgd", "dp-fedavg"]), json_values),
    json_values,
    json_values,
    json_values,
)
def test_record_odd_entries(subject, round_, mechanism, z, q, steps):
    """PrivacyLedger.record with odd field values: refused with LedgerError (or a
    PrivacyError from accounting), never a TypeError/ValueError/OverflowError."""
    ledger = PrivacyLedger(None, delta=1e-5)
    contained(
        "ledger: record",
        lambda: ledger.record(
            subject=subject, round=round_, mechanism=mechanism, noise_multiplier=z, sample_rate=q, steps=steps,
            enforce_budget=False,
        ),
    )
