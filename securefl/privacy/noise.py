"""Cryptographically secure randomness for DP noise and sampling.

:class:`SecureRNG` draws every bit from a ChaCha20 keystream (``cryptography``
package). By default the key comes from ``os.urandom``, so nobody, including the
operator, can predict or replay the noise. ``SecureRNG.from_seed`` derives the key
from a user seed with HKDF-SHA256: runs become reproducible, and anyone who knows
the seed can subtract the noise, which voids the DP guarantee against them.

DP noise (``SecureRNG.secure_gaussian``, :func:`noisy_on_grid`) resists the
floating-point attacks on textbook samplers (Mironov 2012; Jin et al. 2022): it is
``grid * N_Z(0, s^2)``, an exact discrete Gaussian (Canonne, Kamath and Steinke
2020, Algorithms 1-3: discrete Laplace plus rejection, every Bernoulli decided by
comparing uniform *integers* from the keystream, no floating point), on a
power-of-two grid with an integer ``s = std / grid >= 2^22``. The query is rounded
onto the same grid before the noise is added, so ``grid * (round(q / grid) + Z)``
is computed in int64 and is exactly representable in float64 (``|.| < 2^53`` is
checked): the released value is a post-processing of an integer-valued mechanism,
and nothing of ``q`` survives below the grid. A cast to float32 afterwards is
*not* exact in general (24-bit mantissa), but it is a deterministic function of
that released value, i.e. post-processing, so it leaks nothing more.

Accounting (see :func:`effective_noise_multiplier`): rounding moves each
coordinate by at most ``grid / 2``, so neighbouring queries with L2 sensitivity
``C`` have rounded L2 sensitivity at most ``C + sqrt(d) * grid``. The discrete
Gaussian with ``sigma^2 = (s grid)^2`` on a query of that sensitivity satisfies the
same Renyi / zCDP bound as the continuous Gaussian with the same ``sigma`` (CKS
2020, Thm 4 and Thm 14 for the multivariate case: ``D_alpha <= alpha Delta^2 /
(2 sigma^2)``). :func:`noisy_on_grid` therefore draws ``s = ceil(z (C + sqrt(d)
grid) / grid)``: the mechanism's multiplier ``s grid / (C + sqrt(d) grid)`` is at
least the ``z`` the ledger is charged with, so the charge stays an upper bound and
needs no change; the extra noise is ``sqrt(d) grid / C + 1/s``, i.e. below
``(sqrt(d) z + 1) 2^-22`` relative. Caveat: the RDP/zCDP bound above is proven for
the discrete Gaussian itself; for the Poisson-subsampled mechanism the PRV/PLD
accountants model the continuous Gaussian, which the discrete one at ``s >= 2^22``
grid units matches to within a negligible distance (its privacy loss is the same
linear function of the output, evaluated on a lattice of step ``2^-22 sigma``). The distributed-DP noise
shares of secure aggregation use the same sampler in ring-grid units
(``crypto.secagg.common.encode_with_noise``). ``SecureRNG.normal`` (Box-Muller in
float64) is kept for comparison and for CKKS noise flooding, which protects the
decryption key, not a DP guarantee.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefl.exceptions import RandomnessError

_REKEY_BYTES = 1 << 34  # well below ChaCha20's 2^38-byte keystream per (key, nonce)
GRID_BITS = 22  # s = std / grid lies in [2^22, 2^23): |Y| fits int32 and (|Y| - s)^2 int64
_EXACT = 1 << 53  # integers below this are exact in float64


class SecureRNG:
    """A ChaCha20-keystream random source for noise, sampling and rounding."""

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(32)
            self.reproducible = False
        else:
            if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
                raise RandomnessError("key must be 32 bytes")
            self.reproducible = True
        self._rekey(bytes(key))

    @classmethod
    def from_seed(cls, seed: int | bytes, context: str = "securefl") -> "SecureRNG":
        """A reproducible stream keyed by HKDF(seed, context); do not use where the
        seed may be known to an adversary (see module docstring)."""
        raw = seed if isinstance(seed, bytes) else int(seed).to_bytes(16, "little", signed=False)
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"securefl-rng-v1", info=context.encode()
        ).derive(raw)
        return cls(key)

    def _rekey(self, key: bytes) -> None:
        self._enc = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
        self._used = 0

    def bytes(self, n: int) -> bytes:
        """``n`` keystream bytes."""
        if self._used + n > _REKEY_BYTES:
            self._rekey(self._enc.update(b"\x00" * 32))
        self._used += n
        return self._enc.update(b"\x00" * n)

    def uint64(self, n: int) -> np.ndarray:
        return np.frombuffer(self.bytes(8 * n), dtype="<u8").copy()

    def uniform(self, n: int) -> np.ndarray:
        """``n`` float64 uniforms in the open interval (0, 1)."""
        # 52 random bits: (k + 0.5) * 2^-52 is exact in float64 and lies strictly in (0, 1)
        return ((self.uint64(n) >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52

    def normal(self, shape: tuple[int, ...] | torch.Size, std: float = 1.0, dtype=torch.float32) -> torch.Tensor:
        """Gaussian samples N(0, std^2) of ``shape`` (Box-Muller)."""
        n = math.prod(shape) if len(shape) else 1
        if std == 0 or n == 0:
            return torch.zeros(shape, dtype=dtype)
        half = (n + 1) // 2
        u = self.uniform(2 * half)
        r = np.sqrt(-2.0 * np.log(u[:half]))
        theta = 2.0 * math.pi * u[half:]
        z = np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:n]
        return torch.from_numpy(z * std).to(dtype).reshape(shape)

    def secure_gaussian(
        self, shape: tuple[int, ...] | torch.Size, std: float, grid: float | None = None
    ) -> torch.Tensor:
        """``grid * N_Z(0, s^2)`` with ``s = ceil(std / grid)`` (float64, exact on the grid).

        ``grid`` must be a power of two; ``None`` picks :func:`noise_grid(std)`.
        The standard deviation is ``s * grid >= std`` (by less than one grid step)."""
        n = math.prod(shape) if len(shape) else 1
        if std == 0 or n == 0:
            return torch.zeros(shape, dtype=torch.float64)
        grid = noise_grid(std) if grid is None else _check_grid(grid)
        z = discrete_gaussian(self, n, math.ceil(std / grid))
        return torch.from_numpy(_on_grid(z, grid)).reshape(shape)

    def discrete_gaussian(self, n: int, sigma: int) -> np.ndarray:
        """``n`` exact draws of N_Z(0, sigma^2) (int64), integer ``sigma`` in [1, 2^24]."""
        return discrete_gaussian(self, n, sigma)

    def below_array(self, bounds: np.ndarray) -> np.ndarray:
        """One uniform integer in ``[0, b)`` for each ``b`` of ``bounds`` (1 <= b < 2^53).

        Rejection sampling: ``x`` is a keystream word masked to the smallest power of
        two ``2^e >= b``; values ``>= b`` are redrawn (each try succeeds w.p. > 1/2)."""
        bounds = np.asarray(bounds, dtype=np.uint64).ravel()
        if bounds.size and (int(bounds.min()) < 1 or int(bounds.max()) >= _EXACT):
            raise RandomnessError("bounds must lie in [1, 2^53)")
        # b < 2^53 is exact in float64, so frexp gives 2^(e-1) <= b < 2^e
        mask = (np.uint64(1) << np.frexp(bounds.astype(np.float64))[1].astype(np.uint64)) - np.uint64(1)
        out = self.uint64(bounds.size) & mask
        bad = np.flatnonzero(out >= bounds)
        while bad.size:
            x = self.uint64(bad.size) & mask[bad]
            ok = x < bounds[bad]
            out[bad[ok]] = x[ok]
            bad = bad[~ok]
        return out

    def bernoulli(self, p: float, n: int) -> np.ndarray:
        """``n`` independent booleans, each True with probability ``p``."""
        return self.uniform(n) < p

    def below(self, bound: int) -> int:
        """A uniform integer in ``[0, bound)`` without modulo bias."""
        if bound <= 0:
            raise RandomnessError("bound must be positive")
        limit = (1 << 64) - ((1 << 64) % bound)
        while True:
            x = int(self.uint64(1)[0])
            if x < limit:
                return x % bound

    def sample(self, population: int, k: int) -> list[int]:
        """``k`` distinct integers from ``range(population)`` (partial Fisher-Yates)."""
        if not 0 <= k <= population:
            raise RandomnessError("k must be between 0 and population")
        pool = list(range(population))
        for i in range(k):
            j = i + self.below(population - i)
            pool[i], pool[j] = pool[j], pool[i]
        return sorted(pool[:k])


# ------------------------------------------------- exact discrete Gaussian (CKS 2020)
def bernoulli_rational(rng: SecureRNG, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Exact Bernoulli(num / den) per element (0 <= num <= den, integers)."""
    return rng.below_array(den) < np.asarray(num, dtype=np.uint64)


def bernoulli_exp(rng: SecureRNG, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Exact Bernoulli(exp(-num / den)) per element, ``num >= 0``, ``den >= 1`` (CKS Alg. 1).

    ``exp(-g)`` is split as ``exp(-1)^floor(g) * exp(-frac(g))``; for ``g`` in
    [0, 1], ``K`` counts successes of Bernoulli(g / K), K = 1, 2, ...; the result
    is ``K`` odd at the first failure."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    whole, frac = num // den, num % den
    alive = np.ones(num.size, dtype=bool)
    todo = np.flatnonzero(whole > 0)
    j = 0
    while todo.size:  # floor(g) independent Bernoulli(exp(-1)); stop at the first failure
        ok = _bern_exp_unit(rng, np.ones(todo.size, np.int64), np.ones(todo.size, np.int64))
        alive[todo[~ok]] = False
        j += 1
        todo = todo[ok & (whole[todo] > j)]
    idx = np.flatnonzero(alive)
    alive[idx] = _bern_exp_unit(rng, frac[idx], den[idx])
    return alive


def _bern_exp_unit(rng: SecureRNG, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Bernoulli(exp(-num/den)) for num/den in [0, 1]."""
    k = np.ones(num.size, dtype=np.int64)
    out = np.zeros(num.size, dtype=bool)
    todo = np.arange(num.size)
    while todo.size:
        a = bernoulli_rational(rng, num[todo], den[todo] * k[todo])
        stop = todo[~a]
        out[stop] = (k[stop] % 2) == 1
        todo = todo[a]
        k[todo] += 1
    return out


def _laplace_candidates(rng: SecureRNG, m: int, t: int) -> np.ndarray:
    """One pass of CKS Alg. 2 over ``m`` candidates; returns the accepted draws, in order."""
    u = rng.below_array(np.full(m, t, np.uint64)).astype(np.int64)
    u = u[bernoulli_exp(rng, u, np.full(m, t, np.int64))]
    v = np.zeros(u.size, dtype=np.int64)
    go = np.arange(u.size)
    while go.size:  # v ~ Geometric(1 - exp(-1)): count Bernoulli(exp(-1)) successes
        a = _bern_exp_unit(rng, np.ones(go.size, np.int64), np.ones(go.size, np.int64))
        go = go[a]
        v[go] += 1
    x = u + t * v
    neg = (rng.uint64(x.size) & np.uint64(1)).astype(bool)
    return np.where(neg, -x, x)[~(neg & (x == 0))]


def _fill(n: int, batch, accept_rate: float) -> np.ndarray:
    """The first ``n`` accepted draws of i.i.d. candidate batches (oversampled, so that
    one pass usually suffices and small requests do not loop over tiny remainders)."""
    parts, have = [], 0
    while have < n:
        got = batch(int((n - have) / accept_rate * 1.1) + 32)
        parts.append(got)
        have += got.size
    return np.concatenate(parts)[:n] if parts else np.empty(0, dtype=np.int64)


def discrete_laplace(rng: SecureRNG, n: int, t: int) -> np.ndarray:
    """``n`` exact draws of the discrete Laplace, P[Y = y] ∝ exp(-|y| / t) (CKS Alg. 2)."""
    return _fill(n, lambda m: _laplace_candidates(rng, m, t), 1 - math.exp(-1))


def discrete_gaussian(rng: SecureRNG, n: int, sigma: int) -> np.ndarray:
    """``n`` exact draws of N_Z(0, sigma^2), P[Y = y] ∝ exp(-y^2 / (2 sigma^2)), integer
    ``sigma`` in [1, 2^24] (CKS 2020 Alg. 3 with t = sigma: a discrete Laplace draw
    ``Y`` is kept with probability exp(-(|Y| - sigma)^2 / (2 sigma^2)))."""
    sigma = int(sigma)
    if not 1 <= sigma <= 1 << 24:
        raise RandomnessError("discrete Gaussian sigma must be an integer in [1, 2^24]")
    den = 2 * sigma * sigma

    def batch(m: int) -> np.ndarray:
        y = discrete_laplace(rng, m, sigma)
        dev = np.abs(y) - sigma
        if np.any(np.abs(dev) >= 1 << 31):  # would overflow dev^2; probability < exp(-2^7)
            raise RandomnessError("discrete Laplace draw out of range")
        return y[bernoulli_exp(rng, dev * dev, np.full(y.size, den, np.int64))]

    return _fill(n, batch, 0.7)


def _check_grid(grid: float) -> float:
    m, _ = math.frexp(grid)
    if not (grid > 0 and m == 0.5):
        raise RandomnessError(f"grid must be a power of two, got {grid!r}")
    return float(grid)


def noise_grid(std: float) -> float:
    """The power of two ``grid`` with ``std / grid`` in ``[2^GRID_BITS, 2^(GRID_BITS+1))``."""
    if not (std > 0 and math.isfinite(std)):
        raise RandomnessError("std must be positive and finite")
    return math.ldexp(1.0, math.frexp(std)[1] - 1 - GRID_BITS)


def _on_grid(k: np.ndarray, grid: float) -> np.ndarray:
    if k.size and int(np.max(np.abs(k))) >= _EXACT:
        raise RandomnessError("value too large for the noise grid: not exact in float64")
    return k.astype(np.float64) * grid  # exact: |k| < 2^53 times a power of two


def effective_noise_multiplier(noise_multiplier: float, clip: float, dim: int, grid: float) -> float:
    """The multiplier that noise of std ``noise_multiplier * clip`` gives once the
    query is rounded onto ``grid``: ``z C / (C + sqrt(dim) grid)`` (rounding both
    neighbours moves their difference by at most ``sqrt(dim) grid`` in L2)."""
    return noise_multiplier * clip / (clip + math.sqrt(dim) * grid)


def noisy_on_grid(
    total: torch.Tensor, *, noise_multiplier: float, clip: float, rng: SecureRNG, dim: int | None = None
) -> torch.Tensor:
    """``grid * (round(total / grid) + N_Z(0, s^2))`` in float64 (exact).

    ``total`` is (part of) a query of ``dim`` coordinates (default: its own size)
    with L2 sensitivity ``clip``; ``grid = noise_grid(noise_multiplier * clip)`` and
    ``s = ceil(z (clip + sqrt(dim) grid) / grid)``, so the added std ``s grid`` over
    the rounded sensitivity ``clip + sqrt(dim) grid`` is >= ``noise_multiplier``,
    the value the ledger is charged with. Calls for the parts of one query (same
    ``noise_multiplier``, ``clip`` and ``dim``) use the same grid and ``s``."""
    q = total.detach().to(torch.float64).cpu().numpy().ravel()
    if noise_multiplier == 0 or clip == 0:
        return total.detach().to(torch.float64).clone()
    dim = max(1, q.size if dim is None else int(dim))
    grid = noise_grid(noise_multiplier * clip)
    s = math.ceil(noise_multiplier * (clip + math.sqrt(dim) * grid) / grid)
    scaled = q / grid  # exact: division by a power of two
    if not np.all(np.isfinite(scaled)) or (q.size and float(np.max(np.abs(scaled))) >= _EXACT / 2):
        raise RandomnessError("query too large for the noise grid")
    k = np.rint(scaled).astype(np.int64) + discrete_gaussian(rng, q.size, s)
    return torch.from_numpy(_on_grid(k, grid)).reshape(total.shape)
