"""Client-level DP for federated averaging.

DP-FedAvg (McMahan, Ramage, Talwar and Zhang, ICLR 2018): every participating
client clips its update to L2 norm ``S``; the server adds N(0, (z S)^2) to the sum
and divides by the *expected* number of participants ``m = q N`` (a fixed
denominator, so one client changes the result by at most ``S / m``).

Adaptive clipping (Andrew, Thakkar, McMahan and Ramaswamy, NeurIPS 2021): clients
also report whether their update was within the clip norm; the server estimates
that fraction privately and moves ``S`` geometrically towards the target quantile.
"""

from __future__ import annotations

import math

import torch

from securefl.exceptions import ConfigValueError
from securefl.privacy.noise import SecureRNG, noisy_on_grid


def clip_update(update: torch.Tensor, clip: float) -> tuple[torch.Tensor, float]:
    """Scale ``update`` to L2 norm at most ``clip``; return it and the original norm."""
    norm = float(update.double().norm())
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return update * factor, norm


def noisy_average(
    total: torch.Tensor, *, noise_multiplier: float, clip: float, denominator: float, rng: SecureRNG
) -> torch.Tensor:
    """(sum of clipped updates + noise of std >= z S) / m, floating-point safe: the sum is
    rounded onto a power-of-two grid and exact discrete Gaussian noise on that grid is
    added in integers (:func:`securefl.privacy.noise.noisy_on_grid`, whose std covers
    the rounding's sensitivity inflation, so charging ``z`` stays an upper bound)."""
    noisy = noisy_on_grid(total, noise_multiplier=noise_multiplier, clip=clip, rng=rng)
    return (noisy / denominator).to(total.dtype)


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """Noise multiplier left for the update sum when the unclipped count also uses
    budget (Andrew et al. 2021, Thm. 1): z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)."""
    if noise_multiplier == 0:
        return 0.0
    if not count_stddev > 0:
        raise ConfigValueError("clip_count_stddev", count_stddev, "must be > 0")
    rest = noise_multiplier**-2 - (2 * count_stddev) ** -2
    if rest <= 0:
        raise ConfigValueError(
            "clip_count_stddev", count_stddev, f"must exceed noise_multiplier/2 = {noise_multiplier / 2:.4f}"
        )
    return rest**-0.5


class AdaptiveClipper:
    """Geometric update of the clip norm towards a target quantile of update norms."""

    def __init__(
        self, initial: float, *, target_quantile: float, lr: float, count_stddev: float, expected_clients: float
    ) -> None:
        self.clip = float(initial)
        self.target_quantile = target_quantile
        self.lr = lr
        self.count_stddev = count_stddev
        self.expected_clients = expected_clients

    def update(self, unclipped_count: float, rng: SecureRNG) -> float:
        """Feed the (un-noised) count of clients whose norm was <= clip; returns the new clip."""
        # the count is an integer query of sensitivity 1: on any power-of-two grid it
        # needs no rounding, and noise grid * N_Z(0, s^2) with s grid >= count_stddev
        noisy = unclipped_count + float(rng.secure_gaussian((1,), self.count_stddev)[0])
        fraction = noisy / self.expected_clients
        self.clip *= math.exp(-self.lr * (fraction - self.target_quantile))
        return self.clip
