"""Membership inference: was this record in the training set?

Two attacks on a trained model's per-example outputs:

* ``loss`` — the loss-threshold attack (Yeom, Giacomelli, Fredrikson, Jha,
  CSF 2018): members have lower loss; the score is ``-loss``.
* ``calibrated`` — a reference-model calibrated attack: offline LiRA with a
  global variance (Carlini et al., S&P 2022, "Membership inference attacks from
  first principles"). The attacker trains reference models with the target's
  recipe on population data that contains none of the candidates; the score is
  ``(phi_target(x) - mean_ref phi(x)) / std_ref`` with ``phi = log(p_y / (1 - p_y))``,
  which removes the per-example difficulty that blurs the plain loss.

Metrics (Carlini et al. 2022): ROC AUC and the true-positive rate at low false
positive rates (1% and 0.1%): the largest TPR among thresholds whose FPR does not
exceed the target, so with ``m`` non-members the finest FPR resolved is ``1/m``.

The target is trained non-privately (to overfit) or with DP-SGD
(:func:`securefl.privacy.dpsgd.dp_sgd_train`: Poisson sampling, per-example
clipping, noise from :class:`~securefl.privacy.noise.SecureRNG`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from securefl.data import FederatedData
from securefl.exceptions import ConfigTypeError, ConfigValueError
from securefl.models import build_model
from securefl.privacy.dpsgd import dp_sgd_train
from securefl.privacy.noise import SecureRNG

DP_MODES = ("none", "sample")
FPR_TARGETS = (0.01, 0.001)


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
        from securefl.privacy.accounting import epsilon_under

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


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).double().mean())


def run(data: FederatedData, cfg: MembershipConfig, *, rng: SecureRNG | None = None) -> MembershipResult:
    """Train the target and the references, run every attack, score it."""
    rng = rng or SecureRNG()
    (xm, ym), (xn, yn), (xp, yp) = split(data, cfg)
    target, eps = train_model(xm, ym, cfg, data.num_classes, seed=cfg.seed, rng=rng)
    refs = []
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    for r in range(cfg.references):
        idx = torch.randperm(len(xp), generator=gen)[: cfg.members]
        refs.append(train_model(xp[idx], yp[idx], cfg, data.num_classes, seed=cfg.seed + 1 + r, rng=rng)[0])
    xc = torch.cat([xm, xn])
    yc = torch.cat([ym, yn])
    is_member = np.r_[np.ones(len(xm)), np.zeros(len(xn))]
    results = {}
    for name, fn in ATTACKS.items():
        if name == "calibrated" and not refs:
            continue
        results[name] = roc(fn(target, xc, yc, refs), is_member)
    return MembershipResult(cfg, _accuracy(target, xm, ym), _accuracy(target, xn, yn), eps, results)


def plot_roc(path: str | Path, curves: dict[str, dict[str, object]], title: str = "") -> None:
    """ROC curves on log-log axes (the low-FPR region is what matters)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    for label, r in curves.items():
        fpr = np.maximum(np.asarray(r["fpr"]), 1e-4)
        tpr = np.maximum(np.asarray(r["tpr"]), 1e-4)
        ax.plot(fpr, tpr, label=f"{label} (AUC {r['auc']:.3f})")
    ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
