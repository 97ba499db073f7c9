"""CKKS parameters for addition-only aggregation: the maths.

What lives here: parameter presets and their security validation, the choice of
scale and first prime from the number of summands, and the error model that sizes
noise flooding. The scheme itself (contexts, packing, (de)serialization with
receipt checks, decryption; TenSEAL / Microsoft SEAL) is
:mod:`securefl.crypto.hazmat.ckks_seal`. What does not live in either: who holds
which key and who sends what (see :mod:`securefl.protections.ckks`).

CKKS (Cheon, Kim, Kim, Song, Asiacrypt 2017) encodes ``N/2`` complex values per
ciphertext at a fixed-point *scale* ``2^s``; securefl packs two reals into each
slot, one in the real and one in the imaginary part, so ``N`` values per
ciphertext. Aggregation only adds ciphertexts, so it needs no multiplicative
depth: the data level holds a single prime ``q0``
(plus one small "special" prime that SEAL reserves for key switching, unused
here). A sum of ``M`` vectors of values in ``[-1, 1]`` is correct only while its
plaintext coefficients, at most ``sqrt(2) * M * 2^s`` (a coefficient is a mean of
``N/2`` slots, each of modulus at most ``sqrt(2)``), stay below ``q0 / 2``; past
that the plaintext wraps silently (a sum
of 100 all-ones decrypts to garbage ~100 off while random inputs still look
fine). :func:`derive_params` therefore computes ``s`` and ``q0`` from ``M`` so
the sum cannot wrap, and every parameter set is checked against the
HomomorphicEncryption.org standard's 128-bit table at construction.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from securefl.exceptions import CKKSParameterError
from securefl.validators import is_int

#: Largest total coefficient-modulus size (bits) with 128-bit classical security
#: for a ternary secret, per the HomomorphicEncryption.org security standard
#: (Albrecht et al., 2018, Table 1), as enforced by SEAL's ``CoeffModulus::MaxBitCount``.
HE_STANDARD_128: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
#: SEAL's limit on one prime of the coefficient modulus
MAX_PRIME_BITS = 60
#: standard deviation of SEAL's error distribution (centred binomial / clipped normal)
ERROR_STD = 3.2
#: width of the error tail counted as "never" exceeded, in standard deviations
TAIL = 6.0
#: bits of headroom kept above ceil(log2(sqrt(2) M + 1)) and the sign bit; the
#: ceiling already leaves at least one whole value unit (2^s) of slack for the CKKS error
HEADROOM_MARGIN_BITS = 0
#: smallest scale accepted; below it CKKS encoding error alone swamps the values
MIN_SCALE_BITS = 20
#: how key holders encrypt: TenSEAL with the secret key, TenSEAL with the public
#: key, or SEAL's seeded symmetric ciphertexts (the second polynomial replaced by
#: the 64-byte PRNG seed it is expanded from: about half the bytes)
ENCRYPTIONS = ("symmetric", "public-key", "seeded")
_SECRET_KEY_ENCRYPTIONS = ("symmetric", "seeded")


@dataclass(frozen=True)
class Preset:
    """A named ring choice for aggregation; the primes are derived per federation.

    Attributes:
        name: what the preset is for (``--ckks-preset``).
        poly_modulus_degree: the ring dimension N (N/2 slots, N values per ciphertext).
        special_prime_bits: SEAL's key-switching prime (unused by additions; kept small).
        flood_bits: noise flooding at ``2^flood_bits`` times the CKKS error std.
        use: one line for the help text.
    """

    name: str
    poly_modulus_degree: int
    special_prime_bits: int
    flood_bits: int
    use: str


#: presets named by use; all addition-only (one data prime)
PRESETS: dict[str, Preset] = {
    "small-model": Preset(
        "small-model", 2048, 14, 8, "models up to ~100k parameters: 2048 values per ciphertext, least padding"
    ),
    "standard": Preset("standard", 4096, 20, 8, "general use: 4096 values per ciphertext"),
    "large-model": Preset(
        "large-model", 8192, 20, 8, "models of 1M+ parameters: 8192 values per ciphertext, fewest ciphertexts"
    ),
    "hardened": Preset(
        "hardened",
        8192,
        20,
        28,
        "flooding at 2^28 x the decryption error (about 3.8x float32 bytes) for adversaries who see many decryptions",
    ),
}


@dataclass(frozen=True)
class CKKSParams:
    """A validated, fully derived CKKS parameter set for one federation.

    Build it with :func:`derive_params`; constructing it directly still runs the
    128-bit security and no-wrap checks.
    """

    preset: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    max_summands: int
    flood_bits: int
    encryption: str = "symmetric"
    #: reals packed per CKKS slot: 2 (real and imaginary part) or 1 (real part only,
    #: where the half bit more headroom of 2 does not fit the largest prime)
    values_per_slot: int = 2

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in HE_STANDARD_128:
            raise CKKSParameterError(
                "ckks_poly_modulus_degree", n, f"must be one of {sorted(HE_STANDARD_128)}"
            )
        total = sum(self.coeff_mod_bit_sizes)
        if total > HE_STANDARD_128[n]:
            raise CKKSParameterError(
                "ckks_coeff_mod_bit_sizes",
                list(self.coeff_mod_bit_sizes),
                f"{total} bits of coefficient modulus exceed the {HE_STANDARD_128[n]} bits that keep "
                f"N={n} at 128-bit security (HomomorphicEncryption.org standard)",
            )
        if len(self.coeff_mod_bit_sizes) != 2 or any(
            not 2 <= b <= MAX_PRIME_BITS for b in self.coeff_mod_bit_sizes
        ):
            raise CKKSParameterError(
                "ckks_coeff_mod_bit_sizes",
                list(self.coeff_mod_bit_sizes),
                "addition-only aggregation uses one data prime and one special prime, "
                f"each of 2..{MAX_PRIME_BITS} bits",
            )
        if self.values_per_slot not in (1, 2):
            raise CKKSParameterError("ckks_values_per_slot", self.values_per_slot, "must be 1 or 2")
        if self.encryption not in ENCRYPTIONS:
            raise CKKSParameterError("ckks_encryption", self.encryption, f"must be one of {', '.join(ENCRYPTIONS)}")
        if self.scale_bits < MIN_SCALE_BITS:
            raise CKKSParameterError("ckks_scale_bits", self.scale_bits, f"must be >= {MIN_SCALE_BITS}")
        need = self.scale_bits + headroom_bits(self.max_summands, self.values_per_slot)
        if self.coeff_mod_bit_sizes[0] < need:
            raise CKKSParameterError(
                "ckks_coeff_mod_bit_sizes",
                list(self.coeff_mod_bit_sizes),
                f"a first prime of {self.coeff_mod_bit_sizes[0]} bits lets a sum of {self.max_summands} values "
                f"in [-1, 1] at scale 2^{self.scale_bits} wrap; it needs >= {need} bits",
            )

    @property
    def slots(self) -> int:
        """CKKS slots per ciphertext (complex numbers)."""
        return self.poly_modulus_degree // 2

    @property
    def values_per_ciphertext(self) -> int:
        """Real values per ciphertext (two per slot: real and imaginary part)."""
        return self.slots * self.values_per_slot

    @property
    def data_bits(self) -> int:
        return self.coeff_mod_bit_sizes[0]

    def error_std(self, summands: int) -> float:
        """Standard deviation of the CKKS error of one decrypted slot after
        summing ``summands`` fresh ciphertexts, in value units.

        A fresh symmetric ciphertext carries the error polynomial e (std 3.2) plus
        encoding rounding; a slot is a sum of N coefficients times roots of unity,
        so its real part, and likewise its imaginary part (the second value a slot
        packs), has std ~ 3.2 * sqrt(N/2) / 2^s. Public-key encryption in
        SEAL encrypts at the special prime's level and divides it away, leaving a
        rounding error ~ sqrt((1 + 2N/3)/12) per coefficient instead. Errors of
        independent ciphertexts add in variance. Measured within 5% of this model.
        """
        unit = _error_unit(self.poly_modulus_degree, self.encryption)
        return unit * math.sqrt(max(1, summands)) / 2.0**self.scale_bits

    def flood_std(self, summands: int) -> float:
        """Noise-flooding standard deviation for a decryption of ``summands`` ciphertexts."""
        return 2.0**self.flood_bits * self.error_std(summands)

    def max_error(self, summands: int) -> float:
        """Bound (TAIL standard deviations) on the released error of one slot."""
        return TAIL * math.hypot(self.flood_std(summands), self.error_std(summands))

    def describe(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
            "max_summands": self.max_summands,
            "flood_bits": self.flood_bits,
            "encryption": self.encryption,
            "values_per_slot": self.values_per_slot,
        }

    @property
    def param_id(self) -> str:
        """A short digest naming this parameter set on the wire."""
        blob = json.dumps(self.describe(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def headroom_bits(summands: int, values_per_slot: int = 2) -> int:
    """Bits of ``q0`` above the scale needed so a sum of ``summands`` packed vectors
    of values in [-1, 1] plus its error never reaches ``q0 / 2``: log2 of the largest
    plaintext coefficient (``sqrt(2) * summands`` with two values per slot, whose
    modulus reaches sqrt(2); ``summands`` with one), the sign bit, and a margin."""
    peak = math.sqrt(values_per_slot) * max(1, summands)
    return math.ceil(math.log2(peak + 1)) + 1 + HEADROOM_MARGIN_BITS


def derive_params(
    preset: str | Preset,
    *,
    max_summands: int,
    max_error: float,
    encryption: str = "symmetric",
) -> CKKSParams:
    """Choose the scale and first prime for ``max_summands`` values in [-1, 1].

    The scale is the smallest ``2^s`` whose released error (CKKS error flooded by
    ``2^flood_bits``, counted to TAIL standard deviations) at ``max_summands`` is
    at most ``max_error``; the first prime adds :func:`headroom_bits` so the sum
    cannot wrap. Raises :class:`~securefl.exceptions.CKKSParameterError` if the
    result does not fit the preset at 128-bit security.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise CKKSParameterError("ckks_preset", preset, f"must be one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if not is_int(max_summands) or max_summands < 1:
        raise CKKSParameterError("ckks_max_clients", max_summands, "must be a positive integer")
    if not (isinstance(max_error, (int, float)) and math.isfinite(max_error) and max_error > 0):
        raise CKKSParameterError("ckks_max_error", max_error, "must be a positive number")
    # error scales as 2^-s: solve max_error(s) <= target for the integer s
    per_slot = _error_unit(preset.poly_modulus_degree, encryption) * math.sqrt(max_summands)
    unit = TAIL * math.hypot(2.0**preset.flood_bits, 1.0) * per_slot
    scale_bits = max(MIN_SCALE_BITS, math.ceil(math.log2(unit / max_error)))
    budget = min(MAX_PRIME_BITS, HE_STANDARD_128[preset.poly_modulus_degree] - preset.special_prime_bits)
    # two values per slot halve the ciphertexts (and bytes); one where its extra
    # half bit of headroom does not fit the largest prime
    packing = 2 if scale_bits + headroom_bits(max_summands, 2) <= budget else 1
    q0 = scale_bits + headroom_bits(max_summands, packing)
    if q0 > budget:
        raise CKKSParameterError(
            "ckks_preset",
            preset.name,
            f"{max_summands} clients at max error {max_error:g} need a {q0}-bit first prime "
            f"(scale 2^{scale_bits} + {headroom_bits(max_summands, packing)} bits headroom), but N={preset.poly_modulus_degree} "
            f"allows {budget} bits at 128-bit security; choose a larger preset, fewer clients or a larger error",
        )
    return CKKSParams(
        preset.name,
        preset.poly_modulus_degree,
        (q0, preset.special_prime_bits),
        scale_bits,
        max_summands,
        preset.flood_bits,
        encryption,
        packing,
    )


def _error_unit(n: int, encryption: str) -> float:
    """Std of one decrypted slot of one fresh ciphertext, in units of the scale."""
    if encryption in _SECRET_KEY_ENCRYPTIONS:
        per_coeff = ERROR_STD
    else:
        per_coeff = math.sqrt((1 + 2 * n / 3) / 12 + ERROR_STD**2)
    return per_coeff * math.sqrt(n / 2)
