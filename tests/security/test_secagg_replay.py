"""F6 (secure aggregation): a server must not rerun a round a client has answered.

Rerunning round r with and without a victim and subtracting the two sums would
reveal the victim's input; so would re-advertising an older round. Each client
keeps a RoundGuard and advertises a round number at most once, across restarts
when the guard lives in a file. Real server and client code throughout."""

from __future__ import annotations

import numpy as np
import pytest

from securefl.crypto.replay import RoundGuard
from securefl.crypto.secagg.common import SecAggSettings
from securefl.crypto.secagg.server import SecAggServer
from securefl.exceptions import ReplayError
from securefl.transport import wire
from tests.helpers.secagg import RecordingExchange, federation, global_model

DIM = 5
SETTINGS = [
    SecAggSettings(clip=1.0, max_weight=1.0, threshold=0.6),
    SecAggSettings(clip=1.0, max_weight=1.0, threshold=0.7, malicious=True),
]


def _inputs(s: SecAggSettings, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    ints = np.random.default_rng(3).integers(-40, 40, size=(n, DIM))  # test data, not secret
    return ints, [row * s.codec(n).resolution for row in ints]


def _keys_sent(client, round_: int) -> int:
    return sum(1 for m in client.sent if wire.decode(m).kind == wire.Kind.SECAGG_KEYS and wire.decode(m).header["round"] == round_)


@pytest.mark.parametrize("s", SETTINGS, ids=["honest-but-curious", "malicious"])
def test_rerun_of_an_answered_round_is_refused(s):
    ints, inputs = _inputs(s, 5)
    clients, server = federation(s, inputs)
    server.aggregate(clients, global_model(5, DIM), DIM, RecordingExchange(5))
    assert np.array_equal(server.last_result.ring_sum[:DIM], s.codec(5).wrap(ints.sum(axis=0)))
    victim, others = clients[0], clients[1:]
    # differencing: rerun round 5 without the victim, then subtract the two sums
    with pytest.raises(ReplayError, match="round 5 is not after round 5"):
        server.aggregate(others, global_model(5, DIM), DIM, RecordingExchange(5))
    # or ask everyone again, or go back to round 4
    for r in (5, 4):
        with pytest.raises(ReplayError):
            server.aggregate(clients, global_model(r, DIM), DIM, RecordingExchange(r))
        with pytest.raises(ReplayError):
            victim.handle(SecAggServer(r, [c.client_id for c in clients], settings=s, directory=server.directory).advertise_request("c00"))
    assert all(_keys_sent(c, 5) == 1 and _keys_sent(c, 4) == 0 for c in clients)
    # the next round is fine
    server.aggregate(clients, global_model(6, DIM), DIM, RecordingExchange(6))
    assert server.last_result.survivors == [c.client_id for c in clients]


def test_same_round_cannot_be_advertised_twice():
    """Two advertise requests in one round (two cohorts, two key pairs) are refused."""
    s = SETTINGS[0]
    clients, server = federation(s, [np.zeros(DIM)] * 4)
    ids = [c.client_id for c in clients]
    clients[0].handle(SecAggServer(1, ids, settings=s).advertise_request("c00"))
    with pytest.raises(ReplayError):
        clients[0].handle(SecAggServer(1, ids[:3], settings=s).advertise_request("c00"))


def test_guard_on_file_refuses_the_round_after_a_restart(tmp_path):
    s = SETTINGS[1]
    paths = {f"c{i:02d}": tmp_path / f"c{i:02d}-rounds.json" for i in range(4)}
    ints, inputs = _inputs(s, 4)
    clients, server = federation(s, inputs, guards={c: RoundGuard(p) for c, p in paths.items()})
    server.aggregate(clients, global_model(5, DIM), DIM, RecordingExchange(5))
    # restart: new client objects (new round keys, nothing in memory), same state files
    clients2, server2 = federation(s, inputs, guards={c: RoundGuard(p) for c, p in paths.items()})
    victim = clients2[0]
    for r in (5, 4, 1):
        with pytest.raises(ReplayError):
            victim.handle(SecAggServer(r, [c.client_id for c in clients2], settings=s, directory=server2.directory).advertise_request("c00"))
    with pytest.raises(ReplayError):
        server2.aggregate(clients2, global_model(5, DIM), DIM, RecordingExchange(5))
    assert victim.sent == []
    server2.aggregate(clients2, global_model(6, DIM), DIM, RecordingExchange(6))
    assert np.array_equal(server2.last_result.ring_sum[:DIM], s.codec(4).wrap(ints.sum(axis=0)))


def test_without_a_file_a_restart_forgets(tmp_path):
    """Control: the file is what carries the memory (an in-memory guard does not
    survive a new client object), so the restart test above can fail."""
    s = SETTINGS[0]
    clients, server = federation(s, [np.zeros(DIM)] * 4)
    server.aggregate(clients, global_model(5, DIM), DIM, RecordingExchange(5))
    clients2, server2 = federation(s, [np.zeros(DIM)] * 4)
    assert server2.aggregate(clients2, global_model(5, DIM), DIM, RecordingExchange(5)).count == 4
