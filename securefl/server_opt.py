"""Server optimizers: how the aggregated update moves the global model.

The aggregate ``u`` is treated as a pseudo-gradient pointing downhill
(``u = mean of w_local - w_global``). Adaptive federated optimization
(Reddi et al., ICLR 2021) gives FedAvgM and FedAdam.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class ServerOptimizer(ABC):
    def __init__(self, lr: float) -> None:
        self.lr = lr

    @abstractmethod
    def step(self, weights: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """Return the new global weights (inputs are not modified)."""


class FedAvgOpt(ServerOptimizer):
    """w <- w + lr * u (FedAvg with server learning rate; lr=1 is plain FedAvg)."""

    def step(self, weights: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return weights + self.lr * update


class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al. 2019): v <- beta v + u; w <- w + lr v."""

    def __init__(self, lr: float, momentum: float = 0.9) -> None:
        super().__init__(lr)
        self.momentum = momentum
        self.velocity: torch.Tensor | None = None

    def step(self, weights: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        self.velocity = update.clone() if self.velocity is None else self.momentum * self.velocity + update
        return weights + self.lr * self.velocity


class FedAdam(ServerOptimizer):
    """FedAdam (Reddi et al. 2021): Adam moments on the pseudo-gradient, no bias
    correction, adaptivity ``tau``."""

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(lr)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def step(self, weights: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        if self.m is None or self.v is None:
            self.m = torch.zeros_like(update)
            self.v = torch.full_like(update, self.tau**2)
        self.m = self.beta1 * self.m + (1 - self.beta1) * update
        self.v = self.beta2 * self.v + (1 - self.beta2) * update * update
        return weights + self.lr * self.m / (self.v.sqrt() + self.tau)


SERVER_OPTIMIZERS = {"fedavg": FedAvgOpt, "fedavgm": FedAvgM, "fedadam": FedAdam}


def make_server_optimizer(name: str, *, lr: float, momentum: float = 0.9) -> ServerOptimizer:
    if name == "fedavgm":
        return FedAvgM(lr, momentum)
    return SERVER_OPTIMIZERS[name](lr)
