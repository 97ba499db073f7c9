"""Membership inference attacks: was this record in the training set?

Two attacks on a trained model's per-example outputs (``ATTACKS``):

* ``loss`` — the loss-threshold attack (Yeom, Giacomelli, Fredrikson, Jha,
  CSF 2018): members have lower loss; the score is ``-loss``.
* ``calibrated`` — a reference-model calibrated attack: offline LiRA with a
  global variance (Carlini et al., S&P 2022, "Membership inference attacks from
  first principles"). The attacker trains reference models with the target's
  recipe on population data that contains none of the candidates
  (:mod:`attacks.membership.cases`); the score is
  ``(phi_target(x) - mean_ref phi(x)) / std_ref`` with ``phi = log(p_y / (1 - p_y))``,
  which removes the per-example difficulty that blurs the plain loss.

Higher scores mean "more likely a member"; :mod:`attacks.membership.metrics` turns
them into ROC AUC and TPR at low FPR.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from securefl.exceptions import ConfigValueError


@torch.no_grad()
def per_example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y, reduction="none").double()


@torch.no_grad()
def logit_confidence(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log(p_y / (1 - p_y))`` computed stably from the logits (LiRA's statistic)."""
    logits = model(x).double()
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.clone()
    others.scatter_(1, y.view(-1, 1), -math.inf)
    return true - torch.logsumexp(others, dim=1)


def loss_scores(target: nn.Module, x: torch.Tensor, y: torch.Tensor, references: list[nn.Module]) -> np.ndarray:
    """Yeom et al. 2018: higher score = more likely a member."""
    return (-per_example_loss(target, x, y)).numpy()


def calibrated_scores(target: nn.Module, x: torch.Tensor, y: torch.Tensor, references: list[nn.Module]) -> np.ndarray:
    """Offline LiRA with a global variance (Carlini et al. 2022)."""
    if not references:
        raise ConfigValueError("references", 0, "the calibrated attack needs >= 1 reference model")
    phi = logit_confidence(target, x, y)
    ref = torch.stack([logit_confidence(m, x, y) for m in references])
    mu = ref.mean(0)
    sd = ref.std(unbiased=False) + 1e-6 if len(references) > 1 else ref.abs().mean() + 1e-6
    return ((phi - mu) / sd).numpy()


#: attack name -> scores(target, x, y, references)
ATTACKS: dict[str, Callable[..., np.ndarray]] = {"loss": loss_scores, "calibrated": calibrated_scores}
