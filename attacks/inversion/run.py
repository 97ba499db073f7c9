"""Run an inversion attack over many target images and summarise it.

:func:`evaluate` plays ``ceil(images / batch_size)`` rounds of a
:class:`~attacks.inversion.cases.CaseConfig` on the embedded 8x8 digits (a fresh
network per round, client 0 the target), attacks what the server reads, and
scores the target client's images with :mod:`attacks.inversion.metrics`. Summaries are
medians over images (label accuracy is a mean), next to the mean-image baseline.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from attacks.inversion.cases import CaseConfig, build_case_model, run_round, trial_batches
from attacks.inversion.attacks import AttackConfig, reconstruct
from attacks.inversion.metrics import match_order, score
from securefl.data import FederatedData, load_digits
from securefl.exceptions import ConfigValueError
from securefl.privacy.noise import SecureRNG


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(statistics.median(finite)) if finite else math.nan


def _summary(method: str, case: CaseConfig, rows: dict[str, list[float]], label_hits: list[float],
             clipped: list[float], seconds: float) -> dict[str, Any]:
    """Medians over images (label accuracy: mean) next to the mean-image baseline."""
    out: dict[str, Any] = {
        "method": method,
        "case": asdict(case),
        "images": len(rows["psnr"]),
        "psnr": _median(rows["psnr"]),
        "ssim": _median(rows["ssim"]),
        "mse": _median(rows["mse"]),
        "label_accuracy": float(sum(label_hits) / len(label_hits)) if label_hits else None,
        "baseline_psnr": _median(rows["baseline_psnr"]),
        "clipped_fraction": float(sum(clipped) / len(clipped)),
        "seconds": seconds,
        "per_image": {k: v for k, v in rows.items()},
    }
    out["psnr_over_baseline"] = out["psnr"] - out["baseline_psnr"]
    out["beats_baseline"] = bool(out["psnr_over_baseline"] > 1.0)
    return out


def evaluate(
    case: CaseConfig,
    method: str,
    *,
    images: int = 20,
    seed: int = 0,
    attack: AttackConfig = AttackConfig(),
    data: FederatedData | None = None,
    on_trial: Callable[[int], None] | None = None,
    keep_images: bool = True,
) -> dict[str, Any]:
    """Attack ``images`` target images (the target client's batches) and score them."""
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ConfigValueError("images", images, "must be an integer >= 1")
    data = data or load_digits(seed=0)
    mean_image = data.x_train.mean(0)
    rng = SecureRNG()  # DP noise: never seeded, never numpy/torch
    rows: dict[str, list[float]] = {"psnr": [], "ssim": [], "mse": [], "baseline_psnr": []}
    label_hits: list[float] = []
    clipped: list[float] = []
    originals, recons = [], []
    t0 = time.perf_counter()
    for t in range(math.ceil(images / case.batch_size)):
        idx = trial_batches(data.y_train, case, t, seed)
        model = build_case_model(case, data.input_shape, data.num_classes, seed=seed * 1000 + t)
        view, truth = run_round(case, model, [(data.x_train[i], data.y_train[i]) for i in idx], rng)
        rec = reconstruct(method, view, config=AttackConfig(**{**asdict(attack), "seed": attack.seed + t}))
        s = score(truth.all_images, truth.all_labels, rec.images, rec.labels, mean_image)
        k = len(truth.images)
        for key in rows:
            rows[key].extend(getattr(s, key)[:k])
        order = match_order(truth.all_images, rec.images)[:k]
        if rec.labels is not None:
            label_hits.extend((rec.labels[order] == truth.labels).double().tolist())
        clipped.append(truth.clipped_fraction)
        if keep_images:
            originals.append(truth.images)
            recons.append(rec.images[order])
        if on_trial is not None:
            on_trial(t)
    out = _summary(method, case, rows, label_hits, clipped, time.perf_counter() - t0)
    if keep_images:
        out["_originals"] = torch.cat(originals)[:images]
        out["_reconstructions"] = torch.cat(recons)[:images]
    return out


def plot_grid(path: str | Path, originals: torch.Tensor, reconstructions: torch.Tensor, title: str = "") -> None:
    """Originals (top row) above their reconstructions (bottom row), with each PSNR."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from attacks.inversion.metrics import psnr

    n = len(originals)
    cols = min(n, 10)
    rows = 2 * math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.0 * cols, 1.15 * rows), dpi=110, squeeze=False)
    values = psnr(originals, reconstructions.to(originals.dtype)).tolist()
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = 2 * (i // cols), i % cols
        axes[r][c].imshow(originals[i, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
        axes[r + 1][c].imshow(reconstructions[i, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
        label = "inf" if math.isinf(values[i]) else f"{values[i]:.1f}"
        axes[r + 1][c].text(0.5, -0.08, f"{label} dB", transform=axes[r + 1][c].transAxes, ha="center", va="top", fontsize=6)
    fig.suptitle(title + "\n(rows: original / reconstruction)", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
