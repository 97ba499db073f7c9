"""The audit's attacker: the canaries it plants and how it scores them.

* Example canaries (inserted into the clients' data): uniform-noise images with
  random labels, or mislabelled training digits (``CANARY_DATA``).
* Client canaries: fixed random unit directions (:func:`random_directions`) that a
  canary client sends as its update (Andrew et al., ICLR 2024).
* Scores (``SCORERS``; higher means "more likely included"): the loss of an example
  canary under the final model (black box), the alignment of every round's global
  step with the canary's gradient (white box), or the cosine of a client canary's
  direction with the final model delta.

Canary content comes from a :class:`~securefl.privacy.noise.SecureRNG` keyed from the
run's seed (``SecureRNG.from_seed(seed, "audit-canaries")``); the scorers never see
which canaries were included.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from attacks.common.grads import flat_per_example_grads
from securefl.exceptions import ConfigValueError
from securefl.models import set_flat
from securefl.privacy.noise import SecureRNG


def example_canaries(
    x_pool: torch.Tensor, y_pool: torch.Tensor, m: int, num_classes: int, rng: SecureRNG
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``m`` mislabelled examples: distinct pool images with a label drawn
    uniformly among the wrong classes. Returns the pool indices used (taken out
    of the real data), the images and the canary labels."""
    if m > len(x_pool) - 1:
        raise ConfigValueError("canaries", m, f"example canaries need fewer than {len(x_pool)} training examples")
    if num_classes < 2:
        raise ConfigValueError("dataset", "regression", "example canaries need a classification dataset")
    idx = np.array(rng.sample(len(x_pool), m))[np.argsort(rng.uniform(m))]  # sample() sorts: shuffle
    shift = np.array([1 + rng.below(num_classes - 1) for _ in range(m)])
    labels = (y_pool[idx].numpy() + shift) % num_classes
    return idx, x_pool[idx].clone(), torch.as_tensor(labels, dtype=torch.long)


def noise_canaries(
    x_pool: torch.Tensor, y_pool: torch.Tensor, m: int, num_classes: int, rng: SecureRNG
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``m`` out-of-distribution examples: uniform noise over the data's value
    range with a uniformly random label. No real example is taken out."""
    if num_classes < 2:
        raise ConfigValueError("dataset", "regression", "example canaries need a classification dataset")
    lo, hi = float(x_pool.min()), float(x_pool.max())
    u = torch.from_numpy(rng.uniform(m * int(np.prod(x_pool.shape[1:])))).to(x_pool.dtype)
    x = (lo + (hi - lo) * u).reshape(m, *x_pool.shape[1:])
    labels = torch.as_tensor([rng.below(num_classes) for _ in range(m)], dtype=torch.long)
    return np.array([], dtype=np.int64), x, labels


#: how example canaries are made: name -> fn(x_pool, y_pool, m, classes, rng) -> (pool indices used, x, y)
CANARY_DATA: dict[str, Callable[..., tuple[np.ndarray, torch.Tensor, torch.Tensor]]] = {
    "mislabelled": example_canaries,
    "noise": noise_canaries,
}


def random_directions(m: int, dim: int, rng: SecureRNG) -> torch.Tensor:
    """``m`` independent uniformly random unit vectors in R^dim (normalised Gaussians)."""
    g = rng.normal((m, dim), dtype=torch.float64)
    return (g / g.norm(dim=1, keepdim=True)).to(torch.float32)


class CanaryScorer:
    """Black-box or final-model scores: loss of example canaries, or cosine of
    client-canary directions with the final model delta (Andrew et al. 2024).
    Higher scores mean "more likely included"."""

    def __init__(self, score: str, model: torch.nn.Module, start: torch.Tensor, *, x: torch.Tensor | None = None,
                 y: torch.Tensor | None = None, directions: torch.Tensor | None = None) -> None:
        self.score, self.model, self.start = score, model, start
        self.x, self.y, self.directions = x, y, directions

    def before_round(self, weights: torch.Tensor) -> None:
        """Called with the global model a round starts from."""

    def after_round(self, weights: torch.Tensor) -> None:
        """Called with the global model the round produced."""

    @torch.no_grad()
    def final(self, weights: torch.Tensor) -> np.ndarray:
        if self.directions is not None:
            delta = (weights - self.start).double()
            return (self.directions.double() @ delta / max(float(delta.norm()), 1e-300)).numpy()
        set_flat(self.model, weights)
        self.model.eval()
        return -F.cross_entropy(self.model(self.x), self.y, reduction="none").double().numpy()


class GradientAlignmentScorer(CanaryScorer):
    """White-box score of example canaries: the sum over rounds of the cosine
    between the global step and the canary's negative loss gradient at the
    round's starting model (the per-round view of gradient-alignment audits,
    Nasr et al. 2021; Steinke et al. 2023)."""

    def __init__(self, score: str, model: torch.nn.Module, start: torch.Tensor, **kw: Any) -> None:
        super().__init__(score, model, start, **kw)
        self.total = torch.zeros(len(self.x), dtype=torch.float64)

    def before_round(self, weights: torch.Tensor) -> None:
        set_flat(self.model, weights)
        g = flat_per_example_grads(self.model, self.x, self.y)
        self._unit = -g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self._prev = weights.clone()

    def after_round(self, weights: torch.Tensor) -> None:
        self.total += (self._unit @ (weights - self._prev)).double()

    def final(self, weights: torch.Tensor) -> np.ndarray:
        return self.total.numpy().copy()


#: score name -> scorer class
SCORERS: dict[str, type[CanaryScorer]] = {
    "loss": CanaryScorer,
    "cosine": CanaryScorer,
    "gradient": GradientAlignmentScorer,
}
