"""Update compression that composes with the protections (``--compress``): the spec.

* ``randk:F`` -- shared-seed random-k sparsification: in round r every client keeps
  the same ``k = ceil(F * d)`` coordinates, chosen by
  :func:`securefl.protections.compressed.public_coordinates`
  from the run's public seed and r (a SHA-256 PRF, computed by each client itself,
  so the server cannot hand different clients different coordinates, and no
  client's choice reveals which coordinates matter to it). Every protection then
  seals a k-vector: masked (secagg) or encrypted (CKKS) sums still add up, and the
  server scatters the k-sum back to d before its aggregation rule. There is no
  ``d/k`` rescaling: the released sum is the plain sum of the kept coordinates, so
  the sensitivity of a clipped update is unchanged. With *error feedback* (the
  default; Stich, Cordonnier and Jaggi, NeurIPS 2018; Karimireddy et al., ICML
  2019) each client adds the coordinates it did not send to its next update
  (:func:`securefl.protections.compressed.sparsify_with_feedback`).
* ``quant:B`` -- stochastic (unbiased) rounding to a grid of ``2^B`` steps over the
  public per-coordinate range, in the narrowest secure-aggregation ring the sum
  fits (:mod:`securefl.crypto.secagg.packing`); secagg only.
* ``randk:F+quant:B`` -- both.

Error feedback and DP: under ``dp="none"`` it is plain EF-SGD. Under ``dp="sample"``
the residual is built from the client's DP-SGD outputs only, so it is
post-processing and costs no budget. Under ``dp="client"`` the residual is added
*before* the update is clipped again to the clip S,
so every release still has L2 norm at most S whatever it carries; with client
sampling, though, the residual would depend on which earlier rounds sampled the
client, a secret the amplification-by-sampling analysis needs hidden (as for worker
momentum), so the configuration refuses error feedback there
(``--no-error-feedback``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from securefl.exceptions import ConfigValueError

__all__ = ["FORM", "QUANT_BITS", "CompressionSpec"]

#: the range of B in ``quant:B`` (``securefl.crypto.secagg.common.MIN_QUANT_BITS``..)
QUANT_BITS = (2, 16)
FORM = "none | randk:FRACTION | quant:BITS | randk:FRACTION+quant:BITS"


@dataclass(frozen=True)
class CompressionSpec:
    """A parsed ``--compress`` value: ``fraction`` of coordinates kept (None: all)
    and quantization ``bits`` (None: the protection's own encoding)."""

    fraction: float | None = None
    bits: int | None = None

    @classmethod
    def parse(cls, text: object) -> "CompressionSpec":
        """Parse ``text`` (see :data:`FORM`); a :class:`ConfigValueError` on field
        ``compress`` names the bad part otherwise."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigValueError("compress", text, f"must be {FORM}")
        if text.strip() == "none":
            return cls()
        fraction = bits = None
        for part in text.strip().split("+"):
            name, _, value = part.partition(":")
            if name == "randk" and fraction is None:
                fraction = _fraction(value, text)
            elif name == "quant" and bits is None:
                bits = _bits(value, text)
            else:
                raise ConfigValueError("compress", text, f"unknown or repeated part {part!r}; must be {FORM}")
        return cls(fraction, bits)

    def __str__(self) -> str:
        parts = ([f"randk:{self.fraction:g}"] if self.fraction is not None else []) + (
            [f"quant:{self.bits}"] if self.bits is not None else []
        )
        return "+".join(parts) or "none"

    @property
    def enabled(self) -> bool:
        return self.fraction is not None or self.bits is not None

    def kept(self, dim: int) -> int:
        """Coordinates sent per round: ``ceil(fraction * dim)`` (all without randk)."""
        if self.fraction is None:
            return dim
        return max(1, min(dim, math.ceil(self.fraction * dim - 1e-9)))


def _fraction(value: str, text: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise ConfigValueError("compress", text, f"randk fraction {value!r} is not a number") from None
    if not (math.isfinite(f) and 0 < f <= 1):
        raise ConfigValueError("compress", text, f"randk fraction {value} must be in (0, 1]")
    return f


def _bits(value: str, text: str) -> int:
    lo, hi = QUANT_BITS
    if not value.isdigit() or not lo <= int(value) <= hi:
        raise ConfigValueError("compress", text, f"quant bits {value!r} must be an integer in [{lo}, {hi}]")
    return int(value)
