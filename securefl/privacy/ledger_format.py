"""The ledger's file format (version 2): its fields, and the checks every header
and entry passes on load and before it is recorded. See :mod:`securefl.privacy.ledger`."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from securefl.exceptions import LedgerError
from securefl.privacy.events import Mechanism
from securefl.validators import is_int, is_number

FORMAT = "securefl-ledger"
VERSION = 2
GENESIS_TAG = b"securefl-ledger-v2"
MECHANISMS = tuple(m.value for m in Mechanism)
ACCOUNTANTS = ("prv", "rdp")
DEFAULT_DELTA = 1e-5
#: header fields that decide privacy: bound by the genesis hash and repeated in every entry
BOUND_FIELDS = ("delta", "budget", "accountant")
HEADER_FIELDS = frozenset({"format", "version", *BOUND_FIELDS, "entries"})
EPSILON_FIELDS = frozenset({"prv", "prv_lower", "prv_estimate", "rdp"})
ENTRY_FIELDS = frozenset(
    {"seq", "subject", "round", "mechanism", "noise_multiplier", "sample_rate", "steps",
     *BOUND_FIELDS, "epsilon", "time", "prev", "hash"}
)  # fmt: skip
#: a noise multiplier is 0 (no noise: infinite epsilon) or in this range (outside it
#: the accountants' arithmetic under- or overflows)
NOISE_MULTIPLIER_RANGE = (1e-6, 1e6)
MAX_STEPS = 10**9  #: per entry


def as_int(value: Any) -> Any:
    """An integer-like value (numpy integer, integral float) as an int; anything else unchanged."""
    if isinstance(value, bool):
        return value
    if hasattr(value, "__index__"):
        return operator.index(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def as_float(value: Any) -> Any:
    """A real number (numpy scalars included) as a float; anything else unchanged."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    try:
        return float(value)
    except OverflowError:
        return math.inf


def real(value: Any) -> float | None:
    """``value`` as a float if it is a JSON number (not a bool), else None."""
    if not is_number(value):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        return math.inf


def header_problem(delta: Any, budget: Any, accountant: Any) -> tuple[str, Any, str] | None:
    """``(field, value, reason)`` for the first invalid header value, or None."""
    d = real(delta)
    if d is None or not math.isfinite(d) or not 0 < d < 1:
        return "delta", delta, "must be a finite number in (0, 1)"
    if budget is not None:
        b = real(budget)
        if b is None or not math.isfinite(b) or b <= 0:
            return "budget", budget, "must be a finite number > 0 or null"
    if accountant not in ACCOUNTANTS:
        return "accountant", accountant, f"must be one of {', '.join(ACCOUNTANTS)}"
    return None


def run_problem(subject: Any, round: Any, mechanism: Any, noise_multiplier: Any, sample_rate: Any,
                 steps: Any) -> tuple[str, Any, str] | None:
    """``(field, value, reason)`` for the first invalid mechanism-run field, or None."""
    if not isinstance(subject, str) or not subject:
        return "subject", subject, "must be a non-empty string"
    if not is_int(round):
        return "round", round, "must be an integer"
    if mechanism not in MECHANISMS:
        return "mechanism", mechanism, f"must be one of {', '.join(MECHANISMS)}"
    z = real(noise_multiplier)
    lo, hi = NOISE_MULTIPLIER_RANGE
    if z is None or not (z == 0 or lo <= z <= hi):
        return "noise_multiplier", noise_multiplier, f"must be 0 or a number in [{lo:g}, {hi:g}]"
    q = real(sample_rate)
    if q is None or not 0 < q <= 1:
        return "sample_rate", sample_rate, "must be a number in (0, 1]"
    if not is_int(steps) or not 1 <= steps <= MAX_STEPS:
        return "steps", steps, f"must be an integer in [1, {MAX_STEPS}]"
    return None


def check_entry(i: int, entry: Any) -> None:
    """Raise :class:`LedgerError` naming the first missing, extra or invalid field of entry ``i``."""
    if not isinstance(entry, dict):
        raise LedgerError(f"entry {i}: not an object")
    missing, extra = ENTRY_FIELDS - entry.keys(), entry.keys() - ENTRY_FIELDS
    if missing or extra:
        what = f"missing field {sorted(missing)[0]!r}" if missing else f"unexpected field {sorted(extra)[0]!r}"
        raise LedgerError(f"entry {i}: {what}")
    if isinstance(entry["seq"], bool) or entry["seq"] != i:
        raise LedgerError(f"entry {i}: sequence number {entry['seq']!r} out of order")
    for name in ("prev", "hash"):
        if not isinstance(entry[name], str):
            raise LedgerError(f"entry {i}: field {name!r} must be a hex digest, got {entry[name]!r}")
    run = ("subject", "round", "mechanism", "noise_multiplier", "sample_rate", "steps")
    bad = run_problem(*(entry[k] for k in run))
    if bad is None:
        bad = header_problem(entry["delta"], entry["budget"], entry["accountant"])
    if bad is None:
        t = real(entry["time"])
        if t is None or not math.isfinite(t):
            bad = ("time", entry["time"], "must be a finite number")
    if bad is None:
        eps = entry["epsilon"]
        if not isinstance(eps, dict) or eps.keys() != EPSILON_FIELDS:
            bad = ("epsilon", eps, f"must be an object with exactly {', '.join(sorted(EPSILON_FIELDS))}")
        else:
            for key in sorted(EPSILON_FIELDS):
                # +inf is the honest epsilon of a noiseless run (it only over-states spend); NaN is not
                v = real(eps[key])
                if v is None or math.isnan(v) or v < 0:
                    bad = (f"epsilon.{key}", eps[key], "must be a number >= 0")
                    break
    if bad is not None:
        field, value, reason = bad
        raise LedgerError(f"entry {i}: field {field!r} {reason}, got {value!r}")
