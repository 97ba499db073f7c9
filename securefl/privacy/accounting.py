"""Privacy accounting for Poisson-subsampled Gaussian mechanisms.

A *history* is a tuple of ``(noise_multiplier, sample_rate, steps)`` triples, the
same shape Opacus uses (:meth:`securefl.privacy.events.SelfComposedEvent.history`
makes one from a typed event). Three accountants stand behind one interface,
:class:`Accountant` (:data:`ACCOUNTANTS`, :func:`get_accountant`), and none is the
Gaussian/CLT approximation (it is not an upper bound and is never reported as one):

* ``prv``: the privacy random variable accountant (Gopi, Lee and Wutschitz 2021),
  tight, with explicit lower/upper error bounds; the upper bound is what we report.
* ``rdp``: Renyi DP (Mironov 2017; Mironov, Talwar and Zhang 2019), a looser
  upper bound that is cheap to compute.
* ``pld``: the privacy loss distribution accountant of ``dp_accounting`` (an
  independent implementation, installed with the ``dev`` extra), for audits.

Results are cached by ``(history, delta)``, and per-step RDP vectors by
``(sigma, q)``, so composing a longer history costs little more than a shorter one.
"""

from __future__ import annotations

import functools
import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from securefl.exceptions import AccountingError, ConfigValueError

History = tuple[tuple[float, float, int], ...]

#: RDP orders: Opacus' defaults extended upwards, so that small epsilons are tight.
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512, 1024]
)


@dataclass(frozen=True)
class EpsilonReport:
    """Epsilon of one history at one delta under both accountants."""

    delta: float
    prv: float  #: PRV upper bound (what is reported as the guarantee)
    prv_lower: float  #: PRV lower bound (the true epsilon lies in [prv_lower, prv])
    prv_estimate: float
    rdp: float  #: RDP upper bound

    def get(self, accountant: str) -> float:
        return {"prv": self.prv, "rdp": self.rdp}[accountant]

    def as_dict(self) -> dict[str, float]:
        return {
            "prv": self.prv,
            "prv_lower": self.prv_lower,
            "prv_estimate": self.prv_estimate,
            "rdp": self.rdp,
        }


def normalize(history: Iterable[tuple[float, float, int]]) -> History:
    """Merge consecutive entries with equal ``(sigma, q)`` and drop zero-step ones."""
    merged: list[list] = []
    for sigma, q, steps in history:
        if steps <= 0:
            continue
        if merged and merged[-1][0] == sigma and merged[-1][1] == q:
            merged[-1][2] += int(steps)
        else:
            merged.append([float(sigma), float(q), int(steps)])
    return tuple((s, q, n) for s, q, n in merged)


def _check(history: History, delta: float) -> None:
    if not 0 < delta < 1:
        raise ConfigValueError("delta", delta, "must be in (0, 1)")
    for sigma, q, steps in history:
        if not 0 < q <= 1:
            raise ConfigValueError("sample_rate", q, "must be in (0, 1]")
        if sigma < 0:
            raise ConfigValueError("noise_multiplier", sigma, "must be >= 0")


#: integer orders only: a looser RDP bound that is an order of magnitude cheaper,
#: used where any valid upper bound will do (the PRV truncation domain)
_INT_ORDERS: tuple[float, ...] = tuple(float(a) for a in RDP_ORDERS if float(a).is_integer())


@functools.lru_cache(maxsize=8192)
def _rdp_one_step(sigma: float, q: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one Poisson-subsampled Gaussian step at every order in ``orders``.

    RDP composes additively, so ``steps`` steps cost ``steps`` times this vector;
    caching it per ``(sigma, q)`` makes every later composition a dot product.
    """
    from opacus.accountants.analysis import rdp as rdp_analysis

    return np.asarray(rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(orders)))


def _rdp_to_epsilon(history: History, delta: float, orders: tuple[float, ...] = RDP_ORDERS) -> float:
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = sum(steps * _rdp_one_step(sigma, q, orders) for sigma, q, steps in history)
    with warnings.catch_warnings():
        # "optimal order is the largest/smallest alpha": the bound is still valid, just looser
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


def rdp_epsilon(history: History, delta: float) -> float:
    """RDP upper bound on epsilon for ``history`` at ``delta``."""
    history = normalize(history)
    _check(history, delta)
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return float("inf")
    return _rdp_to_epsilon(history, delta)


def _prv_domain_size(history: History, eps_error: float, delta_error: float) -> float:
    """Half-width of the privacy-loss domain outside which at most ``delta_error``
    mass lies (Gopi, Lee and Wutschitz 2021, Remark 5.6), bounded through RDP."""
    total = sum(steps for _, _, steps in history)
    half_width = _rdp_to_epsilon(history, delta_error / 4, _INT_ORDERS)
    for sigma, q, _ in history:
        half_width = max(half_width, _rdp_to_epsilon(((sigma, q, 1),), delta_error / (8 * total), _INT_ORDERS))
    return max(half_width, eps_error) + 3


def _prv_cdf(q: float, sigma: float) -> Callable[[float], float]:
    """The CDF of the Poisson-subsampled Gaussian PRV at a scalar ``t``, in ``math``:
    Opacus' ``PoissonSubsampledGaussianPRV.cdf`` (Gopi et al. 2021, Prop. B4) without
    numpy's per-call overhead, for the numerical integration of its mean."""
    lo = -math.inf if q == 1 else math.log(1 - q)
    a, b = 2 * math.sqrt(2) * sigma, 2 * sigma * sigma

    def cdf(t: float) -> float:
        if not t > lo:
            return 0.0
        if t > 700:  # numpy's exp overflows to inf here, and the CDF is 1 either way
            return 1.0
        u = (math.exp(t) + q - 1) / q
        z = math.log(u) if u > 0 else -math.inf  # numpy: log(0) = -inf, erfc(-inf) = 2
        return -q * math.erfc((b * z - 1) / a) / 2 - (1 - q) * math.erfc((b * z + 1) / a) / 2 + 1.0

    return cdf


def _truncated_prv(q: float, sigma: float, t_min: float, t_max: float):
    """Opacus' ``TruncatedPrivacyRandomVariable`` whose ``mean()`` (the same
    piecewise ``quad`` integration by parts) runs on a scalar ``math`` CDF: the same
    mean to ~1e-16, an order of magnitude faster (it was most of a PRV evaluation)."""
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, TruncatedPrivacyRandomVariable
    from scipy import integrate

    class _Truncated(TruncatedPrivacyRandomVariable):
        def mean(self) -> float:
            base, mass = _prv_cdf(q, sigma), float(self._remaining_mass)
            c_min = base(self.t_min)

            def cdf(t: float) -> float:
                return 0.0 if t < self.t_min else (base(t) - c_min) / mass if t < self.t_max else 1.0

            points = np.concatenate([
                [self.t_min], -np.logspace(int(np.log10(np.abs(self.t_min))), -5, num=10), [0],
                np.logspace(-5, int(np.log10(self.t_max)), num=10), [self.t_max],
            ])  # fmt: skip
            mean = 0.0
            for left, right in zip(points[:-1], points[1:]):
                integral, _ = integrate.quad(cdf, left, right, limit=500)
                mean += right * cdf(right) - left * cdf(left) - integral
            return mean

    return _Truncated(PoissonSubsampledGaussianPRV(q, sigma), t_min, t_max)


@functools.lru_cache(maxsize=4096)
def prv_epsilon(history: History, delta: float, eps_error: float = 0.01) -> tuple[float, float, float]:
    """PRV ``(lower, estimate, upper)`` bounds on epsilon for ``history`` at ``delta``
    (Gopi, Lee and Wutschitz, NeurIPS 2021), on Opacus' PRV discretization."""
    history = normalize(history)
    _check(history, delta)
    if not history:
        return (0.0, 0.0, 0.0)
    if any(sigma == 0 for sigma, _, _ in history):
        return (float("inf"),) * 3
    from opacus.accountants.analysis.prv import Domain, compose_heterogeneous, discretize

    delta_error = delta / 1000
    steps = [n for _, _, n in history]
    try:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            # q = 1 makes Opacus take log(0) on a branch it then discards
            warnings.simplefilter("ignore", RuntimeWarning)
            half_width = _prv_domain_size(history, eps_error, delta_error)
            mesh = eps_error / np.sqrt(sum(steps) * np.log(12 / delta_error) / 2)
            domain = Domain.create_aligned(-half_width, half_width, mesh)
            dprvs = [discretize(_truncated_prv(q, sigma, domain.t_min, domain.t_max), domain) for sigma, q, _ in history]
            dprv = compose_heterogeneous(dprvs=dprvs, num_self_compositions=steps)
            lo, est, hi = dprv.compute_epsilon(delta, delta_error, eps_error)
    except (ValueError, RuntimeError, OverflowError) as exc:  # pragma: no cover - numeric edge
        raise AccountingError(f"PRV accountant failed for {history}: {exc}") from exc
    return (max(0.0, float(lo)), max(0.0, float(est)), max(0.0, float(hi)))


def epsilon(history: Iterable[tuple[float, float, int]], delta: float) -> EpsilonReport:
    """Epsilon of ``history`` under PRV (with error bounds) and RDP."""
    h = normalize(history)
    lo, est, hi = prv_epsilon(h, delta)
    return EpsilonReport(delta=delta, prv=hi, prv_lower=lo, prv_estimate=est, rdp=rdp_epsilon(h, delta))


def pld_epsilon(history: Iterable[tuple[float, float, int]], delta: float) -> float:
    """Epsilon under the PLD accountant of ``dp_accounting`` (an independent check)."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    events = []
    for sigma, q, steps in normalize(history):
        if sigma == 0:
            return math.inf
        base = dp_event.GaussianDpEvent(sigma)
        events.append(dp_event.SelfComposedDpEvent(base if q == 1 else dp_event.PoissonSampledDpEvent(q, base), steps))
    if not events:
        return 0.0
    acc = pld_privacy_accountant.PLDAccountant()
    acc.compose(dp_event.ComposedDpEvent(events))
    return float(acc.get_epsilon(delta))


class Accountant(ABC):
    """An upper bound on epsilon for a history of Poisson-subsampled Gaussians."""

    name: str = ""

    @abstractmethod
    def epsilon(self, history: Iterable[tuple[float, float, int]], delta: float) -> float:
        """Epsilon of ``history`` at ``delta`` (an upper bound)."""


class PRVAccountant(Accountant):
    name = "prv"

    def epsilon(self, history: Iterable[tuple[float, float, int]], delta: float) -> float:
        return prv_epsilon(normalize(history), delta)[2]


class RDPAccountant(Accountant):
    name = "rdp"

    def epsilon(self, history: Iterable[tuple[float, float, int]], delta: float) -> float:
        return rdp_epsilon(normalize(history), delta)


class PLDAccountant(Accountant):
    name = "pld"

    def epsilon(self, history: Iterable[tuple[float, float, int]], delta: float) -> float:
        h = normalize(history)
        _check(h, delta)
        return pld_epsilon(h, delta)


#: the accountants by name; ``prv`` and ``rdp`` may enforce a budget (``--accountant``)
ACCOUNTANTS: dict[str, Accountant] = {a.name: a for a in (PRVAccountant(), RDPAccountant(), PLDAccountant())}


def get_accountant(name: str) -> Accountant:
    """The accountant called ``name``; :class:`ConfigValueError` if there is none."""
    if name not in ACCOUNTANTS:
        raise ConfigValueError("accountant", name, f"must be one of {', '.join(ACCOUNTANTS)}")
    return ACCOUNTANTS[name]


def epsilon_under(accountant: str, history: Iterable[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of ``history`` under one named accountant (an upper bound)."""
    return get_accountant(accountant).epsilon(history, delta)


@functools.lru_cache(maxsize=256)
def solve_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv", tol: float = 0.005
) -> float:
    """Smallest noise multiplier (to ``tol`` relative) whose ``steps``-fold
    composition at ``sample_rate`` stays within ``target_epsilon`` at ``delta``."""
    if target_epsilon <= 0:
        raise ConfigValueError("epsilon", target_epsilon, "must be > 0")
    if steps < 1:
        raise ConfigValueError("rounds", steps, "the planned number of steps must be >= 1")

    def eps(sigma: float) -> float:
        return epsilon_under(accountant, ((sigma, sample_rate, steps),), delta)

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise AccountingError(
                f"no noise multiplier reaches epsilon={target_epsilon} at delta={delta} "
                f"with sample rate {sample_rate} over {steps} steps"
            )
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
