"""Attacks on asynchronous aggregation (securefl.fedbuff) by a server that lies about
staleness: it cannot make a client answer staler work than the client's own bound,
and it cannot choose the weight that scales the client's update (a weight above 1
would grow the update beyond the clip and the DP sensitivity)."""

from __future__ import annotations

import pytest
import torch

from securefl.build import build
from securefl.config import RunConfig
from securefl.exceptions import ProtocolError
from securefl.fedbuff import STALENESS_WEIGHTS
from securefl.transport import wire

SMALL = dict(model="logreg", clients=8, local_epochs=1.0)


def _client_and_message(staleness, *, mode="async", max_staleness=2):
    fed = build(RunConfig.from_flat({**SMALL, "mode": mode, "buffer": 3, "max_staleness": max_staleness}))
    client, server = fed.clients[0], fed.server
    extra = {} if staleness is None else {"version": 0, "staleness": staleness}
    return client, server.global_message(1, None, extra)


def test_client_refuses_staleness_above_its_own_bound():
    # a server that lies about the bound (or replays an old version) gets nothing
    client, msg = _client_and_message(3, max_staleness=2)
    with pytest.raises(ProtocolError, match="staleness=3"):
        client.fit(msg)
    client, msg = _client_and_message(-1)
    with pytest.raises(ProtocolError, match="staleness=-1"):
        client.fit(msg)
    sync_client, msg = _client_and_message(0, mode="sync")
    with pytest.raises(ProtocolError, match="synchronous"):
        sync_client.fit(msg)
    async_client, msg = _client_and_message(None)
    with pytest.raises(ProtocolError, match="staleness missing"):
        async_client.fit(msg)


def test_client_scales_its_update_by_its_own_weight():
    fresh, msg0 = _client_and_message(0)
    stale, msg2 = _client_and_message(2)
    u0 = wire.bytes_to_vector(wire.decode(fresh.fit(msg0)).payload, fresh.dim)
    u2 = wire.bytes_to_vector(wire.decode(stale.fit(msg2)).payload, stale.dim)
    assert u0.abs().sum() > 0
    torch.testing.assert_close(u2, u0 * STALENESS_WEIGHTS["sqrt"](2), rtol=1e-5, atol=1e-7)



def test_server_cannot_choose_the_weight():
    # a header asking for weight 5 (amplifying the update) is ignored: the client's
    # own rule w(s) <= 1 decides
    honest, msg = _client_and_message(1)
    liar, _ = _client_and_message(1)
    decoded = wire.decode(msg)
    forged = wire.encode(wire.Kind.GLOBAL_MODEL, {**decoded.header, "staleness_weight": 5.0, "weight": 5.0}, decoded.payload)
    u = wire.bytes_to_vector(wire.decode(honest.fit(msg)).payload, honest.dim)
    v = wire.bytes_to_vector(wire.decode(liar.fit(forged)).payload, liar.dim)
    torch.testing.assert_close(u, v)
