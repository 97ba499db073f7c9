"""How the server turns one round's contributions into the update it applies.

A protection yields what the server may learn of a round (the sum of weighted
updates, the summed counters, and the individual updates only where it sees
them: :class:`securefl.protections.base.AggregateInput`). A
:class:`RoundAggregation` turns that into one update:

* :class:`PlainAggregation`: FedAvg (``total / sum of weights``) or, where the
  individual updates are visible, the bound robust rule;
* :class:`securefl.aggregation.dp.DPFedAvg`: client-level DP as a wrapper around a
  sum-compatible aggregation, as Flower's DP strategies wrap a strategy.

The server calls every aggregation the same way each round: :meth:`~RoundAggregation.charge`
before anything is released, :meth:`~RoundAggregation.aggregate` on what the
protection returned, and :meth:`~RoundAggregation.header` for what the next
GLOBAL_MODEL message tells the clients.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch

from securefl.aggregation import SUM_COMPATIBLE, BoundAggregator

__all__ = ["Contributions", "PlainAggregation", "RoundAggregation"]

#: what a rule needs from the server besides the updates, computed on demand
Context = Callable[[], dict[str, Any]]


class Contributions(Protocol):
    """What the server learns of a round (:class:`securefl.protections.base.AggregateInput`)."""

    total: torch.Tensor
    aux: dict[str, float]
    count: int
    individual: list[tuple[torch.Tensor, float]] | None
    stats: dict[str, Any]


class RoundAggregation:
    """The round's aggregation; subclasses override :meth:`aggregate` and, where
    they charge a privacy cost or tell clients something, the other hooks."""

    #: the client-level clip announced to clients this round (None: no client-level DP)
    clip: float | None = None
    #: the round's participant count is private (client-level DP) and must not be published
    hides_participants: bool = False
    #: the bound rule the updates are combined with
    rule: BoundAggregator

    def header(self) -> dict[str, Any]:
        """What the GLOBAL_MODEL header adds for the clients."""
        return {}

    def charge(self, round_: int) -> tuple[float | None, float | None]:
        """Record the round's privacy cost before anything is released; returns the
        epsilon spent so far under the run's accountant and under RDP (None: no DP)."""
        return None, None

    def aggregate(self, contributions: Contributions | None, dim: int, context: Context) -> torch.Tensor | None:
        """The update of the round, or None if there is nothing to apply."""
        raise NotImplementedError


class PlainAggregation(RoundAggregation):
    """FedAvg over the weighted sum, or a robust rule over the visible updates."""

    def __init__(self, rule: BoundAggregator) -> None:
        self.rule = rule
        self.name = rule.name

    @property
    def sum_compatible(self) -> bool:
        """Whether the rule works from the weighted sum alone (usable under a protection)."""
        return self.name in SUM_COMPATIBLE

    def aggregate(self, contributions: Contributions | None, dim: int, context: Context) -> torch.Tensor | None:
        c = contributions
        if c is None or not c.count:
            return None
        if c.individual is not None and not self.sum_compatible:
            stack = torch.stack([u for u, _ in c.individual])
            weights = torch.tensor([w for _, w in c.individual])
            return self.rule(stack, weights, **context())
        return c.total / c.aux["weight"]
