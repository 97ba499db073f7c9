"""Fuzz targets: CKKS packages, ciphertexts and sums, key packages, and the key
holder's and the server's handlers, fed mutations of valid messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from securefl.crypto import ckks_keys as keys
from securefl.crypto.ckks_auth import Layout
from securefl.crypto.hazmat import ckks_seal as hzs
from securefl.protections import Exchange
from securefl.protections.ckks_server import _Received
from securefl.transport import wire
from tests.fuzz.harness import ROUND_ABORTS, contained, fuzz_settings, mutate_bytes, mutate_message
from tests.protections.test_ckks import federation, settings_for

DIM = 4


class Recorder(Exchange):
    def __init__(self, round_):
        super().__init__(round_)
        self.seen: list[tuple[bytes, bytes | None]] = []

    def send(self, client, message, *, method="handle"):
        reply = super().send(client, message, method=method)
        self.seen.append((message, reply))
        return reply


@pytest.fixture(scope="module", params=["symmetric", "seeded"])
def fed(request):
    """A set-up federation of three key holders and one honest round's traffic."""
    settings = settings_for(3, encryption=request.param)
    updates = [np.array([0.1, -0.2, 0.3, 0.05]) * (i + 1) for i in range(3)]
    server, half, clients = federation(updates, settings)
    ex = Recorder(0)
    half.setup(clients, ex)
    rnd = Recorder(1)
    half.aggregate(clients, wire.encode(wire.Kind.GLOBAL_MODEL, {"round": 1, "dim": DIM}, b"\0" * 16), DIM, rnd)
    by_kind: dict[wire.Kind, list[bytes]] = {}
    for msg, reply in ex.seen + rnd.seen:
        for raw in (msg, reply):
            if raw is not None:
                by_kind.setdefault(wire.decode(raw).kind, []).append(raw)
    return Fed(half=half, clients=clients, by_kind=by_kind, settings=settings)


class Fed(dict):
    def __init__(self, **kw):
        super().__init__(**kw)

    def __repr__(self) -> str:  # keep failure reports short
        return "<federation>"


class Scripted:
    """A client that answers anything with a given reply."""

    def __init__(self, cid, reply):
        self.client_id, self.reply = cid, reply

    def fit(self, message):
        return self.reply

    handle = fit


UPDATE_FIELDS = ["protect", "settings", "fingerprint", "dim", "aux_keys", "round", "client"]
DECRYPT_FIELDS = ["settings", "round", "dim", "aux_keys"]
AGG_FIELDS = ["grid", "flood_std", "dtype", "length", "round", "client"]


@fuzz_settings(250)
@given(st.data())
def test_server_receives_mutated_ciphertext(fed, data):
    """CKKSServer._add: the receipt checks of one client's encrypted update, then
    the sum with an honest one."""
    half, updates = fed["half"], fed["by_kind"][wire.Kind.CLIENT_UPDATE]
    raw = mutate_message(data, data.draw(st.sampled_from(updates)), UPDATE_FIELDS)
    got = _Received()

    def case():
        half._add(got, "c0", updates[0], DIM)
        half._add(got, "c1", raw, DIM)

    contained("ckks server: client update", case, ROUND_ABORTS)


@fuzz_settings(250)
@given(st.data())
def test_server_receives_mutated_aggregate(fed, data):
    """CKKSServer._decrypt: the key holder's released sum."""
    half = fed["half"]
    agg = fed["by_kind"][wire.Kind.CKKS_AGGREGATE][0]
    raw = mutate_message(data, agg, AGG_FIELDS)
    layout = Layout(DIM, (), len(half.key_holders))
    contained("ckks server: released aggregate", lambda: half._decrypt(b"", Scripted("c0", raw), Exchange(1), layout, 3), ROUND_ABORTS)


@fuzz_settings(100)
@given(st.data())
def test_server_receives_mutated_setup_replies(fed, data):
    """CKKSServer.setup: adverts, the key generator's reply and the acks."""
    half, by_kind = fed["half"], fed["by_kind"]
    kind = data.draw(st.sampled_from([wire.Kind.CKKS_ADVERT, wire.Kind.CKKS_KEYGEN_REPLY, wire.Kind.CKKS_KEY_ACK]))
    raw = mutate_message(data, data.draw(st.sampled_from(by_kind[kind])), ["client", "sig", "parts", "fingerprint", "holders"])

    class Party:
        def __init__(self, cid, honest):
            self.client_id, self.honest = cid, honest

        def handle(self, message):
            reply = self.honest.handle(message)
            return raw if wire.decode(reply).kind == kind else reply

    from securefl.protections.ckks_server import CKKSServer

    fresh = CKKSServer(settings=half.settings)
    clients = [Party(c.client_id, c.protection) for c in fed["clients"]]
    # the honest halves must not be re-keyed by a fresh generator: give each a throwaway twin
    from securefl.protections.ckks_client import CKKSClient

    for p in clients:
        p.honest = CKKSClient(client_id=p.client_id, settings=half.settings)
    contained("ckks server: set-up replies", lambda: fresh.setup(clients, Exchange(0)), ROUND_ABORTS)


@fuzz_settings(250)
@given(st.data())
def test_key_holder_handles_mutated_messages(fed, data):
    """CKKSClient.handle: HELLO, KEYGEN, KEY_DELIVERY and DECRYPT, mutated."""
    by_kind = fed["by_kind"]
    kind = data.draw(st.sampled_from([wire.Kind.CKKS_HELLO, wire.Kind.CKKS_KEYGEN, wire.Kind.CKKS_KEY_DELIVERY, wire.Kind.CKKS_DECRYPT]))
    fields = DECRYPT_FIELDS + ["peers", "generator", "generator_key", "generator_sig", "fingerprint"]
    raw = mutate_message(data, data.draw(st.sampled_from(by_kind[kind])), fields)
    holder = data.draw(st.sampled_from(fed["clients"])).protection
    if kind == wire.Kind.CKKS_KEYGEN:  # never let a fuzz case re-key the shared federation
        from securefl.protections.ckks_client import CKKSClient

        holder = CKKSClient(client_id=holder.client_id, settings=fed["settings"])
    contained("ckks key holder: handle", lambda: holder.handle(raw))


@fuzz_settings(200)
@given(st.data())
def test_key_holder_decrypts_mutated_sums(fed, data):
    """The designated decryptor with a fresh round guard each case, so the checks
    after the replay guard (ciphertext, tags, flooding) are reached."""
    from securefl.crypto.replay import RoundGuard

    half = fed["half"]
    req = fed["by_kind"][wire.Kind.CKKS_DECRYPT][0]
    raw = mutate_message(data, req, DECRYPT_FIELDS)
    msg = wire.decode(req)
    holder = next(c.protection for c in fed["clients"] if c.client_id == keys.decryptor_for(
        tuple(half.key_holders), half.fingerprint, msg.header["round"]))
    holder.guard = RoundGuard()
    contained("ckks key holder: decrypt", lambda: holder.handle(raw))


@fuzz_settings(250)
@given(st.data())
def test_key_package_unpack(fed, data):
    c = fed["clients"][0].protection
    ks = c._keys
    package = keys.pack(ks.secret_context, ks.mac_key, ks.generator, ks.holders)
    blob = mutate_bytes(data, package) if data.draw(st.booleans()) else _mutate_package_head(data, package)
    contained("ckks key package: unpack", lambda: keys.unpack(blob))


def _mutate_package_head(data, package):
    import json
    import struct

    from tests.fuzz.harness import mutate_header

    n = struct.unpack("<I", package[:4])[0]
    head = json.loads(package[4 : 4 + n])
    head = mutate_header(data, head, ["mac_key", "generator", "holders", "fingerprint"])
    hb = json.dumps(head).encode()
    return struct.pack("<I", len(hb)) + hb + package[4 + n :]


@fuzz_settings(300)
@given(st.data())
def test_ciphertext_load(fed, data):
    half = fed["half"]
    payload = wire.decode(fed["by_kind"][wire.Kind.CLIENT_UPDATE][0]).payload
    blob = mutate_bytes(data, payload)
    length = data.draw(st.sampled_from([Layout(DIM, (), 3).length, 1, 10**6]))
    contained("ckks ciphertext: load", lambda: hzs.load_ciphertext(half.context, half.params, blob, length))
