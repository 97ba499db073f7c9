"""Per-example loss gradients (``torch.func``), as an attacker or an auditor
computes them; the library's own DP-SGD gets its per-sample gradients from Opacus."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap


def per_example_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Cross-entropy gradient of every example at ``params`` (the model's own
    parameters by default): parameter name -> tensor of shape ``(n, *param.shape)``."""
    if params is None:
        params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)


def flat_per_example_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example gradients flattened in parameter order (that of
    :func:`securefl.models.get_flat`), shape ``(n, dim)``."""
    g = per_example_grads(model, x, y)
    return torch.cat([t.reshape(len(x), -1) for t in g.values()], dim=1)
