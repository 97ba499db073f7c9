"""Small reference models that Opacus can wrap.

No BatchNorm anywhere (it mixes examples in a batch, which breaks per-sample
gradients); the CNN uses GroupNorm. Every model takes inputs of ``input_shape``
and returns logits (classification) or one value (regression).

A user's own model comes as a factory (:func:`build_model` takes a registered
name, a ``MODULE:CALLABLE`` spec or a callable); :func:`check_model` checks it
against the data and the DP mode before a run trains it.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from torch import nn

from securefl.exceptions import ConfigError, ConfigValueError
from securefl.userspec import SPEC_FORM, describe, is_user_spec, load_callable


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one linear layer on the flattened input."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, **_: object) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), max(num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class LinearRegression(nn.Module):
    """Least-squares linear regression: one output."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int = 0, **_: object) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """Two-layer perceptron with tanh activations (bounded activations suit DP-SGD)."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 64, **_: object
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden),
            nn.Tanh(),
            nn.Linear(hidden, max(num_classes, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """A small convnet for 1-channel images: two conv blocks with GroupNorm."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 32, **_: object
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigValueError("model", "cnn", f"needs image input (C, H, W), got shape {input_shape}")
        c, h, w = input_shape
        ch = 16
        self.features = nn.Sequential(
            nn.Conv2d(c, ch, 3, padding=1),
            nn.GroupNorm(4, ch),
            nn.Tanh(),
            nn.Conv2d(ch, 2 * ch, 3, padding=1, stride=2),
            nn.GroupNorm(4, 2 * ch),
            nn.Tanh(),
        )
        flat = 2 * ch * ((h + 1) // 2) * ((w + 1) // 2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.Tanh(), nn.Linear(hidden, max(num_classes, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "logreg": LogisticRegression,
    "linreg": LinearRegression,
    "mlp": MLP,
    "cnn": CNN,
}


def build_model(
    name: str | Callable[..., nn.Module],
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: int = 64,
    seed: int | None = None,
) -> nn.Module:
    """Build a registered model (``name`` in ``MODELS``), a user factory named by a
    ``MODULE:CALLABLE`` spec, or a factory passed directly; ``seed`` makes the
    initial weights reproducible.

    A factory may take any of ``input_shape``, ``num_classes`` and ``hidden`` as
    keyword arguments (it gets those it declares) or none; it must return an
    ``nn.Module``."""
    factory, label = resolve_factory(name)
    if seed is None:
        return _call_factory(factory, label, input_shape, num_classes, hidden)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _call_factory(factory, label, input_shape, num_classes, hidden)


def resolve_factory(name: str | Callable[..., nn.Module]) -> tuple[Callable[..., nn.Module], str]:
    """``(factory, label)`` for a registered name, a spec or a callable."""
    if callable(name):
        return name, describe(name)
    if is_user_spec(name):
        return load_callable("model", name), name
    if name not in MODELS:
        raise ConfigValueError("model", name, f"must be one of {', '.join(sorted(MODELS))} or {SPEC_FORM}")
    return MODELS[name], name


def _call_factory(factory: Callable[..., nn.Module], label: str, input_shape, num_classes, hidden) -> nn.Module:
    offered = {"input_shape": tuple(input_shape), "num_classes": num_classes, "hidden": hidden}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: call it bare
        params = {}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = offered
    else:
        kwargs = {k: v for k, v in offered.items() if k in params}
    try:
        model = factory(**kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # the user's factory failed: one line naming the field
        raise ConfigValueError("model", label, f"the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigValueError("model", label, f"the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def check_model(
    model: nn.Module, label: str, *, input_shape: tuple[int, ...], num_classes: int, dp: str = "none"
) -> None:
    """What a federation needs of a model, checked before training: it maps a batch
    of ``input_shape`` inputs to ``max(num_classes, 1)`` outputs (logits, or one
    value for regression), and under ``dp="sample"`` Opacus can compute its
    per-sample gradients (no BatchNorm and no other layer Opacus refuses)."""
    expected = max(num_classes, 1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise ConfigValueError("model", label, f"fails on inputs of shape {tuple(input_shape)}: {type(exc).__name__}: {exc}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != expected:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        what = f"{num_classes} classes" if num_classes else "a regression target (1 output)"
        raise ConfigValueError("model", label, f"outputs shape {shape} for 2 inputs; the dataset has {what}, so it must output (2, {expected})")
    if dp == "sample":
        _check_opacus(model, label)


def _check_opacus(model: nn.Module, label: str) -> None:
    """Refuse the first layer Opacus cannot train with per-sample gradients, naming it and the fix."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    for name, sub in trainable_modules(model):
        kind = type(sub).__name__
        validator = ModuleValidator.VALIDATORS.get(type(sub))
        errors = validator(sub) if validator is not None else []
        if errors:
            reason = str(errors[0]).split(". ")[0].rstrip(".")
        elif any(True for _ in sub.buffers(recurse=False)):
            reason = f"{kind} is a trainable layer with buffers, which Opacus cannot train privately"
        else:
            continue
        fix = _OPACUS_FIXES.get("BatchNorm" if kind.startswith("BatchNorm") else kind, _DEFAULT_FIX)
        raise ConfigValueError(
            "model", label, f"layer {name!r} ({kind}) cannot be trained under --dp sample: {reason}; {fix}"
        )


_DEFAULT_FIX = "replace it with a layer Opacus supports (opacus.validators.ModuleValidator.fix(model) swaps the known ones)"
_OPACUS_FIXES = {
    "BatchNorm": "replace it with nn.GroupNorm (opacus.validators.ModuleValidator.fix(model) does this)",
    "SyncBatchNorm": "replace it with nn.GroupNorm (opacus.validators.ModuleValidator.fix(model) does this)",
    "LSTM": "use opacus.layers.DPLSTM (opacus.validators.ModuleValidator.fix(model) swaps it)",
    "GRU": "use opacus.layers.DPGRU (opacus.validators.ModuleValidator.fix(model) swaps it)",
    "MultiheadAttention": "use opacus.layers.DPMultiheadAttention (opacus.validators.ModuleValidator.fix(model) swaps it)",
}


def num_parameters(model: nn.Module) -> int:
    """Trainable values a client sends (the length of :func:`get_flat`)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- flat vectors
def get_flat(model: nn.Module) -> torch.Tensor:
    """All parameters, in ``named_parameters`` order, as one float32 vector (a copy)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(torch.float32).clone()


def set_flat(model: nn.Module, vector: torch.Tensor) -> None:
    """Load a vector produced by :func:`get_flat` back into ``model`` in place."""
    total = sum(p.numel() for p in model.parameters())
    if vector.numel() != total:
        raise ValueError(f"vector has {vector.numel()} values, model has {total} parameters")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(vector[offset : offset + n].view_as(p))
            offset += n
