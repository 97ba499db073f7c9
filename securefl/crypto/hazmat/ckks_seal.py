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
import weakref
from typing import Any

import numpy as np

from securefl.crypto.hazmat.ckks import CKKSParams
from securefl.crypto.hazmat.tenseal_wire import check_tensor_encoding, pack_tensor
from securefl.exceptions import CiphertextRejectedError, CryptoUsageError


# ---------------------------------------------------------------- contexts
def _ts():
    import tenseal

    return tenseal


def _seal():
    import tenseal.sealapi as sealapi

    return sealapi


class _SealFile:
    """Where SEAL's path-only ``save`` writes: an anonymous in-memory file (Linux
    ``memfd_create``, reached as ``/proc/self/fd/N``; nothing is ever named in a
    file system), or a private temporary directory where there is none."""

    def __enter__(self) -> "_SealFile":
        self._fd, self._tmp = -1, None
        try:
            self._fd = os.memfd_create("securefl-ckks", getattr(os, "MFD_CLOEXEC", 0))
            self.path = f"/proc/self/fd/{self._fd}"
            if not os.path.exists(self.path):
                raise OSError("no /proc")
        except (AttributeError, OSError):
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = -1
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="securefl-ckks-")
            self.path = os.path.join(self._tmp.name, "obj")
        return self

    def read(self) -> bytes:
        """The bytes the last ``save(self.path)`` wrote."""
        if self._fd >= 0:
            return os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        with open(self.path, "rb") as fh:
            return fh.read()

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        if self._tmp is not None:
            self._tmp.cleanup()


#: per key holder's context: SEAL's encoder, encryptor (secret key, or public key
#: under public-key encryption) and decryptor, built once; the context keeps its keys
_TOOLS: "weakref.WeakKeyDictionary[Any, tuple[Any, Any, Any]]" = weakref.WeakKeyDictionary()


def _tools(ctx, params: CKKSParams) -> tuple[Any, Any, Any]:
    """(encoder, encryptor, decryptor or None) for ``ctx``: the encryptor holds the
    public key under public-key encryption (the server's context has it too), the
    secret key otherwise; only a key holder's context gets a decryptor."""
    tools = _TOOLS.get(ctx)
    if tools is None:
        seal, sctx, private = _seal(), ctx.seal_context().data, ctx.is_private()
        if params.encryption == "public-key":
            key = ctx.public_key().data
        elif private:
            key = ctx.secret_key().data
        else:
            raise CryptoUsageError("secret-key encryption needs the secret key; this context holds none")
        decryptor = seal.Decryptor(sctx, ctx.secret_key().data) if private else None
        tools = _TOOLS[ctx] = (seal.CKKSEncoder(sctx), seal.Encryptor(sctx, key), decryptor)
    return tools


def new_secret_context(params: CKKSParams, *, n_threads: int | None = None):
    """A fresh TenSEAL context holding a new secret key (key holders only).

    The keys come from SEAL's own CSPRNG (seeded from the OS). Relinearization and
    Galois keys are never serialized: additions need neither. Seeded encryption
    uses a symmetric context; only its encryption differs (:func:`encrypt`).
    """
    ts = _ts()
    enc = ts.ENCRYPTION_TYPE.ASYMMETRIC if params.encryption == "public-key" else ts.ENCRYPTION_TYPE.SYMMETRIC
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
    return ctx.serialize(
        save_public_key=params.encryption == "public-key",
        save_secret_key=True,
        save_galois_keys=False,
        save_relin_keys=False,
    )


def public_context_bytes(ctx, params: CKKSParams) -> bytes:
    """The server's view of a context: no secret key, ever.

    For public-key encryption this is TenSEAL's ``make_context_public()`` (the
    public key stays, so the server could encrypt); for secret-key encryption
    (symmetric, seeded), where TenSEAL has no ``make_context_public``, the context
    is serialized without its secret key, leaving the parameters only (the server
    cannot even encrypt).
    """
    if params.encryption == "public-key":
        pub = ctx.copy()
        pub.make_context_public(generate_galois_keys=False, generate_relin_keys=False)
        return pub.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    return ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


def load_context(data: bytes, params: CKKSParams, *, secret: bool = False, n_threads: int | None = None):
    """Deserialize a context (``secret=True``: a key holder's) for ``params``."""
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
    return max(1, math.ceil(length / params.values_per_ciphertext))


def _grid(params: CKKSParams, values: np.ndarray) -> tuple[np.ndarray, int]:
    """``values`` zero-padded to whole ciphertexts, as a (k, values_per_slot, slots)
    float64 array: ciphertext j packs ``values[j*N : j*N + N/2]`` into the real parts
    of its slots and (two values per slot) the next ``N/2`` into the imaginary parts."""
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # min/max propagate NaN
        raise CryptoUsageError("cannot encrypt non-finite values")
    if max(-lo, hi) > 1.0 + 1e-9:
        raise CryptoUsageError("values to encrypt must lie in [-1, 1]; scale them first")
    k = num_ciphertexts(params, values.size)
    grid = np.zeros((k, params.values_per_slot, params.slots), dtype=np.float64)
    grid.reshape(-1)[: values.size] = values
    return grid, k


def encrypt(ctx, params: CKKSParams, values: np.ndarray) -> bytes:
    """Encrypt a 1-D float vector (entries in [-1, 1]) into ceil(len/N) ciphertexts
    (zero-padded, two values per slot; N/2 with one), serialized as one batched
    TenSEAL tensor.

    SEAL's API (shipped with TenSEAL) encodes complex slots, which TenSEAL's own
    tensors cannot; the SEAL ciphertexts are framed as the tensor TenSEAL writes, so
    the server loads and adds them with TenSEAL. ``seeded`` saves each ciphertext's
    second, uniformly random polynomial as the 64-byte seed it was expanded from."""
    grid, _ = _grid(params, values)
    encoder, encryptor, _ = _tools(ctx, params)
    seal, scale = _seal(), ctx.global_scale
    pt, ct, blobs = seal.Plaintext(), seal.Ciphertext(), []
    with _SealFile() as f:
        for row in grid:
            encoder.encode((row[0] + 1j * row[1] if len(row) == 2 else row[0]).tolist(), scale, pt)
            if params.encryption == "seeded":
                encryptor.encrypt_symmetric(pt).save(f.path)
            else:
                if params.encryption == "symmetric":
                    encryptor.encrypt_symmetric(pt, ct)
                else:
                    encryptor.encrypt(pt, ct)
                ct.save(f.path)
            blobs.append(f.read())
    return pack_tensor(blobs, scale, params.slots)


def load_ciphertext(ctx, params: CKKSParams, data: bytes, length: int):
    """Deserialize a ciphertext vector on receipt and check it: it must parse,
    pass SEAL's validity check (coefficients below the modulus, the context's
    parameter id), hold exactly the expected number of ciphertexts, and each must be
    a fresh two-part ciphertext at the data level and the agreed scale. Nothing
    touches the file system (a seeded ciphertext's seed is expanded by SEAL's loader)."""
    if not isinstance(data, (bytes, bytearray)) or len(data) == 0:
        raise CiphertextRejectedError("empty ciphertext")
    k = num_ciphertexts(params, length)
    data = bytes(data)
    check_tensor_encoding(data, params, k)
    ts = _ts()
    try:
        tensor = ts.ckks_tensor_from(ctx, data)
    except Exception as exc:
        raise CiphertextRejectedError(f"ciphertext rejected on receipt: {exc}") from None
    expected = [] if k == 1 else [k]
    if list(tensor.shape) != expected:
        raise CiphertextRejectedError(f"ciphertext holds shape {list(tensor.shape)}, expected {expected}")
    levels, scale = len(params.coeff_mod_bit_sizes) - 1, 2.0**params.scale_bits
    for ct in tensor.data.ciphertext():
        if ct.size() != 2 or ct.coeff_modulus_size() != levels or ct.scale != scale:
            raise CiphertextRejectedError(
                "ciphertext rejected on receipt: not a fresh two-part ciphertext at the agreed scale"
            )
    return tensor


def serialize(tensor) -> bytes:
    return tensor.serialize()


def decrypt(ctx, params: CKKSParams, tensor, length: int) -> np.ndarray:
    """Decrypt a ciphertext vector with the secret key held in ``ctx``: each
    ciphertext's slots decoded as complex numbers, real parts then imaginary parts."""
    if not ctx.is_private():
        raise CryptoUsageError("this context holds no secret key: it cannot decrypt")
    encoder, _, decryptor = _tools(ctx, params)
    cts = tensor.data.ciphertext()
    out = np.empty((len(cts), params.values_per_slot, params.slots), dtype=np.float64)
    pt = _seal().Plaintext()
    for j, ct in enumerate(cts):
        decryptor.decrypt(ct, pt)
        if params.values_per_slot == 2:
            z = np.array(encoder.decode_complex(pt), dtype=np.complex128)
            out[j, 0], out[j, 1] = z.real, z.imag
        else:
            out[j, 0] = encoder.decode_double(pt)
    return out.reshape(-1)[:length]
