"""Aggregation rules as pure functions on stacked updates.

Every aggregator takes ``updates`` (a ``[K, d]`` tensor of individual client
updates) and ``weights`` (``[K]``, the clients' example counts) and returns one
``[d]`` update. They need to see individual updates, so they only apply where the
server does (``protect='none'``); under a protection the server receives only the
weighted sum, which is exactly :func:`weighted_mean`.
"""

from __future__ import annotations

from typing import Callable

import torch

from securefl.exceptions import AggregationError

Aggregator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """FedAvg (McMahan et al. 2017): sum_k n_k u_k / sum_k n_k."""
    if updates.ndim != 2 or weights.shape != (updates.shape[0],):
        raise AggregationError(f"shape mismatch: updates {tuple(updates.shape)}, weights {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise AggregationError(f"weights must be finite and non-negative, got {weights.tolist()}")
    total = weights.sum()
    if updates.shape[0] == 0 or not total > 0:
        raise AggregationError("no weight to aggregate")
    return (weights.to(updates.dtype) @ updates) / total


AGGREGATORS: dict[str, Aggregator] = {"mean": weighted_mean}

#: aggregators that work from the weighted sum alone (usable under protection)
SUM_COMPATIBLE = frozenset({"mean"})
