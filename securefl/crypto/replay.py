"""A client's memory of the rounds it has answered, kept across restarts.

A malicious server that can rerun an old round number can ask the same client the
same question twice, once with and once without a victim in the cohort, and
subtract the two sums. A :class:`RoundGuard` makes every privacy-relevant answer
strictly monotone in the round number, per stage (``"fit"``, ``"ckks-decrypt"``,
``"secagg-advertise"``, ...): :meth:`RoundGuard.advance` refuses a round at or
below the last one answered at that stage and persists the new value *before* the
answer is computed (temp file, fsync, rename), so a crash can only make the client
refuse more, never answer twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from securefl._io import atomic_write_json
from securefl.exceptions import ConfigValueError, ReplayError
from securefl.validators import is_int

_FORMAT = "securefl-client-rounds"


class RoundGuard:
    """Last round answered per stage; ``path=None`` keeps it in memory only."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._last: dict[str, int] = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if data.get("format") != _FORMAT:
                    raise ValueError("wrong format")
                last = data["last"]
                if not isinstance(last, dict) or not all(
                    is_int(v) for v in last.values()
                ):
                    raise ValueError("last must map stages to integers")
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                # refusing to start beats forgetting which rounds were answered
                raise ConfigValueError("round_state", str(self.path), f"unreadable client round state ({exc})") from None
            self._last = {str(k): int(v) for k, v in last.items()}

    def last(self, stage: str) -> int | None:
        """The last round answered at ``stage`` (None if never)."""
        return self._last.get(stage)

    def highest(self) -> int | None:
        """The highest round answered at any stage (None if none)."""
        return max(self._last.values(), default=None)

    def advance(self, stage: str, round_: int) -> None:
        """Record that ``round_`` is being answered at ``stage``, or raise
        :class:`ReplayError` if it is not above the last one."""
        if not is_int(round_) or round_ < 1:
            raise ReplayError(f"{stage}: round must be a positive integer, got {round_!r}")
        last = self._last.get(stage)
        if last is not None and round_ <= last:
            raise ReplayError(f"{stage}: round {round_} is not after round {last}, the last one answered; refusing")
        self._last[stage] = round_
        if self.path is not None:
            atomic_write_json(self.path, {"format": _FORMAT, "last": self._last})
