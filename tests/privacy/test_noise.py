"""Tests of :mod:`securefl.privacy.noise` (the ChaCha20 CSPRNG behind all DP noise).

Statistical tests draw from the production (``os.urandom``-keyed) stream and use
acceptance regions whose false-failure probability is ``ALPHA`` each.
"""

from __future__ import annotations

import ast
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy import stats

import securefl.privacy.noise as noise_mod
from securefl.privacy.noise import SecureRNG

ALPHA = 1e-6  # false-failure probability of each statistical check
Z = stats.norm.isf(ALPHA / 2)  # ~4.89, two-sided normal quantile
N = 200_000


def _mean_ok(x: np.ndarray, mean: float, std: float) -> bool:
    return abs(float(np.mean(x)) - mean) <= Z * std / math.sqrt(len(x))


# ----------------------------------------------------------------- Gaussian
@pytest.mark.parametrize("sigma", [1.0, 0.37, 25.0])
def test_normal_mean_and_std(sigma):
    x = SecureRNG().normal((N,), std=sigma, dtype=torch.float64).numpy()
    assert x.shape == (N,)
    assert _mean_ok(x, 0.0, sigma)
    # known mean 0: sum(x^2) / sigma^2 ~ chi2(N)
    s = float(np.sum(x**2)) / sigma**2
    assert stats.chi2.ppf(ALPHA / 2, N) <= s <= stats.chi2.isf(ALPHA / 2, N)


def test_normal_kolmogorov_smirnov():
    sigma = 2.5
    x = SecureRNG().normal((N,), std=sigma, dtype=torch.float64).numpy()
    assert stats.kstest(x, "norm", args=(0.0, sigma)).pvalue > ALPHA
    # and it is clearly *not* a different scale: the test has power
    assert stats.kstest(x, "norm", args=(0.0, 1.05 * sigma)).pvalue < ALPHA


def test_normal_box_muller_pairs_independent():
    # Box-Muller pairs (r cos t, r sin t) share r: uncorrelated, and for true
    # independence their squares must be uncorrelated too.
    n = N
    x = SecureRNG().normal((n,), dtype=torch.float64).numpy()
    a, b = x[: n // 2], x[n // 2 :]
    m = n // 2
    # under independence sqrt(m) * corr is ~ N(0, 1)
    assert abs(np.corrcoef(a, b)[0, 1]) * math.sqrt(m) < Z
    assert abs(np.corrcoef(a**2, b**2)[0, 1]) * math.sqrt(m) < Z
    # neighbours too
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) * math.sqrt(n - 1) < Z


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (1,), (9, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal_shape_dtype(shape, dtype):
    t = SecureRNG().normal(shape, std=1.0, dtype=dtype)
    assert tuple(t.shape) == shape and t.dtype == dtype
    assert torch.isfinite(t).all()
    assert t.abs().sum() > 0
    t2 = SecureRNG().normal(torch.Size(shape), dtype=dtype)
    assert tuple(t2.shape) == shape


def test_normal_odd_count_uses_whole_stream():
    # an odd count must still give a full, non-degenerate sample
    x = SecureRNG().normal((100_001,), dtype=torch.float64).numpy()
    assert len(np.unique(x)) == len(x)


def test_normal_zero_std_and_empty():
    r = SecureRNG()
    assert torch.equal(r.normal((4, 3), std=0.0), torch.zeros(4, 3))
    assert r.normal((0,), std=1.0).shape == (0,)


def test_normal_scales_exactly_with_std():
    a = SecureRNG.from_seed(7).normal((1000,), std=1.0, dtype=torch.float64)
    b = SecureRNG.from_seed(7).normal((1000,), std=3.0, dtype=torch.float64)
    torch.testing.assert_close(b, 3.0 * a, rtol=1e-15, atol=0)


# ------------------------------------------------------------------ uniform
def test_uniform_open_interval_and_distribution():
    u = SecureRNG().uniform(N)
    assert u.dtype == np.float64 and u.shape == (N,)
    assert (u > 0).all() and (u < 1).all()
    assert _mean_ok(u, 0.5, math.sqrt(1 / 12))
    assert stats.kstest(u, "uniform").pvalue > ALPHA
    assert len(np.unique(u)) == N  # 52-bit resolution: no collisions expected


def test_uniform_lowest_word_maps_inside_interval():
    r = SecureRNG()
    r.uint64 = lambda n: np.zeros(n, dtype=np.uint64)
    u = r.uniform(3)
    assert (u > 0).all() and (u < 1).all()


def test_uniform_highest_word_maps_inside_interval():
    r = SecureRNG()
    r.uint64 = lambda n: np.full(n, np.iinfo(np.uint64).max, dtype=np.uint64)
    u = r.uniform(3)
    assert (u > 0).all() and (u < 1).all()


# ------------------------------------------------------- keystream / seeding
def test_keystream_is_chacha20_rfc8439_vector():
    # RFC 8439 A.1 test vector #1: all-zero key, nonce and counter
    expected = bytes.fromhex(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    )
    r = SecureRNG(b"\x00" * 32)
    assert r.reproducible
    assert r.bytes(10) + r.bytes(54) == expected


def test_keystream_matches_chacha20_for_random_key():
    key = bytes(range(32))
    ref = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor().update(b"\x00" * 4096)
    r = SecureRNG(key)
    got = b"".join(r.bytes(k) for k in (1, 7, 100, 988, 3000))
    assert got == ref


def test_default_instances_differ():
    a, b = SecureRNG(), SecureRNG()
    assert not a.reproducible and not b.reproducible
    assert a.bytes(64) != b.bytes(64)
    assert not torch.equal(a.normal((100,)), b.normal((100,)))


def test_stream_does_not_repeat():
    r = SecureRNG()
    assert r.bytes(64) != r.bytes(64)


def test_from_seed_reproducible():
    a = SecureRNG.from_seed(1234, context="ctx")
    b = SecureRNG.from_seed(1234, context="ctx")
    assert a.reproducible
    assert torch.equal(a.normal((1000,)), b.normal((1000,)))
    assert np.array_equal(a.uniform(100), b.uniform(100))
    assert a.sample(1000, 10) == b.sample(1000, 10)
    assert a.below(10**9) == b.below(10**9)


def test_from_seed_context_and_seed_separate_streams():
    base = SecureRNG.from_seed(1234, context="ctx").bytes(64)
    assert SecureRNG.from_seed(1234, context="other").bytes(64) != base
    assert SecureRNG.from_seed(1235, context="ctx").bytes(64) != base
    assert SecureRNG.from_seed(1234).bytes(64) != base
    # a seed given as bytes is used as HKDF input keying material as well
    assert SecureRNG.from_seed(b"seed").bytes(32) == SecureRNG.from_seed(b"seed").bytes(32)
    assert SecureRNG.from_seed(b"seed").bytes(32) != SecureRNG.from_seed(b"seee").bytes(32)


def test_seeded_stream_is_not_the_raw_seed_key():
    # the key is derived (HKDF), not the seed itself zero-padded
    seed = bytes(range(32))
    assert SecureRNG.from_seed(seed).bytes(64) != SecureRNG(seed).bytes(64)


@pytest.mark.parametrize("key", [b"short", b"x" * 31, b"x" * 33, "a" * 32, 12])
def test_bad_key_rejected(key):
    with pytest.raises(ValueError):
        SecureRNG(key)


def test_rekey_continues_with_fresh_stream(monkeypatch):
    monkeypatch.setattr(noise_mod, "_REKEY_BYTES", 64)
    key = bytes(range(32))
    ref = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor().update(b"\x00" * 256)
    r = SecureRNG(key)
    first = r.bytes(64)
    second = r.bytes(64)  # must rekey: 64 + 64 > limit
    assert first == ref[:64]
    assert second != ref[64:128]  # not the continuation of the old keystream
    assert second != first
    # rekeying is deterministic for a fixed key
    r2 = SecureRNG(key)
    assert r2.bytes(64) + r2.bytes(64) == first + second


# ---------------------------------------------------------------- bernoulli
@pytest.mark.parametrize("p", [0.3, 0.01, 0.5])
def test_bernoulli_rate(p):
    b = SecureRNG().bernoulli(p, N)
    assert b.dtype == np.bool_ and b.shape == (N,)
    k = int(b.sum())
    assert abs(k - N * p) <= Z * math.sqrt(N * p * (1 - p))


def test_bernoulli_extremes():
    r = SecureRNG()
    assert not r.bernoulli(0.0, 10_000).any()
    assert r.bernoulli(1.0, 10_000).all()


# -------------------------------------------------------------------- below
@pytest.mark.parametrize("bound", [1, 2, 7, 1000, 2**63 + 1, 2**64 - 1])
def test_below_in_range(bound):
    r = SecureRNG()
    xs = [r.below(bound) for _ in range(500)]
    assert all(isinstance(x, int) and 0 <= x < bound for x in xs)
    if bound > 1:
        assert len(set(xs)) > 1


def test_below_uniform_chi_square():
    bound, n = 7, 35_000
    r = SecureRNG()
    counts = np.bincount([r.below(bound) for _ in range(n)], minlength=bound)
    assert len(counts) == bound
    assert stats.chisquare(counts).pvalue > ALPHA


def test_below_no_modulo_bias():
    # bound = 3 * 2^62: a plain "x % bound" would put half the mass in [0, 2^62)
    bound = 3 * 2**62
    n = 3000
    r = SecureRNG()
    low = sum(r.below(bound) < 2**62 for _ in range(n))
    p = 1 / 3
    assert abs(low - n * p) <= Z * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("bound", [0, -1])
def test_below_rejects_nonpositive(bound):
    with pytest.raises(ValueError):
        SecureRNG().below(bound)


# ------------------------------------------------------------------- sample
@pytest.mark.parametrize("population,k", [(10, 3), (1000, 50), (5, 5), (5, 0), (1, 1), (100, 99)])
def test_sample_distinct_sorted_in_range(population, k):
    r = SecureRNG()
    for _ in range(20):
        s = r.sample(population, k)
        assert len(s) == k
        assert s == sorted(s)
        assert len(set(s)) == k
        assert all(isinstance(i, int) and 0 <= i < population for i in s)
    if k == population:
        assert s == list(range(population))


def test_sample_uniform_over_subsets():
    population, k, n = 5, 2, 10_000
    r = SecureRNG()
    subsets = list(itertools.combinations(range(population), k))
    counts = dict.fromkeys(subsets, 0)
    for _ in range(n):
        counts[tuple(r.sample(population, k))] += 1
    assert stats.chisquare(list(counts.values())).pvalue > ALPHA


@pytest.mark.parametrize("population,k", [(5, 6), (5, -1), (0, 1)])
def test_sample_rejects_bad_k(population, k):
    with pytest.raises(ValueError):
        SecureRNG().sample(population, k)


# ------------------------------------------------------------- source audit
_PRIVACY_DIR = Path(noise_mod.__file__).parent
_FORBIDDEN_MODULES = {"random", "numpy.random"}
_FORBIDDEN_ATTRS = {
    ("np", "random"),
    ("numpy", "random"),
    ("torch", "rand"),
    ("torch", "randn"),
    ("torch", "randint"),
    ("torch", "randperm"),
    ("torch", "normal"),
    ("torch", "bernoulli"),
    ("torch", "poisson"),
    ("torch", "multinomial"),
    ("torch", "manual_seed"),
}


def _insecure_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in _FORBIDDEN_MODULES:
                    found.append(f"import {a.name}")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod in _FORBIDDEN_MODULES:
                found.append(f"from {mod} import ...")
            for a in node.names:
                if f"{mod}.{a.name}" in _FORBIDDEN_MODULES or (mod == "torch" and ("torch", a.name) in _FORBIDDEN_ATTRS):
                    found.append(f"from {mod} import {a.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in _FORBIDDEN_ATTRS:
                found.append(f"{node.value.id}.{node.attr}")
    return found


def test_audit_detects_forbidden_patterns(tmp_path):
    # the audit itself must be able to fail
    bad = tmp_path / "bad.py"
    bad.write_text("import random\nimport numpy as np\nx = np.random.normal()\nfrom torch import randn\n")
    assert len(_insecure_uses(bad)) == 3


@pytest.mark.parametrize("name", ["noise.py", "client_dp.py", "dpsgd.py"])
def test_no_insecure_randomness_in_source(name):
    assert _insecure_uses(_PRIVACY_DIR / name) == []
