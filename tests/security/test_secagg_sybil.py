"""F3: a malicious server that swaps a victim's cohort for identities it controls
(Sybils) must not learn the victim's input (Bonawitz et al., CCS 2017, section 6).

The attack: after an honest round, the server runs round 2 with the victim plus
four Sybil clients whose inputs it knows, so the unmasked sum minus the Sybils'
inputs is the victim's input. Every test runs the real SecAggServer and
SecAggClient code; the server's forged messages are built by a real SecAggServer
fed the Sybils' keys."""

from __future__ import annotations

import numpy as np
import pytest

from securefl.crypto import primitives as P
from securefl.crypto.identity import Identity, Roster
from securefl.crypto.secagg.client import SecAggClient
from securefl.crypto.secagg.common import SecAggSettings, b64
from securefl.build import secagg_settings as settings_from_config
from securefl.protections.secagg import SecAggClientProtection
from securefl.crypto.secagg.server import SecAggServer
from securefl.exceptions import ConfigValueError, ProtocolError
from securefl.privacy.noise import SecureRNG
from securefl.transport import wire
from tests.helpers.secagg import FakeClient, RecordingExchange, federation, global_model

DIM = 6
MAL = SecAggSettings(clip=1.0, max_weight=1.0, threshold=0.7, malicious=True, min_clients=3)
VICTIM = "c00"


def _inputs(settings: SecAggSettings, n: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    codec = settings.codec(n)
    ints = np.random.default_rng(seed).integers(-50, 50, size=(n, DIM))  # test data, not secret
    return ints, [row * codec.resolution for row in ints]


def _honest_round_1(settings: SecAggSettings = MAL, n: int = 5):
    """An honest round with a pinned roster: exact sum of every input."""
    ints, inputs = _inputs(settings, n, 0)
    clients, server = federation(settings, inputs)
    agg = server.aggregate(clients, global_model(1, DIM), DIM, RecordingExchange(1))
    assert agg.count == n
    assert np.array_equal(server.last_result.ring_sum[:DIM], settings.codec(n).wrap(ints.sum(axis=0)))
    return clients, server, ints


def _sybil_attack(victim: FakeClient, sybils: list[Identity], victim_vk: bytes) -> tuple[SecAggServer, dict]:
    """Round 2 run by a server that controls ``sybils`` (zero inputs, known to it).
    Returns the server and the Sybil clients; raises whatever the victim raises."""
    directory = {victim.client_id: victim_vk, **{s.client_id: s.verification_key for s in sybils}}
    fake = Roster(directory)  # the cohort the server wants the victim to accept
    evil = SecAggServer(2, sorted(directory), settings=MAL, directory=directory)
    parties = {victim.client_id: victim}
    for s in sybils:
        parties[s.client_id] = FakeClient(s.client_id, MAL, np.zeros(DIM), identity=s, roster=fake)
    # a legacy trust-on-first-use client would also have read this directory field
    legacy = {"directory": {u: b64(vk) for u, vk in directory.items()}}

    def advertise(u: str) -> bytes:
        msg = wire.decode(evil.advertise_request(u))
        return wire.encode(msg.kind, {**msg.header, **legacy})

    ids = evil.roster
    evil.collect_keys({u: parties[u].handle(advertise(u)) for u in ids})
    evil.collect_shares({u: parties[u].handle(evil.share_request(u)) for u in ids})
    evil.collect_masked({u: parties[u].fit(evil.masking_message(u, global_model(2, DIM))) for u in ids}, DIM)
    evil.collect_signatures({u: parties[u].handle(evil.consistency_request(u)) for u in ids})
    return evil, parties


def test_sybil_cohort_recovers_the_input_of_a_victim_that_trusts_the_server():
    """Control: the attack is real. A victim that accepts the server's roster (what
    trust-on-first-use amounted to) loses its exact input."""
    secret = np.arange(1, DIM + 1) * MAL.codec(5).resolution
    sybils = [Identity.generate(f"sybil-{i}") for i in range(4)]
    ident = Identity.generate(VICTIM)
    fooled_roster = Roster({VICTIM: ident.verification_key, **{s.client_id: s.verification_key for s in sybils}})
    victim = FakeClient(VICTIM, MAL, secret, identity=ident, roster=fooled_roster)
    evil, parties = _sybil_attack(victim, sybils, ident.verification_key)
    result = evil.collect_unmask({u: parties[u].handle(evil.unmask_request(u)) for u in evil.roster})
    assert np.array_equal(result.total, secret)  # Sybils sent zeros: the sum is the victim's input


def test_victim_with_pinned_roster_refuses_sybil_cohort_before_any_share():
    clients, server, _ = _honest_round_1()
    victim = clients[0]
    sent_before = list(victim.sent)
    sybils = [Identity.generate(f"sybil-{i}") for i in range(4)]
    with pytest.raises(ProtocolError, match="outside the pinned roster"):
        _sybil_attack(victim, sybils, server.roster.key(VICTIM))
    # nothing left the victim in round 2: no keys, no shares, no masked input
    assert victim.sent == sent_before
    assert not any(wire.decode(m).header.get("round") == 2 for m in victim.sent)
    assert victim.core.guard.last("secagg-advertise") == 1


def test_sybils_impersonating_pinned_members_fail_the_pinned_signature_check():
    """The server reuses pinned member ids with keys it made: the cohort passes the
    membership check, but the victim verifies each neighbour's keys against its
    pinned key and refuses before sending any share."""
    clients, server, _ = _honest_round_1()
    victim = clients[0]
    impostors = [Identity.generate(c.client_id) for c in clients[1:]]  # fresh keys, pinned ids
    directory = {VICTIM: server.roster.key(VICTIM), **{i.client_id: i.verification_key for i in impostors}}
    evil = SecAggServer(2, sorted(directory), settings=MAL, directory=directory)
    fakes = {i.client_id: SecAggClient(i.client_id, settings=MAL, rng=None, identity=i, roster=Roster(directory)) for i in impostors}
    replies = {u: fakes[u].handle(evil.advertise_request(u)) for u in fakes}
    replies[VICTIM] = victim.handle(evil.advertise_request(VICTIM))  # public round keys only
    evil.collect_keys(replies)
    with pytest.raises(ProtocolError, match="no valid signature under its pinned key"):
        victim.handle(evil.share_request(VICTIM))
    assert not any(wire.decode(m).kind == wire.Kind.SECAGG_SHARES and wire.decode(m).header["round"] == 2 for m in victim.sent)


def test_pinned_cohort_below_the_clients_own_min_clients_is_refused():
    """A server (configured with min_clients=2) advertises a cohort of three pinned
    members to clients whose own min_clients is 4."""
    own = SecAggSettings(threshold=0.7, malicious=True, max_weight=1.0, min_clients=4)
    lax = SecAggSettings(threshold=0.7, malicious=True, max_weight=1.0, min_clients=2)
    clients, server = federation(own, [np.zeros(DIM)] * 5, server_settings=lax)
    evil = SecAggServer(1, ["c00", "c01", "c02"], settings=lax, directory=server.directory)
    with pytest.raises(ProtocolError, match="below this client's min_clients 4"):
        clients[0].handle(evil.advertise_request("c00"))
    assert clients[0].sent == []


def test_too_few_neighbour_keys_for_min_clients_refused_at_share_keys():
    """Five pinned members advertise; the server forwards only three neighbours'
    (validly signed) keys. The threshold (4 of 5) would be met, but the client's
    min_clients of 5 is not: it refuses before any share leaves."""
    own = SecAggSettings(threshold=0.7, malicious=True, max_weight=1.0, min_clients=5)
    clients, server = federation(own, [np.zeros(DIM)] * 5)
    core = SecAggServer(1, [c.client_id for c in clients], settings=own, directory=server.directory)
    by = {c.client_id: c for c in clients}
    core.collect_keys({u: by[u].handle(core.advertise_request(u)) for u in core.roster})
    req = wire.decode(core.share_request(VICTIM))
    keys = {v: k for v, k in req.header["keys"].items() if v != "c04"}
    with pytest.raises(ProtocolError, match="min_clients 5"):
        by[VICTIM].handle(wire.encode(req.kind, {**req.header, "keys": keys}))
    assert wire.Kind.SECAGG_SHARE_REQUEST not in by[VICTIM].answered


def _to_masked(own: SecAggSettings, server_settings: SecAggSettings, drop: str):
    clients, server = federation(own, [np.ones(DIM) * 0.25] * 5, server_settings=server_settings)
    core = SecAggServer(1, [c.client_id for c in clients], settings=server_settings, directory=server.directory)
    by = {c.client_id: c for c in clients}
    core.collect_keys({u: by[u].handle(core.advertise_request(u)) for u in core.roster})
    core.collect_shares({u: by[u].handle(core.share_request(u)) for u in core.roster})
    live = [u for u in core.roster if u != drop]
    core.collect_masked({u: by[u].fit(core.masking_message(u, global_model(1, DIM))) for u in live}, DIM)
    return core, by


def test_survivors_below_min_clients_refused_in_the_malicious_option():
    """One client drops before masking; 4 survivors meet the threshold (4 of 5) but
    not the clients' min_clients of 5: nobody signs the survivor set, so no
    unmasking request can carry the signatures it needs."""
    own = SecAggSettings(threshold=0.7, malicious=True, max_weight=1.0, min_clients=5)
    lax = SecAggSettings(threshold=0.7, malicious=True, max_weight=1.0, min_clients=2)
    core, by = _to_masked(own, lax, drop="c04")
    with pytest.raises(ProtocolError, match="survivor set to sign has 4 clients, below this client's min_clients 5"):
        by[VICTIM].handle(core.consistency_request(VICTIM))
    assert wire.Kind.SECAGG_UNMASK_REQUEST not in by[VICTIM].answered


def test_survivors_below_min_clients_refused_at_unmask_without_the_malicious_option():
    own = SecAggSettings(threshold=0.6, max_weight=1.0, min_clients=5)
    lax = SecAggSettings(threshold=0.6, max_weight=1.0, min_clients=2)
    core, by = _to_masked(own, lax, drop="c04")
    with pytest.raises(ProtocolError, match="sum to unmask has 4 clients, below this client's min_clients 5"):
        by[VICTIM].handle(core.unmask_request(VICTIM))
    # claiming the dropped client is in the sum does not help: it contradicts what the victim knows
    req = wire.decode(core.unmask_request(VICTIM))
    padded = wire.encode(req.kind, {**req.header, "cohort": sorted(req.header["cohort"] + ["c04"])})
    with pytest.raises(ProtocolError, match="announced cohort disagrees"):
        by[VICTIM].handle(padded)
    assert all(wire.decode(m).kind != wire.Kind.SECAGG_UNMASK for m in by[VICTIM].sent)


def test_roster_is_enforced_without_the_malicious_option_when_given():
    s = SecAggSettings(threshold=0.6, max_weight=1.0)
    clients, server = federation(s, [np.zeros(DIM)] * 4)  # pinned roster, honest-but-curious mode
    evil = SecAggServer(1, ["c00", "c01", "c02", "mallory"], settings=s)
    with pytest.raises(ProtocolError, match=r"outside the pinned roster: \['mallory'\]"):
        clients[0].handle(evil.advertise_request("c00"))


def test_honest_malicious_option_round_with_dropouts_is_exact():
    """The defences cost nothing on the honest path: with a pinned roster and two
    dropouts (one before masking, one after) the sum of the survivors is exact."""
    ints, inputs = _inputs(MAL, 8, 1)
    clients, server = federation(MAL, inputs)
    agg = server.aggregate(clients, global_model(1, DIM), DIM, RecordingExchange(1, {"c03": 2, "c06": 5}))
    survivors = [i for i in range(8) if i != 3]  # c06 masked its input, then left
    assert agg.count == 7 and server.last_result.survivors == [f"c{i:02d}" for i in survivors]
    assert np.array_equal(server.last_result.ring_sum[:DIM], MAL.codec(8).wrap(ints[survivors].sum(axis=0)))


def test_honest_round_without_roster_is_exact():
    s = SecAggSettings(threshold=0.6, max_weight=1.0)
    ints, inputs = _inputs(s, 5, 2)
    clients, server = federation(s, inputs, pin=False)
    server.aggregate(clients, global_model(1, DIM), DIM, RecordingExchange(1, {"c01": 3}))
    keep = [0, 2, 3, 4]
    assert np.array_equal(server.last_result.ring_sum[:DIM], s.codec(5).wrap(ints[keep].sum(axis=0)))


# ---------------------------------------------------------------- construction
def _ids(n: int) -> list[Identity]:
    return [Identity.generate(f"c{i:02d}") for i in range(n)]


def test_malicious_client_needs_a_pinned_roster_and_its_own_identity():
    ids = _ids(3)
    roster = Roster.of(ids)
    with pytest.raises(ConfigValueError, match="roster"):
        SecAggClientProtection(client_id="c00", settings=MAL, rng=SecureRNG(), identity=ids[0])
    with pytest.raises(ConfigValueError, match="identity"):
        SecAggClientProtection(client_id="c00", settings=MAL, rng=SecureRNG(), roster=roster)
    with pytest.raises(ConfigValueError, match="another verification key"):
        SecAggClientProtection(client_id="c00", settings=MAL, rng=SecureRNG(), identity=Identity.generate("c00"), roster=roster)
    with pytest.raises(ConfigValueError, match="does not list client c09"):
        SecAggClientProtection(client_id="c09", settings=MAL, rng=SecureRNG(), identity=Identity.generate("c09"), roster=roster)
    with pytest.raises(ConfigValueError, match="not the identity of client c00"):
        SecAggClientProtection(client_id="c00", settings=MAL, rng=SecureRNG(), identity=ids[1], roster=roster)


def test_min_clients_above_the_federation_is_refused_up_front():
    from securefl.config import RunConfig

    cfg = RunConfig.from_flat({"clients": 4, "protect": "secagg", "min_clients": 5})
    with pytest.raises(ConfigValueError, match="min_clients"):
        settings_from_config(cfg)
    assert settings_from_config(RunConfig.from_flat({"clients": 4, "protect": "secagg", "min_clients": 4})).min_clients == 4


def test_forged_key_signature_never_verifies_against_the_pinned_roster():
    """Unit check of the primitive the defence rests on: a signature by a key the
    server made does not verify under the member's pinned key."""
    member, forger = Identity.generate("c01"), Identity.generate("c01")
    roster = Roster.of([member])
    msg = b"advert" + P.x25519_keypair()[1]
    assert roster.verify("c01", member.sign(msg), msg)
    assert not roster.verify("c01", forger.sign(msg), msg)
