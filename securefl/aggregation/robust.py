"""Byzantine-robust aggregation rules, as pure functions on a stack of updates.

Every rule takes ``updates`` (``[n, d]``, one row per client) and ``weights``
(``[n]``, the clients' example counts) plus its own keyword parameters, and
returns one ``[d]`` update. Rules that vote (median, trimmed mean, Krum and its
relatives, centered clipping, FLTrust) give every client one vote and ignore
``weights``: a self-reported example count is exactly what a Byzantine client
would inflate. Norm bounding keeps FedAvg's weights, since it is FedAvg with a
norm constraint.

``f`` is the number of Byzantine clients the rule is assumed to tolerate. The
rules' guarantees hold only under their preconditions on ``n`` (the clients
aggregated this round) and ``f``; :func:`check_byzantine_bound` states them and
each rule raises :class:`~securefl.exceptions.AggregationError` naming both
values when they do not hold, so a round with too few participants is aborted
instead of silently losing its guarantee.

All rules assume the honest updates are similar (IID-ish data); under strong
label skew honest clients look like outliers too, and the vote-based rules
(Krum above all) discard useful updates.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from securefl.exceptions import AggregationError

#: minimum n as a function of f for each rule that has one (the papers' bounds)
BYZANTINE_BOUNDS: dict[str, tuple[str, Callable[[int], int]]] = {
    "median": ("n >= 2f+1", lambda f: 2 * f + 1),
    "trimmed_mean": ("n >= 2f+1", lambda f: 2 * f + 1),
    "krum": ("n >= 2f+3", lambda f: 2 * f + 3),
    "multikrum": ("n >= 2f+3", lambda f: 2 * f + 3),
    "bulyan": ("n >= 4f+3", lambda f: 4 * f + 3),
}


def min_clients(name: str, f: int) -> int:
    """The smallest n the rule ``name`` accepts with ``f`` Byzantine clients (1 if none)."""
    return BYZANTINE_BOUNDS[name][1](f) if name in BYZANTINE_BOUNDS else 1


def check_byzantine_bound(name: str, n: int, f: int) -> None:
    """Raise :class:`AggregationError` unless ``n`` clients suffice for ``f`` under ``name``."""
    if f < 0:
        raise AggregationError(f"{name}: byzantine f must be >= 0, got f={f}")
    need = min_clients(name, f)
    if n < need:
        rule = BYZANTINE_BOUNDS[name][0]
        raise AggregationError(f"{name} needs {rule}: got n={n} updates with f={f} (need n >= {need})")


def _check(updates: torch.Tensor, weights: torch.Tensor) -> None:
    if updates.ndim != 2 or weights.shape != (updates.shape[0],):
        raise AggregationError(f"shape mismatch: updates {tuple(updates.shape)}, weights {tuple(weights.shape)}")
    if updates.shape[0] == 0:
        raise AggregationError("no updates to aggregate")
    if not torch.isfinite(updates).all():
        bad = int((~torch.isfinite(updates)).any(1).sum())
        raise AggregationError(f"{bad} of {updates.shape[0]} updates contain non-finite values")


def _norms(x: torch.Tensor) -> torch.Tensor:
    return x.double().norm(dim=1)


# ------------------------------------------------------------------ coordinate-wise
def coordinate_median(updates: torch.Tensor, weights: torch.Tensor, *, byzantine: int = 0) -> torch.Tensor:
    """Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett, ICML 2018).

    Tolerates f < n/2 per coordinate. For even n the mean of the two middle
    values is returned (torch's lower median would bias every coordinate)."""
    _check(updates, weights)
    check_byzantine_bound("median", updates.shape[0], byzantine)
    return updates.double().quantile(0.5, dim=0).to(updates.dtype)


def trimmed_mean(
    updates: torch.Tensor, weights: torch.Tensor, *, trim_fraction: float = 0.2, byzantine: int = 0
) -> torch.Tensor:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): per coordinate drop the
    ``b`` largest and ``b`` smallest values and average the rest, where
    ``b = max(ceil(trim_fraction * n), f)`` (so at least f are trimmed each side).
    Needs n > 2b."""
    _check(updates, weights)
    n = updates.shape[0]
    check_byzantine_bound("trimmed_mean", n, byzantine)
    if not 0.0 <= trim_fraction < 0.5:
        raise AggregationError(f"trimmed_mean: trim_fraction must be in [0, 0.5), got {trim_fraction}")
    b = max(math.ceil(trim_fraction * n - 1e-9), byzantine)
    if n - 2 * b < 1:
        raise AggregationError(f"trimmed_mean trims b={b} per side: needs n > 2b, got n={n}")
    s = updates.sort(dim=0).values
    return s[b : n - b].double().mean(0).to(updates.dtype)


# ------------------------------------------------------------------ Krum family
def _pairwise_sq(updates: torch.Tensor) -> torch.Tensor:
    x = updates.double()
    sq = (x * x).sum(1)
    d = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    return d.clamp_min(0.0)


def krum_scores(updates: torch.Tensor, byzantine: int) -> torch.Tensor:
    """Krum score of each update: sum of squared distances to its n-f-2 nearest
    neighbours (Blanchard et al., NeurIPS 2017)."""
    n = updates.shape[0]
    k = n - byzantine - 2
    d = _pairwise_sq(updates)
    d.fill_diagonal_(float("inf"))
    return d.sort(dim=1).values[:, :k].sum(1)


def krum(updates: torch.Tensor, weights: torch.Tensor, *, byzantine: int = 0) -> torch.Tensor:
    """Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017): the single
    update with the lowest score. Needs n >= 2f+3."""
    _check(updates, weights)
    check_byzantine_bound("krum", updates.shape[0], byzantine)
    return updates[int(krum_scores(updates, byzantine).argmin())].clone()


def multikrum(
    updates: torch.Tensor, weights: torch.Tensor, *, byzantine: int = 0, krum_m: int | None = None
) -> torch.Tensor:
    """Multi-Krum (Blanchard et al. 2017): average of the ``m`` updates with the lowest
    Krum scores; ``m`` defaults to n - f. Needs n >= 2f+3 and 1 <= m <= n."""
    _check(updates, weights)
    n = updates.shape[0]
    check_byzantine_bound("multikrum", n, byzantine)
    m = n - byzantine if krum_m is None else krum_m
    if not 1 <= m <= n:
        raise AggregationError(f"multikrum: krum_m must be in [1, n={n}], got {m}")
    chosen = krum_scores(updates, byzantine).argsort()[:m]
    return updates[chosen].double().mean(0).to(updates.dtype)


def bulyan(updates: torch.Tensor, weights: torch.Tensor, *, byzantine: int = 0) -> torch.Tensor:
    """Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018). Needs n >= 4f+3.

    1. Select theta = n - 2f updates by running Krum repeatedly, removing each pick.
    2. Per coordinate, average the beta = theta - 2f selected values closest to their
       median."""
    _check(updates, weights)
    n, f = updates.shape[0], byzantine
    check_byzantine_bound("bulyan", n, f)
    theta = n - 2 * f
    remaining = list(range(n))
    selected: list[int] = []
    while len(selected) < theta:
        sub = updates[remaining]
        # Krum on the remaining set; with fewer than f+3 left, the nearest-neighbour
        # count n'-f-2 would drop below 1, so fall back to all neighbours
        f_eff = max(0, min(f, len(remaining) - 3))
        pick = remaining[int(krum_scores(sub, f_eff).argmin())]
        selected.append(pick)
        remaining.remove(pick)
    sel = updates[selected].double()
    beta = theta - 2 * f
    med = sel.quantile(0.5, dim=0)
    closest = (sel - med).abs().argsort(dim=0)[:beta]
    return sel.gather(0, closest).mean(0).to(updates.dtype)


# ------------------------------------------------------------------ clipping rules
def _radius(norms: torch.Tensor, clip_radius: float | None) -> float:
    """The clipping radius: the configured one, or the median of ``norms``."""
    if clip_radius is None:
        return float(norms.quantile(0.5))
    if not clip_radius > 0:
        raise AggregationError(f"clip_radius must be > 0, got {clip_radius}")
    return float(clip_radius)


def norm_bound(
    updates: torch.Tensor, weights: torch.Tensor, *, clip_radius: float | None = None
) -> torch.Tensor:
    """Norm bounding (Sun, Kairouz, Suresh, McMahan, "Can you really backdoor
    federated learning?", 2019): scale every update to L2 norm at most M, then take
    FedAvg's weighted mean. M is ``clip_radius``, or, when None, the median norm of
    the round's updates (adapts to the training phase; sound while fewer than half
    the clients are Byzantine)."""
    _check(updates, weights)
    if weights.sum() <= 0:
        raise AggregationError("no weight to aggregate")
    x = updates.double()
    norms = _norms(x)
    m = _radius(norms, clip_radius)
    factor = torch.where(norms > m, m / norms.clamp_min(1e-300), torch.ones_like(norms))
    w = weights.double()
    return ((w * factor) @ x / w.sum()).to(updates.dtype)


def centered_clipping(
    updates: torch.Tensor,
    weights: torch.Tensor,
    *,
    clip_radius: float | None = None,
    cc_iterations: int = 3,
    previous: torch.Tensor | None = None,
) -> torch.Tensor:
    """Centered clipping (Karimireddy, He, Jaggi, ICML 2021):
    v <- v + (1/n) sum_i clip(x_i - v, tau), repeated ``cc_iterations`` times.

    The paper starts from the previous round's aggregate (with worker momentum);
    ``previous`` is that aggregate when the server provides it, otherwise the
    coordinate-wise median is the starting point. ``tau`` is ``clip_radius`` or,
    when None, the median distance of the updates from the starting point."""
    _check(updates, weights)
    if cc_iterations < 1:
        raise AggregationError(f"centered_clipping: cc_iterations must be >= 1, got {cc_iterations}")
    x = updates.double()
    if previous is not None:
        if previous.shape != (x.shape[1],):
            raise AggregationError(f"centered_clipping: previous has shape {tuple(previous.shape)}, expected ({x.shape[1]},)")
        v = previous.double().clone()
    else:
        v = x.quantile(0.5, dim=0)
    tau = _radius(_norms(x - v), clip_radius)
    for _ in range(cc_iterations):
        diff = x - v
        norms = _norms(diff)
        factor = torch.where(norms > tau, tau / norms.clamp_min(1e-300), torch.ones_like(norms))
        v = v + (factor[:, None] * diff).mean(0)
    return v.to(updates.dtype)


def fltrust(updates: torch.Tensor, weights: torch.Tensor, *, reference: torch.Tensor | None = None) -> torch.Tensor:
    """FLTrust (Cao, Fang, Liu, Gong, NDSS 2021). ``reference`` is the server's own
    update g0 from its small clean root dataset. Each client gets trust
    TS_i = ReLU(cos(g_i, g0)); its update is rescaled to ||g0||; the result is
    sum_i TS_i g_i' / sum_i TS_i. If no client points the way of g0 (all TS_i = 0)
    the result is the zero update: the global model stays where it is.

    Assumes the root data resembles the clients' joint distribution."""
    _check(updates, weights)
    if reference is None:
        raise AggregationError("fltrust needs the server's reference update from its root dataset")
    if reference.shape != (updates.shape[1],):
        raise AggregationError(f"fltrust: reference has shape {tuple(reference.shape)}, expected ({updates.shape[1]},)")
    x, g0 = updates.double(), reference.double()
    g0n = float(g0.norm())
    norms = _norms(x)
    if g0n == 0:
        return torch.zeros(updates.shape[1], dtype=updates.dtype)
    cos = (x @ g0) / (norms.clamp_min(1e-300) * g0n)
    ts = torch.relu(torch.where(norms > 0, cos, torch.zeros_like(cos)))
    if float(ts.sum()) == 0.0:
        return torch.zeros(updates.shape[1], dtype=updates.dtype)
    scaled = x * (g0n / norms.clamp_min(1e-300))[:, None]
    return ((ts @ scaled) / ts.sum()).to(updates.dtype)
