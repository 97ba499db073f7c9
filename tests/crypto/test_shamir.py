"""Shamir t-of-n sharing over GF(2^521 - 1)."""

import itertools

import pytest
from hypothesis import given, settings, strategies as st

from securefl.crypto import shamir
from securefl.crypto.shamir import PRIME, Share
from securefl.exceptions import ConfigValueError, ProtocolError
from securefl.privacy.noise import SecureRNG

secrets = st.one_of(st.integers(0, PRIME - 1), st.binary(min_size=0, max_size=65))


@st.composite
def schemes(draw):
    n = draw(st.integers(1, 9))
    t = draw(st.integers(1, n))
    xs = draw(st.lists(st.integers(1, 2**40), min_size=n, max_size=n, unique=True))
    return n, t, xs


@settings(max_examples=60, deadline=None)
@given(secret=secrets, scheme=schemes(), data=st.data())
def test_any_t_shares_reconstruct_the_secret(secret, scheme, data):
    n, t, xs = scheme
    shares = shamir.split(secret, xs, t)
    subset = data.draw(st.permutations(shares)).__getitem__(slice(0, data.draw(st.integers(t, n))))
    if isinstance(secret, bytes):
        assert shamir.combine_bytes(subset, t) == secret
    else:
        assert shamir.combine(subset, t) == secret


class _Origin(Share):
    """A point at x = 0 (only for interpolation in tests; real shares never sit at 0)."""

    def __init__(self, y):
        object.__setattr__(self, "x", 0)
        object.__setattr__(self, "y", y)


@settings(max_examples=40, deadline=None)
@given(secret=st.integers(0, PRIME - 1), other=st.integers(0, PRIME - 1), scheme=schemes())
def test_t_minus_one_shares_fit_every_secret(secret, other, scheme):
    """Perfect secrecy: for any t-1 shares and ANY candidate secret there is a
    degree t-1 polynomial through them, so the shares carry no information."""
    n, t, xs = scheme
    if t < 2:
        return
    few = shamir.split(secret, xs, t)[: t - 1]
    through = few + [_Origin(other)]  # t points fix one polynomial of degree t-1
    probe = 2**60 + 1
    completed = few + [Share(probe, shamir._interpolate_at(through, probe))]
    assert shamir.combine(completed, t) == other
    for s in few:  # the observed shares lie on that polynomial too
        assert shamir._interpolate_at(through, s.x) == s.y


def test_fewer_than_t_shares_refused_and_wrong_with_t_minus_one():
    shares = shamir.split(b"k" * 32, [1, 2, 3, 4, 5], 3)
    with pytest.raises(ProtocolError, match="cannot reconstruct"):
        shamir.combine(shares[:2], 3)
    # interpolating t-1 shares as if t-1 were the threshold gives garbage, not the secret
    assert shamir.combine(shares[:2], 2) != shamir.secret_to_int(b"k" * 32)


def test_all_subsets_agree_and_inconsistent_share_detected():
    secret = b"\x00\x01" * 16
    shares = shamir.split(secret, list(range(1, 7)), 4)
    for subset in itertools.combinations(shares, 4):
        assert shamir.combine_bytes(list(subset), 4) == secret
    bad = shares[:4] + [Share(shares[4].x, (shares[4].y + 1) % PRIME)]
    with pytest.raises(ProtocolError, match="inconsistent"):
        shamir.combine(bad, 4)


def test_shares_are_fresh_and_serialize():
    a = shamir.split(b"s" * 32, [1, 2, 3], 2)
    b = shamir.split(b"s" * 32, [1, 2, 3], 2)
    assert [s.y for s in a] != [s.y for s in b]  # random coefficients
    assert [Share.from_bytes(s.to_bytes()) for s in a] == a
    with pytest.raises(ProtocolError):
        Share.from_bytes(b"\x00" * 10)


@pytest.mark.parametrize(
    "xs, t, match",
    [([1, 1, 2], 2, "distinct"), ([0, 1, 2], 2, "points"), ([1, 2, 3], 4, "threshold"), ([1, 2], 0, "threshold")],
)
def test_bad_parameters_name_the_field(xs, t, match):
    with pytest.raises(ConfigValueError, match=match):
        shamir.split(5, xs, t)


def test_secret_out_of_field_refused():
    with pytest.raises(ConfigValueError, match="secret"):
        shamir.split(PRIME, [1, 2], 2)
    with pytest.raises(ConfigValueError, match="secret"):
        shamir.split(b"x" * 66, [1, 2], 2)


def test_split_takes_no_generator_so_a_seeded_one_cannot_leak_coefficients():
    """F8: the coefficients come from os.urandom only; there is no argument through
    which a reproducible (seeded) generator could reach them."""
    with pytest.raises(TypeError):
        shamir.split(b"s" * 32, [1, 2, 3], 2, SecureRNG.from_seed(0))  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        shamir.split(b"s" * 32, [1, 2, 3], 2, rng=SecureRNG())  # type: ignore[call-arg]
