"""Small reference models that Opacus can wrap.

No BatchNorm anywhere (it mixes examples in a batch, which breaks per-sample
gradients); the CNN uses GroupNorm. Every model takes inputs of ``input_shape``
and returns logits (classification) or one value (regression).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from securefl.exceptions import ConfigValueError


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one linear layer on the flattened input."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, **_: object) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), max(num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class LinearRegression(nn.Module):
    """Least-squares linear regression: one output."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int = 0, **_: object) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """Two-layer perceptron with tanh activations (bounded activations suit DP-SGD)."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 64, **_: object
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden),
            nn.Tanh(),
            nn.Linear(hidden, max(num_classes, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """A small convnet for 1-channel images: two conv blocks with GroupNorm."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 32, **_: object
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigValueError("model", "cnn", f"needs image input (C, H, W), got shape {input_shape}")
        c, h, w = input_shape
        ch = 16
        self.features = nn.Sequential(
            nn.Conv2d(c, ch, 3, padding=1),
            nn.GroupNorm(4, ch),
            nn.Tanh(),
            nn.Conv2d(ch, 2 * ch, 3, padding=1, stride=2),
            nn.GroupNorm(4, 2 * ch),
            nn.Tanh(),
        )
        flat = 2 * ch * ((h + 1) // 2) * ((w + 1) // 2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.Tanh(), nn.Linear(hidden, max(num_classes, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "logreg": LogisticRegression,
    "linreg": LinearRegression,
    "mlp": MLP,
    "cnn": CNN,
}


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, *, hidden: int = 64, seed: int | None = None
) -> nn.Module:
    """Build a registered model; ``seed`` makes the initial weights reproducible."""
    if name not in MODELS:
        raise ConfigValueError("model", name, f"must be one of {', '.join(sorted(MODELS))}")
    if seed is not None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return MODELS[name](input_shape, num_classes, hidden=hidden)
    return MODELS[name](input_shape, num_classes, hidden=hidden)


# ---------------------------------------------------------------- flat vectors
def get_flat(model: nn.Module) -> torch.Tensor:
    """All parameters, in ``named_parameters`` order, as one float32 vector (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(torch.float32).clone()


def set_flat(model: nn.Module, vector: torch.Tensor) -> None:
    """Load a vector produced by :func:`get_flat` back into ``model`` in place."""
    total = sum(p.numel() for p in model.parameters())
    if vector.numel() != total:
        raise ValueError(f"vector has {vector.numel()} values, model has {total} parameters")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(vector[offset : offset + n].view_as(p))
            offset += n
