"""Poisoning attacks on federated learning: what a malicious client sends.

An attack here is only the *maths* of poisoning: how a malicious client changes its
training data (:meth:`PoisonAttack.poison_data`) and how the coalition of malicious
clients turns what it knows this round (a :class:`~attacks.poisoning.cases.RoundView`) into the updates it
submits (:meth:`PoisonAttack.craft`). Who is malicious and what they observe is the
*case* (:mod:`attacks.poisoning.cases`); how success is measured is the *metric*
(:mod:`attacks.poisoning.metrics`).

Attacks (``ATTACKS``):

* ``label_flip`` -- data poisoning, y -> C-1-y, or only class ``source`` -> ``target``
  (targeted; Tolpegin et al. 2020; Fang et al. 2020 use the C-1-y form).
* ``sign_flip`` -- send ``-scale`` times the honestly trained update (Li et al. 2019, RSA).
* ``gaussian`` -- send N(0, std^2) noise (Blanchard et al. 2017's Gaussian Byzantine worker).
* ``backdoor`` -- model replacement (Bagdasaryan, Veit, Hua, Estrin, Shmatikov, AISTATS
  2020): train on data where a pixel-pattern trigger is stamped on a fraction of the
  inputs, relabelled to ``target``; submit X' = G + gamma (X - G), i.e. the update
  scaled by gamma (default n/m, which replaces the global model under FedAvg).
* ``alie`` -- A Little Is Enough (Baruch, Baruch, Goldberg, NeurIPS 2019): every
  malicious client sends mu - z sigma (coordinate-wise mean and std of the updates the
  coalition knows); z defaults to z_max = Phi^-1((n - s) / n), s = floor(n/2 + 1) - m.
* ``ipm`` -- Inner Product Manipulation (Xie, Koyejo, Gupta, UAI 2019): send
  -epsilon times the mean of the honest updates; small epsilon fools Krum-like rules,
  large epsilon (100) reverses plain averaging.
* ``minmax`` / ``minsum`` -- Shejwalkar and Houmansadr (NDSS 2021): send
  mu + gamma p for a perturbation p (-unit mean, -std or -sign), with the largest gamma
  (found by search) whose maximum distance (Min-Max) or sum of squared distances
  (Min-Sum) to the known updates stays within the largest such value among them.

Omniscient attacks (ALIE, IPM, Min-Max, Min-Sum) use ``view.honest`` when the case
grants full knowledge and the coalition's own benign updates otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, ClassVar, Mapping

import torch

from attacks.poisoning.cases import RoundView
from securefl.exceptions import ConfigTypeError, ConfigValueError
from securefl.privacy.noise import SecureRNG


class PoisonAttack(ABC):
    """Base class: data poisoning (optional) plus update crafting."""

    name: ClassVar[str] = ""
    #: whether the attack uses statistics of benign updates (full knowledge helps)
    omniscient: ClassVar[bool] = False
    #: whether the attack is targeted at a backdoor (success is the backdoor rate)
    targeted: ClassVar[bool] = False

    def poison_data(
        self, x: torch.Tensor, y: torch.Tensor, *, num_classes: int, rng: SecureRNG
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training data a malicious client uses (default: its own, unchanged)."""
        return x, y

    @abstractmethod
    def craft(self, view: RoundView, rng: SecureRNG) -> torch.Tensor:
        """``[m, d]``: the updates the malicious clients submit this round."""

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}


def _num(name: str, value: Any, lo: float | None = None, *, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigTypeError(name, value, "must be a finite number")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigValueError(name, value, f"must be {'>' if lo_open else '>='} {lo}")


# ------------------------------------------------------------------ no attack
@dataclass(frozen=True)
class NoAttack(PoisonAttack):
    """The clean baseline: 'malicious' clients behave honestly."""

    name: ClassVar[str] = "none"

    def craft(self, view: RoundView, rng: SecureRNG) -> torch.Tensor:
        return view.benign.clone()


# ------------------------------------------------------------------ data poisoning
@dataclass(frozen=True)
class LabelFlip(PoisonAttack):
    """Label flipping: y -> C-1-y for every example, or, when ``source`` is set,
    only class ``source`` -> ``target`` (targeted). The update is then sent as trained."""

    name: ClassVar[str] = "label_flip"
    source: int | None = None
    target: int | None = None

    def __post_init__(self) -> None:
        if (self.source is None) != (self.target is None):
            raise ConfigValueError("source", self.source, "a targeted flip needs both source and target")
        for f in ("source", "target"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ConfigValueError(f, v, "must be a class index >= 0")
        if self.source is not None and self.source == self.target:
            raise ConfigValueError("target", self.target, "must differ from source")

    @property
    def targeted(self) -> bool:  # type: ignore[override]
        return self.source is not None

    def poison_data(self, x, y, *, num_classes, rng):
        if self.source is None:
            return x, (num_classes - 1) - y
        for f in ("source", "target"):
            if getattr(self, f) >= num_classes:
                raise ConfigValueError(f, getattr(self, f), f"must be < {num_classes} classes")
        y = y.clone()
        y[y == self.source] = self.target
        return x, y

    def craft(self, view, rng):
        return view.benign.clone()


def apply_trigger(x: torch.Tensor, *, size: int = 3, value: float = 1.0) -> torch.Tensor:
    """Stamp the pixel-pattern trigger: a ``size x size`` checkerboard of ``value``
    and 0 in the bottom-right corner of every channel (images ``[N, C, H, W]``), or
    the last ``size`` features alternating ``value``/0 for tabular ``[N, F]`` data."""
    x = x.clone()
    pattern = torch.tensor([[float((i + j) % 2 == 0) * value for j in range(size)] for i in range(size)])
    if x.ndim == 4:
        x[:, :, -size:, -size:] = pattern
    elif x.ndim == 2:
        if size > x.shape[1]:
            raise ConfigValueError("trigger_size", size, f"must be <= the {x.shape[1]} features")
        x[:, -size:] = pattern[0]
    else:
        raise ConfigValueError("trigger", tuple(x.shape), "inputs must be [N, C, H, W] images or [N, F] tables")
    return x


@dataclass(frozen=True)
class ScalingBackdoor(PoisonAttack):
    """Model-replacement backdoor (Bagdasaryan et al., AISTATS 2020).

    Data: a ``poison_fraction`` of the client's inputs get the pixel trigger
    (:func:`apply_trigger`) and label ``target``, added to the clean data so the
    main task is kept. Update: X' = G + gamma (X - G), so the submitted update is
    ``gamma`` times the trained one; ``gamma=None`` uses n/m (n participants,
    m malicious), the factor that replaces the global model under FedAvg with
    server learning rate 1 when clients hold equal data.

    The default ``poison_fraction=0.2`` (one triggered copy for every five clean
    inputs, a sixth of the attacker's training set) is the model-replacement regime:
    on digits with 20% malicious clients the unscaled update (``gamma=1``) implants
    the trigger in about a third of the test inputs and the scaling is what takes it
    to ~1.0. With heavy poisoning (0.5) the unscaled update alone already reaches
    ~0.85, so the attack no longer depends on its scaling (see the benchmark)."""

    name: ClassVar[str] = "backdoor"
    targeted: ClassVar[bool] = True
    target: int = 0
    poison_fraction: float = 0.2
    gamma: float | None = None
    trigger_size: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0:
            raise ConfigValueError("target", self.target, "must be a class index >= 0")
        _num("poison_fraction", self.poison_fraction, 0.0, lo_open=True)
        if self.poison_fraction > 1:
            raise ConfigValueError("poison_fraction", self.poison_fraction, "must be <= 1")
        if self.gamma is not None:
            _num("gamma", self.gamma, 0.0, lo_open=True)
        if isinstance(self.trigger_size, bool) or not isinstance(self.trigger_size, int) or self.trigger_size < 1:
            raise ConfigValueError("trigger_size", self.trigger_size, "must be an integer >= 1")

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        return apply_trigger(x, size=self.trigger_size)

    def poison_data(self, x, y, *, num_classes, rng):
        if self.target >= num_classes:
            raise ConfigValueError("target", self.target, f"must be < {num_classes} classes")
        k = max(1, round(self.poison_fraction * len(x)))
        idx = torch.as_tensor(rng.sample(len(x), k), dtype=torch.long)
        xp = self.trigger(x[idx])
        yp = torch.full((k,), self.target, dtype=y.dtype)
        return torch.cat([x, xp]), torch.cat([y, yp])

    def craft(self, view, rng):
        gamma = self.gamma if self.gamma is not None else view.num_participants / view.num_malicious
        return view.benign * gamma


# ------------------------------------------------------------------ update poisoning
@dataclass(frozen=True)
class SignFlip(PoisonAttack):
    """Sign flipping: send ``-scale`` times the honestly trained update."""

    name: ClassVar[str] = "sign_flip"
    scale: float = 1.0

    def __post_init__(self) -> None:
        _num("scale", self.scale, 0.0, lo_open=True)

    def craft(self, view, rng):
        return -self.scale * view.benign


@dataclass(frozen=True)
class GaussianNoise(PoisonAttack):
    """Send i.i.d. N(0, std^2) noise instead of an update (Blanchard et al. 2017).
    The noise is drawn from the coalition's (seeded) SecureRNG stream."""

    name: ClassVar[str] = "gaussian"
    std: float = 1.0

    def __post_init__(self) -> None:
        _num("std", self.std, 0.0, lo_open=True)

    def craft(self, view, rng):
        return rng.normal(tuple(view.benign.shape), self.std, dtype=view.benign.dtype)


def alie_z_max(n: int, m: int) -> float:
    """Baruch et al. 2019's z_max: s = floor(n/2 + 1) - m supporters are needed, and
    z = Phi^-1((n - s) / n)."""
    if not 0 < m < n:
        raise ConfigValueError("malicious", m, f"ALIE needs 0 < m < n (n={n})")
    s = math.floor(n / 2 + 1) - m
    p = (n - s) / n
    if not 0 < p < 1:
        raise ConfigValueError("malicious", m, f"z_max undefined for n={n}, m={m} (p={p:.3f})")
    return NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class ALittleIsEnough(PoisonAttack):
    """A Little Is Enough (Baruch et al., NeurIPS 2019): mu - z sigma, per coordinate.
    ``z=None`` uses :func:`alie_z_max`."""

    name: ClassVar[str] = "alie"
    omniscient: ClassVar[bool] = True
    z: float | None = None

    def __post_init__(self) -> None:
        if self.z is not None:
            _num("z", self.z, 0.0)

    def craft(self, view, rng):
        known = view.known.double()
        if known.shape[0] < 2:
            raise ConfigValueError("knowledge", known.shape[0], "ALIE needs at least two known updates for a std")
        z = self.z if self.z is not None else alie_z_max(view.num_participants, view.num_malicious)
        mal = known.mean(0) - z * known.std(0)
        return mal.to(view.benign.dtype).expand_as(view.benign).clone()


@dataclass(frozen=True)
class InnerProductManipulation(PoisonAttack):
    """Inner Product Manipulation (Xie et al., UAI 2019): -epsilon * mean(honest)."""

    name: ClassVar[str] = "ipm"
    omniscient: ClassVar[bool] = True
    epsilon: float = 0.5

    def __post_init__(self) -> None:
        _num("epsilon", self.epsilon, 0.0, lo_open=True)

    def craft(self, view, rng):
        mal = -self.epsilon * view.known.double().mean(0)
        return mal.to(view.benign.dtype).expand_as(view.benign).clone()


PERTURBATIONS = ("unit", "std", "sign")


def _perturbation(known: torch.Tensor, kind: str) -> torch.Tensor:
    mu = known.mean(0)
    if kind == "unit":
        return -mu / mu.norm().clamp_min(1e-300)
    if kind == "std":
        return -known.std(0)
    return -torch.sign(mu)


def _gamma_search(ok, gamma_init: float, tol: float) -> float:
    """The largest gamma in [0, inf) with ok(gamma), assuming ok is monotone
    (true up to a threshold): grow geometrically, then bisect (Shejwalkar and
    Houmansadr's Algorithm 1 refines gamma the same way)."""
    lo, hi = 0.0, gamma_init
    while ok(hi):
        lo, hi = hi, hi * 2
        if hi > 1e12:
            return lo
    while hi - lo > tol * max(1.0, lo):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


@dataclass(frozen=True)
class _ShejwalkarAttack(PoisonAttack):
    omniscient: ClassVar[bool] = True
    perturbation: str = "std"
    gamma_init: float = 10.0
    tolerance: float = 1e-4

    def __post_init__(self) -> None:
        if self.perturbation not in PERTURBATIONS:
            raise ConfigValueError("perturbation", self.perturbation, f"must be one of {', '.join(PERTURBATIONS)}")
        _num("gamma_init", self.gamma_init, 0.0, lo_open=True)
        _num("tolerance", self.tolerance, 0.0, lo_open=True)

    def _ok(self, known: torch.Tensor, mal: torch.Tensor) -> bool:
        raise NotImplementedError

    def gamma(self, view: RoundView) -> float:
        """The gamma the search finds for this round's known updates."""
        known = view.known.double()
        if known.shape[0] < 2:
            raise ConfigValueError("knowledge", known.shape[0], f"{self.name} needs at least two known updates")
        mu, p = known.mean(0), _perturbation(known, self.perturbation)
        return _gamma_search(lambda g: self._ok(known, mu + g * p), self.gamma_init, self.tolerance)

    def craft(self, view, rng):
        known = view.known.double()
        g = self.gamma(view)
        mal = known.mean(0) + g * _perturbation(known, self.perturbation)
        return mal.to(view.benign.dtype).expand_as(view.benign).clone()


@dataclass(frozen=True)
class MinMax(_ShejwalkarAttack):
    """Min-Max (Shejwalkar and Houmansadr, NDSS 2021): the malicious update's largest
    distance to a known update is at most the largest distance between two of them."""

    name: ClassVar[str] = "minmax"

    def _ok(self, known, mal):
        bound = torch.cdist(known, known).max()
        return bool((known - mal).norm(dim=1).max() <= bound)


@dataclass(frozen=True)
class MinSum(_ShejwalkarAttack):
    """Min-Sum (Shejwalkar and Houmansadr, NDSS 2021): the malicious update's sum of
    squared distances to the known updates is at most the largest such sum of one of them."""

    name: ClassVar[str] = "minsum"

    def _ok(self, known, mal):
        bound = (torch.cdist(known, known) ** 2).sum(1).max()
        return bool(((known - mal) ** 2).sum() <= bound)


#: attack name -> class (constructor keywords are the attack's parameters)
ATTACKS: dict[str, type[PoisonAttack]] = {
    cls.name: cls
    for cls in (
        NoAttack,
        LabelFlip,
        SignFlip,
        GaussianNoise,
        ScalingBackdoor,
        ALittleIsEnough,
        InnerProductManipulation,
        MinMax,
        MinSum,
    )
}


def make_attack(name: str, params: Mapping[str, Any] | None = None) -> PoisonAttack:
    """Build attack ``name`` with keyword ``params``; unknown names or parameters
    raise :class:`ConfigValueError` naming them."""
    if name not in ATTACKS:
        raise ConfigValueError("attack", name, f"must be one of {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    for key in params or {}:
        if key not in known:
            raise ConfigValueError(
                "attack_arg", key, f"unknown parameter of attack {name!r}; known: {', '.join(sorted(known)) or '(none)'}"
            )
    return cls(**dict(params or {}))
