"""One membership-inference evaluation: train the target and the reference models
(:mod:`attacks.membership.cases`), run every attack (:mod:`attacks.membership.attacks`)
on members and non-members, and score it (:mod:`attacks.membership.metrics`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attacks.membership.attacks import ATTACKS
from attacks.membership.cases import MembershipConfig, split, train_model
from attacks.membership.metrics import MembershipResult, accuracy, roc
from securefl.data import FederatedData
from securefl.privacy.noise import SecureRNG


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
    return MembershipResult(cfg, accuracy(target, xm, ym), accuracy(target, xn, yn), eps, results)


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
