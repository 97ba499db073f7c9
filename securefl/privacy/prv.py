"""PRV composition on reusable grids (Gopi, Lee and Wutschitz, NeurIPS 2021).

The PRV accountant discretizes each mechanism's privacy random variable on a grid
of mesh ``h`` over ``[-L, L]`` and composes by FFT. Its error analysis (their
Thm. 5.5, as in Opacus' ``PRVAccountant``) needs a mesh ``h <= eps_error /
sqrt(N log(12 / delta_error) / 2)`` for ``N`` compositions and a domain ``L``
beyond the tail bound of the composition; a finer mesh or a wider domain only
shrinks the discretization and truncation errors, so a grid chosen for ``N' >= N``
steps (and any ``L`` at least the one for ``N``) is valid for ``N`` steps with the
same ``eps_error``. :func:`securefl.privacy.accounting.prv_grid` therefore sizes
the grid for the history's step count rounded up to a power of two, and its size
up to an FFT-friendly length: a run's rounds then share a few grids, each
mechanism is discretized (CDF on the grid, its mean by quadrature) once per grid
(:func:`discretized`, cached with its spectrum), and a round costs one FFT power
and the epsilon extraction (:func:`compose`).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np

#: bytes of discretized PRVs (pmf and spectrum) kept between calls
CACHE_BYTES = 64 * 2**20
_cache: OrderedDict[tuple, tuple] = OrderedDict()
_cache_lock = threading.Lock()
_cache_size = [0]


def prv_cdf(q: float, sigma: float) -> Callable[[float], float]:
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


def truncated_prv(q: float, sigma: float, t_min: float, t_max: float):
    """Opacus' ``TruncatedPrivacyRandomVariable`` whose ``mean()`` (the same
    piecewise ``quad`` integration by parts) runs on a scalar ``math`` CDF: the same
    mean to ~1e-16, an order of magnitude faster (it was most of a PRV evaluation)."""
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, TruncatedPrivacyRandomVariable
    from scipy import integrate

    class _Truncated(TruncatedPrivacyRandomVariable):
        def mean(self) -> float:
            base, mass = prv_cdf(q, sigma), float(self._remaining_mass)
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


def fast_domain(half_width: float, mesh: float):
    """Opacus' ``Domain.create_aligned(-half_width, half_width, mesh)`` widened on
    both sides to an even FFT-friendly size (a wider domain is still valid)."""
    from opacus.accountants.analysis.prv import Domain
    from scipy.fft import next_fast_len

    domain = Domain.create_aligned(-half_width, half_width, mesh)
    if domain.size > 2**40:  # the cost guard refuses it anyway
        return domain
    size = next_fast_len(domain.size, real=True)
    while size % 2:
        size = next_fast_len(size + 1, real=True)
    if size == domain.size:
        return domain
    # Opacus' FFT composition needs t_min = -(size / 2 - 1) * dt (zero at index size / 2 - 1)
    k, dt = size // 2 - 1, domain.dt
    return Domain(-k * dt, (k + 1) * dt, size)


def truncated_mean(q: float, sigma: float, prv) -> float:
    """The mean of the truncated PRV: at ``q = 1`` the PRV is ``N(mu^2 / 2, mu^2)``,
    ``mu = 1 / sigma`` (Dong, Roth and Su 2019), and its truncation's mean is in
    closed form; otherwise ``prv.mean()`` (quadrature)."""
    if q != 1:
        return float(prv.mean())
    from scipy.special import ndtr

    mu = 1 / sigma
    m, a, b = mu * mu / 2, (prv.t_min * sigma - mu / 2), (prv.t_max * sigma - mu / 2)
    density = (math.exp(-a * a / 2) - math.exp(-b * b / 2)) / math.sqrt(2 * math.pi)
    return m + mu * density / float(ndtr(b) - ndtr(a))


def _discretize(q: float, sigma: float, prv, domain):
    """Opacus' ``discretize`` (pmf from CDF differences on the grid, then shifted to
    the continuous mean), with the CDF evaluated once per cell edge, the mean of
    :func:`truncated_mean`, and the discrete mean summed over the normal floats of
    the pmf only: OpenBLAS is ~100x slower on subnormals, and terms below 1e-307
    cannot change a mean of a PRV (Opacus' check below keeps it within half a mesh)."""
    from opacus.accountants.analysis.prv import DiscretePRV

    t = domain.ts
    pmf = np.diff(prv.cdf(np.append(t - domain.dt / 2, t[-1] + domain.dt / 2)))
    normal = pmf >= np.finfo(pmf.dtype).tiny
    mean_shift = truncated_mean(q, sigma, prv) - float(np.dot(t[normal], pmf[normal]))
    if np.abs(mean_shift) >= domain.dt / 2:
        raise RuntimeError("Discrete mean differs significantly from continuous mean.")
    return DiscretePRV(pmf=pmf, domain=domain.shift_right(mean_shift))


def discretized(q: float, sigma: float, domain) -> tuple:
    """Opacus' ``discretize`` of the truncated PRV of ``(q, sigma)`` on ``domain``
    and the pmf's real FFT, cached (LRU, :data:`CACHE_BYTES` in all)."""
    from scipy.fft import rfft

    key = (float(q), float(sigma), float(domain.t_min), float(domain.t_max), int(domain.size))
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    dprv = _discretize(q, sigma, truncated_prv(q, sigma, domain.t_min, domain.t_max), domain)
    value = (dprv, rfft(dprv.pmf))
    nbytes = dprv.pmf.nbytes + value[1].nbytes
    if nbytes <= CACHE_BYTES // 4:
        with _cache_lock:
            if key not in _cache:
                _cache[key] = value
                _cache_size[0] += nbytes
            while _cache_size[0] > CACHE_BYTES:
                _, (old, spectrum) = _cache.popitem(last=False)
                _cache_size[0] -= old.pmf.nbytes + spectrum.nbytes
    return value


def self_composed(q: float, sigma: float, domain, steps: int):
    """Opacus' ``_compose_fourier`` of the cached discretization: ``steps``-fold
    composition as one power of the cached spectrum and one inverse FFT."""
    from opacus.accountants.analysis.prv import DiscretePRV
    from scipy.fft import irfft

    dprv, spectrum = discretized(q, sigma, domain)
    pmf = irfft(spectrum**steps, n=len(dprv.pmf))
    shift = steps - 1 + (len(pmf) // 2 if steps % 2 == 0 else 0)
    return DiscretePRV(pmf=np.roll(pmf, shift), domain=dprv.domain.shift_right(dprv.domain.shifts * (steps - 1)))


def compose(history: Sequence[tuple[float, float, int]], domain):
    """The composed discrete PRV of ``history`` on ``domain`` (Opacus'
    ``compose_heterogeneous``: FFT self-compositions, then a convolution tree)."""
    from opacus.accountants.analysis.prv.compose import _compose_convolution_tree

    return _compose_convolution_tree([self_composed(q, sigma, domain, n) for sigma, q, n in history])


def clear_cache() -> None:
    """Forget every cached discretization."""
    with _cache_lock:
        _cache.clear()
        _cache_size[0] = 0
