"""Reconstruction metrics: MSE, PSNR, SSIM, label accuracy and the mean-image baseline.

Images are compared in their data range (``[0, 1]`` for the embedded digits).
A batch of reconstructions is first put in the order of the originals by a
minimum-MSE assignment (Hungarian method), as breaching does, since an attack
has no way of knowing which reconstruction belongs to which original; labels are
scored in that same order.

The mean-image baseline answers "does the attack beat guessing?": the PSNR a
server gets by outputting the average training image, knowing nothing about the
client. An attack at or below it has learned nothing useful about the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error of two batches of equal shape ``(N, ...)``."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return ((a.double() - b.double()) ** 2).flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    err = mse(a, b)
    out = 10.0 * torch.log10(torch.full_like(err, data_range**2) / err)
    return torch.where(err == 0, torch.full_like(err, math.inf), out)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Per-image structural similarity (Wang et al. 2004) of ``(N, C, H, W)`` batches.

    Gaussian window (``sigma`` 1.5), shrunk to the image size for small images
    (7x7 on 8x8 digits); channels are averaged. 1 for identical images.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() != 4:
        raise ValueError(f"ssim needs (N, C, H, W) images, got shape {tuple(a.shape)}")
    a, b = a.double(), b.double()
    c = a.shape[1]
    size = min(window, a.shape[2], a.shape[3])
    w = _gaussian_window(size, sigma).expand(c, 1, size, size).contiguous()

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(1)


def match_order(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """For each original, the index of its reconstruction under the minimum-MSE
    one-to-one assignment (needs at least as many reconstructions as originals)."""
    if len(reconstructions) < len(originals):
        raise ValueError(f"{len(reconstructions)} reconstructions for {len(originals)} originals")
    o = originals.double().flatten(1)
    r = reconstructions.double().flatten(1)
    cost = torch.cdist(o, r) ** 2
    rows, cols = linear_sum_assignment(cost.numpy())
    order = torch.empty(len(originals), dtype=torch.long)
    order[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return order


def label_accuracy(true: torch.Tensor, predicted: torch.Tensor) -> float:
    """Fraction of labels recovered (in matched order)."""
    if true.shape != predicted.shape:
        raise ValueError(f"shapes differ: {tuple(true.shape)} vs {tuple(predicted.shape)}")
    return float((true == predicted).double().mean()) if len(true) else math.nan


def mean_image_psnr(originals: torch.Tensor, mean_image: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR of the guess "the average training image" (the baseline)."""
    return psnr(mean_image.expand_as(originals), originals, data_range)


@dataclass(frozen=True)
class Scores:
    """Per-image scores of one reconstruction against its originals."""

    mse: list[float]
    psnr: list[float]
    ssim: list[float]
    baseline_psnr: list[float]
    label_accuracy: float


def score(
    originals: torch.Tensor,
    labels: torch.Tensor,
    reconstructions: torch.Tensor,
    predicted_labels: torch.Tensor | None,
    mean_image: torch.Tensor,
    data_range: float = 1.0,
) -> Scores:
    """Match reconstructions to originals and score every original."""
    order = match_order(originals, reconstructions)
    rec = reconstructions[order].to(originals.dtype)
    if predicted_labels is None:
        acc = math.nan
    else:
        acc = label_accuracy(labels, predicted_labels[order])
    return Scores(
        mse=mse(originals, rec).tolist(),
        psnr=psnr(originals, rec, data_range).tolist(),
        ssim=ssim(originals, rec, data_range).tolist() if originals.dim() == 4 else [math.nan] * len(originals),
        baseline_psnr=mean_image_psnr(originals, mean_image, data_range).tolist(),
        label_accuracy=acc,
    )
