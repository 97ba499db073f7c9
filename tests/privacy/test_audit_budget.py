"""Tests of :mod:`securefl.privacy.audit_budget` (``securefl audit budget``)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from securefl import cli
from securefl.exceptions import LedgerError
from securefl.privacy import accounting as A
from securefl.privacy import audit_budget as B
from securefl.privacy import ledger as L
from securefl.privacy.ledger import PrivacyLedger

DELTA = 1e-5
BUDGET = 20.0
# full-batch runs keep the PRV accountant fast; (subject, mechanism, (sigma, q, steps))
RUNS = [
    ("alice", "dp-sgd", (2.0, 1.0, 10)),
    ("bob", "dp-sgd", (3.0, 1.0, 5)),
    ("federation", "dp-fedavg", (4.0, 1.0, 3)),
    ("alice", "dp-sgd", (2.0, 1.0, 10)),
    ("federation", "dp-fedavg", (4.0, 1.0, 3)),
    ("bob", "dp-sgd", (3.0, 1.0, 5)),
]
HISTORY = {
    "alice": ((2.0, 1.0, 20),),
    "bob": ((3.0, 1.0, 10),),
    "federation": ((4.0, 1.0, 6),),
}


@pytest.fixture(scope="module")
def _built(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("budget") / "ledger.json"
    ledger = PrivacyLedger(path, delta=DELTA, budget=BUDGET)
    for i, (subject, mech, (z, q, steps)) in enumerate(RUNS):
        ledger.record(subject=subject, round=i // 3 + 1, mechanism=mech, noise_multiplier=z, sample_rate=q, steps=steps)
    return path


@pytest.fixture
def ledger_file(_built, tmp_path) -> Path:
    path = tmp_path / "ledger.json"
    shutil.copyfile(_built, path)
    return path


@pytest.fixture(scope="module")
def report(_built) -> dict:
    return B.budget_report(PrivacyLedger.load(_built))


def _rechain(data: dict) -> None:
    prev = L.genesis(data["delta"], data["budget"], data["accountant"])
    for e in data["entries"]:
        body = {k: v for k, v in e.items() if k not in ("prev", "hash")}
        e["prev"], e["hash"] = prev, L._entry_hash(prev, body)
        prev = e["hash"]


def _rewrite(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- numbers
def test_per_subject_epsilon_matches_accountants(report):
    rows = {r["subject"]: r for r in report["subjects"]}
    assert list(rows) == ["alice", "bob", "federation"]
    for subject, history in HISTORY.items():
        want = A.epsilon(history, DELTA)
        row = rows[subject]
        assert row["prv"] == pytest.approx(want.prv, rel=1e-12)
        assert row["prv_lower"] == pytest.approx(want.prv_lower, rel=1e-12)
        assert row["rdp"] == pytest.approx(want.rdp, rel=1e-12)
        assert row["prv_lower"] <= row["prv_estimate"] <= row["prv"] < row["rdp"]
        assert row["recorded"] == pytest.approx(want.prv, rel=1e-12)
        assert row["remaining"] == pytest.approx(BUDGET - want.prv, rel=1e-12)
    assert rows["alice"]["level"] == "sample" and rows["federation"]["level"] == "client"
    assert rows["alice"]["rounds"] == 2 and rows["alice"]["steps"] == 20


def test_overall_composes_by_level(report):
    rows = {r["subject"]: r for r in report["subjects"]}
    sample = report["overall"]["sample"]
    # any record belongs to one client: the worst client is the guarantee
    assert sample["epsilon"] == max(rows["alice"]["prv"], rows["bob"]["prv"])
    assert sample["subject"] == "alice" and sample["subjects"] == 2
    assert report["overall"]["client"]["epsilon"] == rows["federation"]["prv"]
    assert report["epsilon_upper_bound"] == max(sample["epsilon"], rows["federation"]["prv"])


def test_rounds_left_is_the_last_round_that_fits(report):
    for row in report["subjects"]:
        n = row["rounds_left"]
        sigma, q, steps = HISTORY[row["subject"]][0][0], 1.0, RUNS[[r[0] for r in RUNS].index(row["subject"])][2][2]
        h = HISTORY[row["subject"]]
        assert n >= 1 and not row["rounds_left_at_least"]
        assert A.epsilon_under("prv", A.normalize(h + ((sigma, q, steps * n),)), DELTA) <= BUDGET
        assert A.epsilon_under("prv", A.normalize(h + ((sigma, q, steps * (n + 1)),)), DELTA) > BUDGET


def _brute_force_rounds_left(history, last, budget, accountant):
    sigma, q, steps = last
    k = 0
    while A.epsilon_under(accountant, A.normalize(history + ((sigma, q, steps * (k + 1)),)), DELTA) <= budget:
        k += 1
    return k


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("budget", [0.5, 1.0, 1.7, 2.2, 3.0, 4.5])
def test_rounds_left_search_equals_a_linear_scan(accountant, budget):
    # the RDP-seeded secant/bisection search lands exactly where scanning round by round does
    history, last = ((6.0, 1.0, 4),), (6.0, 1.0, 4)
    got = B.rounds_left(history, last, budget, DELTA, accountant)
    assert got == B.RoundsLeft(_brute_force_rounds_left(history, last, budget, accountant), False)


def test_rounds_left_probes_are_few_and_bounded(monkeypatch):
    # every PRV evaluation of the search stays under the per-probe grid cap, and there are
    # O(log MAX_ROUNDS_LEFT) of them, whatever the budget
    probes = []
    real = A.prv_epsilon

    def counting(history, delta, *args):
        probes.append(B.prv_grid_points(history, delta))
        return real(history, delta, *args)

    monkeypatch.setattr(A, "prv_epsilon", counting)
    history, last = ((1.0, 0.01, 400),), (1.0, 0.01, 100)
    for budget in (1.0, 2.0, 3.5, 1e3, 1e30):  # 1.0: already spent more
        probes.clear()
        left = B.rounds_left(history, last, budget, DELTA, "prv")
        assert 1 <= len(probes) <= 2 * math.ceil(math.log2(B.MAX_ROUNDS_LEFT)) + 2
        assert max(probes) <= B.SEARCH_GRID_POINTS and sum(probes) <= B.SEARCH_GRID_BUDGET
        if not left.at_least:  # exact answers saw rounds + 1 fail
            assert real(A.normalize(history + ((1.0, 0.01, 100 * (left.rounds + 1)),)), DELTA)[2] > budget
        if left.rounds:
            assert real(A.normalize(history + ((1.0, 0.01, 100 * left.rounds),)), DELTA)[2] <= budget


def test_rounds_left_renders_lower_bounds_with_ge(tmp_path, capsys):
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, delta=DELTA, budget=1e30)
    ledger.record(subject="bob", round=1, mechanism="dp-sgd", noise_multiplier=3.0, sample_rate=1.0, steps=5)
    rep = B.budget_report(PrivacyLedger.load(path))
    (row,) = rep["subjects"]
    assert row["rounds_left_at_least"] and rep["overall"]["sample"]["rounds_left_at_least"]
    code, out, _ = _main(["audit", "budget", str(path)], capsys)
    assert code == 0 and f">={row['rounds_left']}" in out and f"rounds left >={row['rounds_left']}" in out


def test_other_delta_recomputes(_built):
    rep = B.budget_report(PrivacyLedger.load(_built), delta=1e-7)
    row = next(r for r in rep["subjects"] if r["subject"] == "bob")
    assert row["prv"] == pytest.approx(A.epsilon(HISTORY["bob"], 1e-7).prv, rel=1e-12)
    assert row["prv"] > A.epsilon(HISTORY["bob"], DELTA).prv
    assert rep["delta"] == 1e-7 and rep["ledger_delta"] == DELTA


def test_pld_cross_check_agrees_with_prv(tmp_path):
    ledger = PrivacyLedger(None, delta=DELTA)
    ledger.record(subject="c", round=1, mechanism="dp-sgd", noise_multiplier=2.0, sample_rate=1.0, steps=10)
    row = B.budget_report(ledger, pld=True)["subjects"][0]
    # an independent implementation (dp_accounting's PLD) lands inside PRV's error bounds (+ its own slack)
    assert row["prv_lower"] - 0.02 <= row["pld"] <= row["prv"] + 0.02


# --------------------------------------------------------------- rejection
def test_forged_but_rechained_epsilon_is_rejected(ledger_file):
    # lower bob's epsilons consistently (still monotone) and rebuild the hash chain:
    # only recomputing epsilon from the history can catch this
    def forge(data):
        for e in data["entries"]:
            if e["subject"] == "bob":
                e["epsilon"] = {k: v / 2 for k, v in e["epsilon"].items()}
        _rechain(data)

    _rewrite(ledger_file, forge)
    ledger = PrivacyLedger.load(ledger_file)  # the chain itself verifies
    with pytest.raises(LedgerError, match="does not follow"):
        B.budget_report(ledger)


def test_wrong_mechanism_for_subject_is_rejected(ledger_file):
    def forge(data):
        data["entries"][0]["mechanism"] = "dp-fedavg"
        _rechain(data)

    _rewrite(ledger_file, forge)
    with pytest.raises(LedgerError, match="mechanism"):
        B.budget_report(PrivacyLedger.load(ledger_file))


def _main(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_rejects_tampered_ledger_with_one_line(ledger_file, capsys):
    _rewrite(ledger_file, lambda d: d["entries"][2]["epsilon"].update(prv=0.01))
    code, out, err = _main(["audit", "budget", str(ledger_file)], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "hash chain broken" in err


def test_cli_rejects_decreasing_epsilon(ledger_file, capsys):
    def forge(data):
        data["entries"][3]["epsilon"]["prv"] = data["entries"][0]["epsilon"]["prv"] / 2
        _rechain(data)

    _rewrite(ledger_file, forge)
    code, _, err = _main(["audit", "budget", str(ledger_file)], capsys)
    assert code == 1 and "went down" in err and err.count("\n") == 1


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"format": "securefl-ledger", "version": 1, "entries": 3}'])
def test_cli_rejects_malformed_ledger(tmp_path, capsys, content):
    path = tmp_path / "l.json"
    path.write_bytes(content)
    code, _, err = _main(["audit", "budget", str(path)], capsys)
    assert code == 1 and err.startswith("securefl audit budget: error:") and err.count("\n") == 1


@pytest.mark.parametrize(
    "flags, field", [(["--delta", "2"], "--delta"), (["--delta", "0"], "--delta"), (["--format", "xml"], "--format")]
)
def test_cli_usage_errors_exit_2(ledger_file, capsys, flags, field):
    code, _, err = _main(["audit", "budget", str(ledger_file), *flags], capsys)
    assert code == 2 and field in err and err.count("\n") == 1


# ------------------------------------------------------------------ output
def test_cli_formats_and_plot(ledger_file, tmp_path, capsys):
    png = tmp_path / "eps.png"
    code, out, _ = _main(["audit", "budget", str(ledger_file), "--format", "json", "--plot", str(png)], capsys)
    assert code == 0
    data = json.loads(out)
    assert [r["subject"] for r in data["subjects"]] == ["alice", "bob", "federation"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = _main(["audit", "budget", str(ledger_file), "--format", "md"], capsys)
    assert "| subject |" in out and "| alice | sample | 2 |" in out
    code, out, _ = _main(["audit", "budget", str(ledger_file)], capsys)
    alice = A.epsilon(HISTORY["alice"], DELTA).prv
    assert f"{alice:.3f}" in out and "overall client-level" in out and "chain verified" in out


def test_budget_matches_what_training_reported(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main([
        "train", "--dataset", "breast_cancer", "--model", "logreg", "--clients", "3", "--rounds", "2",
        "--dp", "sample", "--noise-multiplier", "1.5", "--sample-rate", "0.5", "--local-epochs", "1",
        "--seed", "1", "--out", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    final = json.loads((out / "metrics.json").read_text())["final"]
    code, text, _ = _main(["audit", "budget", str(out / "ledger.json"), "--format", "json"], capsys)
    assert code == 0
    rep = json.loads(text)
    rows = {r["subject"]: r for r in rep["subjects"]}
    assert set(rows) == set(final["clients"])
    for cid, c in final["clients"].items():
        assert rows[cid]["prv"] == pytest.approx(c["epsilon"], rel=1e-12)
        assert rows[cid]["rdp"] == pytest.approx(c["epsilon_rdp"], rel=1e-12)
        assert rows[cid]["rounds"] == c["rounds"] == 2
    assert rep["overall"]["sample"]["epsilon"] == pytest.approx(final["epsilon"], rel=1e-12)


def test_empty_ledger_reports_no_spend(tmp_path, capsys):
    path = tmp_path / "ledger.json"
    PrivacyLedger(path, delta=DELTA).save()
    rep = B.budget_report(PrivacyLedger.load(path))
    assert rep["subjects"] == [] and rep["overall"] == {} and rep["epsilon_upper_bound"] == 0.0
    code, out, _ = _main(["audit", "budget", str(path)], capsys)
    assert code == 0 and "no DP mechanism recorded" in out


def test_client_level_budget_matches_what_training_reported(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main([
        "train", "--dataset", "breast_cancer", "--model", "logreg", "--clients", "4", "--rounds", "3",
        "--dp", "client", "--noise-multiplier", "3.0", "--epsilon", "4", "--local-epochs", "1",
        "--seed", "1", "--out", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    final = json.loads((out / "metrics.json").read_text())["final"]
    code, text, _ = _main(["audit", "budget", str(out / "ledger.json"), "--format", "json"], capsys)
    assert code == 0
    rep = json.loads(text)
    (row,) = rep["subjects"]
    assert row["subject"] == "federation" and row["level"] == "client" and row["rounds"] == 3
    assert row["prv"] == pytest.approx(final["epsilon"], rel=1e-12)
    assert rep["overall"]["client"]["epsilon"] == pytest.approx(final["epsilon"], rel=1e-12)
    # budget 4 leaves room: the rounds left at z = 3 are exactly those that fit
    n = row["rounds_left"]
    assert n > 0 and row["remaining"] == pytest.approx(4 - final["epsilon"])
    assert A.epsilon_under("prv", ((3.0, 1.0, 3 + n),), DELTA) <= 4 < A.epsilon_under("prv", ((3.0, 1.0, 4 + n),), DELTA)
