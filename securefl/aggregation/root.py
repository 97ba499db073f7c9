"""The server's root dataset for FLTrust (Cao et al., NDSS 2021).

FLTrust's server holds a small clean dataset (100 examples in the paper) drawn from
the same distribution as the clients' data, and each round computes its own update
g0 from the current global model with the clients' local training settings. That
update is the trust anchor of :func:`securefl.aggregation.robust.fltrust`.

The root data is the server's own: it never comes from a client and is never sent
anywhere (:func:`securefl.build.root_reference` draws it for a run). The server trains on it in plain SGD (no DP), which is private to it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from securefl.config import ClientConfig
from securefl.data import minibatches
from securefl.exceptions import ConfigValueError
from securefl.models import get_flat, set_flat


class RootReference:
    """Computes the server's update g0 on its root data from the global weights.

    Args:
        x, y: the root dataset.
        model_fn: builds a model of the federation's architecture.
        config: local training settings (the clients' ones, as in the paper).
        algorithm: ``"fedavg"`` (local epochs of minibatch SGD) or ``"fedsgd"`` (one full-batch step).
        task: ``"classification"`` or ``"regression"``.
        seed: seeds the minibatch order (not secret).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        model_fn: Callable[[], nn.Module],
        config: ClientConfig = ClientConfig(),
        algorithm: str = "fedavg",
        task: str = "classification",
        seed: int = 0,
    ) -> None:
        if len(x) == 0 or len(x) != len(y):
            raise ConfigValueError("root_size", len(x), f"root data needs matching, non-empty x and y (y has {len(y)})")
        self.x, self.y = x, y
        self.model = model_fn()
        self.config = config
        self.algorithm = algorithm
        self.loss_fn = F.cross_entropy if task == "classification" else F.mse_loss
        self.seed = seed

    def __call__(self, weights: torch.Tensor, round_: int) -> torch.Tensor:
        """g0 = w_root - weights after local training from ``weights``."""
        set_flat(self.model, weights)
        self.model.train()
        c = self.config
        opt = (
            torch.optim.Adam(self.model.parameters(), lr=c.lr)
            if c.optimizer == "adam"
            else torch.optim.SGD(self.model.parameters(), lr=c.lr, momentum=c.momentum)
        )
        n = len(self.x)
        if self.algorithm == "fedsgd":
            batches = [torch.arange(n)]
        else:
            batches = minibatches(n, c.batch_size, epochs=c.local_epochs, steps=c.local_steps, key=f"{self.seed}:root:{round_}")
        for idx in batches:
            opt.zero_grad()
            self.loss_fn(self.model(self.x[idx]), self.y[idx]).backward()
            opt.step()
        return get_flat(self.model) - weights
