"""``securefl audit budget LEDGER.json``: who spent what, under which accountant.

Reads a :class:`~securefl.privacy.ledger.PrivacyLedger` (verifying its hash
chain and monotone epsilon), recomputes every subject's epsilon from the
recorded mechanism runs and checks it against what the ledger claims, then
reports per subject and overall:

* epsilon under PRV (Gopi, Lee and Wutschitz 2021) with its error bounds, and
  under RDP (Mironov 2017); optionally under the PLD accountant of Google's
  ``dp_accounting`` (Meiser and Mohammadi 2018; Doroshenko et al. 2022) as an
  independent implementation;
* the remaining budget and the rounds left at the subject's current rate (its
  last round's noise multiplier, sampling rate and steps);
* a plot of epsilon over rounds.

Composition: a subject's runs compose sequentially. Sample-level DP-SGD
subjects are clients; each record belongs to one client, so the guarantee for
any record is the largest client epsilon (parallel composition over disjoint
data). Client-level DP-FedAvg is recorded for the subject ``"federation"`` and
is the guarantee for any whole client.

A ledger that cannot be read, whose chain is broken, whose epsilon goes down,
or whose recorded epsilons do not match their own history is rejected with
:class:`~securefl.exceptions.LedgerError` (``securefl`` exits with status 1 and
one line; usage errors such as a bad ``--delta`` exit with status 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from securefl.exceptions import ConfigValueError, LedgerError
from securefl.privacy import accounting
from securefl.privacy.ledger import PrivacyLedger

FEDERATION = "federation"
#: mechanism -> the unit of privacy it protects
LEVELS = {"dp-sgd": "sample", "dp-fedavg": "client"}
#: rounds-left searches stop here
MAX_ROUNDS_LEFT = 100_000
_REL_TOL = 1e-6


@dataclass(frozen=True)
class SubjectBudget:
    """One subject's spend (a client under DP-SGD, or the federation under DP-FedAvg)."""

    subject: str
    mechanism: str
    level: str  #: "sample" or "client"
    rounds: int
    steps: int
    noise_multiplier: float  #: of the last recorded round
    sample_rate: float  #: of the last recorded round
    prv: float
    prv_lower: float
    prv_estimate: float
    rdp: float
    pld: float | None
    recorded: float  #: the ledger's own last epsilon under its accountant (at the ledger's delta)
    budget: float | None
    remaining: float | None
    rounds_left: int | None  #: at the current rate; None without a budget

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pld_epsilon(history: accounting.History, delta: float) -> float:
    """Epsilon under the PLD accountant of ``dp_accounting`` (an independent check)."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    events = []
    for sigma, q, steps in accounting.normalize(history):
        if sigma == 0:
            return math.inf
        base = dp_event.GaussianDpEvent(sigma)
        events.append(dp_event.SelfComposedDpEvent(base if q == 1 else dp_event.PoissonSampledDpEvent(q, base), steps))
    if not events:
        return 0.0
    acc = pld_privacy_accountant.PLDAccountant()
    acc.compose(dp_event.ComposedDpEvent(events))
    return float(acc.get_epsilon(delta))


def rounds_left(history: accounting.History, last: tuple[float, float, int], budget: float,
                delta: float, accountant: str) -> int:
    """How many more rounds like ``last`` keep ``accountant``'s epsilon within ``budget``."""
    sigma, q, steps = last

    def fits(n: int) -> bool:
        h = accounting.normalize(history + ((sigma, q, steps * n),))
        return accounting.epsilon_under(accountant, h, delta) <= budget * (1 + 1e-9)

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > MAX_ROUNDS_LEFT:
            return MAX_ROUNDS_LEFT
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _check_recorded(ledger: PrivacyLedger) -> None:
    """Every entry's recorded RDP epsilon must follow from the subject's history so
    far (a forged but re-chained ledger fails here)."""
    histories: dict[str, list[tuple[float, float, int]]] = {}
    for i, e in enumerate(ledger.entries):
        try:
            run = (float(e["noise_multiplier"]), float(e["sample_rate"]), int(e["steps"]))
            claimed = float(e["epsilon"]["rdp"])
            mechanism = e["mechanism"]
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"entry {i}: missing or malformed field {exc}") from exc
        if mechanism not in LEVELS:
            raise LedgerError(f"entry {i}: unknown mechanism {mechanism!r}")
        if (mechanism == "dp-fedavg") != (e["subject"] == FEDERATION):
            raise LedgerError(f"entry {i}: mechanism {mechanism} recorded for subject {e['subject']!r}")
        if e.get("delta") != ledger.delta:
            raise LedgerError(f"entry {i}: delta {e.get('delta')!r} differs from the ledger's {ledger.delta}")
        try:
            h = histories.setdefault(e["subject"], [])
            h.append(run)
            want = accounting.rdp_epsilon(accounting.normalize(h), ledger.delta)
        except ConfigValueError as exc:
            raise LedgerError(f"entry {i}: invalid mechanism parameters: {exc}") from exc
        if not math.isclose(claimed, want, rel_tol=_REL_TOL, abs_tol=1e-12):
            raise LedgerError(
                f"entry {i}: recorded epsilon (rdp) {claimed:.6g} of {e['subject']} does not follow from its "
                f"history (recomputed {want:.6g})"
            )


def budget_report(ledger: PrivacyLedger, *, delta: float | None = None, pld: bool = False) -> dict[str, Any]:
    """Per-subject and overall spend of a verified ledger, at ``delta`` (the
    ledger's own by default). Raises :class:`LedgerError` for an inconsistent ledger."""
    ledger.verify()
    _check_recorded(ledger)
    d = ledger.delta if delta is None else delta
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d < 1:
        raise ConfigValueError("delta", d, "must be in (0, 1)")
    rows: list[SubjectBudget] = []
    for subject in ledger.subjects():
        entries = [e for e in ledger.entries if e["subject"] == subject]
        history = ledger.history(subject)
        last_entry = entries[-1]
        report = accounting.epsilon(history, d)
        recorded = float(last_entry["epsilon"][ledger.accountant])
        if d == ledger.delta:
            again = report.get(ledger.accountant)
            if not math.isclose(again, recorded, rel_tol=_REL_TOL, abs_tol=1e-12):
                raise LedgerError(
                    f"{subject}: recorded epsilon ({ledger.accountant}) {recorded:.6g} does not follow from its "
                    f"history (recomputed {again:.6g})"
                )
        budget = ledger.budget  # a budget is set at the ledger's delta: remaining and rounds left use it
        last = (float(last_entry["noise_multiplier"]), float(last_entry["sample_rate"]), int(last_entry["steps"]))
        rows.append(
            SubjectBudget(
                subject=subject,
                mechanism=last_entry["mechanism"],
                level=LEVELS[last_entry["mechanism"]],
                rounds=len(entries),
                steps=sum(int(e["steps"]) for e in entries),
                noise_multiplier=last[0],
                sample_rate=last[1],
                prv=report.prv,
                prv_lower=report.prv_lower,
                prv_estimate=report.prv_estimate,
                rdp=report.rdp,
                pld=pld_epsilon(history, d) if pld else None,
                recorded=recorded,
                budget=budget,
                remaining=None if budget is None else budget - recorded,
                rounds_left=None if budget is None else rounds_left(history, last, budget, ledger.delta, ledger.accountant),
            )
        )
    overall: dict[str, Any] = {}
    for level in ("sample", "client"):
        mine = [r for r in rows if r.level == level]
        if not mine:
            continue
        worst = max(mine, key=lambda r: getattr(r, ledger.accountant))
        overall[level] = {
            "subject": worst.subject,
            "epsilon": getattr(worst, ledger.accountant),
            "prv": max(r.prv for r in mine),
            "prv_lower": max(r.prv_lower for r in mine),
            "rdp": max(r.rdp for r in mine),
            "pld": max(r.pld for r in mine) if pld else None,
            "remaining": None if ledger.budget is None else min(r.remaining for r in mine),
            "rounds_left": None if ledger.budget is None else min(r.rounds_left for r in mine),
            "subjects": len(mine),
        }
    return {
        "ledger": str(ledger.path) if ledger.path is not None else None,
        "entries": len(ledger.entries),
        "delta": d,
        "ledger_delta": ledger.delta,
        "accountant": ledger.accountant,
        "budget": ledger.budget,
        "epsilon_upper_bound": max((o["epsilon"] for o in overall.values()), default=0.0),
        "overall": overall,
        "subjects": [r.as_dict() for r in rows],
    }


# ------------------------------------------------------------------ rendering
_COLUMNS = [
    ("subject", "subject", "{}"),
    ("level", "level", "{}"),
    ("rounds", "rounds", "{}"),
    ("sigma", "noise_multiplier", "{:.3f}"),
    ("q", "sample_rate", "{:.4f}"),
    ("eps_prv", "prv", "{:.3f}"),
    ("prv_range", None, None),
    ("eps_rdp", "rdp", "{:.3f}"),
    ("eps_pld", "pld", "{:.3f}"),
    ("remaining", "remaining", "{:.3f}"),
    ("rounds_left", "rounds_left", "{}"),
]


def _cells(row: dict[str, Any], with_pld: bool) -> list[str]:
    out = []
    for name, key, fmt in _COLUMNS:
        if name == "eps_pld" and not with_pld:
            continue
        if key is None:
            out.append(f"[{row['prv_lower']:.3f}, {row['prv']:.3f}]")
        elif row[key] is None:
            out.append("-")
        elif key == "rounds_left" and row[key] >= MAX_ROUNDS_LEFT:
            out.append(f">={MAX_ROUNDS_LEFT}")
        else:
            out.append(fmt.format(row[key]))
    return out


def render(report: dict[str, Any], fmt: str) -> str:
    """The report as ``json``, a plain-text ``table`` or a Markdown (``md``) table."""
    if fmt == "json":
        return json.dumps(report, indent=2)
    with_pld = any(r["pld"] is not None for r in report["subjects"])
    head = [n for n, _, _ in _COLUMNS if with_pld or n != "eps_pld"]
    body = [_cells(r, with_pld) for r in report["subjects"]]
    budget = "none" if report["budget"] is None else f"{report['budget']:g}"
    lines = [
        f"ledger {report['ledger']}: {report['entries']} entries, chain verified; delta {report['delta']:g}, "
        f"budget {budget} ({report['accountant']})",
    ]
    if fmt == "md":
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
    else:
        widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)] if body else [len(h) for h in head]
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    lines.append("")
    names = {"sample": "sample-level (any record; max over clients)", "client": "client-level (any client; federation)"}
    for level, o in report["overall"].items():
        left = "" if o["remaining"] is None else f", remaining {o['remaining']:.3f}, rounds left {o['rounds_left']}"
        pld = "" if o["pld"] is None else f", PLD {o['pld']:.3f}"
        lines.append(
            f"overall {names[level]}: epsilon {o['epsilon']:.3f} ({report['accountant']}; PRV <= {o['prv']:.3f}, "
            f"RDP {o['rdp']:.3f}{pld}) at delta {report['delta']:g}{left}"
        )
    if not report["overall"]:
        lines.append("no DP mechanism recorded: no privacy spent")
    return "\n".join(lines)


def plot_budget(ledger: PrivacyLedger, path: str | os.PathLike) -> None:
    """Cumulative epsilon (the ledger's accountant) of every subject over rounds."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for subject in ledger.subjects():
        pts = [(e["round"], e["epsilon"][ledger.accountant]) for e in ledger.entries if e["subject"] == subject]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=2.5, lw=1, label=subject)
    if ledger.budget is not None:
        ax.axhline(ledger.budget, color="k", ls="--", lw=1, label="budget")
    ax.set_xlabel("round")
    ax.set_ylabel(f"epsilon ({ledger.accountant}, delta={ledger.delta:g})")
    ax.grid(alpha=0.3)
    if len(ledger.subjects()) <= 12:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------ command
FORMATS = ("table", "json", "md")


def run(ns: argparse.Namespace) -> int:
    if ns.format not in FORMATS:
        raise ConfigValueError("format", ns.format, f"must be one of {', '.join(FORMATS)}")
    if ns.delta is not None and not 0 < ns.delta < 1:
        raise ConfigValueError("delta", ns.delta, "must be in (0, 1)")
    ledger = PrivacyLedger.load(ns.ledger)
    report = budget_report(ledger, delta=ns.delta, pld=ns.pld)
    print(render(report, ns.format))
    if ns.plot is not None:
        plot_budget(ledger, ns.plot)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "budget",
        help="privacy spend per client and overall from a ledger (PRV, RDP, optional PLD)",
        description="Verify a ledger and report epsilon per subject under PRV (with error bounds), RDP and "
        "optionally PLD, the remaining budget and rounds left. Exit 1: ledger rejected; exit 2: usage error.",
    )
    p.add_argument("ledger", type=Path, help="ledger.json written by securefl train")
    p.add_argument("--delta", type=float, default=None, help="report at this delta (the ledger's)")
    p.add_argument("--format", default="table", help="table | json | md (table)")
    p.add_argument("--pld", action="store_true", help="also compute the PLD accountant of dp_accounting")
    p.add_argument("--plot", type=Path, default=None, help="write epsilon over rounds to this PNG")
    p.set_defaults(handler=run)
