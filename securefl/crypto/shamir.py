"""Shamir t-of-n secret sharing over the prime field GF(2^521 - 1) (Shamir, CACM 1979).

A secret (an integer below the prime, or up to 65 bytes) is the constant term of
a random polynomial of degree ``t - 1``; share ``i`` is the polynomial evaluated at
a non-zero point ``x_i``. Any ``t`` shares determine the secret by Lagrange
interpolation at 0; any ``t - 1`` shares are consistent with every possible secret,
so they reveal nothing about it (perfect secrecy).

The coefficients are drawn uniformly from the field with ``os.urandom``, by
rejection sampling so there is no modulo bias. There is deliberately no way to pass
a generator: a caller-supplied (possibly seeded) stream would let anyone who knows
the seed rebuild the polynomial from a single share. Secure aggregation shares
32-byte seeds and X25519 private keys with it (Bonawitz et al., CCS 2017).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

from securefl.exceptions import ConfigValueError, ProtocolError
from securefl.validators import is_int

#: the Mersenne prime 2^521 - 1: large enough for any 32-byte secret, and cheap to reduce
PRIME = (1 << 521) - 1
#: bytes of one field element
ELEMENT_BYTES = 66


@dataclass(frozen=True)
class Share:
    """One share: the point ``x`` (1-based holder index) and the value ``y``."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(4, "big") + self.y.to_bytes(ELEMENT_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> "Share":
        if len(data) != 4 + ELEMENT_BYTES:
            raise ProtocolError(f"a share has {4 + ELEMENT_BYTES} bytes, got {len(data)}")
        x, y = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big")
        if not 0 < x < PRIME or not 0 <= y < PRIME:
            raise ProtocolError(f"share point out of the field (x={x})")
        return cls(x, y)


def _random_element() -> int:
    """A uniform field element from the OS CSPRNG (rejection sampling on 521-bit draws)."""
    while True:
        raw = os.urandom(ELEMENT_BYTES)
        v = int.from_bytes(raw, "big") & PRIME  # keep the low 521 bits
        if v < PRIME:
            return v


def secret_to_int(secret: bytes) -> int:
    """Encode up to 65 bytes as a field element (length-preserving via a 0x01 prefix)."""
    if len(secret) > ELEMENT_BYTES - 1:
        raise ConfigValueError("secret", len(secret), f"at most {ELEMENT_BYTES - 1} bytes can be shared")
    return int.from_bytes(b"\x01" + secret, "big")


def int_to_secret(value: int) -> bytes:
    """Inverse of :func:`secret_to_int`."""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    if not raw or raw[0] != 1:
        raise ProtocolError("reconstructed value is not an encoded secret (inconsistent shares)")
    return raw[1:]


def split(secret: int | bytes, xs: Sequence[int], threshold: int) -> list[Share]:
    """Shares of ``secret`` at the points ``xs`` such that any ``threshold`` recover it.

    The random coefficients always come from ``os.urandom`` (no generator argument,
    so a reproducible one cannot be passed by mistake).
    """
    s = secret_to_int(secret) if isinstance(secret, (bytes, bytearray)) else secret
    if not is_int(s) or not 0 <= s < PRIME:
        raise ConfigValueError("secret", type(secret).__name__, "must be bytes or an integer in [0, 2^521 - 1)")
    _check_points(xs)
    if not is_int(threshold) or not 1 <= threshold <= len(xs):
        raise ConfigValueError("threshold", threshold, f"must be an integer in [1, {len(xs)}] (number of shares)")
    coeffs = [s] + [_random_element() for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def _check_points(xs: Iterable[int]) -> None:
    seen = set()
    for x in xs:
        if not is_int(x) or not 0 < x < PRIME:
            raise ConfigValueError("x", x, "share points must be integers in [1, p)")
        if x in seen:
            raise ConfigValueError("x", x, "share points must be distinct")
        seen.add(x)


@lru_cache(maxsize=4096)
def lagrange_coefficients(xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    """The weights ``l_i`` with ``f(at) = sum l_i * f(x_i)`` for any polynomial of
    degree below ``len(xs)``. Cached: a server reconstructing many secrets from the
    same holders computes them once (one modular inversion in all, batched)."""
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (at - xj) % PRIME
                den = den * (xi - xj) % PRIME
        nums.append(num)
        dens.append(den)
    # batch inversion (Montgomery's trick): one pow() for all denominators
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        out[i] = nums[i] * inv * prefix[i] % PRIME
        inv = inv * dens[i] % PRIME
    return tuple(out)


def _interpolate_at(shares: Sequence[Share], at: int) -> int:
    coeffs = lagrange_coefficients(tuple(s.x for s in shares), at)
    return sum(c * s.y for c, s in zip(coeffs, shares)) % PRIME


def combine(shares: Sequence[Share], threshold: int) -> int:
    """The secret (as a field element) from at least ``threshold`` shares.

    Extra shares are checked against the polynomial fixed by the ``threshold``
    shares with the smallest points; a share that does not lie on it raises :class:`ProtocolError`
    rather than yielding a wrong secret.
    """
    if not is_int(threshold) or threshold < 1:
        raise ConfigValueError("threshold", threshold, "must be a positive integer")
    if len(shares) < threshold:
        raise ProtocolError(f"{len(shares)} shares cannot reconstruct a {threshold}-of-n secret")
    _check_points(s.x for s in shares)
    ordered = sorted(shares, key=lambda s: s.x)  # a canonical base set keeps the cache warm
    base, shares = ordered[:threshold], ordered
    for extra in shares[threshold:]:
        if _interpolate_at(base, extra.x) != extra.y:
            raise ProtocolError(f"share at x={extra.x} is inconsistent with the others")
    return _interpolate_at(base, 0)


def combine_bytes(shares: Sequence[Share], threshold: int) -> bytes:
    """:func:`combine` for a secret that was shared as bytes."""
    return int_to_secret(combine(shares, threshold))
