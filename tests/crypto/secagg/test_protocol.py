"""Secure aggregation end to end over the protection seam: exact sums under any
dropout pattern the threshold allows, aborts below it, honest-client refusals."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from securefl.crypto import primitives as P
from securefl.crypto.secagg.common import SecAggSettings, b64
from securefl.exceptions import ProtocolError, SecAggAbortError
from securefl.transport import wire

from tests.helpers.secagg import RecordingExchange, federation, global_model

DIM = 7


def grid_inputs(settings_, n, seed):
    """Inputs on the fixed-point grid, so 'the sum of the quantized inputs' is exact."""
    codec = settings_.codec(n)
    rng = np.random.default_rng(seed)  # test data only, not secret
    ints = rng.integers(-(2**codec.frac_bits), 2**codec.frac_bits, size=(n, DIM), endpoint=True)
    return ints, [row * codec.resolution for row in ints], codec


@st.composite
def rounds(draw, sparse=False):
    malicious = draw(st.booleans())
    n = draw(st.integers(2, 8))
    frac = draw(st.sampled_from([0.7, 0.8, 1.0] if malicious else [0.51, 0.6, 0.75, 1.0]))
    k = draw(st.sampled_from([2, 4])) if sparse else 0
    m = draw(st.integers(2, min(n, 4)))
    s = SecAggSettings(clip=1.0, max_weight=1.0, threshold=frac, neighbors=k, malicious=malicious, min_clients=m)
    stages = 5 if malicious else 4
    dropped = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    drop_at = {f"c{i:02d}": draw(st.integers(1, stages)) for i in dropped}
    return s, n, drop_at, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=rounds())
def test_complete_graph_exact_sum_or_abort(case):
    s, n, drop_at, seed = case
    ints, inputs, codec = grid_inputs(s, n, seed)
    clients, server = federation(s, inputs)
    ex = RecordingExchange(1, drop_at)
    t, m = s.threshold_for(n), s.min_clients
    never_dropped = [c.client_id for c in clients if c.client_id not in drop_at]
    masked = [c.client_id for c in clients if drop_at.get(c.client_id, 99) > 3]
    signed = [c.client_id for c in clients if drop_at.get(c.client_id, 99) > 4]
    if len(never_dropped) < t or len(masked) < m or (s.malicious and len(signed) < m):
        # honest clients never have to refuse: the server aborts first (a client's
        # ProtocolError would fail this test)
        with pytest.raises(SecAggAbortError) as info:
            server.aggregate(clients, global_model(1, DIM), DIM, ex)
        assert info.value.threshold in (t, max(t, m))
        if len(masked) < max(t, m):  # aborted before unmasking: no client revealed any share
            assert not any(wire.Kind.SECAGG_UNMASK_REQUEST in c.answered for c in clients)
        return
    agg = server.aggregate(clients, global_model(1, DIM), DIM, ex)
    idx = [int(c[1:]) for c in masked]
    expected_ring = ints[idx].sum(axis=0) % codec.modulus
    got = server_last_ring(server, agg)
    assert agg.count == len(masked) and agg.aux["weight"] == len(masked)
    assert np.array_equal(got, expected_ring)
    assert np.array_equal(agg.total.double().numpy(), (ints[idx].sum(axis=0) * codec.resolution).astype(np.float32))
    assert agg.stats["dropouts"] == len(ex.dropped) == len(drop_at)
    assert agg.stats["saturated"] == 0


def server_last_ring(server, agg):
    return server.last_result.ring_sum[:DIM].astype(np.int64)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=rounds(sparse=True))
def test_secaggplus_graph_exact_sum_or_abort(case):
    s, n, drop_at, seed = case
    ints, inputs, codec = grid_inputs(s, n, seed)
    clients, server = federation(s, inputs)
    ex = RecordingExchange(1, drop_at)
    try:
        agg = server.aggregate(clients, global_model(1, DIM), DIM, ex)
    except SecAggAbortError as exc:
        assert drop_at, "a round without dropouts never aborts"
        assert exc.survivors < exc.threshold
        return
    survivors = server.last_result.survivors
    assert all(drop_at.get(c, 99) > 3 for c in survivors)
    idx = [int(c[1:]) for c in survivors]
    assert np.array_equal(server.last_result.ring_sum[:DIM].astype(np.int64), ints[idx].sum(axis=0) % codec.modulus)
    assert agg.aux["weight"] == len(survivors) >= s.min_clients


def test_no_dropouts_weighted_sum_and_saturation_count():
    s = SecAggSettings(clip=0.5, max_weight=100.0, threshold=0.6)
    rng = np.random.default_rng(1)
    xs = [rng.uniform(-0.4, 0.4, DIM) for _ in range(5)]
    xs[2][0] = 3.0  # clipped to 0.5 and counted
    weights = [10.0, 20.0, 30.0, 40.0, 50.0]
    clients, server = federation(s, xs, weights)
    agg = server.aggregate(clients, global_model(1, DIM), DIM, RecordingExchange(1))
    clipped = [np.clip(x, -0.5, 0.5) for x in xs]
    expected = sum(w * x for w, x in zip(weights, clipped))
    assert agg.aux["weight"] == 150.0 and agg.stats["saturated"] == 1 and agg.count == 5
    codec = s.codec(5)
    assert np.abs(agg.total.double().numpy() - expected).max() <= 5 * codec.resolution + 1e-5


def test_too_few_clients_abort_before_anything_is_sent():
    s = SecAggSettings()
    clients, server = federation(s, [np.zeros(DIM)])
    ex = RecordingExchange(1)
    with pytest.raises(SecAggAbortError):
        server.aggregate(clients, global_model(1, DIM), DIM, ex)
    assert ex.bytes_down == 0


def test_honest_client_refuses_to_reveal_both_shares_of_one_client():
    s = SecAggSettings(threshold=0.6)
    clients, server = federation(s, [np.zeros(DIM) for _ in range(5)])
    from securefl.crypto.secagg.server import SecAggServer

    core = SecAggServer(1, [c.client_id for c in clients], settings=s)
    by = {c.client_id: c for c in clients}
    core.collect_keys({u: by[u].handle(core.advertise_request(u)) for u in core.roster})
    core.collect_shares({u: by[u].handle(core.share_request(u)) for u in core.roster})
    core.collect_masked({u: by[u].fit(core.masking_message(u, global_model(1, DIM))) for u in core.roster}, DIM)
    victim = "c01"
    evil = wire.encode(
        wire.Kind.SECAGG_UNMASK_REQUEST,
        {"round": 1, "survivors": ["c00", "c01", "c02", "c03"], "dropped": [victim]},
    )
    with pytest.raises(ProtocolError, match="both"):
        by["c00"].handle(evil)
    # the honest request is answered once; a second one (e.g. now claiming c01 dropped) is refused
    by["c00"].handle(core.unmask_request("c00"))
    second = wire.encode(
        wire.Kind.SECAGG_UNMASK_REQUEST, {"round": 1, "survivors": ["c00", "c02", "c03", "c04"], "dropped": [victim]}
    )
    with pytest.raises(ProtocolError, match="already answered"):
        by["c00"].handle(second)


def test_stages_must_come_in_order_and_params_must_match():
    s = SecAggSettings(threshold=0.6)
    clients, server = federation(s, [np.zeros(DIM) for _ in range(4)])
    from securefl.crypto.secagg.server import SecAggServer

    core = SecAggServer(1, [c.client_id for c in clients], settings=s)
    with pytest.raises(ProtocolError, match="out of order"):
        clients[0].handle(core.share_request("c00"))
    honest = wire.decode(core.advertise_request("c00"))
    for change, match in [
        ({"threshold": 2}, "threshold 2 is below this client's threshold 3"),
        ({"threshold": 4}, r"differ from this client's \(3, "),
        ({"bits": 64}, "secagg_bits 32"),
        ({"frac_bits": honest.header["frac_bits"] - 1}, "frac_bits"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            clients[0].handle(wire.encode(honest.kind, {**honest.header, **change}))
    clients[0].handle(wire.encode(honest.kind, honest.header))  # refusals consumed no round


def test_malicious_option_rejects_forged_keys_and_unsigned_survivor_lists():
    s = SecAggSettings(threshold=0.7, malicious=True)
    clients, server = federation(s, [np.zeros(DIM) for _ in range(4)])
    from securefl.crypto.secagg.server import SecAggServer

    core = SecAggServer(1, [c.client_id for c in clients], settings=s, directory=server.directory)
    by = {c.client_id: c for c in clients}
    core.collect_keys({u: by[u].handle(core.advertise_request(u)) for u in core.roster})
    # the server swaps in its own key for c01: c00 refuses (no valid signature)
    req = wire.decode(core.share_request("c00"))
    keys = dict(req.header["keys"])
    keys["c01"] = {**keys["c01"], "s_pk": b64(P.x25519_keypair()[1])}
    with pytest.raises(ProtocolError, match="signature"):
        by["c00"].handle(wire.encode(req.kind, {**req.header, "keys": keys}))
    # a fresh round runs through; then an unmask request without signatures is refused
    clients2, server2 = federation(s, [np.zeros(DIM) for _ in range(4)])
    core2 = SecAggServer(1, [c.client_id for c in clients2], settings=s, directory=server2.directory)
    by2 = {c.client_id: c for c in clients2}
    core2.collect_keys({u: by2[u].handle(core2.advertise_request(u)) for u in core2.roster})
    core2.collect_shares({u: by2[u].handle(core2.share_request(u)) for u in core2.roster})
    core2.collect_masked({u: by2[u].fit(core2.masking_message(u, global_model(1, DIM))) for u in core2.roster}, DIM)
    core2.collect_signatures({u: by2[u].handle(core2.consistency_request(u)) for u in core2.roster})
    req = wire.decode(core2.unmask_request("c00"))
    with pytest.raises(ProtocolError, match="signatures"):
        by2["c00"].handle(wire.encode(req.kind, {**req.header, "signatures": {}}))
    assert by2["c00"].handle(core2.unmask_request("c00"))


def test_malicious_option_detects_equivocation_about_survivors():
    """The server claims c01 dropped (to get its key share) although c01's masked
    input is in the survivor set everyone signed: the client refuses."""
    s = SecAggSettings(threshold=0.7, malicious=True)
    clients, server = federation(s, [np.zeros(DIM) for _ in range(5)])
    from securefl.crypto.secagg.server import SecAggServer

    core = SecAggServer(1, [c.client_id for c in clients], settings=s, directory=server.directory)
    by = {c.client_id: c for c in clients}
    core.collect_keys({u: by[u].handle(core.advertise_request(u)) for u in core.roster})
    core.collect_shares({u: by[u].handle(core.share_request(u)) for u in core.roster})
    core.collect_masked({u: by[u].fit(core.masking_message(u, global_model(1, DIM))) for u in core.roster}, DIM)
    core.collect_signatures({u: by[u].handle(core.consistency_request(u)) for u in core.roster})
    honest = wire.decode(core.unmask_request("c00"))
    lie = {**honest.header, "survivors": [v for v in honest.header["survivors"] if v != "c01"], "dropped": ["c01"]}
    with pytest.raises(ProtocolError, match="signed"):
        by["c00"].handle(wire.encode(honest.kind, lie))
    reply = wire.decode(by["c00"].handle(core.unmask_request("c00")))
    assert set(reply.header["b"]) == set(core.roster) and reply.header["sk"] == {}


def test_secaggplus_dropout_at_consistency_check_aborts_cleanly():
    """A neighbour that sent its masked input but not its consistency signature leaves
    its neighbours short of verifiable signatures: the server aborts before asking
    anyone to unmask, instead of letting an honest client refuse mid-protocol."""
    s = SecAggSettings(clip=1.0, max_weight=1.0, bits=32, threshold=0.7, neighbors=2, malicious=True)
    _, inputs, _ = grid_inputs(s, 4, 0)
    clients, server = federation(s, inputs)
    with pytest.raises(SecAggAbortError) as info:
        server.aggregate(clients, global_model(1, DIM), DIM, RecordingExchange(1, {"c00": 4}))
    assert info.value.threshold == 3 and info.value.survivors < 3
    assert not any(wire.Kind.SECAGG_UNMASK_REQUEST in c.answered for c in clients)


@pytest.mark.parametrize(
    "n, neighbors, malicious, m, drop_at, stage_kind",
    [
        (5, 0, False, 5, {"c04": 1}, wire.Kind.SECAGG_SHARE_REQUEST),  # cohort shrinks below m at advertise
        (5, 0, False, 4, {"c03": 3, "c04": 3}, wire.Kind.SECAGG_UNMASK_REQUEST),  # masked inputs: 3 >= t, < m
        (5, 0, True, 5, {"c04": 4}, wire.Kind.SECAGG_UNMASK_REQUEST),  # one fewer signer than m
        (8, 2, True, 7, {"c05": 4, "c06": 4}, wire.Kind.SECAGG_UNMASK_REQUEST),  # SecAgg+: signers < m
    ],
    ids=["advertise", "masked-input", "consistency", "secaggplus-consistency"],
)
def test_server_aborts_below_min_clients_before_an_honest_client_must_refuse(n, neighbors, malicious, m, drop_at, stage_kind):
    """The server applies the same floor (threshold and min_clients) as its clients,
    so an honest round below min_clients ends in SecAggAbortError, never in a
    client's ProtocolError, and no client is asked for what it would refuse."""
    s = SecAggSettings(clip=1.0, max_weight=1.0, threshold=0.7 if malicious else 0.6, neighbors=neighbors,
                       malicious=malicious, min_clients=m)
    assert s.threshold_for(n) < m  # the threshold alone would let the round go on
    clients, server = federation(s, [np.zeros(DIM)] * n)
    with pytest.raises(SecAggAbortError) as info:
        server.aggregate(clients, global_model(1, DIM), DIM, RecordingExchange(1, drop_at))
    assert info.value.threshold == m
    assert not any(stage_kind in c.answered for c in clients)
