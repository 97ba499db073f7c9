"""Named settings of the poisoning bench (``securefl attack bench --suite poisoning --setting NAME``).

``default`` is the bench's own easy setting: digits, 20 IID clients, FedAvg with one
local epoch (about five minibatch steps) per round for 20 rounds, a tanh MLP, and
clients that forget everything between rounds.

``literature`` is the setting in which the adaptive attacks of the literature were
shown to break robust aggregators: a ReLU MLP, worker momentum 0.9 kept by every
client across rounds, one minibatch step per round, and enough rounds to converge
(Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization",
ICML 2021; Shejwalkar and Houmansadr, "Manipulating the Byzantine", NDSS 2021; Xie,
Koyejo, Gupta, "Fall of Empires", UAI 2019). Each round's update is then
``-lr * m`` with ``m <- 0.9 m + 0.1 g``, one small, low-variance step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn


def relu_mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 64) -> nn.Module:
    """A two-layer perceptron with ReLU activations (the literature's MLP)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


#: the model spec of the literature setting (resolved by securefl.models like any user's)
RELU_MLP = "attacks.poisoning.settings:relu_mlp"


@dataclass(frozen=True)
class Setting:
    """A named base configuration (flat RunConfig fields) and how it reads in a table."""

    name: str
    base: dict[str, Any]
    summary: str


_COMMON: dict[str, Any] = {"dataset": "digits", "clients": 20, "partition": "iid", "byzantine": 4}

SETTINGS: dict[str, Setting] = {
    "default": Setting(
        "default",
        {**_COMMON, "model": "mlp", "rounds": 20, "local_epochs": 1.0},
        "tanh MLP, FedAvg 20 rounds x 1 local epoch (SGD lr 0.3, batch 32), no client state",
    ),
    "literature": Setting(
        "literature",
        {**_COMMON, "model": RELU_MLP, "rounds": 150, "local_steps": 1, "batch_size": 32, "lr": 1.0,
         "client_momentum": 0.9},
        "ReLU MLP, worker momentum 0.9, 1 minibatch step (batch 32, lr 1.0) per round, 150 rounds",
    ),
}


def setting(name: str) -> Setting:
    """The setting called ``name`` (a ConfigValueError naming ``setting`` otherwise)."""
    from securefl.exceptions import ConfigValueError

    if name not in SETTINGS:
        raise ConfigValueError("setting", name, f"must be one of {', '.join(SETTINGS)}")
    return SETTINGS[name]
