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
from typing import Iterable

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
    return _rdp_epsilon(normalize(history), delta)


@functools.lru_cache(maxsize=4096)
def _rdp_epsilon(history: History, delta: float) -> float:
    """:func:`rdp_epsilon` of a normalized history, cached by ``(history, delta)``."""
    _check(history, delta)
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return float("inf")
    return _rdp_to_epsilon(history, delta)


@functools.lru_cache(maxsize=4096)
def _prv_domain_size(history: History, eps_error: float, delta_error: float) -> float:
    """Half-width of the privacy-loss domain outside which at most ``delta_error``
    mass lies (Gopi, Lee and Wutschitz 2021, Remark 5.6), bounded through RDP."""
    total = sum(steps for _, _, steps in history)
    half_width = _rdp_to_epsilon(history, delta_error / 4, _INT_ORDERS)
    for sigma, q, _ in history:
        half_width = max(half_width, _rdp_to_epsilon(((sigma, q, 1),), delta_error / (8 * total), _INT_ORDERS))
    return max(half_width, eps_error) + 3


def _padded(history: History) -> History:
    """``history`` with its step count rounded up to a power of two, the extra
    steps those of its largest ``(sigma, q)`` (in sorted order, so that the result
    does not depend on the order of the runs): RDP only grows with more steps, so
    its PRV domain covers ``history``'s."""
    total = sum(n for _, _, n in history)
    extra = (1 << (total - 1).bit_length()) - total
    if not extra:
        return history
    counts: dict[tuple[float, float], int] = {}
    for sigma, q, n in history:
        counts[(sigma, q)] = counts.get((sigma, q), 0) + n
    last = max(counts)
    counts[last] += extra
    return tuple((sigma, q, n) for (sigma, q), n in sorted(counts.items()))


@functools.lru_cache(maxsize=4096)
def prv_grid(history: History, eps_error: float, delta_error: float, exact: bool = False):
    """The grid (an Opacus ``Domain``) :func:`prv_epsilon` composes ``history`` on:
    Opacus' mesh and RDP-bounded domain for ``history`` padded to a power-of-two
    step count (:func:`_padded`), widened to an FFT-friendly size, so the rounds of
    a run share grids (:mod:`securefl.privacy.prv`); ``exact``: for ``history``
    itself, without widening (the grid before issue 15, kept for old ledgers)."""
    from opacus.accountants.analysis.prv import Domain

    from securefl.privacy import prv

    sized = history if exact else _padded(history)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        half_width = _prv_domain_size(sized, eps_error, delta_error)
        mesh = eps_error / np.sqrt(sum(n for _, _, n in sized) * np.log(12 / delta_error) / 2)
        return Domain.create_aligned(-half_width, half_width, mesh) if exact else prv.fast_domain(half_width, mesh)


@functools.lru_cache(maxsize=4096)
def prv_epsilon(
    history: History, delta: float, eps_error: float = 0.01, exact: bool = False
) -> tuple[float, float, float]:
    """PRV ``(lower, estimate, upper)`` bounds on epsilon for ``history`` at ``delta``
    (Gopi, Lee and Wutschitz, NeurIPS 2021), on Opacus' PRV discretization over
    the grid of :func:`prv_grid` (``exact``: the per-history grid, uncached)."""
    history = normalize(history)
    _check(history, delta)
    if not history:
        return (0.0, 0.0, 0.0)
    if any(sigma == 0 for sigma, _, _ in history):
        return (float("inf"),) * 3
    from opacus.accountants.analysis.prv import compose_heterogeneous, discretize

    from securefl.privacy import prv

    delta_error = delta / 1000
    try:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            # q = 1 makes Opacus take log(0) on a branch it then discards
            warnings.simplefilter("ignore", RuntimeWarning)
            domain = prv_grid(history, eps_error, delta_error, exact)
            if exact:
                dprvs = [discretize(prv.truncated_prv(q, s, domain.t_min, domain.t_max), domain) for s, q, _ in history]
                dprv = compose_heterogeneous(dprvs=dprvs, num_self_compositions=[n for _, _, n in history])
            else:
                dprv = prv.compose(history, domain)
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


#: the solver's shortcut (below): coarse PRV runs (``eps_error`` 0.1, then 0.03: about
#: a tenth and a third of the grid) decide a comparison when their bounds clear the
#: target by this margin (plus twice their own delta-error term)
_COARSE_EPS_ERRORS, _COARSE_MARGIN = (0.1, 0.03), 0.02
_FINE_EPS_ERROR = 0.01  #: :func:`prv_epsilon`'s default, what the solver compares


def _coarse_verdict(
    sigma: float, sample_rate: float, steps: int, delta: float, target: float, eps_error: float
) -> bool | None:
    """Whether PRV's upper bound (at ``eps_error`` 0.01) for ``steps`` runs at
    ``sigma`` exceeds ``target``, decided from a coarser PRV run, or None if its
    bounds are too close to tell. The true epsilon lies in the coarse ``[lower,
    upper]`` and in the fine one (the accountant's error bounds, Gopi, Lee and
    Wutschitz 2021), so fine upper >= true >= coarse lower, and fine upper <= true +
    (fine upper - fine lower) <= coarse upper + 2 * 0.01 + d, d the spread of the
    epsilons at delta -+ delta_error (estimated from the coarse run, doubled)."""
    try:
        lower, _, upper = prv_epsilon(((float(sigma), float(sample_rate), int(steps)),), delta, eps_error)
    except (AccountingError, ArithmeticError, ValueError):
        return None
    spread = max(0.0, upper - lower - 2 * eps_error)
    if lower - _COARSE_MARGIN > target:
        return True
    if upper + 2 * _FINE_EPS_ERROR + 2 * spread + _COARSE_MARGIN < target:
        return False
    return None


def gdp_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon at ``delta`` of ``mu``-GDP (Dong, Roth and Su 2019; delta(eps)
    from Balle and Wang 2018, Thm. 8): full-batch Gaussian runs compose to
    ``mu = sqrt(sum(steps / sigma**2))``."""
    from scipy.optimize import brentq
    from scipy.special import log_ndtr, ndtr

    def excess(eps: float) -> float:
        return float(ndtr(-eps / mu + mu / 2) - math.exp(eps + log_ndtr(-eps / mu - mu / 2))) - delta

    if excess(0.0) <= 0:
        return 0.0
    return float(brentq(excess, 0.0, 10 * mu * mu + 100, xtol=1e-12))


def _gdp_verdict(sigma: float, steps: int, delta: float, target: float) -> bool | None:
    """:func:`_coarse_verdict` for full-batch runs (``q = 1``), from the exact GDP
    curve: the PRV upper bound ``u = eps_hat(delta - delta_error) + eps_error``
    satisfies ``eps(delta) <= u <= eps(delta - 2 delta_error) + 2 eps_error`` (the
    accountant's error bounds, Gopi, Lee and Wutschitz 2021, Thm. 5.5)."""
    try:
        mu = math.sqrt(steps) / sigma
        if gdp_epsilon(mu, delta) > target + _GDP_MARGIN:
            return True
        if gdp_epsilon(mu, delta * (1 - 2 / 1000)) + 2 * _FINE_EPS_ERROR + _GDP_MARGIN < target:
            return False
    except (ArithmeticError, ValueError, RuntimeError):
        pass
    return None


_GDP_MARGIN = 1e-3  #: :func:`_gdp_verdict`'s safety margin (floating point)


@functools.lru_cache(maxsize=256)
def solve_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv", tol: float = 0.005
) -> float:
    """Smallest noise multiplier (to ``tol`` relative) whose ``steps``-fold
    composition at ``sample_rate`` stays within ``target_epsilon`` at ``delta``:
    doubling from 1, then bisection. Under ``prv``, comparisons far from the
    target are decided from the exact GDP curve at ``q = 1`` (:func:`_gdp_verdict`),
    else (the doubling and the first halvings) by coarser PRV runs when they can
    be (:func:`_coarse_verdict`); every comparison comes out as the
    full PRV run's would, so the result is the same sigma, on fewer grid points."""
    if target_epsilon <= 0:
        raise ConfigValueError("epsilon", target_epsilon, "must be > 0")
    if steps < 1:
        raise ConfigValueError("rounds", steps, "the planned number of steps must be >= 1")

    def above(sigma: float, wide: bool) -> bool:
        verdict = _gdp_verdict(sigma, steps, delta, target_epsilon) if accountant == "prv" and sample_rate == 1 else None
        for eps_error in _COARSE_EPS_ERRORS if accountant == "prv" and wide and verdict is None else ():
            verdict = _coarse_verdict(sigma, sample_rate, steps, delta, target_epsilon, eps_error)
            if verdict is not None:
                break
        if verdict is None:
            verdict = epsilon_under(accountant, ((sigma, sample_rate, steps),), delta) > target_epsilon
        return verdict

    lo, hi = 0.0, 1.0
    while above(hi, True):
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise AccountingError(
                f"no noise multiplier reaches epsilon={target_epsilon} at delta={delta} "
                f"with sample rate {sample_rate} over {steps} steps"
            )
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        if above(mid, hi - lo > 0.1 * hi):
            lo = mid
        else:
            hi = mid
    return hi


def clear_caches() -> None:
    """Forget every cached accounting result (benchmarks measure cold runs)."""
    from securefl.privacy import prv

    for fn in (prv_epsilon, _rdp_epsilon, _rdp_one_step, _prv_domain_size, prv_grid, solve_noise_multiplier):
        getattr(fn, "cache_clear", lambda: None)()  # a test may have replaced one
    prv.clear_cache()
