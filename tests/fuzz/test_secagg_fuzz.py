"""Fuzz targets: secure-aggregation stage messages, both ways. Each stage runs from
a snapshot of an honest round (clients and server deep-copied at that stage), with
one message replaced by a structure-aware mutation of the honest one."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securefl.crypto.secagg.common import SecAggSettings
from securefl.crypto.secagg.server import SecAggServer
from securefl.transport import wire
from tests.fuzz.harness import ROUND_ABORTS, contained, fuzz_settings, mutate_message
from tests.helpers.secagg import federation, global_model

DIM, ROUND = 3, 1
STAGES = ["keys", "shares", "masked", "signatures", "unmask"]
CLIENT_FIELDS = ["round", "roster", "neighbors", "threshold", "bits", "frac_bits", "keys", "survivors", "dropped",
                 "signatures", "secagg", "maskers", "ciphertexts", "dim", "aux", "client_clip"]
SERVER_FIELDS = ["round", "client", "c_pk", "s_pk", "sig", "shares", "dim", "bits", "aux", "b", "sk"]


def _copy(obj):
    """Deep copy sharing the noise generators (their cipher state does not copy)."""
    from securefl.crypto.identity import Identity, Roster
    from securefl.privacy.noise import SecureRNG

    shared = (SecureRNG, Identity, Roster)
    memo = {}

    def walk(o, depth=0):
        if depth > 3:
            return
        for v in getattr(o, "__dict__", {}).values():
            if isinstance(v, shared):
                memo[id(v)] = v
            elif isinstance(v, dict):
                for w in v.values():
                    walk(w, depth + 1)
            elif hasattr(v, "__dict__"):
                walk(v, depth + 1)

    walk(obj) if not isinstance(obj, dict) else [walk(v) for v in obj.values()]
    return copy.deepcopy(obj, memo)


class Snapshots(dict):
    def __repr__(self) -> str:
        return "<secagg snapshots>"


@pytest.fixture(scope="module")
def snaps():
    """For each stage: (server before collecting it, clients before answering it,
    the request each client got, the honest replies)."""
    settings = SecAggSettings(clip=1.0, max_weight=1.0, threshold=0.75, malicious=True, min_clients=3)
    clients, half = federation(settings, [np.full(DIM, 0.1 * (i + 1)) for i in range(4)])
    by_id = {c.client_id: c for c in clients}
    server = SecAggServer(ROUND, sorted(by_id), settings=settings, directory=half.directory)
    out = Snapshots()
    gm = global_model(ROUND, DIM)
    plan = [
        ("keys", server.advertise_request, server.collect_keys, "handle"),
        ("shares", server.share_request, server.collect_shares, "handle"),
        ("masked", lambda u: server.masking_message(u, gm), lambda r: server.collect_masked(r, DIM), "fit"),
        ("signatures", server.consistency_request, server.collect_signatures, "handle"),
        ("unmask", server.unmask_request, server.collect_unmask, "handle"),
    ]
    alive = list(server.roster)
    for stage, make, collect, method in plan:
        requests = {u: make(u) for u in alive}
        before = (copy.deepcopy(server), _copy(by_id))
        replies = {u: getattr(by_id[u], method)(requests[u]) for u in alive}
        out[stage] = (*before, requests, replies, method)
        result = collect(replies)
        alive = list(alive if stage == "unmask" else result)
    return out


def _collector(server, stage):
    return {
        "keys": server.collect_keys,
        "shares": server.collect_shares,
        "masked": lambda r: server.collect_masked(r, DIM),
        "signatures": server.collect_signatures,
        "unmask": server.collect_unmask,
    }[stage]


@fuzz_settings(400)
@given(st.data())
def test_server_collects_mutated_replies(snaps, data):
    stage = data.draw(st.sampled_from(STAGES))
    server, _, _, replies, _ = snaps[stage]
    server = copy.deepcopy(server)
    victim = data.draw(st.sampled_from(sorted(replies)))
    replies = dict(replies)
    replies[victim] = mutate_message(data, replies[victim], SERVER_FIELDS)
    contained("secagg server: collect stage replies", lambda: _collector(server, stage)(replies), ROUND_ABORTS)


@fuzz_settings(400)
@given(st.data())
def test_client_handles_mutated_requests(snaps, data):
    stage = data.draw(st.sampled_from(STAGES))
    _, clients, requests, _, method = snaps[stage]
    cid = data.draw(st.sampled_from(sorted(requests)))
    client = _copy(clients[cid])
    raw = mutate_message(data, requests[cid], CLIENT_FIELDS)
    if method == "fit":  # the masking parameters ride on the GLOBAL_MODEL header
        def case():
            msg = wire.decode(raw, expect=wire.Kind.GLOBAL_MODEL)
            client.protection.begin(msg.header)
            return client.protection.seal(
                __import__("torch").zeros(DIM, dtype=__import__("torch").float64), {"weight": 1.0}, msg.header
            )
    else:
        def case():
            return client.protection.handle(raw)
    contained("secagg client: handle stage requests", case)
