"""The server's unmasking: exact sums on larger complete graphs with dropouts (the
batched Shamir check and the batched mask removal), and a refusal, never a wrong
sum, when a survivor returns a corrupted share."""

import numpy as np
import pytest

from securefl.crypto import shamir
from securefl.crypto.encoding import b64
from securefl.crypto.secagg.client import SecAggClient
from securefl.crypto.secagg.common import SecAggSettings, unb64
from securefl.crypto.secagg.server import SecAggServer
from securefl.exceptions import ProtocolError
from securefl.privacy.noise import SecureRNG
from securefl.transport import wire

DIM = 50


def run_until_unmask(n: int, drop: set[str], k: int = 0):
    """A real round of n clients up to the unmask replies (``drop`` vanish after sharing)."""
    settings = SecAggSettings(clip=1.0, max_weight=1.0, threshold=0.6, neighbors=k, min_clients=2)
    ids = [f"c{i:02d}" for i in range(n)]
    server = SecAggServer(1, ids, settings=settings)
    clients = {u: SecAggClient(u, settings=settings, rng=SecureRNG()) for u in ids}
    u1 = server.collect_keys({u: clients[u].handle(server.advertise_request(u)) for u in ids})
    u2 = server.collect_shares({u: clients[u].handle(server.share_request(u)) for u in u1})
    codec = settings.codec(n)
    rng = np.random.default_rng(n)  # test data, not secret
    ints = rng.integers(-1000, 1000, size=(n, DIM))
    gm = wire.encode(wire.Kind.GLOBAL_MODEL, {"round": 1, "dim": DIM})
    masked = {}
    for i, u in enumerate(u2):
        if u in drop:
            continue
        clients[u].receive(wire.decode(server.masking_message(u, gm)).header)
        masked[u] = clients[u].masked_input(ints[i] * codec.resolution, 1.0, {"weight": 1.0}, {"round": 1})
    u3 = server.collect_masked(masked, DIM)
    replies = {u: clients[u].handle(server.unmask_request(u)) for u in u3}
    expected = ints[[ids.index(u) for u in u3]].sum(axis=0) % codec.modulus
    return server, replies, expected


@pytest.mark.parametrize("n, drop, k", [(40, {"c03", "c17", "c30"}, 0), (30, set(), 0), (40, {"c05", "c11"}, 8)])
def test_unmasked_sum_is_exact(n, drop, k):
    server, replies, expected = run_until_unmask(n, drop, k)
    result = server.collect_unmask(replies)
    assert np.array_equal(result.ring_sum[:DIM], expected)
    assert result.aux["weight"] == n - len(drop)


def tamper(raw: bytes, part: str, edit) -> bytes:
    msg = wire.decode(raw)
    header = dict(msg.header)
    victim = sorted(header[part])[0]
    header[part] = {**header[part], victim: edit(header[part][victim])}
    return wire.encode(msg.kind, header, msg.payload)


def shifted(text: str) -> str:
    share = shamir.Share.from_bytes(unb64(text, "share"))
    return b64(shamir.Share(share.x, (share.y + 1) % shamir.PRIME).to_bytes())


@pytest.mark.parametrize("part", ["b", "sk"])
def test_a_corrupted_share_is_refused_with_the_uniform_error(part):
    server, replies, expected = run_until_unmask(12, {"c04"})
    messages = set()
    for holder in ("c00", "c07", "c11"):
        bad = dict(replies)
        bad[holder] = tamper(replies[holder], part, shifted)
        server.unmaskers = []
        with pytest.raises(ProtocolError, match="inconsistent") as info:
            server.collect_unmask(bad)
        messages.add(str(info.value))
    assert len(messages) == 1
    server.unmaskers = []
    assert np.array_equal(server.collect_unmask(replies).ring_sum[:DIM], expected)  # untampered: exact


def test_malformed_shares_are_refused_before_any_reconstruction():
    server, replies, _ = run_until_unmask(8, set())
    other_point = lambda t: b64(shamir.Share(99, 5).to_bytes())  # noqa: E731
    for edit, match in ((other_point, "another point"), (lambda t: t[:-4], "base64|malformed"), (lambda t: "!!", "base64")):
        bad = dict(replies)
        bad["c02"] = tamper(replies["c02"], "b", edit)
        with pytest.raises(ProtocolError, match=match):
            server.collect_unmask(bad)
    big = b64((1).to_bytes(4, "big") + shamir.PRIME.to_bytes(shamir.ELEMENT_BYTES, "big"))
    bad = dict(replies)
    bad["c00"] = tamper(replies["c00"], "b", lambda t: big)
    with pytest.raises(ProtocolError, match="field"):
        server.collect_unmask(bad)


def test_share_points_are_roster_positions():
    server = SecAggServer(1, ["b", "a", "c"], settings=SecAggSettings(min_clients=2, threshold=0.6))
    assert [server._x(v) for v in server.roster] == [1, 2, 3] and server.roster == ["a", "b", "c"]
