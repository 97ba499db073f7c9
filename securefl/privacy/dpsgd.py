"""Sample-level DP-SGD (Abadi et al., CCS 2016) on Opacus, with secure noise.

Opacus computes per-sample gradient norms and clips them; we replace its noise
source with :class:`SecureRNG` and draw the Poisson-sampled batches from it too,
since the privacy amplification the accountant assumes holds only if the
sampling is hidden from the adversary.

Per-sample clipping runs in one of four *grad-sample modes* (all give the same
clipped gradient sum, up to float rounding, and the same privacy accounting):

* ``"hooks"``: Opacus' ``GradSampleModule``, per-sample gradients from module hooks;
* ``"ew"``: PyTorch's ExpandedWeights (``GradSampleModuleExpandedWeights``),
  per-sample gradients computed inside the layers' own backward;
* ``"ghost"``: ghost clipping (Li et al., ICLR 2022; Bu et al., 2023): a first
  backward pass computes only the per-sample gradient *norms* (for a linear layer
  ``||a_i|| ||g_i||``, no per-sample gradient is formed), and a second pass
  back-propagates the output gradients rescaled by the clipping factors, which
  yields the clipped sum directly. The noise is our discrete Gaussian, added to
  that sum by :class:`SecureGhostDPOptimizer`;
* ``"bk"``: one backward pass, ghost norms and book-kept clipped sums for the
  ``nn.Linear`` layers, ExpandedWeights for the rest
  (:mod:`securefl.privacy.bookkeeping`; Bu et al., ICML 2023).

``"auto"`` (:func:`choose_grad_sample_mode`) is a fixed rule on the model's layer
types, from measurements on CPU (``securefl bench``, section ``dpsgd``, where it was
the fastest mode for all three reference models): book-keeping for models made of
layers ExpandedWeights supports with at least one ``nn.Linear`` (logistic
regression, the MLP, the CNN), ExpandedWeights for other such models, hooks
otherwise (Opacus' functorch fallback covers any layer).

A :class:`WrapperCache` keeps a model's wrapper (its hooks, disabled between
calls) from one :func:`dp_sgd_train` call to the next, so a client does not
re-wrap its model every round.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleExpandedWeights, GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn

from securefl.exceptions import ConfigValueError
from securefl.privacy.bookkeeping import BookKeepingModule
from securefl.privacy.noise import SecureRNG, noisy_on_grid

__all__ = [
    "GRAD_SAMPLE_MODES",
    "GradSampleWrapper",
    "SecureDPOptimizer",
    "SecureGhostDPOptimizer",
    "WrapperCache",
    "choose_grad_sample_mode",
    "dp_sgd_train",
    "steps_per_round",
]

GRAD_SAMPLE_MODES = ("auto", "hooks", "ew", "ghost", "bk")

#: the parametrized layers PyTorch's ExpandedWeights computes per-sample gradients for
_EW_LAYERS = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.Embedding,
)  # fmt: skip


class _SecureNoise:
    """The discrete Gaussian noise of :class:`SecureDPOptimizer` (mixed into both optimizers)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        rng: SecureRNG,
    ) -> None:
        super().__init__(  # type: ignore[call-arg]
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
        )
        self.rng = rng

    def add_noise(self) -> None:
        # one draw for the whole flattened query: one grid, one s, dim = D
        params = self.params  # type: ignore[attr-defined]
        for p in params:
            _check_processed_flag(p.summed_grad)
        flat = torch.cat([p.summed_grad.reshape(-1).double() for p in params])
        noisy = noisy_on_grid(flat, noise_multiplier=self.noise_multiplier, clip=self.max_grad_norm, rng=self.rng)  # type: ignore[attr-defined]
        offset = 0
        for p in params:
            n = p.summed_grad.numel()
            # the float32 cast rounds, but only the released float64 value: post-processing
            p.grad = noisy[offset : offset + n].to(p.summed_grad.dtype).view_as(p)
            offset += n
            _mark_as_processed(p.summed_grad)


class SecureDPOptimizer(_SecureNoise, DPOptimizer):
    """Opacus' ``DPOptimizer`` with floating-point-safe discrete Gaussian noise.

    The summed clipped gradient (all parameters together: a vector of ``D``
    coordinates with L2 sensitivity ``C``) is rounded onto one power-of-two grid
    and discrete Gaussian noise on that grid is added in integers
    (:func:`securefl.privacy.noise.noisy_on_grid`, same grid and ``s`` for every
    parameter, ``dim = D``). The std is raised by the rounding's sensitivity
    inflation (``C -> C + sqrt(D) grid``, relative ``sqrt(D) z 2^-22`` at most), so
    the ``noise_multiplier`` the accountant is charged with stays a lower bound of
    the mechanism's ``sigma / Delta``.

    Clipping is Opacus' (factor ``min(1, C / (||g_i|| + 1e-6))``), with each
    parameter's clipped sum taken as one matrix-vector product instead of a
    broadcast multiply and sum (no ``n x D`` temporary).
    """

    def clip_and_accumulate(self) -> None:
        samples = self.grad_samples
        if len(samples[0]) == 0:  # empty batch: a zero sum
            factor = torch.zeros((0,), device=samples[0].device)
        else:
            norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in samples], dim=1).norm(2, dim=1)
            factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for p in self.params:
            _check_processed_flag(p.grad_sample)
            g = self._get_flat_grad_sample(p).to(p.dtype)
            grad = (factor.to(device=g.device, dtype=p.dtype) @ g.reshape(len(g), p.numel())).view_as(p)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)


class SecureBookKeepingDPOptimizer(SecureDPOptimizer):
    """:class:`SecureDPOptimizer` for mode ``"bk"``: the per-sample norms combine
    ExpandedWeights' per-sample gradients with the book-kept linear layers' ghost
    norms, and those layers' clipped sums come from :meth:`BookKeepingModule.accumulate`."""

    bookkeeping: BookKeepingModule

    @property
    def accumulated_iterations(self) -> int:
        return 1  # one forward and backward per step (as Opacus' ghost-clipping optimizer)

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool:
        # Opacus' pre_step without its ``grad_samples`` lookup (book-kept parameters have none)
        self.clip_and_accumulate()
        if self._check_skip_next_step():
            self._is_last_step_skipped = True
            return False
        self.add_noise()
        self.scale_grad()
        self._is_last_step_skipped = False
        return True

    def clip_and_accumulate(self) -> None:
        bk = self.bookkeeping
        ew = [p for p in self.params if not bk.book_kept(p)]
        samples = [self._get_flat_grad_sample(p) for p in ew]
        dtype = self.params[0].dtype
        norms_sq = bk.norms_sq(bk.batch_size, dtype)
        for g in samples:
            norms_sq = norms_sq + g.reshape(len(g), -1).norm(2, dim=-1).to(dtype) ** 2
        factor = (self.max_grad_norm / (norms_sq.sqrt() + 1e-6)).clamp(max=1.0)
        for p, g in zip(ew, samples):
            _check_processed_flag(p.grad_sample)
            grad = (factor.to(dtype=p.dtype) @ g.to(p.dtype).reshape(len(g), p.numel())).view_as(p)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)
        bk.accumulate(factor)


class SecureGhostDPOptimizer(_SecureNoise, DPOptimizerFastGradientClipping):
    """The ghost-clipping optimizer (the clipped sum arrives in ``p.grad``) with the
    same discrete Gaussian noise as :class:`SecureDPOptimizer`."""


def steps_per_round(local_epochs: float, sample_rate: float) -> int:
    """Poisson steps that make ``local_epochs`` passes in expectation."""
    return max(1, math.ceil(local_epochs / sample_rate - 1e-9))


def choose_grad_sample_mode(model: nn.Module) -> str:
    """The grad-sample mode ``"auto"`` picks for ``model``: a fixed rule on the types
    of its layers with trainable parameters (deterministic, no timing): if all are
    layers ExpandedWeights supports, ``"bk"`` when one of them is ``nn.Linear`` (its
    per-sample gradients, ``n x out x in``, are what costs), ``"ew"`` otherwise;
    else ``"hooks"``."""
    layers = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    if not layers:
        return "hooks"
    if all(type(m) in _EW_LAYERS for m in layers):
        return "bk" if any(type(m) is nn.Linear for m in layers) else "ew"
    return "hooks"


def _check_mode(mode: str, model: nn.Module) -> str:
    if mode not in GRAD_SAMPLE_MODES:
        raise ConfigValueError("grad_sample_mode", mode, f"must be one of {', '.join(GRAD_SAMPLE_MODES)}")
    return choose_grad_sample_mode(model) if mode == "auto" else mode


class GradSampleWrapper:
    """``model`` wrapped for per-sample clipping in one grad-sample mode (not
    ``"auto"``); ``max_grad_norm`` is the clip (ghost clipping needs it up front)."""

    def __init__(self, model: nn.Module, mode: str, max_grad_norm: float) -> None:
        GradSampleModule.validate(model, strict=True)  # no buffers (BatchNorm) in trainable layers
        self.model, self.mode, self.max_grad_norm = model, mode, float(max_grad_norm)
        if mode == "hooks":
            self.gsm: nn.Module = GradSampleModule(model, loss_reduction="sum")
        elif mode == "ew":
            self.gsm = GradSampleModuleExpandedWeights(model, loss_reduction="sum")
        elif mode == "bk":
            self.gsm = BookKeepingModule(model, loss_reduction="sum")
        elif mode == "ghost":
            self.gsm = GradSampleModuleFastGradientClipping(
                model, loss_reduction="sum", max_grad_norm=self.max_grad_norm, use_ghost_clipping=True
            )
        else:
            raise ConfigValueError("grad_sample_mode", mode, "must be one of hooks, ew, ghost, bk")
        self.params = [p for p in model.parameters() if p.requires_grad]

    def optimizer(
        self, base: torch.optim.Optimizer, *, noise_multiplier: float, expected_batch_size: float, rng: SecureRNG
    ) -> DPOptimizer:
        """The DP optimizer of this mode around ``base``."""
        cls = {"ghost": SecureGhostDPOptimizer, "bk": SecureBookKeepingDPOptimizer}.get(self.mode, SecureDPOptimizer)
        opt = cls(
            base, noise_multiplier=noise_multiplier, max_grad_norm=self.max_grad_norm,
            expected_batch_size=expected_batch_size, rng=rng,
        )  # fmt: skip
        if isinstance(opt, SecureBookKeepingDPOptimizer):
            opt.bookkeeping = self.gsm  # type: ignore[assignment]
        return opt

    def set_hooks(self, on: bool) -> None:
        """Turn the wrapper's module hooks on (inside :func:`dp_sgd_train`) or off."""
        switch = getattr(self.gsm, "enable_hooks" if on else "disable_hooks", None)
        if switch is not None:
            switch()

    def backward(self, xb: torch.Tensor, yb: torch.Tensor, loss_fn: Callable[..., torch.Tensor]) -> float:
        """Forward and backward on a non-empty batch; return the summed loss. Afterwards
        the optimizer finds the per-sample gradients (hooks, ew) or the clipped sum
        in ``p.grad`` (ghost)."""
        out = self.gsm(xb)
        loss = loss_fn(out, yb, reduction="sum")
        if self.mode != "ghost":
            loss.backward()
            return loss.item()
        # ghost clipping: pass 1 computes per-sample norms (hooks on) and dL/d out_i;
        # pass 2 back-propagates coef_i * dL/d out_i (hooks off): sum_i coef_i grad_i
        out.retain_grad()
        loss.backward(retain_graph=True)
        coef = self.gsm.get_clipping_coef().to(out.dtype)
        for p in self.params:
            p.grad = None
        self.gsm.disable_hooks()
        try:
            out.backward(coef.view(-1, *([1] * (out.dim() - 1))) * out.grad)
        finally:
            self.gsm.enable_hooks()
        return loss.item()

    def empty_batch(self) -> None:
        """An empty Poisson batch: a zero clipped sum (the step still adds noise)."""
        if isinstance(self.gsm, BookKeepingModule):
            self.gsm.clear()
        for p in self.params:
            if self.mode == "ghost":
                p.grad = torch.zeros_like(p)
            elif not (isinstance(self.gsm, BookKeepingModule) and self.gsm.book_kept(p)):
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)

    def close(self) -> None:
        """Remove the hooks and Opacus' attributes from the model."""
        self.gsm._close()


class WrapperCache:
    """Keeps one :class:`GradSampleWrapper` per model across :func:`dp_sgd_train`
    calls (a client's rounds); a different mode or clip for the same model
    replaces it. :meth:`close` unwraps every model."""

    def __init__(self) -> None:
        self._wrappers: dict[int, GradSampleWrapper] = {}

    def get(self, model: nn.Module, mode: str, max_grad_norm: float) -> GradSampleWrapper:
        w = self._wrappers.get(id(model))
        if w is not None and (w.model is not model or w.mode != mode or w.max_grad_norm != float(max_grad_norm)):
            if w.model is model:
                w.close()
            w = None
        if w is None:
            w = self._wrappers[id(model)] = GradSampleWrapper(model, mode, max_grad_norm)
        return w

    def close(self) -> None:
        for w in self._wrappers.values():
            w.close()
        self._wrappers.clear()


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
    grad_sample_mode: str = "auto",
    cache: WrapperCache | None = None,
) -> float:
    """Run ``steps`` DP-SGD steps on ``model`` in place; return the mean batch loss.

    Each step includes every example independently with probability
    ``sample_rate`` (Poisson sampling); an empty batch still takes a noise-only
    step, as the accountant's analysis assumes. The noisy gradient sum is divided
    by ``expected_batch_size``, a public constant (Abadi et al. 2016 divide by the
    lot size L); ``None`` uses ``sample_rate * len(x)`` as Opacus does, which makes
    the update's scale depend on the dataset size.

    ``loss_fn(output, target, reduction="sum")`` must be a sum of per-example terms.
    ``grad_sample_mode`` is one of :data:`GRAD_SAMPLE_MODES` (see the module
    docstring); with a ``cache`` the wrapped model is kept for the next call,
    otherwise it is unwrapped before returning.
    """
    n = len(x)
    if expected_batch_size is None:
        expected_batch_size = sample_rate * n
    mode = _check_mode(grad_sample_mode, model)
    wrapper = cache.get(model, mode, max_grad_norm) if cache is not None else GradSampleWrapper(model, mode, max_grad_norm)
    opt = wrapper.optimizer(
        optimizer_fn(list(wrapper.gsm.parameters())),
        noise_multiplier=noise_multiplier,
        expected_batch_size=expected_batch_size,
        rng=rng,
    )
    losses: list[float] = []
    wrapper.set_hooks(True)
    try:
        with warnings.catch_warnings():
            # inputs never require grad; torch warns about full backward hooks then
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            _dp_steps(wrapper, opt, x, y, loss_fn, sample_rate, steps, rng, losses)
    finally:
        if cache is None:
            wrapper.close()
        else:
            wrapper.set_hooks(False)
    return float(sum(losses) / len(losses)) if losses else float("nan")


def _dp_steps(wrapper, opt, x, y, loss_fn, sample_rate, steps, rng, losses) -> None:
    n = len(x)
    for _ in range(steps):
        mask = torch.from_numpy(rng.bernoulli(sample_rate, n))
        xb, yb = x[mask], y[mask]
        opt.zero_grad(set_to_none=True)
        if len(xb) == 0:
            wrapper.empty_batch()
        else:
            losses.append(wrapper.backward(xb, yb, loss_fn) / len(xb))
        opt.step()
