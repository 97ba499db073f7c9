"""X25519 + HKDF, Ed25519, ChaCha20-Poly1305 bound to (round, sender, recipient), AES-CTR masks."""

import numpy as np
import pytest

from securefl.crypto import primitives as P
from securefl.exceptions import ProtocolError


def test_key_agreement_is_symmetric_and_context_separated():
    a_sk, a_pk = P.x25519_keypair()
    b_sk, b_pk = P.x25519_keypair()
    k1, k2 = P.agree(a_sk, b_pk, b"ctx"), P.agree(b_sk, a_pk, b"ctx")
    assert k1 == k2 and len(k1) == 32
    assert P.agree(a_sk, b_pk, b"other") != k1
    assert P.x25519_public(a_sk) == a_pk
    with pytest.raises(ProtocolError):
        P.agree(a_sk, b"\x00" * 32, b"ctx")  # low-order point


def test_aead_binds_round_sender_recipient():
    key = P.agree(*[P.x25519_keypair()[0], P.x25519_keypair()[1]], b"c")
    ad = P.associated_data(3, "alice", "bob")
    blob = P.seal(key, b"share bytes", ad)
    assert P.open_(key, blob, ad) == b"share bytes"
    assert b"share bytes" not in blob
    for wrong in (P.associated_data(4, "alice", "bob"), P.associated_data(3, "bob", "alice"), P.associated_data(3, "alice", "carol")):
        with pytest.raises(ProtocolError, match="authentication"):
            P.open_(key, blob, wrong)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ProtocolError):
        P.open_(key, tampered, ad)
    assert P.seal(key, b"share bytes", ad) != blob  # fresh nonce each time


def test_signatures():
    sk, vk = P.ed25519_keypair()
    sig = P.sign(sk, b"msg")
    assert P.verify(vk, sig, b"msg")
    assert not P.verify(vk, sig, b"msh")
    assert not P.verify(P.ed25519_keypair()[1], sig, b"msg")


def test_mask_prg_is_deterministic_per_key_and_uniform():
    seed = b"\x07" * 32
    m = P.mask(seed, 200_000, 32, b"r1")
    assert m.dtype == np.uint32 and np.array_equal(m, P.mask(seed, 200_000, 32, b"r1"))
    assert not np.array_equal(m[:100], P.mask(seed, 100, 32, b"r2"))
    assert not np.array_equal(m[:100], P.mask(b"\x08" * 32, 100, 32, b"r1"))
    # top byte of each word: chi-square over 256 bins (99.9% quantile for 255 dof is ~330)
    counts = np.bincount((m >> 24).astype(np.int64), minlength=256)
    expected = m.size / 256
    assert ((counts - expected) ** 2 / expected).sum() < 330
    m64 = P.mask(seed, 10, 64, b"r1")
    assert m64.dtype == np.uint64 and m64.view(np.uint32)[:10].tobytes() == m[:10].tobytes()
