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


# ------------------------------------------------------------------ the randomized check
def _naive_weights(xs):
    out = []
    for i, xi in enumerate(xs):
        den = 1
        for j, xj in enumerate(xs):
            if i != j:
                den = den * (xi - xj) % PRIME
        out.append(pow(den, -1, PRIME))
    return tuple(out)


@pytest.mark.parametrize(
    "xs",
    [
        tuple(range(1, 40)),  # every holder: the factorial path
        tuple(x for x in range(1, 60) if x % 7),  # a few absentees: still factorial
        (3, 17, 250, 901, 1000, 4095),  # scattered holder indices: exact small products
        (1, 2**40 + 3, 2**45, 2**60 + 11),  # large points: the modular loop
        (0, 5, 9),  # includes the origin (interpolation helpers only)
    ],
)
def test_barycentric_weights_match_the_definition(xs):
    assert shamir.barycentric_weights(xs) == _naive_weights(xs)
    at = 2**70 + 1
    expected = []
    for i, xi in enumerate(xs):
        num = 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (at - xj) % PRIME
        expected.append(num * _naive_weights(xs)[i] % PRIME)
    assert shamir.lagrange_coefficients(xs, at) == tuple(expected)


def test_mersenne_reduction_matches_modulo():
    rng = SecureRNG.from_seed(3)  # test data only
    values = [0, 1, PRIME - 1, PRIME, PRIME + 1, 2 * PRIME, (PRIME - 1) ** 2, PRIME * (PRIME - 1)]
    values += [int.from_bytes(rng.bytes(65), "big") * int.from_bytes(rng.bytes(65), "big") for _ in range(50)]
    for v in values:
        assert shamir._reduce(v) == v % PRIME


@pytest.mark.parametrize("n, t", [(6, 4), (40, 24), (300, 100)])  # (300, 100): closed-form h
def test_any_corrupted_share_is_refused_with_one_uniform_error(n, t):
    """Whichever share is wrong (one the secret is interpolated from, or an extra
    one), combine refuses with the same message; it never returns a wrong secret."""
    shares = shamir.split(b"k" * 32, list(range(1, n + 1)), t)
    assert shamir.combine_bytes(shares, t) == b"k" * 32
    messages = set()
    for pos in sorted({0, 1, t - 1, t, n - 1}):
        bad = list(shares)
        bad[pos] = Share(bad[pos].x, (bad[pos].y + 1) % PRIME)
        with pytest.raises(ProtocolError, match="inconsistent") as info:
            shamir.combine(bad, t)
        messages.add(str(info.value))
    assert len(messages) == 1


def test_combine_many_checks_every_secret_of_a_shared_holder_set():
    """Secrets sharing holders are checked together (random 128-bit combination):
    one wrong share in any of them still refuses the whole call."""
    xs = list(range(1, 31))
    secrets_ = [bytes([i]) * 32 for i in range(12)]
    groups = [shamir.split(s, xs, 18) for s in secrets_]
    assert shamir.combine_bytes_many(groups, 18) == secrets_
    for victim in (0, 7, 11):
        bad = [list(g) for g in groups]
        bad[victim][25] = Share(bad[victim][25].x, (bad[victim][25].y + 2**300) % PRIME)
        with pytest.raises(ProtocolError, match="inconsistent"):
            shamir.combine_many(bad, 18)
    # mixed holder sets and orders in one call: each secret still comes back right
    mixed = [groups[0][::-1], groups[1][:20], groups[2][5:], groups[3]]
    assert shamir.combine_bytes_many(mixed, 18) == secrets_[:4]


def test_combine_points_refuses_malformed_columns():
    with pytest.raises(ConfigValueError, match="distinct"):
        shamir.combine_points([([1, 1, 2], [5, 6, 7])], 2)
    with pytest.raises(ConfigValueError, match="shares"):
        shamir.combine_points([([1, 2, 3], [5, 6])], 2)
    with pytest.raises(ProtocolError, match="field"):
        shamir.combine_points([([1, 2], [5, PRIME])], 2)
    with pytest.raises(ProtocolError, match="cannot reconstruct"):
        shamir.combine_points([([1, 2], [5, 6])], 3)
