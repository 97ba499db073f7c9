"""The CKKS scheme layer: seeded ciphertexts as TenSEAL tensors, loads without files,
the receipt checks of every mode, and the fast decode."""

from __future__ import annotations

import builtins
import os
import tempfile

import numpy as np
import pytest

from securefl.crypto.hazmat import ckks as hz
from securefl.crypto.hazmat import ckks_seal as hzs
from securefl.crypto.hazmat.tenseal_wire import tensor_fields, check_tensor_encoding, pack_tensor
from securefl.exceptions import CiphertextRejectedError, CryptoUsageError


def _setup(encryption: str, clients: int = 3):
    params = hz.derive_params("small-model", max_summands=clients, max_error=1e-3, encryption=encryption)
    ctx = hzs.new_secret_context(params)
    server = hzs.load_context(hzs.public_context_bytes(ctx, params), params)
    return params, ctx, server


def _shape(blob: bytes) -> list[tuple[int, int, object]]:
    """A TenSEAL tensor's fields with each ciphertext replaced by a marker."""
    return [(f, t, "ct" if f == 2 else bytes(v) if isinstance(v, memoryview) else v) for f, t, v in tensor_fields(blob)]


@pytest.mark.parametrize("length", [5, 1024, 3000, 140 * 2048])
def test_seeded_ciphertext_is_a_tenseal_tensor_of_half_the_bytes(length):
    params, ctx, server = _setup("seeded")
    sym = hz.CKKSParams(*[getattr(params, f) for f in ("preset", "poly_modulus_degree", "coeff_mod_bit_sizes",
                                                        "scale_bits", "max_summands", "flood_bits")], "symmetric")
    values = np.random.default_rng(0).uniform(-1, 1, length)  # test data only
    seeded, full = hzs.encrypt(ctx, params, values), hzs.encrypt(ctx, sym, values)
    # the same protobuf layout TenSEAL writes (shape [k] as a packed varint from k=128 on), half the bytes
    assert _shape(seeded) == _shape(full)
    assert 0.4 < len(seeded) / len(full) < 0.6
    check_tensor_encoding(seeded, params, hzs.num_ciphertexts(params, length))
    tensor = hzs.load_ciphertext(server, params, seeded, length)
    other = hzs.load_ciphertext(server, params, full, length)
    tensor += other
    got = hzs.decrypt(ctx, params, hzs.load_ciphertext(ctx, params, hzs.serialize(tensor), length), length)
    assert got.shape == (length,) and np.abs(got - 2 * values).max() < 1e-4


@pytest.mark.parametrize("k", [1, 3, 130])
def test_pack_tensor_writes_what_tenseal_writes(k):
    """securefl frames its ciphertexts itself (vectors, seeded): byte for byte the
    batched tensor TenSEAL's own ckks_tensor writes, shape [k] from k=128 on included."""
    import tenseal as ts

    params, ctx, _ = _setup("symmetric")
    batch = np.zeros(params.slots) if k == 1 else np.zeros((params.slots, k))
    blob = ts.ckks_tensor(ctx, ts.plain_tensor(batch), batch=True).serialize()
    cts = [bytes(v) for f, _, v in tensor_fields(blob) if f == 2]
    assert len(cts) == k
    assert pack_tensor(cts, 2.0**params.scale_bits, params.slots) == blob
    ours = hzs.encrypt(ctx, params, np.zeros(k * params.values_per_ciphertext))
    assert _shape(ours) == _shape(blob)


@pytest.mark.parametrize("encryption", ["symmetric", "seeded", "public-key"])
def test_server_load_touches_no_file(encryption, monkeypatch):
    params, ctx, server = _setup(encryption)
    blob = hzs.encrypt(ctx, params, np.full(2500, 0.25))

    def refuse(*a, **k):
        raise AssertionError("the load touched the file system")

    for mod, name in [(builtins, "open"), (os, "open"), (os, "memfd_create"), (tempfile, "TemporaryDirectory"),
                      (tempfile, "mkstemp"), (tempfile, "NamedTemporaryFile")]:
        monkeypatch.setattr(mod, name, refuse, raising=False)
    tensor = hzs.load_ciphertext(server, params, blob, 2500)
    assert list(tensor.shape) == [hzs.num_ciphertexts(params, 2500)] == [2]


def test_seeded_encryption_writes_to_memory_only(monkeypatch):
    params, ctx, _ = _setup("seeded")
    made: list[str] = []
    real = tempfile.TemporaryDirectory
    monkeypatch.setattr(tempfile, "TemporaryDirectory", lambda *a, **k: made.append("tmp") or real(*a, **k))
    hzs.encrypt(ctx, params, np.zeros(10))
    assert made == [] if hasattr(os, "memfd_create") else made == ["tmp"]


def test_seeded_encryption_needs_the_secret_key():
    params, _, server = _setup("seeded")
    with pytest.raises(CryptoUsageError, match="secret key"):
        hzs.encrypt(server, params, np.zeros(10))


@pytest.mark.parametrize("encryption", ["symmetric", "seeded"])
def test_ciphertext_at_another_scale_is_refused_on_receipt_in_every_mode(encryption):
    """The SEAL ciphertexts inside a tensor carry their own scale: a tensor whose
    header names the agreed scale around ciphertexts at another is refused."""
    params, ctx, server = _setup(encryption)
    ctx.global_scale = 2.0**22
    odd = hzs.encrypt(ctx, params, np.zeros(10))
    cts = [bytes(v) for f, _, v in tensor_fields(odd) if f == 2]
    forged = pack_tensor(cts, 2.0**params.scale_bits, params.slots)  # header at the agreed scale
    with pytest.raises(CiphertextRejectedError, match="scale"):
        hzs.load_ciphertext(server, params, forged, 10)


def test_decrypt_returns_values_in_order():
    params, ctx, server = _setup("symmetric")
    values = np.linspace(-1, 1, 2 * params.slots + 7)
    tensor = hzs.load_ciphertext(server, params, hzs.encrypt(ctx, params, values), values.size)
    got = hzs.decrypt(ctx, params, tensor, values.size)
    assert got.dtype == np.float64 and np.abs(got - values).max() < 1e-5
    with pytest.raises(CryptoUsageError, match="secret"):
        hzs.decrypt(server, params, tensor, values.size)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1.5, -1.01])
def test_encrypt_refuses_values_outside_the_unit_interval(bad):
    params, ctx, _ = _setup("seeded")
    values = np.zeros(20)
    values[7] = bad
    with pytest.raises(CryptoUsageError):
        hzs.encrypt(ctx, params, values)


def test_two_values_per_slot_need_half_a_bit_more_headroom():
    """Slots alternating 1+i, -1+i (every packed value at +-1) make the plaintext
    coefficient N/4 of a sum of M of them sqrt(2) * M: with the headroom of one value
    per slot (log2(M + 1) + sign) 7 of them wrap; with the derived first prime they do not."""
    import tenseal as ts

    m = 7
    params = hz.derive_params("small-model", max_summands=m, max_error=1e-3, encryption="symmetric")
    assert params.values_per_slot == 2
    assert hz.headroom_bits(m, 2) == hz.headroom_bits(m, 1) + 1 == params.data_bits - params.scale_bits
    z = np.where(np.arange(params.slots) % 2 == 0, 1 + 1j, -1 + 1j)
    values = np.concatenate([z.real, z.imag])

    def error(first_prime: int) -> float:
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, coeff_mod_bit_sizes=[first_prime, 14],
                         encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
        ctx.global_scale = 2.0**params.scale_bits
        acc = hzs.load_ciphertext(ctx, params, hzs.encrypt(ctx, params, values), values.size)
        for _ in range(m - 1):
            acc += hzs.load_ciphertext(ctx, params, hzs.encrypt(ctx, params, values), values.size)
        return float(np.abs(hzs.decrypt(ctx, params, acc, values.size) - m * values).max())

    assert error(params.data_bits) < 1e-4
    assert error(params.data_bits - 1) > 1.0  # wrapped
    with pytest.raises(Exception, match="wrap"):
        hz.CKKSParams("small-model", 2048, (params.data_bits - 1, 14), params.scale_bits, m, 8)


def test_one_value_per_slot_where_two_do_not_fit():
    """hardened at 100 clients needs a 61-bit prime for two values per slot: it packs one."""
    params = hz.derive_params("hardened", max_summands=100, max_error=1e-3, encryption="seeded")
    assert params.values_per_slot == 1 and params.data_bits <= hz.MAX_PRIME_BITS
    assert params.values_per_ciphertext == params.slots
    ctx = hzs.new_secret_context(params)
    values = np.random.default_rng(2).uniform(-1, 1, params.slots + 3)  # test data only
    tensor = hzs.load_ciphertext(ctx, params, hzs.encrypt(ctx, params, values), values.size)
    assert list(tensor.shape) == [2]
    assert np.abs(hzs.decrypt(ctx, params, tensor, values.size) - values).max() < 1e-6
