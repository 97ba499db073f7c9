"""CKKS primitives for addition-only aggregation (TenSEAL / Microsoft SEAL).

What lives here: parameter presets and their security validation, the choice of
scale and first prime from the number of summands, building secret and public
contexts, packing a vector into ciphertexts, (de)serialization with receipt
checks, decryption, and the error model that sizes noise flooding. What does not:
who holds which key and who sends what (see :mod:`securefl.crypto.ckks`).

CKKS (Cheon, Kim, Kim, Song, Asiacrypt 2017) encodes ``N/2`` real values per
ciphertext at a fixed-point *scale* ``2^s``. Aggregation only adds ciphertexts,
so it needs no multiplicative depth: the data level holds a single prime ``q0``
(plus one small "special" prime that SEAL reserves for key switching, unused
here). A sum of ``M`` values in ``[-1, 1]`` is correct only while
``M * 2^s`` stays below ``q0 / 2``; past that the plaintext wraps silently (a sum
of 100 all-ones decrypts to garbage ~100 off while random inputs still look
fine). :func:`derive_params` therefore computes ``s`` and ``q0`` from ``M`` so
the sum cannot wrap, and every parameter set is checked against the
HomomorphicEncryption.org standard's 128-bit table at construction.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from securefl.exceptions import CKKSParameterError, CiphertextRejectedError

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
#: bits of headroom kept above ceil(log2(M + 1)) and the sign bit; the ceiling
#: already leaves at least one whole value unit (2^s) of slack for the CKKS error
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
        poly_modulus_degree: the ring dimension N (N/2 values per ciphertext).
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
        "small-model", 2048, 14, 8, "models up to ~100k parameters: 1024 values per ciphertext, least padding"
    ),
    "standard": Preset("standard", 4096, 20, 8, "general use: 2048 values per ciphertext"),
    "large-model": Preset(
        "large-model", 8192, 20, 8, "models of 1M+ parameters: 4096 values per ciphertext, fewest ciphertexts"
    ),
    "hardened": Preset(
        "hardened",
        8192,
        20,
        28,
        "flooding at 2^28 x the decryption error (about 7.5x float32 bytes) for adversaries who see many decryptions",
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
        if self.encryption not in ENCRYPTIONS:
            raise CKKSParameterError("ckks_encryption", self.encryption, f"must be one of {', '.join(ENCRYPTIONS)}")
        if self.scale_bits < MIN_SCALE_BITS:
            raise CKKSParameterError("ckks_scale_bits", self.scale_bits, f"must be >= {MIN_SCALE_BITS}")
        need = self.scale_bits + headroom_bits(self.max_summands)
        if self.coeff_mod_bit_sizes[0] < need:
            raise CKKSParameterError(
                "ckks_coeff_mod_bit_sizes",
                list(self.coeff_mod_bit_sizes),
                f"a first prime of {self.coeff_mod_bit_sizes[0]} bits lets a sum of {self.max_summands} values "
                f"in [-1, 1] at scale 2^{self.scale_bits} wrap; it needs >= {need} bits",
            )

    @property
    def slots(self) -> int:
        """Values per ciphertext."""
        return self.poly_modulus_degree // 2

    @property
    def data_bits(self) -> int:
        return self.coeff_mod_bit_sizes[0]

    def error_std(self, summands: int) -> float:
        """Standard deviation of the CKKS error of one decrypted slot after
        summing ``summands`` fresh ciphertexts, in value units.

        A fresh symmetric ciphertext carries the error polynomial e (std 3.2) plus
        encoding rounding; a slot is a sum of N coefficients times roots of unity,
        so its real part has std ~ 3.2 * sqrt(N/2) / 2^s. Public-key encryption in
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
        }

    @property
    def param_id(self) -> str:
        """A short digest naming this parameter set on the wire."""
        blob = json.dumps(self.describe(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def headroom_bits(summands: int) -> int:
    """Bits of ``q0`` above the scale needed so a sum of ``summands`` values in
    [-1, 1] plus its error never reaches ``q0 / 2``: log2 of the largest sum, the
    sign bit, and a margin."""
    return math.ceil(math.log2(max(1, summands) + 1)) + 1 + HEADROOM_MARGIN_BITS


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
    if isinstance(max_summands, bool) or not isinstance(max_summands, int) or max_summands < 1:
        raise CKKSParameterError("ckks_max_clients", max_summands, "must be a positive integer")
    if not (isinstance(max_error, (int, float)) and math.isfinite(max_error) and max_error > 0):
        raise CKKSParameterError("ckks_max_error", max_error, "must be a positive number")
    # error scales as 2^-s: solve max_error(s) <= target for the integer s
    per_slot = _error_unit(preset.poly_modulus_degree, encryption) * math.sqrt(max_summands)
    unit = TAIL * math.hypot(2.0**preset.flood_bits, 1.0) * per_slot
    scale_bits = max(MIN_SCALE_BITS, math.ceil(math.log2(unit / max_error)))
    q0 = scale_bits + headroom_bits(max_summands)
    budget = min(MAX_PRIME_BITS, HE_STANDARD_128[preset.poly_modulus_degree] - preset.special_prime_bits)
    if q0 > budget:
        raise CKKSParameterError(
            "ckks_preset",
            preset.name,
            f"{max_summands} clients at max error {max_error:g} need a {q0}-bit first prime "
            f"(scale 2^{scale_bits} + {headroom_bits(max_summands)} bits headroom), but N={preset.poly_modulus_degree} "
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
    )


def _error_unit(n: int, encryption: str) -> float:
    """Std of one decrypted slot of one fresh ciphertext, in units of the scale."""
    if encryption in _SECRET_KEY_ENCRYPTIONS:
        per_coeff = ERROR_STD
    else:
        per_coeff = math.sqrt((1 + 2 * n / 3) / 12 + ERROR_STD**2)
    return per_coeff * math.sqrt(n / 2)


# ---------------------------------------------------------------- contexts
def _ts():
    import tenseal

    return tenseal


def _seal():
    import tenseal.sealapi as sealapi

    return sealapi


def _tmpdir():
    """A private temporary directory, in memory (/dev/shm) where the OS has one."""
    import tempfile

    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.TemporaryDirectory(prefix="securefl-ckks-", dir=base)


def _seal_save(savers: list) -> list[bytes]:
    """SEAL's Python API (shipped with TenSEAL) saves through file paths only:
    run each ``save(path)`` in a private temporary directory, return the bytes."""
    out = []
    with _tmpdir() as tmp:
        path = os.path.join(tmp, "obj")
        for save in savers:
            save(path)
            with open(path, "rb") as fh:
                out.append(fh.read())
    return out


def _seal_load(blobs: list[bytes], loader) -> None:
    """Write each blob to a private temporary file and call ``loader(i, path)``."""
    with _tmpdir() as tmp:
        path = os.path.join(tmp, "obj")
        for i, blob in enumerate(blobs):
            with open(path, "wb") as fh:
                fh.write(blob)
            loader(i, path)


class SeededContext:
    """SEAL objects for ``encryption="seeded"``: parameters, encoder and evaluator
    for everyone; secret key, encryptor and decryptor for key holders only."""

    def __init__(self, params: CKKSParams, secret_key: bytes | None = None) -> None:
        seal = _seal()
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_modulus_degree)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)))
        self.params = params
        self.parms = parms
        # SEAL enforces the same 128-bit table (sec_level tc128) when it builds the context
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise CKKSParameterError("ckks_preset", params.preset, "SEAL rejects these parameters")
        self.encoder = seal.CKKSEncoder(self.context)
        self.evaluator = seal.Evaluator(self.context)
        self._secret = None
        if secret_key is not None:
            sk = seal.SecretKey()
            try:
                _seal_load([secret_key], lambda i, path: sk.load(self.context, path))
            except Exception as exc:
                raise CiphertextRejectedError(f"secret key does not fit the parameters: {exc}") from None
            self._install(sk)

    @classmethod
    def generate(cls, params: CKKSParams) -> "SeededContext":
        ctx = cls(params)
        ctx._install(_seal().KeyGenerator(ctx.context).secret_key())
        return ctx

    def _install(self, sk) -> None:
        seal = _seal()
        self._secret = sk
        self.encryptor = seal.Encryptor(self.context, sk)
        self.decryptor = seal.Decryptor(self.context, sk)

    def is_private(self) -> bool:
        return self._secret is not None

    def secret_key_bytes(self) -> bytes:
        assert self._secret is not None
        return _seal_save([self._secret.save])[0]

    def public_bytes(self) -> bytes:
        """The encryption parameters alone: everything the server needs to add."""
        return _seal_save([self.parms.save])[0]


class SeededVector:
    """A vector of SEAL ciphertexts that adds in place (``+=``)."""

    def __init__(self, ctx: SeededContext, cts: list) -> None:
        self.ctx = ctx
        self.cts = cts

    @property
    def shape(self) -> list[int]:
        return [] if len(self.cts) == 1 else [len(self.cts)]

    def __iadd__(self, other: "SeededVector") -> "SeededVector":
        if len(other.cts) != len(self.cts):
            raise CiphertextRejectedError("cannot add ciphertext vectors of different lengths")
        try:
            for a, b in zip(self.cts, other.cts):
                self.ctx.evaluator.add_inplace(a, b)
        except Exception as exc:  # SEAL refuses mismatched parameters or scales
            raise CiphertextRejectedError(f"ciphertexts do not add: {exc}") from None
        return self


_SEEDED_MAGIC = b"SFLC"


def _pack_blobs(blobs: list[bytes]) -> bytes:
    out = [_SEEDED_MAGIC, struct.pack("<I", len(blobs))]
    for b in blobs:
        out += [struct.pack("<I", len(b)), b]
    return b"".join(out)


def _unpack_blobs(data: bytes) -> list[bytes]:
    if data[:4] != _SEEDED_MAGIC or len(data) < 8:
        raise CiphertextRejectedError("ciphertext rejected on receipt: no SFLC header")
    (k,) = struct.unpack_from("<I", data, 4)
    at, blobs = 8, []
    for _ in range(k):
        if at + 4 > len(data):
            raise CiphertextRejectedError("ciphertext rejected on receipt: vector is truncated")
        (n,) = struct.unpack_from("<I", data, at)
        at += 4
        if at + n > len(data):
            raise CiphertextRejectedError("ciphertext rejected on receipt: vector is truncated")
        blobs.append(data[at : at + n])
        at += n
    if at != len(data):
        raise CiphertextRejectedError("ciphertext rejected on receipt: trailing bytes")
    return blobs


def new_secret_context(params: CKKSParams, *, n_threads: int | None = None):
    """A fresh context holding a new secret key (key holders only).

    The keys come from SEAL's own CSPRNG (seeded from the OS). Relinearization and
    Galois keys are never serialized: additions need neither.
    """
    if params.encryption == "seeded":
        return SeededContext.generate(params)
    ts = _ts()
    enc = ts.ENCRYPTION_TYPE.SYMMETRIC if params.encryption == "symmetric" else ts.ENCRYPTION_TYPE.ASYMMETRIC
    kwargs: dict[str, Any] = {"encryption_type": enc}
    if n_threads is not None:
        kwargs["n_threads"] = n_threads
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        **kwargs,
    )
    ctx.global_scale = 2.0**params.scale_bits
    return ctx


def secret_context_bytes(ctx, params: CKKSParams) -> bytes:
    """Serialize a key holder's context *with* its secret key (only ever sent
    AEAD-encrypted to another key holder)."""
    if params.encryption == "seeded":
        return ctx.secret_key_bytes()
    return ctx.serialize(
        save_public_key=params.encryption == "public-key",
        save_secret_key=True,
        save_galois_keys=False,
        save_relin_keys=False,
    )


def public_context_bytes(ctx, params: CKKSParams) -> bytes:
    """The server's view of a context: no secret key, ever.

    For public-key encryption this is TenSEAL's ``make_context_public()`` (the
    public key stays, so the server could encrypt); for symmetric encryption, where
    TenSEAL has no ``make_context_public``, the context is serialized without its
    secret key, leaving the parameters only (the server cannot even encrypt); for
    seeded encryption it is SEAL's encryption parameters.
    """
    if params.encryption == "seeded":
        return ctx.public_bytes()
    if params.encryption == "public-key":
        pub = ctx.copy()
        pub.make_context_public(generate_galois_keys=False, generate_relin_keys=False)
        return pub.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    return ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


def load_context(data: bytes, params: CKKSParams, *, secret: bool = False, n_threads: int | None = None):
    """Deserialize a context (``secret=True``: a key holder's) for ``params``."""
    if params.encryption == "seeded":
        if secret:
            return SeededContext(params, secret_key=data)
        ctx = SeededContext(params)
        if ctx.public_bytes() != data:
            raise CiphertextRejectedError("public parameters differ from the agreed CKKS parameters")
        return ctx
    ts = _ts()
    try:
        ctx = ts.context_from(data, n_threads) if n_threads is not None else ts.context_from(data)
    except Exception as exc:  # TenSEAL raises ValueError/RuntimeError on bad input
        raise CiphertextRejectedError(f"CKKS context does not parse: {exc}") from None
    ctx.global_scale = 2.0**params.scale_bits
    return ctx


def context_fingerprint(public_bytes: bytes) -> str:
    """SHA-256 over the public context bytes: names one key set on the wire."""
    return hashlib.sha256(public_bytes).hexdigest()


# ---------------------------------------------------------------- vectors
def num_ciphertexts(params: CKKSParams, length: int) -> int:
    return max(1, math.ceil(length / params.slots))


def _grid(params: CKKSParams, values: np.ndarray) -> tuple[np.ndarray, int]:
    values = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        raise ValueError("cannot encrypt non-finite values")
    if np.abs(values).max(initial=0.0) > 1.0 + 1e-9:
        raise ValueError("values to encrypt must lie in [-1, 1]; scale them first")
    k = num_ciphertexts(params, values.size)
    grid = np.zeros(k * params.slots, dtype=np.float64)
    grid[: values.size] = values
    return grid, k


def encrypt(ctx, params: CKKSParams, values: np.ndarray) -> bytes:
    """Encrypt a 1-D float vector (entries in [-1, 1]) into ceil(len/slots)
    ciphertexts (zero-padded) and serialize them."""
    grid, k = _grid(params, values)
    if params.encryption == "seeded":
        seal = _seal()
        scale = 2.0**params.scale_bits
        savers = []
        for j in range(k):
            pt = seal.Plaintext()
            ctx.encoder.encode(grid[j * params.slots : (j + 1) * params.slots].tolist(), scale, pt)
            savers.append(ctx.encryptor.encrypt_symmetric(pt).save)  # seeded: c1 is its PRNG seed
        return _pack_blobs(_seal_save(savers))
    ts = _ts()
    # column j of a (slots, k) batch is ciphertext j, holding values[j*slots:(j+1)*slots];
    # one ciphertext is a 1-D batch (TenSEAL replicates slot 0 of a (slots, 1) batch)
    batch = grid if k == 1 else np.ascontiguousarray(grid.reshape(k, params.slots).T)
    tensor = ts.ckks_tensor(ctx, ts.plain_tensor(batch), batch=True)
    return tensor.serialize()


def load_ciphertext(ctx, params: CKKSParams, data: bytes, length: int):
    """Deserialize a ciphertext vector on receipt and check it: it must parse,
    pass SEAL's validity check (coefficients below the modulus, the context's
    parameter id) and hold exactly the expected number of ciphertexts (for
    seeded ciphertexts also: two polynomials at the data level and the scale)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) == 0:
        raise CiphertextRejectedError("empty ciphertext")
    k = num_ciphertexts(params, length)
    if params.encryption == "seeded":
        blobs = _unpack_blobs(bytes(data))
        if len(blobs) != k:
            raise CiphertextRejectedError(f"ciphertext rejected on receipt: {len(blobs)} ciphertexts, expected {k}")
        seal = _seal()
        cts = [seal.Ciphertext() for _ in blobs]

        def load(i: int, path: str) -> None:
            ct = cts[i]
            try:
                ct.load(ctx.context, path)  # SEAL checks validity for the context
            except Exception as exc:
                raise CiphertextRejectedError(f"ciphertext rejected on receipt: {exc}") from None
            if ct.size() != 2 or ct.coeff_modulus_size() != 1 or ct.scale != 2.0**params.scale_bits:
                raise CiphertextRejectedError(
                    "ciphertext rejected on receipt: not a fresh two-part ciphertext at the agreed scale"
                )

        _seal_load(blobs, load)
        return SeededVector(ctx, cts)
    ts = _ts()
    try:
        tensor = ts.ckks_tensor_from(ctx, bytes(data))
    except Exception as exc:
        raise CiphertextRejectedError(f"ciphertext rejected on receipt: {exc}") from None
    expected = [] if k == 1 else [k]
    if list(tensor.shape) != expected:
        raise CiphertextRejectedError(f"ciphertext holds shape {list(tensor.shape)}, expected {expected}")
    return tensor


def serialize(tensor) -> bytes:
    if isinstance(tensor, SeededVector):
        return _pack_blobs(_seal_save([ct.save for ct in tensor.cts]))
    return tensor.serialize()


def decrypt(ctx, params: CKKSParams, tensor, length: int) -> np.ndarray:
    """Decrypt a ciphertext vector with the secret key held in ``ctx``."""
    k = num_ciphertexts(params, length)
    if not ctx.is_private():
        raise ValueError("this context holds no secret key: it cannot decrypt")
    if params.encryption == "seeded":
        seal = _seal()
        out = []
        for ct in tensor.cts:
            pt = seal.Plaintext()
            ctx.decryptor.decrypt(ct, pt)
            out.append(np.asarray(ctx.encoder.decode_double(pt), dtype=np.float64))
        return np.concatenate(out)[:length]
    plain = tensor.decrypt(ctx.secret_key())
    arr = np.asarray(plain.raw, dtype=np.float64).reshape(params.slots, k)
    return arr.T.reshape(-1)[:length]
