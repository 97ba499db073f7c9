"""Membership-inference metrics (Carlini et al. 2022): ROC AUC and the true-positive
rate at low false-positive rates (1% and 0.1%): the largest TPR among thresholds
whose FPR does not exceed the target, so with ``m`` non-members the finest FPR
resolved is ``1/m``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from attacks.membership.cases import MembershipConfig

FPR_TARGETS = (0.01, 0.001)


def roc(scores: np.ndarray, is_member: np.ndarray) -> dict[str, object]:
    """AUC, TPR at the FPR targets, and the curve itself."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(is_member, scores)
    tpr_at = {f"{f:g}": float(tpr[fpr <= f].max()) if (fpr <= f).any() else 0.0 for f in FPR_TARGETS}
    return {"auc": float(roc_auc_score(is_member, scores)), "tpr_at_fpr": tpr_at, "fpr": fpr.tolist(), "tpr": tpr.tolist()}


@dataclass(frozen=True)
class MembershipResult:
    config: MembershipConfig
    train_accuracy: float
    test_accuracy: float
    epsilon: float | None
    attacks: dict[str, dict[str, object]] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """The JSON contract: ``auc`` and ``tpr_at_fpr`` of the best attack, and per attack."""
        best = max(self.attacks, key=lambda a: self.attacks[a]["auc"])
        return {
            "dp": self.config.dp,
            "noise_multiplier": self.config.noise_multiplier if self.config.dp == "sample" else None,
            "clip": self.config.clip if self.config.dp == "sample" else None,
            "epsilon": self.epsilon,
            "delta": self.config.delta if self.config.dp == "sample" else None,
            "members": self.config.members,
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "auc": self.attacks[best]["auc"],
            "tpr_at_fpr": self.attacks[best]["tpr_at_fpr"],
            "best_attack": best,
            "attacks": {a: {"auc": r["auc"], "tpr_at_fpr": r["tpr_at_fpr"]} for a, r in self.attacks.items()},
        }


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).double().mean())
