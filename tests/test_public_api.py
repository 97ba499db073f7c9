"""The public surface: the extension seam exported by the package, one module of
value checks, and securefl exception classes from hazmat and the secure generator."""

from __future__ import annotations

import numpy as np
import pytest

import securefl
from securefl import validators as V
from securefl.exceptions import (
    ConfigTypeError,
    ConfigValueError,
    CryptoUsageError,
    RandomnessError,
    SecureFLError,
)


def test_package_exports_the_extension_seam():
    for name in (
        "ClientProtection", "ServerProtection", "AggregateInput", "Exchange", "Plaintext", "ProtectionSpec",
        "CKKSSettings", "SecAggSettings", "build_federation", "check_config", "register", "register_settings",
        "RunConfig", "Simulation", "SecureClient", "SecureServer", "DPMode",
    ):
        assert name in securefl.__all__ and hasattr(securefl, name), name
    assert callable(securefl.build_federation) and callable(securefl.check_config)
    # the module stays reachable under its own name
    import securefl.build as build_module

    assert build_module.build is securefl.build_federation


@pytest.mark.parametrize("bad", [True, 1.5, "1", None])
def test_check_int_rejects_non_integers_and_bools(bad):
    with pytest.raises(ConfigTypeError) as info:
        V.check_int("rounds", bad)
    assert info.value.field == "rounds" and info.value.value is bad


def test_validators():
    V.check_int("k", 3, 1, 5)
    with pytest.raises(ConfigValueError, match=">= 4"):
        V.check_int("k", 3, 4)
    V.check_float("x", 0.5, 0.0, 1.0, lo_open=True)
    with pytest.raises(ConfigValueError, match="finite"):
        V.check_float("x", float("nan"))
    with pytest.raises(ConfigValueError, match="finite"):
        V.check_float("x", 10**400)
    with pytest.raises(ConfigTypeError):
        V.check_float("x", False)
    with pytest.raises(ConfigValueError, match="one of a, b"):
        V.check_choice("c", "z", ("a", "b"))
    with pytest.raises(ConfigTypeError):
        V.check_bool("b", 1)
    assert V.is_int(3) and not V.is_int(True) and not V.is_int(3.0)
    assert V.is_number(3.0) and V.is_number(2) and not V.is_number(False) and not V.is_number("1")


def test_secure_rng_errors_are_securefl_errors():
    from securefl.privacy.noise import SecureRNG

    for call in (lambda: SecureRNG(b"short"), lambda: SecureRNG().below(0), lambda: SecureRNG().sample(3, 4)):
        with pytest.raises(RandomnessError) as info:
            call()
        assert isinstance(info.value, SecureFLError) and isinstance(info.value, ValueError)


def test_hazmat_errors_are_securefl_errors():
    from securefl.crypto import primitives as P
    from securefl.crypto.hazmat import ckks as hz
    from securefl.crypto.hazmat import ckks_seal as hzs

    params = hz.derive_params("small-model", max_summands=2, max_error=1e-3)
    ctx = hzs.new_secret_context(params)
    with pytest.raises(CryptoUsageError, match="\\[-1, 1\\]"):
        hzs.encrypt(ctx, params, np.array([2.0]))
    with pytest.raises(CryptoUsageError):
        P.add_mask(np.zeros(3, dtype=np.float64), b"\0" * 32, b"info")
    with pytest.raises(CryptoUsageError):
        P.keystream(b"short", 8)
    assert issubclass(CryptoUsageError, SecureFLError) and issubclass(CryptoUsageError, ValueError)


def test_key_wrap_round_trips_and_binds_its_associated_data():
    from securefl.crypto import primitives as P
    from securefl.exceptions import ProtocolError

    a_sk, a_pk = P.x25519_keypair()
    b_sk, b_pk = P.x25519_keypair()
    blob = P.wrap(a_sk, b_pk, b"info", b"secret", b"ad")
    assert P.unwrap(b_sk, a_pk, b"info", blob, b"ad") == b"secret"
    with pytest.raises(ProtocolError):
        P.unwrap(b_sk, a_pk, b"info", blob, b"other ad")
    with pytest.raises(ProtocolError):
        P.unwrap(b_sk, a_pk, b"other info", blob, b"ad")


def test_keystream_matches_the_secure_generator_stream():
    """The CKKS MAC's keyed stream (crypto) is the ChaCha20 stream SecureRNG draws
    from, so moving it out of privacy changed no tag."""
    from securefl.crypto import primitives as P
    from securefl.privacy.noise import SecureRNG

    key = bytes(range(32))
    assert P.keystream(key, 100) == SecureRNG(key).bytes(100)
    assert np.array_equal(P.uniforms(key, 7), SecureRNG(key).uniform(7))
