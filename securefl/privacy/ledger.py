"""The privacy ledger: who spent what, under which mechanism, persisted before use.

Each entry records one run of a DP mechanism for one *subject* (a client for
sample-level DP-SGD, ``"federation"`` for client-level DP-FedAvg): its noise
multiplier, sampling rate and number of steps, plus the subject's cumulative
epsilon after it under PRV (with error bounds) and RDP.

Entries are written *before* the mechanism's output leaves its owner's process,
with an atomic write (temp file, fsync, rename): at every record, or at ``sync()``
under ``durability="deferred"`` (see :class:`PrivacyLedger`). A crash can only
over-count spent budget, never lose a spend whose output was seen. Entries form a
SHA-256 hash chain; loading verifies the chain and that no subject's epsilon ever goes down.

Format version 2 binds every field that drives a privacy decision into the
chain: the genesis hash is derived from the header's ``delta``, ``budget`` and
``accountant``, and every entry body repeats them, so editing any of them in the
file is detected and named. Every field is also validated on load (finite, in
range; :mod:`securefl.privacy.ledger_format`). The chain is unkeyed: it detects edits, not a forger who rewrites the
whole file and recomputes every hash (``audit budget`` recomputes epsilons from
the recorded runs, which catches forged epsilons but not a forged budget).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from securefl._io import atomic_write_bytes, serialized
from securefl.exceptions import AccountingError, BudgetExhaustedError, ConfigValueError, LedgerError
from securefl.privacy import accounting
from securefl.privacy.events import Mechanism
from securefl.privacy.ledger_format import BOUND_FIELDS, DEFAULT_DELTA, FORMAT, GENESIS_TAG, HEADER_FIELDS, VERSION
from securefl.privacy.ledger_format import as_float, as_int, check_entry, header_problem, real, run_problem

#: when :meth:`PrivacyLedger.record` persists: at once, or at :meth:`PrivacyLedger.sync`
DURABILITY = ("record", "deferred")
#: the PRV accountant is not run on a grid larger than this (segments x points;
#: about 200 bytes and 1 microsecond per point)
MAX_PRV_GRID_POINTS = 2**24
BUDGET_SLACK = 1e-9


def _entry_hash(prev: str, body: dict[str, Any]) -> str:
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(prev.encode() + canon).hexdigest()


def genesis(delta: float, budget: float | None, accountant: str) -> str:
    """The ``prev`` of entry 0: a hash of the header fields that drive privacy decisions."""
    header = {"delta": float(delta), "budget": None if budget is None else float(budget), "accountant": accountant}
    return hashlib.sha256(GENESIS_TAG + json.dumps(header, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def prv_grid_points(history: Iterable[tuple[float, float, int]], delta: float, eps_error: float = 0.01) -> float:
    """Grid points :func:`securefl.privacy.accounting.prv_epsilon` allocates for ``history``
    at ``delta`` (segments x :func:`~securefl.privacy.accounting.prv_grid` size), cached."""
    h = accounting.normalize(history)
    if not h or any(sigma == 0 for sigma, _, _ in h):
        return 0.0  # answered without a grid
    try:
        points = float(len(h) * accounting.prv_grid(h, eps_error, delta / 1000).size)  # nothing allocated
    except (ArithmeticError, ValueError, RuntimeError):
        return math.inf
    return points if math.isfinite(points) else math.inf


def check_prv_cost(history: Iterable[tuple[float, float, int]], delta: float, what: str) -> None:
    """Raise :class:`AccountingError` if PRV accounting of ``history`` needs more
    than :data:`MAX_PRV_GRID_POINTS` grid points."""
    points = prv_grid_points(history, delta)
    if points > MAX_PRV_GRID_POINTS:
        raise AccountingError(
            f"{what}: PRV accounting would need {points:.3g} grid points, above the limit {MAX_PRV_GRID_POINTS} "
            f"(history {accounting.normalize(history)[-3:]} at delta {delta:g})"
        )


class PrivacyLedger:
    """An append-only, hash-chained record of privacy spend.

    ``path=None`` keeps the ledger in memory (tests, dry runs). ``budget`` is the
    epsilon no subject may exceed under ``accountant`` at ``delta``. Over an
    existing file with entries, the values its chain binds are used; a different
    ``delta``, ``budget`` or ``accountant`` given here is refused (one left None
    is taken from the file). ``delta``, ``budget`` and ``accountant`` are read-only.

    Durability: a spend is on disk before the output it pays for leaves the process.
    ``durability="record"`` (default; e.g. a Flower client, whose update leaves over
    the network right after) writes the file in every :meth:`record`. ``"deferred"``
    appends in memory (same entries, hash chain and budget checks) and writes at
    :meth:`sync`, which its owner calls before any output of the recorded runs leaves
    the process (written, printed, sent, handed to a callback) and when it stops: a
    process killed unsynced loses only spends whose outputs never left it (the
    in-process simulation syncs after every round and when a round is interrupted).
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        delta: float | None = None,
        budget: float | None = None,
        accountant: str | None = None,
        durability: str = "record",
    ) -> None:
        if durability not in DURABILITY:
            raise ConfigValueError("durability", durability, f"must be one of {', '.join(DURABILITY)}")
        self._lock = threading.RLock()
        self.durability, self._dirty = durability, False
        self.path = Path(path) if path is not None else None
        self.entries: list[dict[str, Any]] = []
        given = {"delta": delta, "budget": budget, "accountant": accountant}
        bad = header_problem(
            DEFAULT_DELTA if delta is None else delta, budget, "prv" if accountant is None else accountant
        )
        if bad is not None:
            raise ConfigValueError(*bad)
        if self.path is not None and self.path.exists():
            other = PrivacyLedger.load(self.path)
            if other.entries:
                for field, value in given.items():
                    bound = getattr(other, field)
                    if value is not None and (float(value) if field != "accountant" else value) != bound:
                        raise LedgerError(
                            f"{self.path}: ledger field {field!r} is bound to {bound!r} by its hash chain; "
                            f"this run asks for {value!r} (start a new ledger to change it)"
                        )
            delta = other.delta if delta is None else delta
            budget = other.budget if budget is None else budget
            accountant = other.accountant if accountant is None else accountant
            self.entries = other.entries
        delta = DEFAULT_DELTA if delta is None else delta
        accountant = "prv" if accountant is None else accountant
        bad = header_problem(delta, budget, accountant)
        if bad is not None:
            raise ConfigValueError(*bad)
        self._delta = float(delta)
        self._budget = None if budget is None else float(budget)
        self._accountant = str(accountant)

    @property
    def delta(self) -> float:
        return self._delta

    @property
    def budget(self) -> float | None:
        return self._budget

    @property
    def accountant(self) -> str:
        return self._accountant

    @property
    def genesis(self) -> str:
        return genesis(self._delta, self._budget, self._accountant)

    # --------------------------------------------------------------- queries
    def subjects(self) -> list[str]:
        seen: dict[str, None] = {}
        for e in self.entries:
            seen.setdefault(e["subject"], None)
        return list(seen)

    def history(self, subject: str) -> accounting.History:
        """``subject``'s normalized runs, from an index kept up to date with
        ``entries`` (appends are read incrementally; a replaced list is re-read)."""
        index = self.__dict__.get("_index")
        if index is None or index[0] is not self.entries or index[1] > len(self.entries):
            index = self._index = [self.entries, 0, {}]
        _, seen, by_subject = index
        for e in self.entries[seen:]:
            run = (e["noise_multiplier"], e["sample_rate"], e["steps"])
            by_subject[e["subject"]] = accounting.normalize(by_subject.get(e["subject"], ()) + (run,))
        index[1] = len(self.entries)
        return by_subject.get(subject, ())

    def spent(self, subject: str) -> accounting.EpsilonReport:
        return accounting.epsilon(self.history(subject), self.delta)

    def would_spend(self, subject: str, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon of ``subject`` (under the ledger's accountant) if one more
        mechanism run with these parameters were recorded."""
        return self._epsilon_after(subject, self.history(subject) + ((float(noise_multiplier), float(sample_rate), int(steps)),))

    def _epsilon_after(self, subject: str, history: accounting.History) -> float:
        """Epsilon of ``history`` (``subject``'s runs plus one) under the ledger's accountant."""
        if self.accountant == "prv":
            check_prv_cost(history, self.delta, subject)
        return accounting.epsilon_under(self.accountant, history, self.delta)

    def within_budget(self, eps: float) -> bool:
        """Whether ``eps`` (under the ledger's accountant) is allowed by the budget."""
        return self.budget is None or eps <= self.budget * (1 + BUDGET_SLACK)

    def check_budget(self, subject: str, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Raise :class:`BudgetExhaustedError` if the run would exceed the budget."""
        history = self.history(subject) + ((float(noise_multiplier), float(sample_rate), int(steps)),)
        return self._enforce(subject, history)

    def _enforce(self, subject: str, history: accounting.History) -> float:
        would_be = self._epsilon_after(subject, history)
        if not self.within_budget(would_be):
            spent = accounting.epsilon_under(self.accountant, self.history(subject), self.delta)
            raise BudgetExhaustedError(subject, spent, would_be, self.budget)
        return would_be

    # --------------------------------------------------------------- writes
    @serialized
    def record(
        self,
        *,
        subject: str,
        round: int,
        mechanism: Mechanism | str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        enforce_budget: bool = True,
    ) -> dict[str, Any]:
        """Append one mechanism run; persist the ledger before returning (``durability="record"``)
        or at the next :meth:`sync` (``"deferred"``)."""
        mechanism = mechanism.value if isinstance(mechanism, Mechanism) else mechanism
        # converted leniently (numpy scalars), then checked: float("x"), int(None) or
        # int(inf) never escape as TypeError, ValueError or OverflowError
        round, steps = as_int(round), as_int(steps)
        noise_multiplier, sample_rate = as_float(noise_multiplier), as_float(sample_rate)
        bad = run_problem(subject, round, mechanism, noise_multiplier, sample_rate, steps)
        if bad is not None:
            field, value, reason = bad
            raise LedgerError(f"cannot record {field}={value!r}: {reason}")
        run = {
            "subject": subject,
            "round": int(round),
            "mechanism": mechanism,
            "noise_multiplier": float(noise_multiplier),
            "sample_rate": float(sample_rate),
            "steps": int(steps),
        }
        history = self.history(subject) + ((run["noise_multiplier"], run["sample_rate"], run["steps"]),)
        if enforce_budget:
            self._enforce(subject, history)  # the enforcing accountant first (PRV: its cost checked)
        if not (enforce_budget and self.accountant == "prv"):
            check_prv_cost(history, self.delta, subject)
        report = accounting.epsilon(history, self.delta)  # the enforcing one's value is cached
        body = {
            "seq": len(self.entries),
            **run,
            "delta": self.delta,
            "budget": self.budget,
            "accountant": self.accountant,
            "epsilon": report.as_dict(),
            "time": round_time(),
        }
        prev = self.entries[-1]["hash"] if self.entries else self.genesis
        entry = {**body, "prev": prev, "hash": _entry_hash(prev, body)}
        self.entries.append(entry)
        if self.durability == "record":
            self.save()
        else:
            self._dirty = True
        return entry

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "delta": self.delta,
            "budget": self.budget,
            "accountant": self.accountant,
            "entries": self.entries,
        }

    @serialized
    def save(self) -> None:
        """Write the ledger atomically (:func:`securefl._io.atomic_write_bytes`), as
        ``json.dumps(self.to_dict(), indent=2)``; each entry is serialized once and
        its text reused while the entry (same object, same hash) is unchanged."""
        if self.path is not None:
            atomic_write_bytes(self.path, self.dumps().encode())
        self._dirty = False

    @serialized
    def sync(self) -> None:
        """Write the ledger if entries were recorded since the last write (no-op otherwise)."""
        if self._dirty:
            self.save()

    def dumps(self) -> str:
        """The file's text: byte for byte ``json.dumps(self.to_dict(), indent=2) + "\n"``."""
        data = self.to_dict()
        if not self.entries:
            return json.dumps(data, indent=2) + "\n"
        cache: dict[int, tuple[dict[str, Any], Any, str]] = self.__dict__.setdefault("_texts", {})
        texts = []
        for e in self.entries:
            hit = cache.get(id(e))
            if hit is None or hit[0] is not e or hit[1] != e.get("hash"):
                hit = cache[id(e)] = (e, e.get("hash"), "    " + json.dumps(e, indent=2).replace("\n", "\n    "))
            texts.append(hit[2])
        if len(cache) > 2 * len(self.entries):  # entries replaced: forget the old ones
            live = {id(e) for e in self.entries}
            self._texts = {k: v for k, v in cache.items() if k in live}
        head = json.dumps({**data, "entries": []}, indent=2)  # ends with '"entries": []\n}'
        return head[: -len("[]\n}")] + "[\n" + ",\n".join(texts) + "\n  ]\n}\n"

    # --------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike) -> "PrivacyLedger":
        """Load and verify a ledger; raise :class:`LedgerError` (one line naming
        the file and the offending field) if anything is off."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:
            raise LedgerError(f"{path}: cannot read ledger: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LedgerError(f"{path}: not a securefl ledger")
        version = data.get("version")
        if isinstance(version, bool):
            raise LedgerError(f"{path}: unsupported ledger version {version!r} (expected {VERSION})")
        if version == 1:
            raise LedgerError(
                f"{path}: unsupported ledger version 1; this securefl reads version {VERSION}, which binds "
                "delta, budget and accountant into the hash chain (rerun training to write a new ledger)"
            )
        if version != VERSION:
            raise LedgerError(f"{path}: unsupported ledger version {version!r} (expected {VERSION})")
        missing, extra = HEADER_FIELDS - data.keys(), data.keys() - HEADER_FIELDS
        if missing:
            raise LedgerError(f"{path}: ledger field {sorted(missing)[0]!r} is missing")
        if extra:
            raise LedgerError(f"{path}: unexpected ledger field {sorted(extra)[0]!r}")
        bad = header_problem(data["delta"], data["budget"], data["accountant"])
        if bad is not None:
            field, value, reason = bad
            raise LedgerError(f"{path}: ledger field {field!r} {reason}, got {value!r}")
        entries = data["entries"]
        if not isinstance(entries, list):
            raise LedgerError(f"{path}: ledger field 'entries' must be a list, got {type(entries).__name__}")
        ledger = cls(None, delta=data["delta"], budget=data["budget"], accountant=data["accountant"])
        ledger.path = path
        ledger.entries = list(entries)
        try:
            ledger.verify()
        except LedgerError as exc:
            raise LedgerError(f"{path}: {exc}") from None
        return ledger

    def verify(self) -> None:
        """Check every field, the hash chain, that the chain binds this ledger's
        ``delta``, ``budget`` and ``accountant``, and per-subject monotone epsilon."""
        for i, entry in enumerate(self.entries):
            check_entry(i, entry)
            body = {k: v for k, v in entry.items() if k not in ("prev", "hash")}
            linked = i == 0 or entry["prev"] == self.entries[i - 1]["hash"]
            if not linked or entry["hash"] != _entry_hash(entry["prev"], body):
                raise LedgerError(f"entry {i}: hash chain broken (entry altered, removed or reordered)")
        if self.entries:
            # the chain from entry 0 on is intact: entry 0 holds the values it binds
            first = self.entries[0]
            for field in BOUND_FIELDS:
                if getattr(self, field) != first[field]:
                    raise LedgerError(
                        f"ledger field {field!r} is {getattr(self, field)!r} but the hash chain binds {first[field]!r}"
                    )
            for i, entry in enumerate(self.entries):
                for field in BOUND_FIELDS:
                    if entry[field] != first[field]:
                        raise LedgerError(
                            f"entry {i}: field {field!r} is {entry[field]!r}, entry 0 binds {first[field]!r}"
                        )
            if first["prev"] != self.genesis:
                raise LedgerError("entry 0: hash chain broken (it does not start at this ledger's genesis)")
        last_eps: dict[str, float] = {}
        for i, entry in enumerate(self.entries):
            eps, subject = real(entry["epsilon"][self.accountant]), entry["subject"]  # checked by check_entry
            if eps + 1e-9 < last_eps.get(subject, 0.0):
                raise LedgerError(f"entry {i}: epsilon of {subject} went down ({last_eps[subject]} -> {eps})")
            last_eps[subject] = eps


def round_time() -> float:
    return round(time.time(), 3)
