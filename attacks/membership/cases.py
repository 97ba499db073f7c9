"""Membership-inference cases: who trains what on which records, and what the attacker holds.

The target is trained non-privately (to overfit) or with DP-SGD through the library's
:func:`securefl.privacy.dpsgd.dp_sgd_train` (Poisson sampling, per-example clipping,
noise from :class:`~securefl.privacy.noise.SecureRNG`), its epsilon from the library's
accountant. The records are split (:func:`split`) into members (the target's training
set), as many non-members, and the attacker's population, on which it trains
reference models with the target's recipe (:func:`train_model`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from securefl.data import FederatedData
from securefl.exceptions import ConfigTypeError, ConfigValueError
from securefl.models import build_model, check_model
from securefl.privacy.accounting import epsilon_under
from securefl.privacy.dpsgd import dp_sgd_train
from securefl.privacy.noise import SecureRNG

DP_MODES = ("none", "sample")


@dataclass(frozen=True)
class MembershipConfig:
    """Target training recipe and attack settings."""

    members: int = 300  #: target training-set size (as many non-members are drawn)
    epochs: int = 200
    batch_size: int = 32
    lr: float = 0.1
    model: str = "mlp"
    hidden: int = 128
    dp: str = "none"
    noise_multiplier: float = 1.0
    clip: float = 1.0
    delta: float = 1e-5
    references: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("members", "epochs", "batch_size", "hidden", "references", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigTypeError(name, v, "must be an integer")
        for name in ("members", "epochs", "batch_size", "hidden"):
            if getattr(self, name) < 1:
                raise ConfigValueError(name, getattr(self, name), "must be >= 1")
        if self.references < 0:
            raise ConfigValueError("references", self.references, "must be >= 0")
        for name in ("lr", "clip", "delta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigValueError(name, v, "must be a number > 0")
        if isinstance(self.noise_multiplier, bool) or not isinstance(self.noise_multiplier, (int, float)) or not self.noise_multiplier >= 0:
            raise ConfigValueError("noise_multiplier", self.noise_multiplier, "must be a number >= 0")
        if self.dp not in DP_MODES:
            raise ConfigValueError("dp", self.dp, f"must be one of {', '.join(DP_MODES)}")
        if self.batch_size > self.members:
            raise ConfigValueError("batch_size", self.batch_size, f"must be <= members ({self.members})")


def train_model(
    x: torch.Tensor, y: torch.Tensor, cfg: MembershipConfig, num_classes: int, seed: int, rng: SecureRNG
) -> tuple[nn.Module, float | None]:
    """Train one model with ``cfg``'s recipe; return it and its epsilon (DP only)."""
    model = build_model(cfg.model, tuple(x.shape[1:]), num_classes, hidden=cfg.hidden, seed=seed)
    check_model(model, str(cfg.model), input_shape=tuple(x.shape[1:]), num_classes=num_classes, dp=cfg.dp)
    model.train()
    n = len(x)
    q = cfg.batch_size / n
    steps = max(1, math.ceil(cfg.epochs / q))
    if cfg.dp == "sample":
        dp_sgd_train(
            model,
            x,
            y,
            loss_fn=F.cross_entropy,
            optimizer_fn=lambda ps: torch.optim.SGD(ps, lr=cfg.lr),
            noise_multiplier=cfg.noise_multiplier,
            max_grad_norm=cfg.clip,
            sample_rate=q,
            steps=steps,
            rng=rng,
        )
        eps = epsilon_under("rdp", ((cfg.noise_multiplier, q, steps),), cfg.delta) if cfg.noise_multiplier > 0 else math.inf
    else:
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        eps = None
    model.eval()
    return model, eps


def split(data: FederatedData, cfg: MembershipConfig):
    """Members (target training set), non-members, and the reference population.

    Train and test images are pooled and shuffled with ``cfg.seed`` (a
    non-secret shuffle); members and non-members are disjoint and equally many;
    the remaining images form the attacker's population for reference models.
    """
    x = torch.cat([data.x_train, data.x_test])
    y = torch.cat([data.y_train, data.y_test])
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))
    m = cfg.members
    if 2 * m + m > len(x) and cfg.references > 0:
        raise ConfigValueError("members", m, f"needs 3x{m} images (members, non-members, population); data has {len(x)}")
    if 2 * m > len(x):
        raise ConfigValueError("members", m, f"needs 2x{m} images; data has {len(x)}")
    mem, non, pop = perm[:m], perm[m : 2 * m], perm[2 * m :]
    return (x[mem], y[mem]), (x[non], y[non]), (x[pop], y[pop])
