"""Everything the server receives, byte for byte: no client's encoded update appears
in it, and each masked input looks uniform, even after the server removes the
self-mask it is allowed to reconstruct."""

import numpy as np
from scipy.stats import chisquare

from securefl.crypto import primitives as P
from securefl.crypto import shamir
from securefl.crypto.secagg.common import SecAggSettings, self_mask_info, unb64
from securefl.transport import wire

from tests.helpers.secagg import RecordingExchange, federation, global_model

DIM = 20_000


def byte_uniformity_p(words: np.ndarray) -> float:
    counts = np.bincount(np.frombuffer(words.tobytes(), dtype=np.uint8), minlength=256)
    return float(chisquare(counts).pvalue)


def test_server_transcript_hides_every_update():
    s = SecAggSettings(clip=1.0, max_weight=1.0, threshold=0.6)
    n = 6
    codec = s.codec(n)
    rng = np.random.default_rng(7)  # test data only
    # structured, far-from-uniform updates: small integers on the grid
    ints = rng.integers(-50, 50, size=(n, DIM))
    inputs = [row * codec.resolution for row in ints]
    clients, server = federation(s, inputs)
    ex = RecordingExchange(1, drop_at={"c05": 3})  # one client drops before its masked input
    agg = server.aggregate(clients, global_model(1, DIM), DIM, ex)
    assert agg.count == 5

    received = b"".join(raw for _, raw in ex.received)
    plain = {f"c{i:02d}": codec.wrap(ints[i]).tobytes() for i in range(n)}
    float32 = {f"c{i:02d}": inputs[i].astype("<f4").tobytes() for i in range(n)}
    for cid in plain:
        for off in range(0, 4 * DIM - 64, 4 * DIM // 16):  # any 16-coordinate window
            assert plain[cid][off : off + 64] not in received
            assert float32[cid][off : off + 64] not in received

    # the encoded updates themselves are far from uniform ...
    assert all(byte_uniformity_p(codec.wrap(ints[i])) < 1e-30 for i in range(n))
    masked, b_shares = {}, {}
    for cid, raw in ex.received:
        msg = wire.decode(raw)
        if msg.kind == wire.Kind.SECAGG_MASKED_INPUT:
            masked[cid] = np.frombuffer(msg.payload, dtype="<u4")
        if msg.kind == wire.Kind.SECAGG_UNMASK:
            assert set(msg.header["sk"]).isdisjoint(masked)  # key shares only of the dropped
            assert set(msg.header["b"]) <= set(masked)  # self-mask shares only of survivors
            for v, text in msg.header["b"].items():
                b_shares.setdefault(v, []).append(shamir.Share.from_bytes(unb64(text, "share")))
    assert set(masked) == {"c00", "c01", "c02", "c03", "c04"}
    t = s.threshold_for(n)
    for cid, y in masked.items():
        # ... while every masked input the server holds passes a chi-square test for uniformity
        assert byte_uniformity_p(y) > 1e-6
        # and stays uniform after the server strips the self-mask it reconstructs:
        # the pairwise masks with the other survivors still hide the update
        seed = shamir.combine_bytes(b_shares[cid], t)
        y_minus_b = y - P.mask(seed, y.size, 32, self_mask_info(1, cid))
        assert byte_uniformity_p(y_minus_b) > 1e-6
    # but the sum over survivors is exactly the sum of their encoded inputs
    assert np.array_equal(server.last_result.ring_sum[:DIM], codec.wrap(ints[:5].sum(axis=0)))
