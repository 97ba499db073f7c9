"""The CKKS section of ``securefl bench``: real measurements, side by side."""

from __future__ import annotations

import pytest

from securefl.bench import ckks as bench


@pytest.mark.parametrize("encryption", ["seeded", "public-key"])
def test_ops_time_securefl_and_raw_tenseal_on_the_same_parameters(encryption):
    row = bench.ops(3000, encryption, repeat=1)
    assert row["params"]["encryption"] == encryption
    for side in ("securefl", "raw_tenseal"):
        for op in ("encrypt", "load", "add", "decrypt"):
            assert row[side][op]["cpu_ms"] > 0 and row[side][op]["wall_ms"] > 0
    assert set(row["cpu_ratio"]) == {"encrypt", "load", "add", "decrypt"}
    # two values per slot: half the ciphertexts raw TenSEAL needs, so fewer bytes
    assert row["securefl"]["bytes"] < row["raw_tenseal"]["bytes"]
    assert row["upload_x_float32"] == row["securefl"]["message_bytes"] / (4 * 3000)


def test_nvflare_preset_is_raw_tenseal_at_its_parameters():
    out = bench.nvflare(5000, repeat=1)
    assert out["preset"]["coeff_mod_bit_sizes"] == [60, 40, 40, 60]
    # four primes, two polynomials, 4096 values per ciphertext: far above float32
    assert out["upload_x_float32"] > 10 and out["encrypt"]["cpu_ms"] > 0


def test_round_time_compares_ckks_with_plaintext():
    out = bench.round_time(hidden=8, rounds=2, clients=3)
    assert out["params"] == 64 * 8 + 8 + 8 * 10 + 10
    assert out["none"]["cpu_ms"] > 0 and out["ckks"]["cpu_ms"] > 0
    assert out["ckks"]["bytes_up_ratio"] > 1 and out["none"]["bytes_up_ratio"] is None
    assert out["cpu_ratio"] == out["ckks"]["cpu_ms"] / out["none"]["cpu_ms"]
