"""Single-pass mixed per-sample clipping (grad-sample mode ``"bk"``): ghost norms and
book-kept clipped sums for ``nn.Linear`` layers, PyTorch's ExpandedWeights per-sample
gradients (through Opacus' ``GradSampleModuleExpandedWeights``) for every other layer.

For a linear layer with input ``a_i`` and output gradient ``g_i`` (one row per
example) the per-sample weight gradient is ``g_i a_i^T``; its norm is
``||g_i|| ||a_i||`` (Goodfellow 2015; ghost clipping, Li et al., ICLR 2022) and the
clipped sum is ``sum_i c_i g_i a_i^T = (c * G)^T A``, one matrix product. Keeping
``A`` and ``G`` from the one backward pass (book-keeping, Bu et al., ICML 2023)
avoids both the ``n x out x in`` per-sample tensor of ExpandedWeights and the second
backward pass of ghost clipping. Layers applied to sequences (``a_i`` of shape
``T x in``) and layers called more than once per forward get their per-sample
gradients formed explicitly. Clipping is Opacus' (:class:`SecureDPOptimizer`):
factor ``min(1, C / (||g_i|| + 1e-6))`` on the norm over all parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from opacus.grad_sample import GradSampleModuleExpandedWeights
from torch import nn
from torch.nn.utils._expanded_weights import ExpandedWeight

from securefl.exceptions import ConfigValueError


class BookKeepingModule(GradSampleModuleExpandedWeights):
    """``m`` with ExpandedWeights on its other layers' parameters and the inputs and
    output gradients of its (wholly) trainable ``nn.Linear`` layers recorded, during
    this wrapper's forward and backward only."""

    def __init__(self, m: nn.Module, *, loss_reduction: str = "sum") -> None:
        super().__init__(m, loss_reduction=loss_reduction)
        self.linears = [
            mod for mod in m.modules()
            if type(mod) is nn.Linear and all(p.requires_grad for p in mod.parameters(recurse=False))
        ]  # fmt: skip  (a partly frozen linear layer is left to ExpandedWeights)
        self._linear_params = {id(p) for mod in self.linears for p in mod.parameters(recurse=False)}
        owners = [id(p) for mod in m.modules() for p in mod.parameters(recurse=False)]
        if any(owners.count(i) > 1 for i in self._linear_params):
            raise ConfigValueError("grad_sample_mode", "bk", "a linear layer shares its parameters with another layer")
        self._records: dict[nn.Linear, list[list[Any]]] = {}
        self._recording = False
        self.batch_size = 0  #: examples in the recorded batch
        self._handles = [mod.register_forward_hook(self._record) for mod in self.linears]

    def book_kept(self, p: torch.Tensor) -> bool:
        """Whether ``p`` belongs to a book-kept linear layer (it gets no ``grad_sample``)."""
        return id(p) in self._linear_params

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        n = x.shape[0]
        params = {}
        for name, p in self._module.named_parameters():
            if not p.requires_grad:
                params[name] = p
            elif id(p) in self._linear_params:
                # no weight gradient is formed; the bias stays a leaf so the output needs grad
                params[name] = p.detach().requires_grad_(name.endswith("bias"))
            else:
                params[name] = ExpandedWeight(p, n, self.loss_reduction)
        for mod in self.linears:
            if mod.bias is None:  # keep the output in the graph through the weight instead
                params[_name_of(self._module, mod.weight)].requires_grad_(True)
        self._records = {mod: [] for mod in self.linears}
        self.batch_size, self._recording = n, True
        try:
            return torch.func.functional_call(self._module, params, (x, *args), kwargs)
        finally:
            self._recording = False

    def _record(self, mod: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        if not self._recording or not output.requires_grad:
            return
        slot: list[Any] = [inputs[0].detach(), None]
        self._records[mod].append(slot)
        output.register_hook(lambda g: slot.__setitem__(1, g.detach()))

    def clear(self) -> None:
        """Forget the recorded batch (an empty Poisson batch has none)."""
        self._records = {mod: [] for mod in self.linears}
        self.batch_size = 0

    def norms_sq(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """Per-sample squared gradient norms of all book-kept parameters together."""
        total = torch.zeros(n, dtype=dtype)
        for mod, recs in self._records.items():
            for g in self._per_sample(mod, recs):
                total += g.reshape(n, -1).pow(2).sum(1).to(dtype)
            if len(recs) == 1 and recs[0][0].dim() == 2:
                a, go = recs[0]
                total += (a.pow(2).sum(1) * go.pow(2).sum(1)).to(dtype)
                if mod.bias is not None:
                    total += go.pow(2).sum(1).to(dtype)
        return total

    def _per_sample(self, mod: nn.Linear, recs: list[list[Any]]) -> list[torch.Tensor]:
        """Explicit per-sample gradients, only where the ghost norm does not apply."""
        if not recs or (len(recs) == 1 and recs[0][0].dim() == 2):
            return []
        w = sum(torch.einsum("n...o,n...i->noi", go, a) for a, go in recs)
        out = [w]
        if mod.bias is not None:
            out.append(sum(go.reshape(len(go), -1, go.shape[-1]).sum(1) for _, go in recs))
        return out

    def accumulate(self, factor: torch.Tensor) -> None:
        """Set ``p.summed_grad = sum_i factor_i grad_i`` for every book-kept parameter,
        then forget the recorded batch."""
        for mod, recs in self._records.items():
            w = torch.zeros_like(mod.weight)
            b = torch.zeros_like(mod.bias) if mod.bias is not None else None
            for a, go in recs:
                c = factor.to(go.dtype).view(-1, *([1] * (go.dim() - 1)))
                cg = (c * go).reshape(-1, go.shape[-1])
                w += cg.t() @ a.reshape(-1, a.shape[-1])
                if b is not None:
                    b += cg.sum(0)
            _add_summed(mod.weight, w)
            if b is not None:
                _add_summed(mod.bias, b)
        self.clear()  # the batch's activations are not kept past the step

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _close(self) -> None:
        self.remove_hooks()
        super()._close()


def _add_summed(p: torch.Tensor, grad: torch.Tensor) -> None:
    p.summed_grad = grad if getattr(p, "summed_grad", None) is None else p.summed_grad + grad


def _name_of(module: nn.Module, param: torch.Tensor) -> str:
    return next(name for name, p in module.named_parameters() if p is param)
