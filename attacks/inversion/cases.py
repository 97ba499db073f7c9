"""Inversion cases: who trains on what, and what the server gets to read.

A *case* fixes the threat model of one federated round (breaching's "case"): the
model, the clients' local training (``local_steps`` full-batch SGD steps of
learning rate ``local_lr`` on ``batch_size`` images), the privacy mechanism and
the protection. :func:`run_round` plays the round and returns

* a :class:`ServerView`: exactly what an honest-but-curious server reads, and
  all an attack in :mod:`attacks.inversion.attacks` may use;
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

Every privacy mechanism is the library's own, called with the case's inputs
(``tests/attacks/inversion/test_cases_match_library.py`` pins each release to the
library's for the same inputs and the same seeded :class:`SecureRNG`):

* ``dp="sample"``: each client runs DP-SGD on its own batch (Abadi et al. 2016)
  through :func:`securefl.privacy.dpsgd.dp_sgd_train`, exactly as
  :class:`securefl.client.SecureClient` calls it: sampling rate 1 (the whole
  batch every step), per-example clip ``clip``, Gaussian noise of standard
  deviation ``noise_multiplier * clip`` from the :class:`SecureRNG`, divided by the
  public lot size (the batch size), ``local_steps`` steps of plain SGD.
  ``noise_multiplier=0`` is clipping alone.
* ``dp="client"`` (DP-FedAvg, McMahan et al. 2018): each client clips its whole
  update ``Delta_k`` to L2 norm ``clip`` with
  :func:`securefl.privacy.client_dp.clip_update`. Under ``secagg`` the clients also
  add their shares of the noise (``--secagg-distributed-dp``), each of standard
  deviation :func:`securefl.crypto.secagg.common.distributed_noise_stddev` for the
  library's default secure-aggregation settings (:meth:`CaseConfig.secagg_settings`),
  drawn on the fixed-point grid as a client does, so that any ``t`` survivors'
  shares sum to at least N(0, (z clip)^2); under ``none`` and ``ckks`` the server
  adds the noise itself after it has read the clipped updates or their sum, so the
  view carries none.

Under DP a client's update has weight 1, as the library sends it (the weight
``n_k`` would count private records); the server still knows how many images
stand behind the update (``ServerView.known_images``), a public batch size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attacks.common.grads import per_example_grads
from securefl.crypto.secagg.common import SecAggSettings, distributed_noise_stddev, noise_units
from securefl.exceptions import ConfigTypeError, ConfigValueError
from securefl.models import build_model, check_model
from securefl.privacy.client_dp import clip_update
from securefl.privacy.dpsgd import dp_sgd_train
from securefl.privacy.noise import SecureRNG

DP_MODES = ("none", "sample", "client")

#: one client's release: its (weighted) update, one tensor per parameter, and its weight
Release = tuple[list[torch.Tensor], float]


def _plain_release(updates: list[Release]) -> tuple[list[torch.Tensor], float, int]:
    """Protection ``none``: the server reads the target's (first) update alone."""
    update, weight = updates[0]
    return [u.clone() for u in update], weight, 1


def _aggregate_release(updates: list[Release]) -> tuple[list[torch.Tensor], float, int]:
    """CKKS / secure aggregation: only the sum of the weighted updates and of the weights."""
    total = [torch.zeros_like(u) for u in updates[0][0]]
    weight = 0.0
    for update, w in updates:
        for t, u in zip(total, update):
            t += u
        weight += w
    return total, weight, len(updates)


#: protection name -> what the server reads from a round's weighted updates
RELEASES: dict[str, Callable[[list[Release]], tuple[list[torch.Tensor], float, int]]] = {
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

    @property
    def distributed_noise(self) -> bool:
        """Whether the clients add DP noise shares (client-level DP under secagg)."""
        return self.dp == "client" and self.protect == "secagg" and self.noise_multiplier > 0

    def secagg_settings(self) -> SecAggSettings:
        """The secure-aggregation settings of a ``--dp client --secagg-distributed-dp``
        run with this clip and noise multiplier, every other field at the library's
        default (unit weights, as distributed DP requires)."""
        return SecAggSettings(clip=float(self.clip), max_weight=1.0, noise_multiplier=float(self.noise_multiplier))


@dataclass(frozen=True)
class ServerView:
    """What the server reads in one round, plus the public training settings.

    ``update`` is ``sum w_k * Delta_k`` over the ``contributors`` it can see, one
    tensor per model parameter, and ``weight`` is ``sum w_k`` (``w_k = n_k``
    without DP, 1 under DP); ``known_images`` is how many images the server knows
    stand behind the update (``sum n_k``; ``round(weight)`` when not given).
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
    known_images: int | None = None

    def mean_gradient(self) -> list[torch.Tensor]:
        """``-mean(Delta) / (lr * steps)``: the average gradient for one local step
        (exactly the batch gradient when ``local_steps == 1`` and no noise)."""
        scale = -1.0 / (self.weight * self.local_lr * self.local_steps)
        return [u * scale for u in self.update]

    @property
    def images(self) -> int:
        """How many images the server knows are behind the update (``sum n_k``)."""
        return self.known_images if self.known_images is not None else int(round(self.weight))


@dataclass(frozen=True)
class GroundTruth:
    """The target client's data, for scoring; never shown to an attack."""

    images: torch.Tensor
    labels: torch.Tensor
    all_images: torch.Tensor  #: every image in the round (all clients), target's first
    all_labels: torch.Tensor
    clipped_fraction: float  #: share of per-example gradients that the clip shrank


def _plain_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: CaseConfig) -> list[torch.Tensor]:
    """``local_steps`` full-batch gradient steps without DP; returns ``w_local - w``."""
    names = [n for n, _ in model.named_parameters()]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = {n: t.clone() for n, t in start.items()}
    for _ in range(case.local_steps):
        g = per_example_grads(model, x, y, params)
        params = {n: params[n] - case.local_lr * g[n].mean(0) for n in names}
    return [params[n] - start[n] for n in names]


def _dp_sgd_steps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: CaseConfig, rng: SecureRNG
) -> tuple[list[torch.Tensor], float]:
    """The library's DP-SGD (:func:`dp_sgd_train`) on the whole batch, as
    :class:`securefl.client.SecureClient` runs it with sampling rate 1 and the batch
    size as its public lot size; returns ``w_local - w`` and the fraction of
    per-example gradients the clip shrank (measured before each step)."""
    local = copy.deepcopy(model)
    start = [p.detach().clone() for p in local.parameters()]
    clipped = 0
    for _ in range(case.local_steps):  # plain SGD keeps no state: one call per step is one call of all steps
        g = per_example_grads(local, x, y)
        norms = torch.sqrt(sum(t.flatten(1).pow(2).sum(1) for t in g.values()))
        clipped += int((norms > case.clip).sum())
        dp_sgd_train(
            local,
            x,
            y,
            loss_fn=F.cross_entropy,
            optimizer_fn=lambda ps: torch.optim.SGD(ps, lr=case.local_lr),
            noise_multiplier=case.noise_multiplier,
            max_grad_norm=case.clip,
            sample_rate=1.0,
            steps=1,
            rng=rng,
            expected_batch_size=float(len(x)),
        )
    delta = [p.detach() - s for p, s in zip(local.parameters(), start)]
    return delta, clipped / (len(x) * case.local_steps)


def local_update(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: CaseConfig, rng: SecureRNG
) -> tuple[list[torch.Tensor], float]:
    """One client's ``Delta = w_local - w`` after ``case.local_steps`` full-batch
    steps on ``(x, y)``, plain SGD or DP-SGD; returns it with the fraction of
    per-example gradients the clip shrank."""
    if case.dp == "sample":
        return _dp_sgd_steps(model, x, y, case, rng)
    return _plain_steps(model, x, y, case), 0.0


def _unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    parts = torch.split(flat, [t.numel() for t in like])
    return [p.reshape(t.shape).to(t.dtype) for p, t in zip(parts, like)]


def noise_share(case: CaseConfig, dim: int, rng: SecureRNG) -> torch.Tensor:
    """One client's distributed-DP noise share (float64, length ``dim``): standard
    deviation :func:`distributed_noise_stddev` for :meth:`CaseConfig.secagg_settings`
    in a round of ``case.clients`` (threshold and grid resolution from the library),
    an exact discrete Gaussian in grid units, as the secure-aggregation client draws it."""
    settings = case.secagg_settings()
    resolution = settings.codec(case.clients).resolution
    sigma = distributed_noise_stddev(
        settings, dim=dim, threshold=settings.threshold_for(case.clients), resolution=resolution
    )
    units = rng.discrete_gaussian(dim, noise_units(sigma, resolution))
    return torch.from_numpy(units.astype(np.float64) * resolution)


def client_release(delta: list[torch.Tensor], case: CaseConfig, rng: SecureRNG) -> tuple[list[torch.Tensor], float]:
    """DP-FedAvg on one client's update: clipped to ``case.clip`` by the library's
    :func:`clip_update`, plus this client's noise share under secagg's distributed
    DP; returns it with 1.0 if the clip shrank it (else 0.0)."""
    flat = torch.cat([d.reshape(-1) for d in delta])
    clipped, norm = clip_update(flat, case.clip)
    if case.distributed_noise:
        clipped = (clipped.double() + noise_share(case, flat.numel(), rng)).to(flat.dtype)
    return _unflatten(clipped, delta), float(norm > case.clip)


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
    weighted: list[Release] = []
    fractions = []
    for x, y in participants:
        delta, frac = local_update(model, x, y, case, rng)
        if case.dp == "client":
            delta, frac = client_release(delta, case, rng)
        # the wire carries float32 vectors; under DP the weight is 1, as the library sends it
        n = 1.0 if case.dp != "none" else float(len(x))
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
        known_images=sum(len(x) for x, _ in participants),
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


def analytic_applies(model: str, input_shape: tuple[int, ...], num_classes: int) -> bool:
    """Whether the analytic attack applies to ``model``: its first layer is fully connected with a bias."""
    net = build_model(model, input_shape, num_classes, seed=0)
    first = next((m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    return isinstance(first, nn.Linear) and first.bias is not None


def build_case_model(case: CaseConfig, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """The round's global model: a freshly initialised network (round 0), checked
    against the data and, under ``dp="sample"``, Opacus (:func:`securefl.models.check_model`)."""
    model = build_model(case.model, input_shape, num_classes, hidden=case.hidden, seed=seed)
    check_model(model, case.model, input_shape=input_shape, num_classes=num_classes, dp=case.dp)
    return model
