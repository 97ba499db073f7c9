"""The client's masked input is the same, bit for bit, as the straightforward
implementation (whole-vector numpy, one mask after another) on the same inputs and
rounding coins: the faster encoding and masking change the cost, not the bytes."""

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.crypto import primitives as P
from securefl.crypto import quantize
from securefl.crypto.quantize import FixedPoint
from securefl.crypto.secagg.client import SecAggClient
from securefl.crypto.secagg.common import SecAggSettings, pair_info, pair_mask_info, self_mask_info
from securefl.crypto.secagg.masking import CHUNK, add_masks, agree_many
from securefl.crypto.secagg.server import SecAggServer
from securefl.exceptions import ProtocolError
from securefl.privacy.noise import SecureRNG
from securefl.transport import wire

KEY = bytes(range(32))


def keystream_coins(count: int) -> np.ndarray:
    """The coins a stream under KEY yields (what the patched coin key produces)."""
    enc = Cipher(algorithms.AES(KEY), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(enc.update(bytes(4 * count)), dtype="<u4")


def reference_encode(fp: FixedPoint, values: np.ndarray, coins: np.ndarray) -> tuple[np.ndarray, int]:
    """The straightforward encoding (the implementation before the rewrite)."""
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        raise ProtocolError("cannot encode NaN or infinite values")
    over = np.abs(v) > fp.bound
    saturated = int(over.sum())
    if saturated:
        v = np.clip(v, -fp.bound, fp.bound)
    scaled = v * 2.0**fp.frac_bits
    low = np.floor(scaled)
    up = coins.reshape(v.shape) < (scaled - low) * 2.0**32
    q = low.astype(np.int64) + up
    return fp.wrap(q), saturated


@pytest.fixture
def fixed_coins(monkeypatch):
    monkeypatch.setattr(quantize, "_coin_key", lambda: KEY)


@pytest.mark.parametrize("bits, frac, bound", [(32, 20, 3.0), (64, 40, 1000.0), (32, 8, 4096.0)])
@pytest.mark.parametrize("size", [1, 7, quantize._BLOCK, 2 * quantize._BLOCK + 5])
def test_encode_equals_the_straightforward_encoding(fixed_coins, bits, frac, bound, size):
    fp = FixedPoint(bits, frac, bound)
    data = np.random.default_rng(size).uniform(-1.3 * bound, 1.3 * bound, size)  # test data, not secret
    data[: min(size, 3)] = [0.0, -0.0, bound][: min(size, 3)]
    if size > 3:
        data[-1] = -1.25 * bound  # at least one clipped coordinate
    enc = fp.encode(data)
    ref, saturated = reference_encode(fp, data, keystream_coins(size))
    assert enc.values.dtype == ref.dtype and np.array_equal(enc.values, ref)
    assert enc.saturated == saturated and (saturated > 0) == (size > 3)
    out = np.empty(size, dtype=fp.dtype)
    assert fp.encode(data, out=out).values is out and np.array_equal(out, ref)


def test_encode_refuses_a_wrong_output_buffer():
    fp = FixedPoint(32, 8, 1.0)
    with pytest.raises(ProtocolError, match="out must be"):
        fp.encode(np.zeros(4), out=np.empty(4, dtype=np.uint64))


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("size", [1, CHUNK // 4, CHUNK // 4 + 3, 3 * CHUNK // 4 + 1])
def test_add_masks_equals_one_add_mask_after_another(dtype, size):
    rng = np.random.default_rng(size)  # test data, not secret
    start = rng.integers(0, np.iinfo(dtype).max, size, dtype=dtype, endpoint=True)
    masks = [(bytes([i]) * 32, b"info%d" % (i % 2), i % 3 == 0) for i in range(5)]
    expected = start.copy()
    for seed, info, subtract in masks:
        P.add_mask(expected, seed, info, subtract=subtract)
    got = start.copy()
    add_masks(got, masks)
    assert np.array_equal(got, expected) and not np.array_equal(got, start)



@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("size", [3, 4, 5, 7, 8, 9, CHUNK // 8 + 1])
def test_add_masks_across_the_ctr_head_and_gcm_stream(dtype, size):
    """Vectors ending before, at and after the 32 CTR bytes that precede the GCM
    keystream (masking.py takes counter blocks 2, 3, ... from AES-GCM)."""
    masks = [(bytes([7 + i]) * 32, b"head", i == 1) for i in range(3)]
    expected = np.zeros(size, dtype=dtype)
    for seed, info, subtract in masks:
        P.add_mask(expected, seed, info, subtract=subtract)
    got = np.zeros(size, dtype=dtype)
    add_masks(got, masks)
    assert np.array_equal(got, expected) and np.count_nonzero(got) == size

def test_agree_many_equals_agree_and_refuses_bad_keys():
    sk, _ = P.x25519_keypair()
    peers = [P.x25519_keypair()[1] for _ in range(4)]
    assert agree_many(sk, peers, b"pair") == [P.agree(sk, pk, b"pair") for pk in peers]
    with pytest.raises(ProtocolError, match="X25519"):
        agree_many(sk, [b"\x00" * 31], b"pair")


def ready_client(settings: SecAggSettings, n: int, rng) -> SecAggClient:
    """Client c0 of a real n-client round, ready for its masked input."""
    ids = [f"c{i}" for i in range(n)]
    server = SecAggServer(1, ids, settings=settings)
    clients = {u: SecAggClient(u, settings=settings, rng=rng if u == "c0" else SecureRNG()) for u in ids}
    u1 = server.collect_keys({u: clients[u].handle(server.advertise_request(u)) for u in ids})
    server.collect_shares({u: clients[u].handle(server.share_request(u)) for u in u1})
    gm = wire.encode(wire.Kind.GLOBAL_MODEL, {"round": 1, "dim": 3})
    clients["c0"].receive(wire.decode(server.masking_message("c0", gm)).header)
    return clients["c0"]


def reference_masked_input(client: SecAggClient, values, weight, aux, noise_rng) -> np.ndarray:
    """The masked vector as the implementation before the rewrite built it."""
    st, s = client._rounds[1], client.settings
    keys = sorted(aux)
    extra = np.array([float(aux[k]) for k in keys])
    v = np.asarray(values, dtype=np.float64)
    if s.noise_multiplier > 0 and np.linalg.norm(v) > s.clip:
        v = v * (s.clip / float(np.linalg.norm(v)))
    limit = weight * s.clip
    saturated = int((np.abs(v) > limit).sum())
    v = np.clip(v, -limit, limit) if saturated else v
    coins = np.concatenate([keystream_coins(v.size), keystream_coins(extra.size)])  # one stream per call
    ring, _ = reference_encode(st.codec, np.concatenate([v, extra]), coins)
    sigma = client.last_noise_stddev
    if sigma > 0:
        noise = noise_rng.discrete_gaussian(v.size, max(1, math.ceil(sigma / st.codec.resolution)))
        signed = st.codec.signed(ring)
        signed[: v.size] += noise
        ring = st.codec.wrap(signed)
    vec = np.concatenate([ring, st.codec.wrap(np.array([saturated]))]).astype(st.codec.dtype)
    P.add_mask(vec, st.seed, self_mask_info(1, "c0"))
    for other in st.maskers:
        seed = P.agree(st.s_sk, st.peers[other][1], pair_info(1))
        P.add_mask(vec, seed, pair_mask_info(1), subtract="c0" > other)
    return vec


@pytest.mark.parametrize("noise, bits", [(0.0, 32), (0.0, 64), (0.8, 32)])
def test_masked_input_equals_the_straightforward_pipeline(fixed_coins, noise, bits):
    settings = SecAggSettings(clip=1.0, max_weight=1.0, bits=bits, noise_multiplier=noise, threshold=0.6)
    client = ready_client(settings, 5, SecureRNG.from_seed(7))  # seeded: the noise share only
    values = np.random.default_rng(1).uniform(-1.5, 1.5, 1000)  # some coordinates clipped
    raw = client.masked_input(values, 1.0, {"weight": 1.0}, {"round": 1})
    got = np.frombuffer(wire.decode(raw).payload, dtype=np.dtype(client._rounds[1].codec.dtype).newbyteorder("<"))
    expected = reference_masked_input(client, values, 1.0, {"weight": 1.0}, SecureRNG.from_seed(7))
    assert (client.last_noise_stddev > 0) == (noise > 0)
    if not noise:
        assert client.last_saturated == int((np.abs(values) > 1.0).sum()) > 0
    assert np.array_equal(got, expected)
