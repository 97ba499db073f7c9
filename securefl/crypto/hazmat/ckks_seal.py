"""The CKKS scheme through TenSEAL / Microsoft SEAL, for addition-only aggregation.

Building secret and public contexts, packing a vector into ciphertexts,
(de)serialization with receipt checks, and decryption, for a parameter set of
:mod:`securefl.crypto.hazmat.ckks` (which holds the presets, their 128-bit
security validation and the error model). Misuse (values outside [-1, 1], a
public context asked to decrypt) raises
:class:`~securefl.exceptions.CryptoUsageError`; a ciphertext that fails its
receipt checks raises :class:`~securefl.exceptions.CiphertextRejectedError`.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from typing import Any

import numpy as np

from securefl.crypto.hazmat.ckks import CKKSParams
from securefl.crypto.hazmat.tenseal_wire import check_tensor_encoding
from securefl.exceptions import CKKSParameterError, CiphertextRejectedError, CryptoUsageError


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
        raise CryptoUsageError("cannot encrypt non-finite values")
    if np.abs(values).max(initial=0.0) > 1.0 + 1e-9:
        raise CryptoUsageError("values to encrypt must lie in [-1, 1]; scale them first")
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
    check_tensor_encoding(bytes(data), params, k)
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
        raise CryptoUsageError("this context holds no secret key: it cannot decrypt")
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
