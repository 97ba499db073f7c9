"""Cryptographically secure randomness for DP noise and sampling.

:class:`SecureRNG` draws every bit from a ChaCha20 keystream (``cryptography``
package). By default the key comes from ``os.urandom``, so nobody, including the
operator, can predict or replay the noise. ``SecureRNG.from_seed`` derives the key
from a user seed with HKDF-SHA256: runs become reproducible, and anyone who knows
the seed can subtract the noise, which voids the DP guarantee against them.

Gaussian samples use the Box-Muller transform on 52-bit uniforms in float64 and
are cast to the target dtype afterwards. Floating-point DP attacks against
textbook samplers (Mironov 2012; Jin et al. 2022) remain possible in principle;
SECURITY.md states this.
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
