"""Fixed-point encoding of real vectors into the ring Z_(2^bits) for secure aggregation.

A value ``v`` is clipped to ``[-bound, bound]``, scaled by ``2^frac_bits`` and
rounded *stochastically* (up with probability equal to the fractional part, so the
encoding is unbiased; Gupta et al., ICML 2015), with the coin flips drawn from an
AES-256-CTR keystream keyed by ``os.urandom`` (:func:`_coin_stream`): the rounding of a
client's update is secret-dependent, so it never comes from a caller-supplied
(possibly seeded) generator. Negative integers are stored in two's complement.
:meth:`FixedPoint.for_sum` picks the largest ``frac_bits`` for which the sum of
``clients`` encoded values can never wrap around the modulus, so the masked sum
decodes exactly (Bonawitz et al., CCS 2017, section 3; Bell et al.,
CCS 2020). Clipped coordinates are counted and returned, never hidden.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.exceptions import ConfigTypeError, ConfigValueError, ProtocolError
from securefl.validators import is_int

BITS = (32, 64)
#: fewer fractional bits than this would make the rounding error dominate updates
MIN_FRAC_BITS = 8
_UNSIGNED = {32: np.uint32, 64: np.uint64}
_SIGNED = {32: np.int32, 64: np.int64}


#: coordinates rounded per step: the float temporaries stay in the L2 cache
_BLOCK = 1 << 15


def _coin_key() -> bytes:
    return os.urandom(32)


def _coin_stream() -> Any:
    """The AES-256-CTR keystream under a fresh 32-byte key from ``os.urandom``: a
    CTR-DRBG-style expansion (NIST SP 800-90A) of the OS generator, an order of
    magnitude cheaper than reading megabytes from it. No caller-supplied
    generator reaches it."""
    return Cipher(algorithms.AES(_coin_key()), modes.CTR(bytes(16))).encryptor()


def peak_abs(values: np.ndarray, what: str) -> float:
    """``max |v|`` in two reductions without a temporary array; NaN or infinity
    anywhere raises :class:`ProtocolError` with the message ``what``."""
    if values.size == 0:
        return 0.0
    peak = max(float(values.max()), -float(values.min()))
    if not math.isfinite(peak):
        raise ProtocolError(what)
    return peak


@dataclass(frozen=True)
class Encoded:
    """A vector in Z_(2^bits) and how many of its coordinates were clipped."""

    values: np.ndarray
    saturated: int


@dataclass(frozen=True)
class FixedPoint:
    """Fixed point with ``frac_bits`` fractional bits in Z_(2^bits); ``|v| <= bound``."""

    bits: int
    frac_bits: int
    bound: float

    def __post_init__(self) -> None:
        if not is_int(self.bits):
            raise ConfigTypeError("bits", self.bits, "must be an integer")
        if self.bits not in BITS:
            raise ConfigValueError("bits", self.bits, "must be 32 or 64")
        if not is_int(self.frac_bits):
            raise ConfigTypeError("frac_bits", self.frac_bits, "must be an integer")
        if not 0 <= self.frac_bits < self.bits:
            raise ConfigValueError("frac_bits", self.frac_bits, f"must be in [0, {self.bits})")
        if not (isinstance(self.bound, (int, float)) and math.isfinite(self.bound) and self.bound > 0):
            raise ConfigValueError("bound", self.bound, "must be a positive finite number")
        if self.bound * 2.0**self.frac_bits + 1 > 2.0 ** (self.bits - 1) - 1:
            raise ConfigValueError("frac_bits", self.frac_bits, "bound * 2^frac_bits does not fit the signed range")

    @classmethod
    def for_sum(cls, *, clients: int, bound: float, bits: int = 32) -> "FixedPoint":
        """The finest encoding whose sum over ``clients`` values in ``[-bound, bound]``
        stays inside the signed range of Z_(2^bits): ``clients * (bound * 2^f + 1) < 2^(bits-1)``."""
        if not is_int(clients) or clients < 1:
            raise ConfigValueError("clients", clients, "must be a positive integer")
        if bits not in BITS:
            raise ConfigValueError("secagg_bits", bits, "must be 32 or 64")
        if not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
            raise ConfigValueError("bound", bound, "must be a positive finite number")
        room = (2.0 ** (bits - 1) - 1) / clients - 1
        frac = math.floor(math.log2(room / bound)) if room > bound else -1
        frac = min(frac, bits - 2)
        while frac >= 0 and clients * (bound * 2.0**frac + 1) >= 2.0 ** (bits - 1):
            frac -= 1  # guard against log2 rounding at the boundary
        if frac < MIN_FRAC_BITS:
            raise ConfigValueError(
                "secagg_bits",
                bits,
                f"{clients} clients with values up to {bound:g} leave only {max(frac, 0)} fractional bits "
                f"(need {MIN_FRAC_BITS}); use 64 bits or lower secagg_clip / secagg_max_weight",
            )
        return cls(bits, frac, float(bound))

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def container_bits(self) -> int:
        """Width of the machine integers holding ring elements (the ring's own width
        here; narrower rings, :mod:`securefl.crypto.secagg.packing`, widen it)."""
        return self.bits

    @property
    def dtype(self) -> type:
        return _UNSIGNED[self.container_bits]

    @property
    def resolution(self) -> float:
        """The value of one unit in the last place."""
        return 2.0**-self.frac_bits

    def encode(self, values: np.ndarray, *, out: np.ndarray | None = None, within: float | None = None) -> Encoded:
        """Clip, scale and stochastically round ``values`` (float) into Z_(2^bits).

        Each coordinate takes 32 random bits from :func:`_coin_stream` (there is no
        generator argument, so a seeded one cannot leak the rounding). Non-finite
        values are refused (:class:`ProtocolError`); clipped coordinates are counted.
        ``out`` (a contiguous ring-dtype array of the same shape) receives the result
        in place of a new array. ``within``: a bound the caller has already checked
        ``values`` against (all finite, ``|v| <= within``); when it is at most the
        codec's bound, the scan for non-finite and out-of-range values is skipped.
        """
        v = np.asarray(values, dtype=np.float64)
        saturated = 0
        checked = within is not None and 0 <= within <= self.bound  # e.g. secagg.common.clip_input
        if not checked and peak_abs(v, "cannot encode NaN or infinite values") > self.bound:
            saturated = int(np.count_nonzero(np.abs(v) > self.bound))
            v = np.clip(v, -self.bound, self.bound)
        if out is None:
            out = np.empty(v.shape, dtype=self.dtype)
        elif out.dtype != self.dtype or out.shape != v.shape or not out.flags.c_contiguous:
            raise ProtocolError(f"encode: out must be a contiguous {np.dtype(self.dtype).name} array of shape {v.shape}")
        self._round_into(v.reshape(-1), out.reshape(-1))
        return Encoded(out, saturated)

    def _round_into(self, v: np.ndarray, out: np.ndarray) -> None:
        """``out = wrap(floor(v * 2^f) + [coin < frac * 2^32])``, block by block so
        the temporaries stay in cache (the same values as whole-vector numpy)."""
        if v.size == 0:
            return
        n = min(_BLOCK, v.size)
        scaled, low, up = np.empty(n), np.empty(n), np.empty(n, dtype=bool)
        zeros, raw = bytes(4 * n), bytearray(4 * n + 16)
        rnd = np.frombuffer(raw, dtype="<u4")
        stream, signed = _coin_stream(), _SIGNED[self.container_bits]
        for start in range(0, v.size, n):
            k = min(n, v.size - start)
            s, lo, u, seg = scaled[:k], low[:k], up[:k], out[start : start + k]
            stream.update_into(zeros[: 4 * k], raw)
            np.multiply(v[start : start + k], 2.0**self.frac_bits, out=s)
            np.floor(s, out=lo)
            np.subtract(s, lo, out=s)
            np.multiply(s, 2.0**32, out=s)
            # 32-bit coins: P(up) = ceil(frac * 2^32) / 2^32, within 2^-32 of the fraction
            np.less(rnd[:k], s, out=u)
            # |low| < 2^(bits-1) (checked at construction): exact as a signed integer
            # of the ring's width, whose two's complement bits are the ring element
            np.copyto(seg.view(signed), lo, casting="unsafe")
            np.add(seg, u, out=seg, casting="unsafe")

    def wrap(self, integers: np.ndarray) -> np.ndarray:
        """Signed integers (int64) as elements of Z_(2^bits) (two's complement)."""
        q = np.asarray(integers, dtype=np.int64)
        if self.bits == 64:
            return q.view(np.uint64)
        return (q & 0xFFFFFFFF).astype(np.uint32)

    def signed(self, ring: np.ndarray) -> np.ndarray:
        """Elements of Z_(2^bits) read as signed integers (int64)."""
        r = np.asarray(ring, dtype=self.dtype)
        if self.bits == 64:
            return r.view(np.int64)
        s = r.astype(np.int64)
        s[s >= 1 << 31] -= 1 << 32
        return s

    def decode(self, ring: np.ndarray) -> np.ndarray:
        """A (summed) ring vector back to float64 values."""
        return self.signed(ring).astype(np.float64) * self.resolution
