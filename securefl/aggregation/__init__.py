"""Aggregation rules as pure functions on stacked updates.

Every aggregator takes ``updates`` (a ``[K, d]`` tensor of individual client
updates) and ``weights`` (``[K]``, the clients' example counts) and returns one
``[d]`` update. They need to see individual updates, so they only apply where the
server does (``protect='none'``); under a protection the server receives only the
weighted sum, which is exactly :func:`weighted_mean`.

The robust rules live in :mod:`securefl.aggregation.robust`; their parameters come
from :class:`~securefl.config.ServerConfig` (:data:`AGGREGATOR_PARAMS`) and
:func:`make_aggregator` binds them, together with what a rule needs from the server
(:data:`AGGREGATOR_CONTEXT`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

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


from securefl.aggregation.robust import (  # noqa: E402  (robust rules build on the checks above)
    bulyan,
    centered_clipping,
    check_byzantine_bound,
    coordinate_median,
    fltrust,
    krum,
    min_clients,
    multikrum,
    norm_bound,
    trimmed_mean,
)

AGGREGATORS: dict[str, Aggregator] = {
    "mean": weighted_mean,
    "median": coordinate_median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multikrum": multikrum,
    "bulyan": bulyan,
    "centered_clipping": centered_clipping,
    "norm_bound": norm_bound,
    "fltrust": fltrust,
}

#: aggregators that work from the weighted sum alone (usable under protection)
SUM_COMPATIBLE = frozenset({"mean"})

#: the ServerConfig fields each aggregator takes as keyword arguments
AGGREGATOR_PARAMS: dict[str, tuple[str, ...]] = {
    "mean": (),
    "median": ("byzantine",),
    "trimmed_mean": ("trim_fraction", "byzantine"),
    "krum": ("byzantine",),
    "multikrum": ("byzantine", "krum_m"),
    "bulyan": ("byzantine",),
    "centered_clipping": ("clip_radius", "cc_iterations"),
    "norm_bound": ("clip_radius",),
    "fltrust": (),
}

#: what an aggregator needs from the server besides the updates:
#: ``reference`` = the server's own update on its root dataset (FLTrust);
#: ``previous`` = the aggregate the server applied last round (centered clipping)
AGGREGATOR_CONTEXT: dict[str, frozenset[str]] = {
    "centered_clipping": frozenset({"previous"}),
    "fltrust": frozenset({"reference"}),
}


@dataclass(frozen=True)
class BoundAggregator:
    """An aggregator with its parameters bound from a ServerConfig.

    ``needs`` names the round context it takes (see :data:`AGGREGATOR_CONTEXT`);
    the server passes exactly those as keywords when it calls it."""

    name: str
    fn: Callable[..., torch.Tensor]
    params: Mapping[str, Any]
    needs: frozenset[str] = frozenset()

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor, **context: Any) -> torch.Tensor:
        extra = set(context) - self.needs
        if extra:
            raise AggregationError(f"{self.name} takes no context {sorted(extra)}")
        return self.fn(updates, weights, **self.params, **context)


def make_aggregator(name: str, config: Any = None) -> BoundAggregator:
    """Bind the aggregator ``name`` to its parameters from ``config`` (a
    :class:`~securefl.config.ServerConfig`; defaults when None)."""
    if name not in AGGREGATORS:
        raise AggregationError(f"unknown aggregator {name!r}; known: {', '.join(sorted(AGGREGATORS))}")
    params = {p: getattr(config, p) for p in AGGREGATOR_PARAMS.get(name, ())} if config is not None else {}
    return BoundAggregator(name, AGGREGATORS[name], params, AGGREGATOR_CONTEXT.get(name, frozenset()))
