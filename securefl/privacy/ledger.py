"""The privacy ledger: who spent what, under which mechanism, persisted before use.

Each entry records one run of a DP mechanism for one *subject* (a client for
sample-level DP-SGD, ``"federation"`` for client-level DP-FedAvg): its noise
multiplier, sampling rate and number of steps, plus the subject's cumulative
epsilon after it under PRV (with error bounds) and RDP.

Entries are written *before* the mechanism's output leaves its owner, with an
atomic write (temp file, fsync, rename), so a crash can only over-count spent
budget, never lose it. Entries form a SHA-256 hash chain; loading verifies the
chain and that no subject's epsilon ever goes down.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from securefl._io import atomic_write_json
from securefl.exceptions import BudgetExhaustedError, LedgerError
from securefl.privacy import accounting

FORMAT = "securefl-ledger"
VERSION = 1
GENESIS = hashlib.sha256(b"securefl-ledger-v1").hexdigest()
MECHANISMS = ("dp-sgd", "dp-fedavg")
_BUDGET_SLACK = 1e-9


def _entry_hash(prev: str, body: dict[str, Any]) -> str:
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(prev.encode() + canon).hexdigest()


class PrivacyLedger:
    """An append-only, hash-chained record of privacy spend.

    ``path=None`` keeps the ledger in memory (tests, dry runs). ``budget`` is the
    epsilon no subject may exceed under ``accountant`` at ``delta``.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        delta: float = 1e-5,
        budget: float | None = None,
        accountant: str = "prv",
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.delta = float(delta)
        self.budget = None if budget is None else float(budget)
        self.accountant = accountant
        self.entries: list[dict[str, Any]] = []
        if self.path is not None and self.path.exists():
            other = PrivacyLedger.load(self.path)
            if other.delta != self.delta:
                raise LedgerError(f"{self.path}: ledger delta {other.delta} differs from {self.delta}")
            self.entries = other.entries
            if self.budget is None:
                self.budget = other.budget

    # --------------------------------------------------------------- queries
    def subjects(self) -> list[str]:
        seen: dict[str, None] = {}
        for e in self.entries:
            seen.setdefault(e["subject"], None)
        return list(seen)

    def history(self, subject: str) -> accounting.History:
        return accounting.normalize(
            (e["noise_multiplier"], e["sample_rate"], e["steps"])
            for e in self.entries
            if e["subject"] == subject
        )

    def spent(self, subject: str) -> accounting.EpsilonReport:
        return accounting.epsilon(self.history(subject), self.delta)

    def would_spend(self, subject: str, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon of ``subject`` (under the ledger's accountant) if one more
        mechanism run with these parameters were recorded."""
        h = self.history(subject) + ((float(noise_multiplier), float(sample_rate), int(steps)),)
        return accounting.epsilon_under(self.accountant, h, self.delta)

    def check_budget(self, subject: str, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Raise :class:`BudgetExhaustedError` if the run would exceed the budget."""
        would_be = self.would_spend(subject, noise_multiplier, sample_rate, steps)
        if self.budget is not None and would_be > self.budget * (1 + _BUDGET_SLACK):
            spent = accounting.epsilon_under(self.accountant, self.history(subject), self.delta)
            raise BudgetExhaustedError(subject, spent, would_be, self.budget)
        return would_be

    # --------------------------------------------------------------- writes
    def record(
        self,
        *,
        subject: str,
        round: int,
        mechanism: str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        enforce_budget: bool = True,
    ) -> dict[str, Any]:
        """Append one mechanism run and persist the ledger before returning."""
        if mechanism not in MECHANISMS:
            raise LedgerError(f"unknown mechanism {mechanism!r}")
        if enforce_budget:
            self.check_budget(subject, noise_multiplier, sample_rate, steps)
        history = self.history(subject) + ((float(noise_multiplier), float(sample_rate), int(steps)),)
        report = accounting.epsilon(history, self.delta)
        body = {
            "seq": len(self.entries),
            "subject": str(subject),
            "round": int(round),
            "mechanism": mechanism,
            "noise_multiplier": float(noise_multiplier),
            "sample_rate": float(sample_rate),
            "steps": int(steps),
            "delta": self.delta,
            "epsilon": report.as_dict(),
            "time": round_time(),
        }
        prev = self.entries[-1]["hash"] if self.entries else GENESIS
        entry = {**body, "prev": prev, "hash": _entry_hash(prev, body)}
        self.entries.append(entry)
        self.save()
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

    def save(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self.to_dict())

    # --------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike) -> "PrivacyLedger":
        """Load and verify a ledger; raise :class:`LedgerError` if anything is off."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise LedgerError(f"{path}: cannot read ledger: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LedgerError(f"{path}: not a securefl ledger")
        if data.get("version") != VERSION:
            raise LedgerError(f"{path}: unsupported ledger version {data.get('version')!r}")
        delta, budget, accountant = data.get("delta"), data.get("budget"), data.get("accountant", "prv")
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
            raise LedgerError(f"{path}: ledger delta must be a number in (0, 1), got {delta!r}")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))):
            raise LedgerError(f"{path}: ledger budget must be a number or null, got {budget!r}")
        if accountant not in ("prv", "rdp"):
            raise LedgerError(f"{path}: ledger accountant must be prv or rdp, got {accountant!r}")
        entries = data.get("entries", [])
        if not isinstance(entries, list):
            raise LedgerError(f"{path}: ledger entries must be a list, got {type(entries).__name__}")
        ledger = cls(None, delta=delta, budget=budget, accountant=accountant)
        ledger.path = path
        ledger.entries = list(entries)
        ledger.verify()
        return ledger

    def verify(self) -> None:
        """Check the hash chain, sequence numbers and per-subject monotone epsilon."""
        prev = GENESIS
        last_eps: dict[str, float] = {}
        for i, entry in enumerate(self.entries):
            if not isinstance(entry, dict):
                raise LedgerError(f"entry {i}: not an object")
            body = {k: v for k, v in entry.items() if k not in ("prev", "hash")}
            if entry.get("seq") != i:
                raise LedgerError(f"entry {i}: sequence number {entry.get('seq')!r} out of order")
            if entry.get("prev") != prev or entry.get("hash") != _entry_hash(prev, body):
                raise LedgerError(f"entry {i}: hash chain broken (entry altered, removed or reordered)")
            try:
                eps = float(entry["epsilon"][self.accountant])
                subject = entry["subject"]
            except (KeyError, TypeError, ValueError) as exc:
                raise LedgerError(f"entry {i}: missing field {exc}") from exc
            if eps + 1e-9 < last_eps.get(subject, 0.0):
                raise LedgerError(f"entry {i}: epsilon of {subject} went down ({last_eps[subject]} -> {eps})")
            last_eps[subject] = eps
            prev = entry["hash"]


def round_time() -> float:
    return round(time.time(), 3)
