"""Staleness weights of buffered asynchronous aggregation (FedBuff: Nguyen et al.,
AISTATS 2022): how much an update computed on a model s server steps old counts.

Pure functions and a client-side policy; the server loop is :mod:`securefl.fedbuff`.
Every weight is 1 at s = 0 and never above 1, so scaling a clipped update by one
cannot grow its norm or any DP sensitivity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from securefl.config import ScheduleConfig
from securefl.exceptions import ProtocolError

__all__ = ["STALENESS_WEIGHTS", "StalenessPolicy"]

#: w(s) for an update s server steps stale; each is 1 at s = 0 and never above 1
STALENESS_WEIGHTS: dict[str, Callable[[int], float]] = {
    "sqrt": lambda s: 1.0 / math.sqrt(1.0 + s),  # FedBuff's choice
    "inverse": lambda s: 1.0 / (1.0 + s),
    "constant": lambda s: 1.0,
}


@dataclass(frozen=True)
class StalenessPolicy:
    """A client's own rule for stale work: refuse staleness above ``bound``, scale
    the released update by ``STALENESS_WEIGHTS[weight](s)`` (at most 1, so no
    sensitivity grows)."""

    weight: str = "sqrt"
    bound: int = 8

    def __post_init__(self) -> None:
        if self.weight not in STALENESS_WEIGHTS:
            raise ValueError(f"staleness weight {self.weight!r} is not one of {sorted(STALENESS_WEIGHTS)}")

    def factor(self, staleness: object) -> float:
        """w(s), after checking s is an integer in [0, bound] (ProtocolError otherwise)."""
        if isinstance(staleness, bool) or not isinstance(staleness, int):
            raise ProtocolError(f"staleness={staleness!r} must be an integer")
        if not 0 <= staleness <= self.bound:
            raise ProtocolError(f"staleness={staleness} is outside [0, {self.bound}]: this client refuses stale work")
        w = STALENESS_WEIGHTS[self.weight](staleness)
        if not 0.0 < w <= 1.0:  # a registry entry that amplified would grow the sensitivity
            raise ProtocolError(f"staleness weight {w!r} is not in (0, 1]")
        return w

    @classmethod
    def of(cls, schedule: ScheduleConfig) -> "StalenessPolicy | None":
        return cls(schedule.staleness_weight, schedule.max_staleness) if schedule.asynchronous else None
