"""Sample-level DP-SGD (Abadi et al., CCS 2016) on Opacus, with secure noise.

Opacus computes per-sample gradients (``GradSampleModule``) and clips them
(``DPOptimizer``); we replace its noise source with :class:`SecureRNG` and draw
the Poisson-sampled batches from it too, since the privacy amplification the
accountant assumes holds only if the sampling is hidden from the adversary.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn

from securefl.privacy.noise import SecureRNG, noisy_on_grid


class SecureDPOptimizer(DPOptimizer):
    """Opacus' ``DPOptimizer`` with floating-point-safe discrete Gaussian noise.

    The summed clipped gradient (all parameters together: a vector of ``D``
    coordinates with L2 sensitivity ``C``) is rounded onto one power-of-two grid
    and discrete Gaussian noise on that grid is added in integers
    (:func:`securefl.privacy.noise.noisy_on_grid`, same grid and ``s`` for every
    parameter, ``dim = D``). The std is raised by the rounding's sensitivity
    inflation (``C -> C + sqrt(D) grid``, relative ``sqrt(D) z 2^-22`` at most), so
    the ``noise_multiplier`` the accountant is charged with stays a lower bound of
    the mechanism's ``sigma / Delta``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        rng: SecureRNG,
    ) -> None:
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
        )
        self.rng = rng

    def add_noise(self) -> None:
        # one draw for the whole flattened query: one grid, one s, dim = D
        for p in self.params:
            _check_processed_flag(p.summed_grad)
        flat = torch.cat([p.summed_grad.reshape(-1).double() for p in self.params])
        noisy = noisy_on_grid(flat, noise_multiplier=self.noise_multiplier, clip=self.max_grad_norm, rng=self.rng)
        offset = 0
        for p in self.params:
            n = p.summed_grad.numel()
            # the float32 cast rounds, but only the released float64 value: post-processing
            p.grad = noisy[offset : offset + n].to(p.summed_grad.dtype).view_as(p)
            offset += n
            _mark_as_processed(p.summed_grad)


def steps_per_round(local_epochs: float, sample_rate: float) -> int:
    """Poisson steps that make ``local_epochs`` passes in expectation."""
    return max(1, math.ceil(local_epochs / sample_rate - 1e-9))


def dp_sgd_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss_fn: Callable[..., torch.Tensor],
    optimizer_fn: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float,
    steps: int,
    rng: SecureRNG,
    expected_batch_size: float | None = None,
) -> float:
    """Run ``steps`` DP-SGD steps on ``model`` in place; return the mean batch loss.

    Each step includes every example independently with probability
    ``sample_rate`` (Poisson sampling); an empty batch still takes a noise-only
    step, as the accountant's analysis assumes. The noisy gradient sum is divided
    by ``expected_batch_size``, a public constant (Abadi et al. 2016 divide by the
    lot size L); ``None`` uses ``sample_rate * len(x)`` as Opacus does, which makes
    the update's scale depend on the dataset size.
    """
    n = len(x)
    if expected_batch_size is None:
        expected_batch_size = sample_rate * n
    gsm = GradSampleModule(model, loss_reduction="sum")
    opt = SecureDPOptimizer(
        optimizer_fn(list(gsm.parameters())),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        rng=rng,
    )
    losses = []
    try:
        with warnings.catch_warnings():
            # inputs never require grad; torch warns about full backward hooks then
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            _dp_steps(gsm, opt, x, y, loss_fn, sample_rate, steps, rng, losses)
    finally:
        gsm._close()
    return float(sum(losses) / len(losses)) if losses else float("nan")


def _dp_steps(gsm, opt, x, y, loss_fn, sample_rate, steps, rng, losses) -> None:
    n = len(x)
    for _ in range(steps):
        mask = torch.from_numpy(rng.bernoulli(sample_rate, n))
        xb, yb = x[mask], y[mask]
        opt.zero_grad(set_to_none=True)
        if len(xb) == 0:
            for p in opt.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
        else:
            loss = loss_fn(gsm(xb), yb, reduction="sum")
            loss.backward()
            losses.append(loss.item() / len(xb))
        opt.step()
