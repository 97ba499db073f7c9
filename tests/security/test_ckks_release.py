"""A malicious server against CKKS aggregation: what a key holder will decrypt.

Each test plays the server: it holds only what the real server half holds (the
public context, the clients' ciphertexts as they arrived, the key set's public
fingerprint and holder list) and sends the designated key holder a CKKS_DECRYPT
request of its choosing. The key holder must release only one decryption per
round, only of a sum of at least ``min_clients`` distinct, genuine contributions
of that round.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from securefl.config import RunConfig, ServerConfig
from securefl.crypto import ckks_keys
from securefl.crypto.ckks_auth import Layout
from securefl.crypto.hazmat import ckks as hz
from securefl.crypto.hazmat import ckks_seal as hzs
from securefl.crypto.identity import Identity, Roster
from securefl.protections import Exchange
from securefl.protections.ckks import CKKSSettings
from securefl.protections.ckks_client import CKKSClient
from securefl.protections.ckks_server import CKKSServer
from securefl.server import SecureServer
from securefl.transport import wire

DIM = 5


class KeyHolder:
    """A client that 'trains' by returning a fixed update, one sealed ciphertext per round."""

    def __init__(self, cid: str, settings: CKKSSettings, update: np.ndarray, identity=None, roster=None):
        self.client_id = cid
        self.protection = CKKSClient(client_id=cid, settings=settings, identity=identity, roster=roster)
        self.update = update

    def fit(self, message: bytes) -> bytes:
        h = wire.decode(message, expect=wire.Kind.GLOBAL_MODEL).header
        header = {"round": h["round"], "client": self.client_id, "dim": h["dim"]}
        return self.protection.seal(torch.from_numpy(self.update), {"weight": 1.0}, header)

    def handle(self, message: bytes) -> bytes:
        return self.protection.handle(message)


def federation(n=5, *, encryption="symmetric", min_clients=3, roster=True):
    params = hz.derive_params("small-model", max_summands=n, max_error=1e-3, encryption=encryption)
    settings = CKKSSettings(params, 1.0, 1.0, min_clients)
    ids = [Identity.generate(f"c{i}") for i in range(n)]
    pinned = Roster.of(ids) if roster else None
    updates = [np.full(DIM, 0.05 * (i + 1)) for i in range(n)]  # norms <= clip 1
    holders = [
        KeyHolder(f"c{i}", settings, updates[i], ids[i] if roster else None, pinned) for i in range(n)
    ]
    half = CKKSServer(settings=settings, roster=pinned)
    half.setup(holders, Exchange(0))
    server = SecureServer(torch.nn.Linear(DIM, 1, bias=False), config=ServerConfig(rounds=5), num_clients=n, protection=half)
    server._set_up = True
    return server, half, holders


def layout(half):
    return Layout(DIM, (), len(half.key_holders))


def ciphertexts(server, half, holders, round_):
    """Every holder's genuine ciphertext of ``round_``, as the server received it."""
    msg = server.global_message(round_)
    return {h.client_id: wire.decode(h.fit(msg)).payload for h in holders}


def combine(half, blobs, signs=None):
    acc = None
    for i, blob in enumerate(blobs):
        t = hzs.load_ciphertext(half.context, half.params, blob, layout(half).length)
        if signs is not None and signs[i] < 0:
            t = -t
        acc = t if acc is None else acc + t
    return hzs.serialize(acc)


def ask(half, holders, round_, payload, to=None):
    """Send a CKKS_DECRYPT to ``to`` (default: the round's designated holder)."""
    name = to or ckks_keys.decryptor_for(tuple(half.key_holders), half.fingerprint, round_)
    target = next(h for h in holders if h.client_id == name)
    request = wire.encode(
        wire.Kind.CKKS_DECRYPT,
        {"settings": half.settings.settings_id, "round": round_, "dim": DIM, "aux_keys": []},
        payload,
    )
    return wire.decode(target.handle(request))


def released(reply):
    return reply.kind == wire.Kind.CKKS_AGGREGATE


# ------------------------------------------------------------------ honest path
def test_honest_sum_of_the_cohort_is_released_exactly():
    server, half, holders = federation()
    cts = ciphertexts(server, half, holders, 1)
    reply = ask(half, holders, 1, combine(half, list(cts.values())))
    assert released(reply)
    values = np.frombuffer(reply.payload, dtype=reply.header["dtype"]) * reply.header["grid"]
    expected = sum(h.update for h in holders)
    assert np.abs(values[:DIM] - expected).max() < 1e-3
    assert np.allclose(values[layout(half).participation], 1.0, atol=1e-3)


# ------------------------------------------------------------------ finding 1
def test_single_update_is_never_decrypted():
    """Each client's ciphertext sent alone, to its round's designated holder."""
    server, half, holders = federation()
    cts = ciphertexts(server, half, holders, 1)
    reply = ask(half, holders, 1, cts["c3"])
    assert not released(reply) and "fewer than min_clients=3" in reply.header["reason"]


def test_per_client_decryptions_across_rounds_are_all_refused():
    server, half, holders = federation()
    for round_, victim in enumerate(("c0", "c1", "c2", "c3", "c4"), start=1):
        cts = ciphertexts(server, half, holders, round_)
        assert not released(ask(half, holders, round_, cts[victim]))


def test_two_decryptions_of_one_round_are_refused():
    """Differencing inside a round: the full sum, then the sum without the victim.
    Neither the designated holder (again) nor any other holder answers the second."""
    server, half, holders = federation()
    cts = ciphertexts(server, half, holders, 1)
    assert released(ask(half, holders, 1, combine(half, list(cts.values()))))
    without = combine(half, [b for cid, b in cts.items() if cid != "c2"])
    for h in holders:
        reply = ask(half, holders, 1, without, to=h.client_id)
        assert not released(reply)
        assert "designated" in reply.header["reason"] or "not after round 1" in reply.header["reason"]


def test_duplicated_ciphertext_is_refused():
    """Victim + one other client, padded to three 'contributions' by repeating one."""
    server, half, holders = federation()
    cts = ciphertexts(server, half, holders, 1)
    reply = ask(half, holders, 1, combine(half, [cts["c0"], cts["c1"], cts["c1"]]))
    assert not released(reply) and "duplicated" in reply.header["reason"]


def test_replayed_ciphertexts_from_an_earlier_round_are_refused():
    """Round 2's victim ciphertext padded with the other clients' round-1 ciphertexts."""
    server, half, holders = federation()
    old = ciphertexts(server, half, holders, 1)
    new = ciphertexts(server, half, holders, 2)
    reply = ask(half, holders, 2, combine(half, [new["c0"], old["c1"], old["c2"]]))
    assert not released(reply) and "tags" in reply.header["reason"]
    # a whole earlier round's sum, replayed as this round's
    reply = ask(half, holders, 3, combine(half, list(old.values())))
    assert not released(reply) and "tags" in reply.header["reason"]


def test_cancelled_contribution_is_refused():
    """E(c0) + E(c1) + E(c2) + E(c3, round 2) - E(c3, round 1): participation of c3
    cancels to 0 while the data of two of its rounds' difference stays in the sum."""
    server, half, holders = federation()
    old = ciphertexts(server, half, holders, 1)
    new = ciphertexts(server, half, holders, 2)
    blobs = [new["c0"], new["c1"], new["c2"], new["c3"], old["c3"]]
    reply = ask(half, holders, 2, combine(half, blobs, signs=[1, 1, 1, 1, -1]))
    assert not released(reply) and "tags" in reply.header["reason"]


def test_fabricated_contributions_are_refused():
    """Public-key mode lets the server encrypt: it pads the victim's ciphertext with
    two fabricated zero updates that claim to come from absent holders."""
    server, half, holders = federation(encryption="public-key")
    cts = ciphertexts(server, half, holders, 1)
    lay = layout(half)
    fakes = []
    for cid in ("c1", "c2"):
        vec = np.zeros(lay.length)
        vec[lay.participation.start + half.key_holders.index(cid)] = 1.0  # tags left at a guess of 0
        fakes.append(hzs.encrypt(half.context, half.params, vec))
    reply = ask(half, holders, 1, combine(half, [cts["c0"], *fakes]))
    assert not released(reply) and "tags" in reply.header["reason"]


def test_server_cannot_lower_the_minimum():
    """min_clients is each key holder's own setting: the server's settings id does
    not carry it, and a server whose own floor is 1 still gets nothing."""
    server, half, holders = federation(min_clients=3)
    lax = CKKSSettings(half.params, 1.0, 1.0, 2)
    assert lax.settings_id == half.settings.settings_id
    cts = ciphertexts(server, half, holders, 1)
    assert not released(ask(half, holders, 1, combine(half, [cts["c0"], cts["c1"]])))


def test_poisson_rounds_below_min_clients_abort_with_the_model_unchanged(digits):
    """The issue's run, shortened: 5 clients, Poisson sampling at q = 0.2."""
    from securefl.simulation import Simulation

    cfg = RunConfig.from_flat(
        {"dataset": "digits", "clients": 5, "fraction": 0.2, "sampling": "poisson", "rounds": 20,
         "protect": "ckks", "seed": 0, "model": "logreg"}
    )
    sim = Simulation(cfg, data=digits)
    weights = [sim.server.weights.clone()]
    sim.run(on_round=lambda res: weights.append(sim.server.weights.clone()))
    short = 0
    for row, before, after in zip(sim.rounds, weights, weights[1:]):
        if row["aborted"] is not None:  # 1 or 2 ciphertexts: nothing decrypted, nothing applied
            assert "fewer than min_clients=3" in row["aborted"] and torch.equal(before, after)
            short += 1
        elif row["participants"] == 0:  # nobody sampled
            assert torch.equal(before, after)
        else:
            assert row["participants"] >= 3 and not torch.equal(before, after)
    # P(no round with 1 or 2 of 5 clients at q = 0.2 in 20 rounds) ~ 0.39^20 < 1e-8
    assert short > 0


# ------------------------------------------------------------------ finding 5
@pytest.mark.parametrize("encryption", ["symmetric", "seeded"])
def test_fingerprint_binds_the_key_material(encryption):
    fps = {federation(3, encryption=encryption)[1].fingerprint for _ in range(2)}
    assert len(fps) == 2


def _server_key_package(holders, half, victim, fingerprint_holders):
    """The server makes its own key set and seals it to the victim as 'generator'."""
    from securefl.crypto import primitives as P

    sk, pk = P.x25519_keypair()
    ctx = hzs.new_secret_context(half.params)
    secret = hzs.secret_context_bytes(ctx, half.params)
    package = ckks_keys.pack(secret, b"k" * 32, "c0", tuple(fingerprint_holders))
    sealed = ckks_keys.seal_package(sk, victim.protection.public_key, half.settings.settings_id, "c0", victim.client_id, package)
    fp = ckks_keys.fingerprint(secret, b"k" * 32, "c0", tuple(fingerprint_holders))
    header = {"settings": half.settings.settings_id, "generator": "c0", "generator_key": ckks_keys.b64(pk), "fingerprint": fp}
    return wire.encode(wire.Kind.CKKS_KEY_DELIVERY, header, sealed)


@pytest.mark.parametrize("roster", [True, False])
def test_key_substitution_after_set_up_is_refused(roster):
    server, half, holders = federation(roster=roster)
    victim = holders[3]
    pinned = victim.protection.fingerprint
    with pytest.raises(Exception, match="already installed"):
        victim.handle(_server_key_package(holders, half, victim, half.key_holders))
    with pytest.raises(Exception, match="already installed"):
        victim.handle(wire.encode(wire.Kind.CKKS_KEYGEN, {"settings": half.settings.settings_id, "peers": {}}))
    assert victim.protection.fingerprint == pinned


def test_first_set_up_with_a_roster_refuses_a_server_made_generator_and_sybil_peers():
    n = 4
    params = hz.derive_params("small-model", max_summands=n, max_error=1e-3)
    settings = CKKSSettings(params, 1.0, 1.0, 3)
    ids = [Identity.generate(f"c{i}") for i in range(n)]
    roster = Roster.of(ids)
    holders = [KeyHolder(f"c{i}", settings, np.zeros(DIM), ids[i], roster) for i in range(n)]
    half = CKKSServer(settings=settings)
    # the server stands in for the generator at the victim's first set-up
    with pytest.raises(Exception, match="not signed by its pinned identity"):
        holders[3].handle(_server_key_package(holders, half, holders[3], ["c0", "c3"]))
    assert not holders[3].protection.ready
    # a Sybil peer (a key the server made, signed by an identity outside the roster)
    from securefl.crypto import primitives as P

    sybil = Identity.generate("c9")
    _, pk = P.x25519_keypair()
    sig = sybil.sign(ckks_keys.advert_transcript(settings.settings_id, "c9", pk))
    peers = {"c9": {"pk": ckks_keys.b64(pk), "sig": ckks_keys.b64(sig)}}
    for h in holders[1:]:
        advert = wire.decode(h.handle(wire.encode(wire.Kind.CKKS_HELLO, {"settings": settings.settings_id})))
        peers[h.client_id] = {"pk": ckks_keys.b64(advert.payload), "sig": advert.header["sig"]}
    keygen = wire.encode(wire.Kind.CKKS_KEYGEN, {"settings": settings.settings_id, "peers": peers})
    with pytest.raises(Exception, match="c9"):
        holders[0].handle(keygen)
    assert not holders[0].protection.ready


def test_re_key_by_the_pinned_generator_is_accepted():
    server, half, holders = federation(4)
    generator = next(h for h in holders if h.protection._keys.generator == h.client_id)
    old = half.fingerprint
    half.context = None
    half.setup([generator] + [h for h in holders if h is not generator], Exchange(0))
    assert half.fingerprint != old
    assert all(h.protection.fingerprint == half.fingerprint for h in holders)


def test_designated_holder_outside_the_sample_still_decrypts():
    """The designated decryptor is a key holder, not necessarily a participant."""
    server, half, holders = federation()
    designated = ckks_keys.decryptor_for(tuple(half.key_holders), half.fingerprint, 1)
    sample = [h for h in holders if h.client_id != designated]
    agg = half.aggregate(sample, server.global_message(1), DIM, Exchange(1))
    assert agg.count == 4 and agg.stats["decryptor"] == designated
    expected = sum(h.update for h in sample)
    assert np.abs(agg.total.double().numpy() - expected).max() < 1e-3
