"""CKKS-encrypted aggregation: the server sums what it cannot read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from securefl.build import check, ckks_params
from securefl.config import RunConfig, ServerConfig
from securefl.crypto.ckks_auth import Layout
from securefl.crypto.hazmat import ckks as hz
from securefl.crypto.hazmat import ckks_seal as hzs
from securefl.exceptions import CKKSParameterError, CiphertextRejectedError, ClientDropout, ConfigValueError
from securefl.protections import PROTECTIONS, Exchange
from securefl.protections.ckks import CKKSSettings
from securefl.protections.ckks_client import CKKSClient
from securefl.protections.ckks_server import CKKSServer
from securefl.server import SecureServer
from securefl.transport import wire


# ------------------------------------------------------------------ helpers
class FakeClient:
    """A key holder that 'trains' by returning a fixed update (no model)."""

    def __init__(self, cid: str, settings: CKKSSettings, update: np.ndarray, weight: float = 1.0):
        self.client_id = cid
        self.protection = CKKSClient(client_id=cid, settings=settings)
        self.update = np.asarray(update, dtype=np.float64)
        self.weight = weight
        self.tamper = None  # bytes -> bytes, applied to the sealed update
        self.vanish_after_sealing = False

    def fit(self, message: bytes) -> bytes:
        msg = wire.decode(message, expect=wire.Kind.GLOBAL_MODEL)
        header = {"round": msg.header["round"], "client": self.client_id, "dim": msg.header["dim"]}
        sealed = self.protection.seal(torch.from_numpy(self.update * self.weight), {"weight": self.weight}, header)
        if self.vanish_after_sealing:
            raise ClientDropout(self.client_id)  # encrypted, then lost before sending
        return self.tamper(sealed) if self.tamper else sealed

    def handle(self, message: bytes) -> bytes:
        return self.protection.handle(message)


def settings_for(
    clients: int, *, clip: float = 1.0, max_weight: float = 1.0, preset: str = "small-model", min_clients=None, **kw
):
    params = hz.derive_params(preset, max_summands=clients, max_error=1e-3, **kw)
    return CKKSSettings(params, clip, max_weight, min_clients or min(3, clients))


def federation(updates, settings, weights=None):
    dim = len(updates[0])
    model = torch.nn.Linear(dim, 1, bias=False)  # dim parameters
    server_half = CKKSServer(settings=settings)
    server = SecureServer(model, config=ServerConfig(rounds=1), num_clients=len(updates), protection=server_half)
    weights = weights or [1.0] * len(updates)
    clients = [FakeClient(f"c{i}", settings, u, w) for i, (u, w) in enumerate(zip(updates, weights))]
    return server, server_half, clients


def retag(sealed: bytes, payload: bytes, **header) -> bytes:
    """Re-encode a client update with a new payload (valid wire digest): what a
    faulty client or a tampering server could produce."""
    msg = wire.decode(sealed)
    return wire.encode(msg.kind, {**msg.header, **header}, payload)


# ------------------------------------------------------------------ key model
@pytest.mark.parametrize("encryption", ["symmetric", "public-key", "seeded"])
def test_server_context_cannot_decrypt(encryption):
    settings = settings_for(3, encryption=encryption)
    rng = np.random.default_rng(0)  # test data only
    updates = [rng.uniform(-0.5, 0.5, 6) / 3 for _ in range(3)]
    server, half, clients = federation(updates, settings)
    half.setup(clients, Exchange(0))
    assert set(half.key_holders) == {"c0", "c1", "c2"}
    assert not half.context.is_private()
    # every client installed the same key set, and only clients hold it
    assert all(c.protection.ready and c.protection.fingerprint == half.fingerprint for c in clients)
    sealed = clients[0].fit(server.global_message(1))
    tensor = hzs.load_ciphertext(half.context, half.params, wire.decode(sealed).payload, Layout(6, (), 3).length)
    with pytest.raises(ValueError, match="secret"):
        hzs.decrypt(half.context, half.params, tensor, Layout(6, (), 3).length)
    if encryption != "seeded":
        with pytest.raises(ValueError, match="secret"):
            tensor.decrypt()  # TenSEAL's own refusal
    # the server's serialized context reloads without a secret key as well
    assert not hzs.load_context(half.public_context, half.params).is_private()
    # the key holder can
    plain = hzs.decrypt(clients[1].protection._keys.context, half.params, tensor, Layout(6, (), 3).length)
    assert np.allclose(plain[:6], updates[0], atol=1e-4)


def test_key_delivery_is_authenticated():
    from securefl.crypto import ckks_keys

    settings = settings_for(2)
    sid = settings.settings_id
    a, b = (CKKSClient(client_id=c, settings=settings) for c in ("a", "b"))
    package = b"secret context bytes"
    sealed = ckks_keys.seal_package(a._x25519, b.public_key, sid, "a", "b", package)
    assert package not in sealed
    assert ckks_keys.open_package(b._x25519, a.public_key, sid, "a", "b", sealed) == package
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(Exception, match="authentication"):
        ckks_keys.open_package(b._x25519, a.public_key, sid, "a", "b", flipped)
    with pytest.raises(Exception, match="authentication"):  # bound to the recipient's name
        ckks_keys.open_package(b._x25519, a.public_key, sid, "a", "c", sealed)


# ------------------------------------------------------------------ precision
def test_weighted_sum_within_1e3_of_plaintext():
    n, dim = 10, 3000
    settings = settings_for(n, clip=1.0, max_weight=200.0)
    rng = np.random.default_rng(1)
    updates = []
    for _ in range(n):
        u = rng.normal(size=dim)
        updates.append(u / np.linalg.norm(u) * rng.uniform(0.2, 1.0))
    weights = [float(w) for w in rng.integers(20, 200, n)]
    server, half, clients = federation(updates, settings, weights)
    half.setup(clients, Exchange(0))
    agg = half.aggregate(clients, server.global_message(1), dim, Exchange(1))
    expected = sum(w * u for w, u in zip(weights, updates))
    # released sums are in units of W * C = 200: every coordinate within 1e-3 of
    # the plaintext sum in the encrypted [-1, 1] units
    err = np.abs(agg.total.double().numpy() - expected) / (settings.max_weight * settings.clip)
    assert err.max() < 1e-3
    assert err.max() > 0  # noise flooding: the release is never the exact decryption
    assert agg.aux["weight"] == pytest.approx(sum(weights), abs=1e-3 * 200)
    assert agg.count == n and agg.individual is None
    # 3018 values (update, counters, participation, tags) at two per slot: two 2048-value ciphertexts
    assert agg.stats["clipped"] == 0 and agg.stats["ciphertexts_per_client"] == 2
    # two symmetric ciphertexts of two 2048-coefficient polynomials mod a 34-bit prime
    # (about 35 KB uncompressed, ~43 KB as SEAL frames them) over 3000 float32 (12 KB)
    assert 2.5 < agg.stats["bytes_ratio"] < 4.5


@pytest.mark.parametrize("encryption", ["symmetric", "seeded"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_sums_at_max_clients_do_not_wrap(sign, encryption):
    """100 clients (the most the parameters are derived for), every slot at +-bound:
    update, count, weight and tags all sum to +-100."""
    n = 100
    settings = settings_for(n, clip=2.0, max_weight=50.0, encryption=encryption)
    # the largest coefficient of a sum of 100 vectors packing two values per slot is
    # sqrt(2) * 100: log2(142.4) -> 8 bits, + sign
    assert settings.params.coeff_mod_bit_sizes[0] - settings.params.scale_bits == 9
    updates = [np.array([sign * 2.0]) for _ in range(n)]  # dim 1: the clip bound itself
    server, half, clients = federation(updates, settings, [50.0] * n)
    half.setup(clients, Exchange(0))
    agg = half.aggregate(clients, server.global_message(1), 1, Exchange(1))
    assert agg.total.item() == pytest.approx(sign * 2.0 * 50.0 * n, abs=1e-3 * 100)
    assert agg.aux["weight"] == pytest.approx(50.0 * n, abs=1e-3 * 50)


def test_hazmat_all_ones_at_max_summands_and_wrap_without_headroom():
    params = hz.derive_params("small-model", max_summands=100, max_error=1e-3)
    ctx = hzs.new_secret_context(params)
    pub = hzs.load_context(hzs.public_context_bytes(ctx, params), params)
    ones = np.ones(params.slots)
    for value in (1.0, -1.0):
        blob = hzs.encrypt(ctx, params, value * ones)
        acc = hzs.load_ciphertext(pub, params, blob, params.slots)
        for _ in range(99):
            acc += hzs.load_ciphertext(pub, params, hzs.encrypt(ctx, params, value * ones), params.slots)
        out = hzs.decrypt(ctx, params, acc, params.slots)
        assert np.abs(out - 100 * value).max() < 1e-3
    # one bit less headroom is refused at construction: 100 all-ones would wrap
    with pytest.raises(CKKSParameterError, match="wrap"):
        hz.CKKSParams("small-model", 2048, (params.coeff_mod_bit_sizes[0] - 1, 14), params.scale_bits, 100, 8)


# ------------------------------------------------------------------ integrity
def _three_clients(encryption="symmetric", min_clients=3):
    settings = settings_for(3, clip=2.0, max_weight=10.0, encryption=encryption, min_clients=min_clients)
    updates = [np.array([0.1, -0.2, 0.3, 0.05]) * (i + 1) for i in range(3)]  # norms <= 1.14
    server, half, clients = federation(updates, settings, [3.0, 5.0, 7.0])
    return server, half, clients


def _run_and_check_aborted(server, clients, match):
    before = server.weights.clone()
    res = server.run_round(1, clients)
    assert res.aborted is not None and "CiphertextRejectedError" in res.aborted and match in res.aborted
    assert torch.equal(server.weights, before)
    return res


@pytest.mark.parametrize("encryption", ["symmetric", "seeded"])
def test_corrupted_ciphertext_rejected_and_model_unchanged(encryption):
    server, half, clients = _three_clients(encryption)

    def corrupt(sealed):
        payload = bytearray(wire.decode(sealed).payload)
        payload[len(payload) // 2] ^= 0xFF
        return retag(sealed, bytes(payload))

    clients[1].tamper = corrupt
    _run_and_check_aborted(server, clients, "rejected")


@pytest.mark.parametrize("encryption", ["symmetric", "seeded"])
def test_truncated_ciphertext_rejected_and_model_unchanged(encryption):
    server, half, clients = _three_clients(encryption)
    clients[2].tamper = lambda sealed: retag(sealed, wire.decode(sealed).payload[:-64])
    _run_and_check_aborted(server, clients, "rejected")


@pytest.mark.parametrize("encryption", ["symmetric", "seeded"])
def test_wrong_key_ciphertext_detected_and_model_unchanged(encryption):
    server, half, clients = _three_clients(encryption)
    # a second federation with the same settings but its own secret key
    _, other_half, others = _three_clients(encryption)
    other_half.setup(others, Exchange(0))
    half.setup(clients, Exchange(0))
    server._set_up = True
    stranger = others[0]

    def swap(sealed):
        foreign = stranger.fit(server.global_message(1))
        return retag(sealed, wire.decode(foreign).payload)  # header still names our key set

    clients[0].tamper = swap
    res = _run_and_check_aborted(server, clients, "rejected the aggregate")
    assert "beyond the bound" in res.aborted or "tags" in res.aborted or "garbage" in res.aborted


def test_small_additive_tampering_fails_the_tags():
    """A server adding a small, in-bounds plaintext shift (here: a key holder's
    encryption of 0.05 in one coordinate, as a stand-in) is caught by the tags."""
    server, half, clients = _three_clients()
    half.setup(clients, Exchange(0))
    server._set_up = True
    shift = np.zeros(Layout(4, (), 3).length)
    shift[0] = 0.05
    forged = hzs.encrypt(clients[0].protection._keys.context, half.params, shift)

    def add_shift(sealed):
        mine = hzs.load_ciphertext(half.context, half.params, wire.decode(sealed).payload, len(shift))
        mine += hzs.load_ciphertext(half.context, half.params, forged, len(shift))
        return retag(sealed, hzs.serialize(mine))

    clients[1].tamper = add_shift
    res = _run_and_check_aborted(server, clients, "rejected the aggregate")
    assert "tags" in res.aborted


def test_duplicated_contribution_is_refused_by_the_key_holder():
    """A server that counts one client's ciphertext twice is caught by the
    participation vector, whatever it claims."""
    server, half, clients = _three_clients()
    half.setup(clients, Exchange(0))
    with pytest.raises(CiphertextRejectedError, match="duplicated"):
        half.aggregate([clients[0], *clients], server.global_message(1), 4, Exchange(1))


# ------------------------------------------------------------------ dropouts
@pytest.mark.parametrize("encryption", ["symmetric", "seeded"])
def test_client_dropping_after_encrypting_round_completes_with_the_rest(encryption):
    from securefl.crypto import ckks_keys

    server, half, clients = _three_clients(encryption, min_clients=2)
    half.setup(clients, Exchange(0))
    server._set_up = True
    designated = ckks_keys.decryptor_for(tuple(half.key_holders), half.fingerprint, 1)
    gone, *kept = [c for c in clients if c.client_id != designated] + [c for c in clients if c.client_id == designated]
    gone.vanish_after_sealing = True
    before = server.weights.clone()
    res = server.run_round(1, clients)
    assert res.aborted is None and res.participants == 2 and res.dropped == [gone.client_id]
    expected = sum(c.weight * c.update for c in kept) / sum(c.weight for c in kept)
    step = (server.weights - before).double().numpy()
    # released error <= 1e-3 in units of W * C = 20, divided by the total weight (>= 8)
    assert np.abs(step - expected).max() < 1e-3 * 20.0 / 8.0


def test_designated_decryptor_dropping_aborts_and_no_other_holder_decrypts():
    """One decryption per round, federation-wide: when the round's designated key
    holder vanishes the round aborts; the others refuse to stand in."""
    from securefl.crypto import ckks_keys
    from securefl.exceptions import AggregationError

    server, half, clients = _three_clients()
    half.setup(clients, Exchange(0))
    designated = ckks_keys.decryptor_for(tuple(half.key_holders), half.fingerprint, 1)
    # the designated holder answers its update (message 1), vanishes at the decryption request (message 2)
    with pytest.raises(AggregationError, match="designated key holder"):
        half.aggregate(clients, server.global_message(1), 4, Exchange(1, drop_at={designated: 2}))
    sealed = [c.fit(server.global_message(1)) for c in clients]
    acc = None
    for raw in sealed:
        t = hzs.load_ciphertext(half.context, half.params, wire.decode(raw).payload, Layout(4, (), 3).length)
        acc = t if acc is None else acc + t
    request = wire.encode(
        wire.Kind.CKKS_DECRYPT,
        {"settings": half.settings.settings_id, "round": 1, "dim": 4, "aux_keys": []},
        hzs.serialize(acc),
    )
    for c in clients:
        if c.client_id != designated:
            reply = wire.decode(c.handle(request))
            assert reply.kind == wire.Kind.CKKS_REJECT and "designated" in reply.header["reason"]


def test_clipping_is_counted_not_silent():
    settings = settings_for(2, clip=1.0, max_weight=1.0, min_clients=2)
    updates = [np.array([3.0, 4.0]), np.array([0.3, 0.4])]  # norms 5 and 0.5
    server, half, clients = federation(updates, settings)
    half.setup(clients, Exchange(0))
    agg = half.aggregate(clients, server.global_message(1), 2, Exchange(1))
    assert agg.stats["clipped"] == 1
    assert np.allclose(agg.total.numpy(), [0.6 + 0.3, 0.8 + 0.4], atol=1e-3)


# ------------------------------------------------------------------ parameters
def test_preset_validation_errors():
    with pytest.raises(CKKSParameterError, match="128-bit"):
        hz.CKKSParams("small-model", 2048, (45, 14), 30, 10, 8)  # 59 > 54 bits
    with pytest.raises(CKKSParameterError, match="poly_modulus_degree"):
        hz.CKKSParams("small-model", 3000, (35, 14), 29, 10, 8)
    with pytest.raises(CKKSParameterError, match="larger preset"):
        hz.derive_params("small-model", max_summands=10_000, max_error=1e-3)
    with pytest.raises(CKKSParameterError, match="ckks_preset"):
        hz.derive_params("no-such-preset", max_summands=10, max_error=1e-3)
    # a large preset takes what the small one cannot
    assert hz.derive_params("large-model", max_summands=10_000, max_error=1e-3).data_bits <= 60
    for name, preset in hz.PRESETS.items():  # every preset is valid at 10 and 100 clients
        for m in (10, 100):
            p = hz.derive_params(name, max_summands=m, max_error=1e-3)
            assert sum(p.coeff_mod_bit_sizes) <= hz.HE_STANDARD_128[preset.poly_modulus_degree]


def test_build_check_validates_ckks_before_anything_runs():
    # the CKKS maths are the protection's: config.py imports none of it, so
    # securefl.build.check (run by build, Simulation and the CLI) validates them
    with pytest.raises(CKKSParameterError) as info:
        check(RunConfig.from_flat({"protect": "ckks", "clients": 50, "ckks_max_error": 1e-9}))
    assert info.value.field == "ckks_preset"
    with pytest.raises(ConfigValueError) as info:
        check(RunConfig.from_flat({"protect": "ckks", "ckks_encryption": "quantum"}))
    assert info.value.field == "ckks_encryption"
    cfg = RunConfig.from_flat({"protect": "ckks", "clients": 7})
    assert "ckks" in PROTECTIONS and ckks_params(cfg).max_summands == 7


def test_cli_names_the_flag_on_bad_ckks_settings(capsys):
    from securefl.cli import main

    assert main(["train", "--protect", "ckks", "--ckks-preset", "huge", "--out", "/tmp/never"]) == 2
    assert "--ckks-preset" in capsys.readouterr().err


def test_weight_above_bound_is_an_error_naming_the_flag():
    settings = settings_for(2, max_weight=10.0)
    server, half, clients = federation([np.zeros(2), np.zeros(2)], settings, [5.0, 11.0])
    half.setup(clients, Exchange(0))
    with pytest.raises(ConfigValueError) as info:
        clients[1].fit(server.global_message(1))
    assert info.value.field == "ckks_max_weight"


# ------------------------------------------------------------------ end to end
def test_short_ckks_run_matches_plaintext(digits):
    from securefl.simulation import Simulation

    base = {"dataset": "digits", "clients": 3, "rounds": 2, "hidden": 16, "local_epochs": 1.0, "seed": 0}
    plain = Simulation(RunConfig.from_flat({**base, "protect": "none"}), data=digits).run()
    enc = Simulation(RunConfig.from_flat({**base, "protect": "ckks"}), data=digits).run()
    w_plain, w_enc = plain.server.weights, enc.server.weights
    assert not torch.equal(w_plain, w_enc)  # the encrypted sum is flooded, not exact
    assert (w_plain - w_enc).abs().max() < 5e-3
    assert abs(plain.metrics["final"]["accuracy"] - enc.metrics["final"]["accuracy"]) <= 0.02
    rows = enc.metrics["rounds"]
    assert all(r["aborted"] is None and r["participants"] == 3 for r in rows)
    # 1210 parameters pad to two 1024-slot ciphertexts: bytes per padded float32 slot stay <= 6
    padded = rows[-1]["protection"]["ciphertexts_per_client"] * 1024 / w_enc.numel()
    assert all(r["protection"]["bytes_up_ratio"] <= 6.0 * padded for r in rows)
    assert rows[-1]["protection"]["preset"] == "small-model"


class RecordingExchange(Exchange):
    """An exchange that keeps every byte the server sends or receives."""

    def __init__(self, round_):
        super().__init__(round_)
        self.seen = []

    def send(self, client, message, *, method="handle"):
        reply = super().send(client, message, method=method)
        self.seen += [message] + ([reply] if reply is not None else [])
        return reply


@pytest.mark.parametrize("encryption", ["symmetric", "seeded"])
def test_secret_key_never_crosses_the_server_in_the_clear(encryption):
    settings = settings_for(3, encryption=encryption)
    server, half, clients = federation([np.zeros(3)] * 3, settings)
    ex = RecordingExchange(0)
    half.setup(clients, ex)
    secrets = [hzs.secret_context_bytes(c.protection._keys.context, half.params) for c in clients]
    assert secrets[0] == secrets[1] == secrets[2]  # one key, serialized deterministically
    probe = secrets[0][len(secrets[0]) // 2 : len(secrets[0]) // 2 + 64]
    assert ex.seen and not any(probe in m for m in ex.seen)
    assert not any(c.protection._keys.mac_key in m for c in clients for m in ex.seen)


@pytest.mark.slow
@pytest.mark.parametrize("encryption", ["symmetric", "seeded"])
def test_digits_30_rounds_ckks_within_half_a_point_of_plaintext(digits, encryption):
    """The issue's acceptance run: 10 clients, 30 rounds, seed 0 (several minutes)."""
    from securefl.simulation import Simulation

    base = {"dataset": "digits", "clients": 10, "rounds": 30, "seed": 0}
    plain = Simulation(RunConfig.from_flat({**base, "protect": "none"}), data=digits).run()
    enc = Simulation(
        RunConfig.from_flat({**base, "protect": "ckks", "ckks_encryption": encryption}), data=digits
    ).run()
    assert abs(plain.metrics["final"]["accuracy"] - enc.metrics["final"]["accuracy"]) <= 0.005
    assert all(r["aborted"] is None for r in enc.metrics["rounds"])
    assert all(r["protection"]["bytes_up_ratio"] <= 6.0 for r in enc.metrics["rounds"])
