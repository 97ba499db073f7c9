"""Metrics of a poisoning run: main-task accuracy and attack success.

* main accuracy: test accuracy of the final global model on clean inputs;
* backdoor success (Bagdasaryan et al. 2020): the fraction of triggered test inputs
  whose true class is not the target that the model assigns to the target;
* targeted label-flip success: the fraction of test inputs of the source class
  classified as the target class;
* untargeted attacks: the accuracy drop relative to the clean run with the same
  defense, data and seed (``clean - attacked``; negative when the attack helped).
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.poisoning.attacks import LabelFlip, PoisonAttack, ScalingBackdoor


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` classified as ``y``."""
    model.eval()
    return float((model(x).argmax(1) == y).float().mean()) if len(x) else float("nan")


@torch.no_grad()
def backdoor_success(model: nn.Module, attack: ScalingBackdoor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of triggered test inputs (true class != target) classified as the target."""
    keep = y != attack.target
    if not keep.any():
        return float("nan")
    model.eval()
    pred = model(attack.trigger(x[keep])).argmax(1)
    return float((pred == attack.target).float().mean())


@torch.no_grad()
def targeted_flip_success(model: nn.Module, attack: LabelFlip, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of source-class test inputs classified as the target class."""
    keep = y == attack.source
    if not keep.any():
        return float("nan")
    model.eval()
    return float((model(x[keep]).argmax(1) == attack.target).float().mean())


def targeted_success(model: nn.Module, attack: PoisonAttack, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """The targeted success rate of ``attack`` on ``model``, or None if it is untargeted."""
    if isinstance(attack, ScalingBackdoor):
        return backdoor_success(model, attack, x, y)
    if isinstance(attack, LabelFlip) and attack.targeted:
        return targeted_flip_success(model, attack, x, y)
    return None


def attack_success_rate(
    attack: PoisonAttack, *, attacked_accuracy: float, clean_accuracy: float | None, targeted: float | None
) -> float | None:
    """The headline number: targeted success for targeted attacks, the accuracy drop
    against the clean run for untargeted ones (None without a clean run)."""
    if targeted is not None:
        return targeted
    if clean_accuracy is None:
        return None
    return clean_accuracy - attacked_accuracy
