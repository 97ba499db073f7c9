"""Training settings that work under differential privacy without tuning.

The library's plain defaults (two local epochs of minibatch SGD, lr 0.3, clip 1,
FedAvg) suit non-private training; under DP they lose several points of accuracy
(README, "Choosing DP-SGD settings"). When a run asks for ``dp="sample"`` or
``dp="client"`` and leaves a group of coupled settings unset, :func:`with_dp_defaults`
fills that group from the recipe of the DP mode; a setting the user gave (flag, TOML
key or flat API field) always wins, and a group with any member given is left
alone entirely (a lone ``--optimizer adam`` must not inherit SGD's lr of 4).

Sample-level DP (DP-SGD, Abadi et al. 2016) follows the tuned recipe: at a fixed
epsilon the signal-to-noise ratio of DP-SGD hardly depends on the sampling rate, so
each client takes one full-batch step per round (``sample_rate`` 1), dividing by a
public lot size equal to the mean client size (the training-set size over the
number of clients, so no client's update scale reveals its own n_k), with a small
clip and a large step; server momentum (FedAvgM) averages the clients' independent
noise over rounds, and a moving average of the released weights (``ema``, free
post-processing) smooths what is left.

Client-level DP (DP-FedAvg, McMahan et al. 2018) clips whole updates, so the
recipe keeps each update's norm predictable (one local epoch) and lets server
momentum average the server's noise over rounds.

``securefl train`` prints :func:`describe` of what it chose; API callers pass their
flat settings through :func:`with_dp_defaults` (or :func:`config_with_dp_defaults`).
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["GROUPS", "RECIPES", "config_with_dp_defaults", "describe", "with_dp_defaults"]

#: coupled settings: a group is chosen whole, and only when none of its fields was given
GROUPS: dict[str, tuple[str, ...]] = {
    "schedule": ("local_epochs", "local_steps", "batch_size", "sample_rate"),
    "step": ("lr", "clip", "optimizer", "momentum", "client_momentum"),
    "server": ("server_opt", "server_lr", "server_momentum"),
    "release": ("ema",),
    "model": ("model", "hidden"),
}

#: DP mode -> group -> the settings chosen for it ("batch_size": None = the mean client size)
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "sample": {
        "schedule": {"local_epochs": 1.0, "sample_rate": 1.0, "batch_size": None},
        "step": {"lr": 4.0, "clip": 0.5},
        "server": {"server_opt": "fedavgm", "server_lr": 0.5},
        "release": {"ema": 0.7},
        # the noise grows with the model's dimension, the signal does not: logistic
        # regression (650 weights on digits) beats the 64-unit MLP (4,810) under DP-SGD
        "model": {"model": "logreg"},
    },
    "client": {
        "schedule": {"local_epochs": 1.0},
        "step": {"lr": 0.3, "clip": 1.0},
        "server": {"server_opt": "fedavgm", "server_lr": 0.5},
        "release": {"ema": 0.7},
    },
}


def _train_size(values: Mapping[str, Any]) -> int:
    """Examples in the run's training split (the dataset is public to the operator)."""
    from securefl.data import load_dataset

    data = load_dataset(
        values.get("dataset", "digits"), test_fraction=values.get("test_fraction", 0.2), seed=values.get("seed", 0)
    )
    return int(len(data.y_train))


def with_dp_defaults(
    values: Mapping[str, Any], *, train_size: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(values with the DP recipe's groups filled in, what was chosen)``.

    Nothing is chosen without ``dp`` in ``{"sample", "client"}``, and nothing that
    ``values`` already holds is replaced. ``train_size`` (examples in the training
    split) sets DP-SGD's public lot size; when None it is counted by loading the
    dataset."""
    recipe = RECIPES.get(str(values.get("dp", "none")), {})
    chosen: dict[str, Any] = {}
    for group, settings in recipe.items():
        if any(values.get(name) is not None for name in GROUPS[group]):
            continue
        chosen.update(settings)
    if "batch_size" in chosen:
        n = train_size if train_size is not None else _train_size(values)
        chosen["batch_size"] = max(1, round(n / int(values.get("clients", 10))))
    return {**values, **chosen}, chosen


def config_with_dp_defaults(values: Mapping[str, Any], *, train_size: int | None = None):
    """:meth:`RunConfig.from_flat` of :func:`with_dp_defaults`'s values, and what was chosen."""
    from securefl.config import RunConfig

    filled, chosen = with_dp_defaults(values, train_size=train_size)
    return RunConfig.from_flat(filled), chosen


def describe(dp: str, chosen: Mapping[str, Any]) -> str:
    """One line naming what was chosen, as flags."""
    flags = " ".join(f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
                     for k, v in chosen.items())
    return f"--dp {dp} without training flags: chose {flags} (README, 'DP defaults'; any flag given wins)"
