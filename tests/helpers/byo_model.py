"""A user's own model and data, as a user file that securefl imports by path
(``--model tests/helpers/byo_model.py:factory``): tests of bring-your-own."""

from __future__ import annotations

import torch
from torch import nn

#: how often securefl called each callable of this file (in this process)
CALLS = {"factory": 0, "digits": 0}


def factory(input_shape=(1, 8, 8), num_classes=10) -> nn.Module:
    """A small ReLU convnet (GroupNorm, so Opacus can train it)."""
    CALLS["factory"] += 1
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * h * w, 16), nn.ReLU(), nn.Linear(16, num_classes),
    )


def batchnorm(input_shape=(1, 8, 8), num_classes=10) -> nn.Module:
    """The same convnet with BatchNorm, which DP-SGD cannot train."""
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * h * w, num_classes),
    )


def three_outputs() -> nn.Module:
    """A model whose output size matches no dataset with 10 classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def not_a_module():
    return "a string"


def wide(num_classes=10) -> nn.Module:
    """About 2.25 million parameters: large enough that a larger CKKS ring (less
    overhead per ciphertext value) makes a smaller encrypted update."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 30_000), nn.Linear(30_000, num_classes))


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """One set (X, y) of 8x8 digit images; securefl splits it."""
    from sklearn.datasets import load_digits

    CALLS["digits"] += 1
    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(d.target)


def digits_split():
    """(train, test) as two torch Datasets: securefl keeps this split."""
    from torch.utils.data import TensorDataset

    x, y = digits()
    return TensorDataset(x[:1500], y[:1500]), TensorDataset(x[1500:], y[1500:])


def regression(seed: int = 0):
    """A seeded regression set (float targets)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(400, 5, generator=g)
    return x, x @ torch.arange(1.0, 6.0) + 0.1 * torch.randn(400, generator=g)
