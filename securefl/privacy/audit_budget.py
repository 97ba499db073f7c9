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
  last round's noise multiplier, sampling rate and steps), found in bounded time
  and memory whatever the ledger says (see :func:`rounds_left`); never more
  rounds than the ledger's accountant allows;
* a plot of epsilon over rounds.

Composition: a subject's runs compose sequentially. Sample-level DP-SGD
subjects are clients; each record belongs to one client, so the guarantee for
any record is the largest client epsilon (parallel composition over disjoint
data). Client-level DP-FedAvg is recorded for the subject ``"federation"`` and
is the guarantee for any whole client.

A ledger that cannot be read, has an invalid or out-of-range field, whose chain
is broken or does not bind its header (``delta``, ``budget``, ``accountant``),
whose epsilon goes down, or whose recorded epsilons do not match their own
history is rejected with :class:`~securefl.exceptions.LedgerError`; one whose
PRV accounting would exceed :data:`~securefl.privacy.ledger.MAX_PRV_GRID_POINTS`
with :class:`~securefl.exceptions.AccountingError` (``securefl`` exits with
status 1 and one line; usage errors such as a bad ``--delta`` exit with status 2).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from securefl.exceptions import ConfigValueError, LedgerError
from securefl.validators import is_number
from securefl.privacy import accounting
from securefl.privacy.accounting import pld_epsilon
from securefl.privacy.audit_render import plot_budget, render
from securefl.privacy.events import Mechanism
from securefl.privacy.ledger import (
    BUDGET_SLACK,
    MAX_PRV_GRID_POINTS,
    PrivacyLedger,
    check_prv_cost,
    prv_grid_points,
)

FEDERATION = "federation"
#: mechanism -> the unit of privacy it protects
LEVELS = {Mechanism.DP_SGD.value: "sample", Mechanism.DP_FEDAVG.value: "client"}
#: rounds-left searches stop here (reported as ">=MAX_ROUNDS_LEFT")
MAX_ROUNDS_LEFT = 10_000
#: PRV grid points one rounds-left probe may use (~0.5 s, ~130 MB), or 1.25x what
#: checking the very next round needs if that is more (a long run's audit already
#: needs it; at most MAX_PRV_GRID_POINTS)
SEARCH_GRID_POINTS = 2**19
#: PRV grid points one subject's rounds-left search may use in all (or 3 probes' worth)
SEARCH_GRID_BUDGET = 2**21
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
    rounds_left_at_least: bool  #: rounds_left is a lower bound (the search hit its round or cost cap)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RoundsLeft(NamedTuple):
    """Rounds that keep the ledger's accountant within budget; a lower bound when ``at_least``."""

    rounds: int
    at_least: bool


def _largest(fits: Callable[[int], bool], top: int) -> int:
    """Largest ``k`` in ``[0, top]`` with ``fits(k)`` (monotone; ``fits(0)`` assumed)."""
    if fits(top):
        return top
    lo, hi = 0, top
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def rounds_left(history: accounting.History, last: tuple[float, float, int], budget: float,
                delta: float, accountant: str) -> RoundsLeft:
    """How many more rounds like ``last`` keep ``accountant``'s epsilon within ``budget``,
    in bounded time and memory whatever the ledger says.

    The count is found under RDP first (a closed form: O(#orders) per probe), which is
    exact for an RDP ledger. Under PRV it only seeds the search: every count reported
    was itself evaluated under PRV (``rounds`` fits; exact answers also saw
    ``rounds + 1`` fail), so it is never more than the ledger's accountant allows.
    The search stops at :data:`MAX_ROUNDS_LEFT` rounds and at a PRV grid budget
    (:data:`SEARCH_GRID_POINTS` per probe, :data:`SEARCH_GRID_BUDGET` in all); it then
    reports the largest count confirmed so far with ``at_least=True``.
    """
    sigma, q, steps = last
    history = tuple(history)
    limit = budget * (1 + BUDGET_SLACK)  # as PrivacyLedger.check_budget

    def at(k: int) -> accounting.History:
        return accounting.normalize(history + ((sigma, q, steps * k),))

    r_rdp = _largest(lambda k: k == 0 or accounting.epsilon_under("rdp", at(k), delta) <= limit, MAX_ROUNDS_LEFT)
    if accountant == "rdp":
        return RoundsLeft(r_rdp, r_rdp >= MAX_ROUNDS_LEFT)

    # a history whose next round alone is costly (a long run) may still probe that far
    next_round = min(prv_grid_points(at(1), delta), MAX_PRV_GRID_POINTS)
    per_probe = min(MAX_PRV_GRID_POINTS, max(SEARCH_GRID_POINTS, 1.25 * next_round))
    allowance = max(SEARCH_GRID_BUDGET, 3 * per_probe)
    top = _largest(lambda k: k == 0 or prv_grid_points(at(k), delta) <= per_probe, MAX_ROUNDS_LEFT)
    lo, e_lo = 0, None  # largest count known to fit (0 trivially)
    hi, e_hi = top + 1, None  # smallest count known not to fit; top + 1: not probed
    guess, side, streak = min(max(r_rdp, 1), top), "", 0
    while top >= 1 and hi - lo > 1:
        cost = prv_grid_points(at(guess), delta)
        if cost > allowance:
            break
        allowance -= cost
        e = accounting.epsilon_under("prv", at(guess), delta)
        now = "lo" if e <= limit else "hi"
        streak, side = (streak + 1 if now == side else 1), now
        if now == "lo":
            lo, e_lo = guess, e
        else:
            hi, e_hi = guess, e
        if e_hi is None:  # nothing failed yet: go up
            guess = min(top, 2 * lo)
        elif e_lo is None or streak >= 2 or not math.isfinite(e_hi):  # bisect
            guess = (lo + hi) // 2
        else:  # secant through the bracket
            guess = lo + int((limit - e_lo) / (e_hi - e_lo) * (hi - lo))
        guess = min(max(guess, lo + 1), hi - 1)
    return RoundsLeft(lo, not (e_hi is not None and hi - lo == 1))


def _rdp_epsilon_of(rdp: np.ndarray, delta: float) -> float:
    """RDP epsilon of an accumulated RDP vector over :data:`accounting.RDP_ORDERS`."""
    from opacus.accountants.analysis import rdp as rdp_analysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(accounting.RDP_ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def _check_recorded(ledger: PrivacyLedger) -> None:
    """Every entry's recorded RDP epsilon must follow from the subject's history so
    far (a forged but re-chained ledger fails here). Linear in the entries: each
    subject's RDP vector is accumulated, not recomposed."""
    rdp: dict[str, np.ndarray] = {}
    noiseless: set[str] = set()  # a run with noise multiplier 0: epsilon is infinite from then on
    for i, e in enumerate(ledger.entries):  # fields validated by ledger.verify()
        subject, mechanism = e["subject"], e["mechanism"]
        if mechanism not in LEVELS:
            raise LedgerError(f"entry {i}: unknown mechanism {mechanism!r}")
        if (mechanism == Mechanism.DP_FEDAVG) != (subject == FEDERATION):
            raise LedgerError(f"entry {i}: mechanism {mechanism} recorded for subject {subject!r}")
        if e["delta"] != ledger.delta:
            raise LedgerError(f"entry {i}: delta {e['delta']!r} differs from the ledger's {ledger.delta}")
        sigma, q, steps = float(e["noise_multiplier"]), float(e["sample_rate"]), int(e["steps"])
        try:
            if sigma == 0:
                noiseless.add(subject)
            else:
                with np.errstate(over="ignore"):
                    step = steps * accounting._rdp_one_step(sigma, q, accounting.RDP_ORDERS)
                rdp[subject] = rdp[subject] + step if subject in rdp else step
            want = math.inf if subject in noiseless else _rdp_epsilon_of(rdp[subject], ledger.delta)
        except (ArithmeticError, ValueError) as exc:
            raise LedgerError(f"entry {i}: invalid mechanism parameters: {exc}") from exc
        claimed = float(e["epsilon"]["rdp"])
        if not math.isclose(claimed, want, rel_tol=_REL_TOL, abs_tol=1e-12):
            raise LedgerError(
                f"entry {i}: recorded epsilon (rdp) {claimed:.6g} of {subject} does not follow from its "
                f"history (recomputed {want:.6g})"
            )


def budget_report(ledger: PrivacyLedger, *, delta: float | None = None, pld: bool = False) -> dict[str, Any]:
    """Per-subject and overall spend of a verified ledger, at ``delta`` (the
    ledger's own by default). Raises :class:`LedgerError` for an inconsistent ledger."""
    ledger.verify()
    _check_recorded(ledger)
    d = ledger.delta if delta is None else delta
    if not is_number(d) or not 0 < d < 1:
        raise ConfigValueError("delta", d, "must be in (0, 1)")
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for e in ledger.entries:
        by_subject.setdefault(e["subject"], []).append(e)
    rows = [_subject_budget(ledger, subject, entries, d, pld) for subject, entries in by_subject.items()]
    overall = {level: _overall(mine, ledger, pld) for level in ("sample", "client") if (mine := [r for r in rows if r.level == level])}
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


def _subject_budget(
    ledger: PrivacyLedger, subject: str, entries: list[dict[str, Any]], d: float, pld: bool
) -> SubjectBudget:
    """One subject's spend at ``d``, its recorded epsilon checked against its history."""
    history = accounting.normalize((e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries)
    last_entry = entries[-1]
    check_prv_cost(history, d, subject)
    report = accounting.epsilon(history, d)
    recorded = float(last_entry["epsilon"][ledger.accountant])
    if d == ledger.delta:
        again = report.get(ledger.accountant)
        if ledger.accountant == "prv" and not math.isclose(again, recorded, rel_tol=_REL_TOL, abs_tol=1e-12):
            again = accounting.prv_epsilon(history, d, exact=True)[2]  # a ledger from before the shared grids
        if not math.isclose(again, recorded, rel_tol=_REL_TOL, abs_tol=1e-12):
            raise LedgerError(
                f"{subject}: recorded epsilon ({ledger.accountant}) {recorded:.6g} does not follow from its "
                f"history (recomputed {again:.6g})"
            )
    budget = ledger.budget  # a budget is set at the ledger's delta: remaining and rounds left use it
    last = (float(last_entry["noise_multiplier"]), float(last_entry["sample_rate"]), int(last_entry["steps"]))
    left = None if budget is None else rounds_left(history, last, budget, ledger.delta, ledger.accountant)
    return SubjectBudget(
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
        rounds_left=None if left is None else left.rounds,
        rounds_left_at_least=left is not None and left.at_least,
    )


def _overall(mine: list[SubjectBudget], ledger: PrivacyLedger, pld: bool) -> dict[str, Any]:
    """The guarantee of one privacy level: the worst of its subjects."""
    worst = max(mine, key=lambda r: getattr(r, ledger.accountant))
    fewest = None if ledger.budget is None else min(r.rounds_left for r in mine)
    return {
        "subject": worst.subject,
        "epsilon": getattr(worst, ledger.accountant),
        "prv": max(r.prv for r in mine),
        "prv_lower": max(r.prv_lower for r in mine),
        "rdp": max(r.rdp for r in mine),
        "pld": max(r.pld for r in mine) if pld else None,
        "remaining": None if ledger.budget is None else min(r.remaining for r in mine),
        "rounds_left": fewest,
        # exact if any subject with the fewest rounds left is exact
        "rounds_left_at_least": fewest is not None and all(r.rounds_left_at_least for r in mine if r.rounds_left == fewest),
        "subjects": len(mine),
    }


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
