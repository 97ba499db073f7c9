"""Narrow rings for quantized secure aggregation (``--compress quant:B``).

Stochastic quantization to B bits (QSGD-style unbiased rounding, Alistarh et al.,
NeurIPS 2017; in a secure-aggregation ring as in Bonawitz et al., "Federated
learning with autotuned communication-efficient secure aggregation", 2019) puts
each coordinate of an update in ``[-clip, clip]`` on a grid of at most ``2^B``
steps. The ring then needs only enough bits for the sum of every client's
(weighted) values never to wrap: :meth:`NarrowFixedPoint.for_levels` picks the
smallest such ``Z_(2^bits)``, and :func:`pack` writes each element in exactly
``bits`` bits, so the bytes sent shrink with the ring.

Arithmetic stays in 32- or 64-bit machine integers (the *container*): reduction
modulo ``2^bits`` is a ring homomorphism from ``Z_(2^32)`` (or ``Z_(2^64)``), so
masks drawn and added in the container and reduced when packed mask the input
uniformly in ``Z_(2^bits)``, and the server's container sum reduces to the true
sum modulo ``2^bits``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from securefl.crypto.quantize import FixedPoint
from securefl.exceptions import ConfigTypeError, ConfigValueError, WireFormatError
from securefl.validators import is_int

__all__ = ["NarrowFixedPoint", "pack", "packed_size", "unpack"]

#: elements packed per step (a multiple of 8, so every chunk ends on a byte boundary)
_CHUNK = 1 << 13


@dataclass(frozen=True)
class NarrowFixedPoint(FixedPoint):
    """Fixed point in ``Z_(2^bits)`` for any ``bits`` in [2, 64], held in 32- or
    64-bit containers (see the module docstring)."""

    def __post_init__(self) -> None:
        if not is_int(self.bits):
            raise ConfigTypeError("bits", self.bits, "must be an integer")
        if not 2 <= self.bits <= 64:
            raise ConfigValueError("bits", self.bits, "must be in [2, 64]")
        if not is_int(self.frac_bits) or not 0 <= self.frac_bits < self.bits:
            raise ConfigValueError("frac_bits", self.frac_bits, f"must be an integer in [0, {self.bits})")
        if not (isinstance(self.bound, (int, float)) and math.isfinite(self.bound) and self.bound > 0):
            raise ConfigValueError("bound", self.bound, "must be a positive finite number")
        if self.bound * 2.0**self.frac_bits + 1 > 2.0 ** (self.bits - 1) - 1:
            raise ConfigValueError("frac_bits", self.frac_bits, "bound * 2^frac_bits does not fit the signed range")

    @classmethod
    def for_levels(cls, *, clients: int, bound: float, clip: float, levels_bits: int) -> "NarrowFixedPoint":
        """The grid of ``2^levels_bits`` steps over ``[-clip, clip]`` (step
        ``2^-frac_bits``, a power of two) in the narrowest ring whose sum over
        ``clients`` values in ``[-bound, bound]`` cannot wrap:
        ``clients * (bound * 2^frac_bits + 1) < 2^(bits - 1)``."""
        frac = levels_bits - 1 - math.ceil(math.log2(clip))
        if frac < 0:
            raise ConfigValueError(
                "compress", f"quant:{levels_bits}", f"secagg_clip={clip:g} needs more than {levels_bits} bits per coordinate"
            )
        need = clients * (bound * 2.0**frac + 1)
        bits = max(2, math.ceil(math.log2(need)) + 1)
        while need >= 2.0 ** (bits - 1):
            bits += 1  # guard against log2 rounding at the boundary
        if bits > 64:
            raise ConfigValueError(
                "compress", f"quant:{levels_bits}", f"{clients} clients with values up to {bound:g} do not fit a 64-bit ring"
            )
        return cls(bits, frac, float(bound))

    @property
    def container_bits(self) -> int:
        return 32 if self.bits <= 32 else 64

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    def wrap(self, integers: np.ndarray) -> np.ndarray:
        """Signed integers (int64) as elements of Z_(2^bits), reduced."""
        q = np.asarray(integers, dtype=np.int64).view(np.uint64) & np.uint64(self.mask)
        return q.astype(self.dtype)

    def signed(self, ring: np.ndarray) -> np.ndarray:
        """Container integers, reduced modulo 2^bits and read as signed (int64)."""
        r = np.asarray(ring, dtype=self.dtype).astype(np.uint64) & np.uint64(self.mask)
        if self.bits == 64:
            return r.view(np.int64)
        s = r.astype(np.int64)
        s[s >= 1 << (self.bits - 1)] -= 1 << self.bits
        return s


def packed_size(count: int, bits: int) -> int:
    """Bytes of ``count`` ring elements of ``bits`` bits each, packed."""
    return (count * bits + 7) // 8


def pack(values: np.ndarray, bits: int, *, view: bool = False) -> bytes | memoryview:
    """Ring elements (uint32/uint64 containers) as ``bits``-bit little-endian fields,
    reduced modulo ``2^bits``; 32- and 64-bit rings are the containers' own bytes
    (with ``view``, a read-only view of them when they are contiguous little-endian
    already: no copy of a vector of megabytes; the caller must not change it)."""
    v = np.ascontiguousarray(values)
    if bits in (32, 64) and v.dtype.itemsize * 8 == bits:
        le = v.astype(v.dtype.newbyteorder("<"), copy=False)
        return memoryview(le).cast("B").toreadonly() if view else le.tobytes()
    shifts = np.arange(bits, dtype=np.uint64)
    out = bytearray()
    for start in range(0, v.size, _CHUNK):
        seg = v[start : start + _CHUNK].astype(np.uint64)
        bitmat = ((seg[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        out += np.packbits(bitmat.reshape(-1), bitorder="little").tobytes()
    return bytes(out)


def unpack(data: bytes, bits: int, count: int, dtype: type) -> np.ndarray:
    """The inverse of :func:`pack`: ``count`` elements in containers of ``dtype``;
    :class:`WireFormatError` if ``data`` is not exactly their packed size."""
    if len(data) != packed_size(count, bits):
        raise WireFormatError(f"packed ring vector has {len(data)} bytes, expected {packed_size(count, bits)}")
    if bits in (32, 64) and np.dtype(dtype).itemsize * 8 == bits:
        return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    raw = np.frombuffer(data, dtype=np.uint8)
    shifts = np.arange(bits, dtype=np.uint64)
    out = np.empty(count, dtype=dtype)
    step = _CHUNK * bits // 8
    for i, start in enumerate(range(0, count, _CHUNK)):
        n = min(_CHUNK, count - start)
        bitmat = np.unpackbits(raw[i * step : i * step + packed_size(n, bits)], bitorder="little", count=n * bits)
        words = (bitmat.reshape(n, bits).astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64)
        out[start : start + n] = words.astype(dtype)
    return out
