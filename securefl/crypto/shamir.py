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

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate, repeat
from operator import mul
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


def _reduce(v: int) -> int:
    """``v mod p`` for ``0 <= v < 2^1042`` (a product of two reduced elements):
    with the Mersenne prime, fold the high bits onto the low ones (several
    times cheaper than ``%``)."""
    v = (v & PRIME) + (v >> 521)
    if v >= PRIME:
        v -= PRIME
    return v - PRIME if v >= PRIME else v


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses modulo the prime of non-zero reduced ``values`` with a single
    ``pow`` (Montgomery's trick: prefix products, one inversion, a backward sweep)."""
    prefix = [1]
    for v in values:
        prefix.append(_reduce(prefix[-1] * v))
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = _reduce(inv * prefix[i])
        inv = _reduce(inv * values[i])
    return out


#: factorial tables cover holder indices up to this (two lists of about 8k elements)
_TABLE_LIMIT = 1 << 13
#: points below this in magnitude multiply exactly without reduction (holder indices)
_SMALL = 1 << 32
#: the parity check's h uses exact powers x^j while they stay below this many bits
_POWER_BITS = 1024


@lru_cache(maxsize=16)
def _factorials(n: int) -> tuple[list[int], list[int]]:
    """``k!`` and ``1/k!`` modulo the prime for ``k = 0..n``."""
    fact = [1] * (n + 1)
    for k in range(1, n + 1):
        fact[k] = fact[k - 1] * k % PRIME
    inv = [1] * (n + 1)
    inv[n] = pow(fact[n], -1, PRIME)
    for k in range(n, 0, -1):
        inv[k - 1] = inv[k] * k % PRIME
    return fact, inv


def _table(top: int) -> tuple[list[int], list[int]] | None:
    """Factorials up to at least ``top`` (a power-of-two size: few tables, cached)."""
    return _factorials(1 << max(top, 1).bit_length()) if 0 < top <= _TABLE_LIMIT else None


def _weights_dense(xs: tuple[int, ...]) -> list[int] | None:
    """Barycentric weights when the points fill most of ``1..max(xs)`` (holder
    indices with a few absentees): from factorials, O(m * absentees) products."""
    top = max(xs)
    table = _table(top)
    if table is None or min(xs) < 1 or top > 2 * len(xs) + 16:
        return None
    present = set(xs)
    missing = [k for k in range(1, top + 1) if k not in present]
    if len(missing) > len(xs):
        return None
    inv_fact = table[1]
    out = []
    for x in xs:
        # prod_{k != x, 1 <= k <= top} (x - k) = (-1)^(top - x) (x - 1)! (top - x)!
        w = math.prod(x - k for k in missing) * inv_fact[x - 1] * inv_fact[top - x] % PRIME
        out.append(PRIME - w if (top - x) % 2 and w else w)
    return out


@lru_cache(maxsize=256)
def barycentric_weights(xs: tuple[int, ...]) -> tuple[int, ...]:
    """``w_i = 1 / prod_{j != i} (x_i - x_j)`` modulo the prime (the barycentric
    weights of Berrut and Trefethen, SIAM Review 2004), with one modular
    inversion in all. Cached per holder set."""
    dense = _weights_dense(xs)
    if dense is not None:
        return tuple(dense)
    if max(map(abs, xs)) < _SMALL:  # exact products of small differences, one reduction each
        dens = [math.prod(xi - xj for xj in xs if xj != xi) % PRIME for xi in xs]
    else:
        dens = []
        for xi in xs:
            den = 1
            for xj in xs:
                if xj != xi:
                    den = den * (xi - xj) % PRIME
            dens.append(den)
    return tuple(_batch_inverse(dens))


def _inverses(values: Sequence[int]) -> list[int]:
    """``1/v`` modulo the prime: from the factorial table for holder indices, else
    by :func:`_batch_inverse`."""
    table = _table(max(values)) if min(values) > 0 else None
    if table is None:
        return _batch_inverse([v % PRIME for v in values])
    fact, inv_fact = table
    return [fact[v - 1] * inv_fact[v] % PRIME for v in values]


@lru_cache(maxsize=256)
def lagrange_coefficients(xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    """The weights ``l_i`` with ``f(at) = sum l_i * f(x_i)`` for any polynomial of
    degree below ``len(xs)``: ``l_i = w_i * prod_j (at - x_j) / (at - x_i)`` from the
    barycentric weights, O(m) once those are known. Cached per holder set."""
    if at in xs:
        return tuple(int(x == at) for x in xs)
    node = math.prod(at - x for x in xs) % PRIME if max(map(abs, xs)) < _SMALL else _node(xs, at)
    if at == 0:  # 1/(0 - x) = -(1/x)
        inv = [PRIME - i for i in _inverses(xs)]
    else:
        inv = _batch_inverse([(at - x) % PRIME for x in xs])
    return tuple(_reduce(_reduce(w * node) * i) for w, i in zip(barycentric_weights(xs), inv))


def _node(xs: Sequence[int], at: int) -> int:
    out = 1
    for x in xs:
        out = out * (at - x) % PRIME
    return out


def _interpolate_at(shares: Sequence[Share], at: int) -> int:
    coeffs = lagrange_coefficients(tuple(s.x for s in shares), at)
    return sum(c * s.y for c, s in zip(coeffs, shares)) % PRIME


def _parity_check(xs: tuple[int, ...], threshold: int, r: int) -> list[int]:
    """A random row of the parity-check matrix of the Reed-Solomon code at ``xs``.

    ``y`` are evaluations of one polynomial of degree < t exactly when
    ``sum_i w_i h(x_i) y_i = 0`` for every ``h`` of degree < m - t (the dual of a
    Reed-Solomon code is a generalized one; MacWilliams and Sloane, ch. 10). With
    ``h(x) = sum_{j < m-t} (r x)^j`` for a random ``r``, an inconsistent ``y`` passes
    only if ``r`` is a root of a non-zero polynomial of degree < m - t: probability
    below ``m / p`` (about 2^-511)."""
    k = len(xs) - threshold
    if k * max(map(abs, xs)).bit_length() <= _POWER_BITS:
        # few extra shares at small points: sum_j r^j * x^j with exact powers x^j
        rpow = list(accumulate(repeat(r, k - 1), _mulmod, initial=1))
        h = [sum(map(mul, rpow, accumulate(repeat(x, k - 1), mul, initial=1))) % PRIME for x in xs]
    else:  # the geometric sum in closed form, (g^k - 1) / (g - 1) with g = r x
        g = [r * x % PRIME for x in xs]
        inv = iter(_batch_inverse([(v - 1) % PRIME for v in g if v != 1]))
        h = [k % PRIME if v == 1 else (pow(v, k, PRIME) - 1) * next(inv) % PRIME for v in g]
    return [_reduce(w * hv) for w, hv in zip(barycentric_weights(xs), h)]


def _mulmod(a: int, b: int) -> int:
    return _reduce(a * b)


def combine_many(groups: Sequence[Sequence[Share]], threshold: int) -> list[int]:
    """The secrets (field elements) of several share lists, each of at least
    ``threshold`` shares (:func:`combine_points` on the shares' points and values)."""
    return combine_points([([s.x for s in g], [s.y for s in g]) for g in groups], threshold)


def _check_columns(xs: Sequence[int], ys: Sequence[int], threshold: int) -> None:
    if len(xs) != len(ys):
        raise ConfigValueError("shares", len(ys), f"need one value per point ({len(xs)} points)")
    if len(xs) < threshold:
        raise ProtocolError(f"{len(xs)} shares cannot reconstruct a {threshold}-of-n secret")
    fast = all(type(x) is int for x in xs) and len(set(xs)) == len(xs) and 0 < min(xs) and max(xs) < PRIME
    if not fast:
        _check_points(xs)  # the precise error
    if not all(type(y) is int and 0 <= y < PRIME for y in ys):
        raise ProtocolError("share value out of the field")


def _check_consistent(xs: tuple[int, ...], rows: list[Sequence[int]], threshold: int, r: int) -> None:
    """Refuse unless every row of values lies on one polynomial of degree < t.

    One random parity check (:func:`_parity_check`, challenge ``r``) of a random
    combination ``sum_s rho_s y_s`` of the rows (128-bit ``rho_s`` from
    ``os.urandom``): if some row is off its polynomial, its check value is non-zero
    except with probability below m / p, and then the combination's is non-zero
    except with probability 2^-128 (at most one ``rho_s`` cancels the others).
    Small ``rho`` keep the combination cheap: the rows of a holder set cost one
    full-size inner product in all, not one each."""
    if len(rows) == 1:
        combined = rows[0]
    else:
        raw = os.urandom(16 * len(rows))
        rho = [int.from_bytes(raw[i : i + 16], "big") for i in range(0, len(raw), 16)]
        combined = [sum(map(mul, rho, column)) for column in zip(*rows)]
    if sum(map(mul, _parity_check(xs, threshold, r), combined)) % PRIME:
        raise ProtocolError(f"shares are inconsistent: they do not lie on one polynomial of degree < {threshold}")


def combine_points(groups: Sequence[tuple[Sequence[int], Sequence[int]]], threshold: int) -> list[int]:
    """The secrets of several secrets' shares, each given as ``(xs, ys)`` with at
    least ``threshold`` points.

    All shares of a secret must lie on one polynomial of degree below
    ``threshold``: checked by :func:`_check_consistent`, once per holder set, with
    a challenge from ``os.urandom`` drawn after every share is fixed. A secret
    with any share off its polynomial raises :class:`ProtocolError` (the same
    message whichever share it is) rather than yielding a wrong value. Cost: one
    inner product per holder set and one of length t per secret, with the
    weights cached per holder set, instead of an interpolation per extra share.
    """
    if not is_int(threshold) or threshold < 1:
        raise ConfigValueError("threshold", threshold, "must be a positive integer")
    by_set: dict[tuple[int, ...], list[tuple[int, Sequence[int]]]] = {}  # holder set -> (index, values)
    for index, (xs, ys) in enumerate(groups):
        _check_columns(xs, ys, threshold)
        if any(a > b for a, b in zip(xs, xs[1:])):  # canonical order keeps the caches warm
            xs, ys = zip(*sorted(zip(xs, ys)))
        by_set.setdefault(tuple(xs), []).append((index, ys))
    r = _random_element()
    out = [0] * len(groups)
    for xs, rows in by_set.items():
        if len(xs) > threshold:
            _check_consistent(xs, [ys for _, ys in rows], threshold, r)
        # any t consistent shares fix the secret: the first t when the holder set is
        # shared (their weights computed once), else all (the check's weights)
        coeffs = lagrange_coefficients(xs[:threshold] if len(rows) > 1 else xs, 0)
        for index, ys in rows:
            out[index] = sum(map(mul, coeffs, ys)) % PRIME
    return out


def combine(shares: Sequence[Share], threshold: int) -> int:
    """The secret (as a field element) from at least ``threshold`` shares
    (:func:`combine_many` for one list)."""
    return combine_many([shares], threshold)[0]


def combine_bytes(shares: Sequence[Share], threshold: int) -> bytes:
    """:func:`combine` for a secret that was shared as bytes."""
    return int_to_secret(combine(shares, threshold))


def combine_bytes_many(groups: Sequence[Sequence[Share]], threshold: int) -> list[bytes]:
    """:func:`combine_many` for secrets that were shared as bytes."""
    return [int_to_secret(v) for v in combine_many(groups, threshold)]
