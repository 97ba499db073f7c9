"""Poisoning metrics: known answers."""

from __future__ import annotations

import pytest
import torch

from attacks.poisoning.attacks import ScalingBackdoor, SignFlip
from attacks.poisoning.metrics import attack_success_rate, backdoor_success


def test_backdoor_success_metric_on_a_constant_model():
    class Always(torch.nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), self.k), 10).float()

    y = torch.tensor([0, 0, 1, 2, 3])
    x = torch.zeros(5, 1, 8, 8)
    assert backdoor_success(Always(0), ScalingBackdoor(target=0), x, y) == 1.0  # 3 non-target inputs, all hit
    assert backdoor_success(Always(1), ScalingBackdoor(target=0), x, y) == 0.0
    assert attack_success_rate(SignFlip(), attacked_accuracy=0.3, clean_accuracy=0.9, targeted=None) == pytest.approx(0.6)
