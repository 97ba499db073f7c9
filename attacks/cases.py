"""Inversion cases: who trains on what, and what the server gets to read.

A *case* fixes the threat model of one federated round (breaching's "case"): the
model, the clients' local training (``local_steps`` full-batch SGD steps of
learning rate ``local_lr`` on ``batch_size`` images), the privacy mechanism and
the protection. :func:`run_round` plays the round and returns

* a :class:`ServerView`: exactly what an honest-but-curious server reads, and
  all an attack in :mod:`attacks.inversion` may use;
* a :class:`GroundTruth`: the target client's images and labels, for scoring only.

What the server reads, by protection (``RELEASES``):

* ``none`` — every individual update in the clear; the attack reads the target
  client's ``n_k * Delta_k`` and ``n_k``.
* ``ckks`` / ``secagg`` — only the round's aggregate ``sum_k n_k Delta_k`` and
  ``sum_k n_k`` over the ``clients`` of the round. That sum is, by construction,
  exactly what those protections release (CKKS decrypts only the aggregate
  ciphertext; the secure-aggregation masks cancel only in the sum), so the case
  computes it as the plaintext sum. CKKS adds approximation noise of order
  ``2^-scale_bits``, far below anything that matters here; leaving it out can
  only help the attack.

With ``dp="sample"`` each client runs DP-SGD on its own batch (Abadi et al. 2016):
per-example gradients clipped to ``clip`` in L2, summed, Gaussian noise of
standard deviation ``noise_multiplier * clip`` from :class:`SecureRNG` added, then
divided by the batch size, at every local step. ``noise_multiplier=0`` is
clipping alone.

With ``dp="client"`` (DP-FedAvg, McMahan et al. 2018) each client clips its
whole update ``Delta_k`` to L2 norm ``clip``. Under ``secagg`` the clients also
add their shares of the noise (``--secagg-distributed-dp``: N(0, (z clip)^2 /
clients) each, so the released sum carries N(0, (z clip)^2)); under ``none`` and
``ckks`` the server adds the noise itself after it has read the clipped updates
or their sum, so the view carries none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from securefl.exceptions import ConfigTypeError, ConfigValueError
from securefl.models import build_model
from securefl.privacy.noise import SecureRNG

DP_MODES = ("none", "sample", "client")


def _plain_release(updates: list[tuple[list[torch.Tensor], float]]) -> tuple[list[torch.Tensor], float, int]:
    """Protection ``none``: the server reads the target's (first) update alone."""
    update, weight = updates[0]
    return [u.clone() for u in update], weight, 1


def _aggregate_release(updates: list[tuple[list[torch.Tensor], float]]) -> tuple[list[torch.Tensor], float, int]:
    """CKKS / secure aggregation: only the sum of the weighted updates and of the weights."""
    total = [torch.zeros_like(u) for u in updates[0][0]]
    weight = 0.0
    for update, w in updates:
        for t, u in zip(total, update):
            t += u
        weight += w
    return total, weight, len(updates)


#: protection name -> what the server reads from a round's weighted updates
RELEASES: dict[str, Callable[[list[tuple[list[torch.Tensor], float]]], tuple[list[torch.Tensor], float, int]]] = {
    "none": _plain_release,
    "ckks": _aggregate_release,
    "secagg": _aggregate_release,
}


@dataclass(frozen=True)
class CaseConfig:
    """One round's threat model (see the module docstring)."""

    batch_size: int = 1
    local_steps: int = 1
    local_lr: float = 0.1
    dp: str = "none"
    noise_multiplier: float = 0.0
    clip: float = 1.0
    protect: str = "none"
    clients: int = 10
    model: str = "mlp"
    hidden: int = 64

    def __post_init__(self) -> None:
        for name in ("batch_size", "local_steps", "clients", "hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigTypeError(name, v, "must be an integer")
            if v < 1:
                raise ConfigValueError(name, v, "must be >= 1")
        for name in ("local_lr", "noise_multiplier", "clip"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigTypeError(name, v, "must be a number")
        if not self.local_lr > 0:
            raise ConfigValueError("local_lr", self.local_lr, "must be > 0")
        if not self.noise_multiplier >= 0:
            raise ConfigValueError("noise_multiplier", self.noise_multiplier, "must be >= 0")
        if not self.clip > 0:
            raise ConfigValueError("clip", self.clip, "must be > 0")
        if self.dp not in DP_MODES:
            raise ConfigValueError("dp", self.dp, f"must be one of {', '.join(DP_MODES)}")
        if self.dp == "none" and self.noise_multiplier > 0:
            raise ConfigValueError("noise_multiplier", self.noise_multiplier, "needs --dp sample or client")
        if self.protect not in RELEASES:
            raise ConfigValueError("protect", self.protect, f"must be one of {', '.join(RELEASES)}")
        if self.protect != "none" and self.clients < 2:
            raise ConfigValueError("clients", self.clients, f"an aggregate under {self.protect} needs >= 2 clients")

    @property
    def aggregated(self) -> bool:
        return self.protect != "none"


@dataclass(frozen=True)
class ServerView:
    """What the server reads in one round, plus the public training settings.

    ``update`` is ``sum n_k * Delta_k`` over the ``contributors`` it can see, one
    tensor per model parameter; ``weight`` is ``sum n_k`` (the number of images
    behind it).
    """

    model: nn.Module
    update: tuple[torch.Tensor, ...]
    weight: float
    contributors: int
    local_steps: int
    local_lr: float
    input_shape: tuple[int, ...]
    num_classes: int
    data_range: tuple[float, float] = (0.0, 1.0)

    def mean_gradient(self) -> list[torch.Tensor]:
        """``-mean(Delta) / (lr * steps)``: the average gradient for one local step
        (exactly the batch gradient when ``local_steps == 1`` and no noise)."""
        scale = -1.0 / (self.weight * self.local_lr * self.local_steps)
        return [u * scale for u in self.update]

    @property
    def images(self) -> int:
        """How many images the server knows are behind the update (``sum n_k``)."""
        return int(round(self.weight))


@dataclass(frozen=True)
class GroundTruth:
    """The target client's data, for scoring; never shown to an attack."""

    images: torch.Tensor
    labels: torch.Tensor
    all_images: torch.Tensor  #: every image in the round (all clients), target's first
    all_labels: torch.Tensor
    clipped_fraction: float  #: share of per-example gradients that the clip shrank


def _per_example_grads(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    def loss_one(p, xi, yi):
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)


def local_update(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: CaseConfig, rng: SecureRNG
) -> tuple[list[torch.Tensor], float]:
    """One client's ``Delta = w_local - w`` after ``case.local_steps`` full-batch
    steps on ``(x, y)``, plain SGD or DP-SGD; returns it with the fraction of
    per-example gradients the clip shrank."""
    names = [n for n, _ in model.named_parameters()]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = {n: t.clone() for n, t in start.items()}
    b = len(x)
    clipped = 0
    for _ in range(case.local_steps):
        g = _per_example_grads(model, params, x, y)
        if case.dp == "sample":
            norms = torch.sqrt(sum(g[n].flatten(1).pow(2).sum(1) for n in names))
            factor = (case.clip / (norms + 1e-12)).clamp(max=1.0)
            clipped += int((norms > case.clip).sum())
            step = {}
            for n in names:
                summed = (g[n] * factor.view(-1, *[1] * (g[n].dim() - 1))).sum(0)
                noise = rng.normal(tuple(summed.shape), case.noise_multiplier * case.clip, dtype=summed.dtype)
                step[n] = (summed + noise) / b
        else:
            step = {n: g[n].mean(0) for n in names}
        params = {n: params[n] - case.local_lr * step[n] for n in names}
    frac = clipped / (b * case.local_steps) if case.dp == "sample" else 0.0
    return [params[n] - start[n] for n in names], frac


def _client_level(delta: list[torch.Tensor], case: CaseConfig, rng: SecureRNG) -> tuple[list[torch.Tensor], float]:
    """DP-FedAvg on one client's update: clip to ``case.clip``; under secagg's
    distributed DP add this client's noise share."""
    norm = float(torch.sqrt(sum(d.double().pow(2).sum() for d in delta)))
    factor = min(1.0, case.clip / norm) if norm > 0 else 1.0
    out = [d * factor for d in delta]
    if case.protect == "secagg" and case.noise_multiplier > 0:
        share = case.noise_multiplier * case.clip / case.clients**0.5
        out = [d + rng.normal(tuple(d.shape), share, dtype=d.dtype) for d in out]
    return out, float(norm > case.clip)


def run_round(
    case: CaseConfig,
    model: nn.Module,
    client_data: list[tuple[torch.Tensor, torch.Tensor]],
    rng: SecureRNG,
) -> tuple[ServerView, GroundTruth]:
    """Play one round; client 0 is the target. ``client_data`` holds one
    ``(images, labels)`` batch per client (only the first is used under ``none``)."""
    if case.aggregated and len(client_data) != case.clients:
        raise ConfigValueError("clients", len(client_data), f"case expects {case.clients} client batches")
    participants = client_data if case.aggregated else client_data[:1]
    weighted = []
    fractions = []
    for x, y in participants:
        delta, frac = local_update(model, x, y, case, rng)
        n = float(len(x))
        if case.dp == "client":
            delta, frac = _client_level(delta, case, rng)
        # the wire carries float32 vectors
        weighted.append(([(d * n).to(torch.float32) for d in delta], n))
        fractions.append(frac)
    update, weight, count = RELEASES[case.protect](weighted)
    x0, y0 = client_data[0]
    view = ServerView(
        model=model,
        update=tuple(update),
        weight=weight,
        contributors=count,
        local_steps=case.local_steps,
        local_lr=case.local_lr,
        input_shape=tuple(x0.shape[1:]),
        num_classes=int(model(x0[:1]).shape[1]),
    )
    truth = GroundTruth(
        images=x0.clone(),
        labels=y0.clone(),
        all_images=torch.cat([x for x, _ in participants]),
        all_labels=torch.cat([y for _, y in participants]),
        clipped_fraction=float(sum(fractions) / len(fractions)),
    )
    return view, truth


def trial_batches(
    labels_pool: torch.Tensor, case: CaseConfig, trial: int, seed: int
) -> list[torch.Tensor]:
    """Indices of each client's batch for ``trial`` (a seeded, non-secret shuffle;
    trials draw disjoint target batches)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels_pool), generator=gen)
    b = case.batch_size
    k = case.clients if case.aggregated else 1
    targets = perm[trial * b : (trial + 1) * b]
    if len(targets) < b:
        raise ConfigValueError("trials", trial + 1, "more target images than the data has")
    rest = perm[torch.randperm(len(perm) - (trial + 1) * b, generator=torch.Generator().manual_seed(seed + 1 + trial)) + (trial + 1) * b]
    out = [targets]
    for c in range(1, k):
        out.append(rest[(c - 1) * b : c * b])
    return out


def build_case_model(case: CaseConfig, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """The round's global model: a freshly initialised network (round 0)."""
    return build_model(case.model, input_shape, num_classes, hidden=case.hidden, seed=seed)
