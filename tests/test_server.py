"""SecureServer: weighting, sampling, refusal handling, abort safety, client-level DP."""

import pytest
import torch

from securefl import DPConfig, SecureServer, ServerConfig
from securefl.exceptions import BudgetExhaustedError, ConfigValueError
from securefl.models import get_flat
from securefl.privacy import accounting
from securefl.protections import Plaintext
from securefl.transport import wire


class FakeClient:
    """Returns a fixed update; records what it was sent."""

    def __init__(self, cid, update, n, refuse=False, garbage=False):
        self.client_id = cid
        self.update = update
        self.n = n
        self.refuse = refuse
        self.garbage = garbage
        self.calls = 0

    def fit(self, message):
        self.calls += 1
        msg = wire.decode(message, expect=wire.Kind.GLOBAL_MODEL)
        if self.refuse:
            raise BudgetExhaustedError(self.client_id, 1.0, 2.0, 1.5)
        if self.garbage:
            return b"not a message"
        clip = msg.header.get("client_clip")
        if clip is not None:
            norm = float(self.update.norm())
            u = self.update * (min(1.0, clip / norm) if norm else 1.0)
            return Plaintext().seal(u, {"weight": 1.0, "unclipped": 1.0}, {"round": msg.header["round"]})
        return Plaintext().seal(self.update * self.n, {"weight": float(self.n)}, {"round": msg.header["round"]})


def _server(dim=4, **kw):
    model = torch.nn.Linear(dim - 1, 1)
    return SecureServer(model, **kw)


def test_fedavg_weights_updates_by_sample_count():
    server = _server(num_clients=3)
    w0 = server.weights.clone()
    ups = [torch.tensor([1.0, 0, 0, 0]), torch.tensor([0.0, 2, 0, 0]), torch.tensor([0.0, 0, 0, -3])]
    ns = [1, 2, 7]
    clients = [FakeClient(f"c{i}", u, n) for i, (u, n) in enumerate(zip(ups, ns))]
    res = server.run_round(1, clients)
    expected = w0 + sum(n * u for u, n in zip(ups, ns)) / sum(ns)
    assert torch.allclose(server.weights, expected, atol=1e-6)
    assert torch.allclose(get_flat(server.model), expected, atol=1e-6)
    assert res.participants == 3 and res.bytes_up > 0 and res.bytes_down > 0


def test_server_lr_scales_the_step():
    server = _server(num_clients=1, config=ServerConfig(server_lr=0.5))
    w0 = server.weights.clone()
    server.run_round(1, [FakeClient("c", torch.ones(4), 3)])
    assert torch.allclose(server.weights, w0 + 0.5, atol=1e-6)


def test_refusing_client_is_skipped_and_the_rest_aggregate():
    server = _server(num_clients=2)
    w0 = server.weights.clone()
    res = server.run_round(1, [FakeClient("a", torch.ones(4), 1, refuse=True), FakeClient("b", 2 * torch.ones(4), 1)])
    assert res.refused == ["a"] and res.participants == 1
    assert torch.allclose(server.weights, w0 + 2, atol=1e-6)


def test_all_refuse_leaves_model_unchanged():
    server = _server(num_clients=2)
    w0 = server.weights.clone()
    res = server.run_round(1, [FakeClient("a", torch.ones(4), 1, refuse=True)] * 2)
    assert res.participants == 0
    assert torch.equal(server.weights, w0)


def test_garbage_message_aborts_round_without_touching_model():
    server = _server(num_clients=2)
    w0 = server.weights.clone()
    res = server.run_round(1, [FakeClient("a", torch.ones(4), 1), FakeClient("b", torch.ones(4), 1, garbage=True)])
    assert res.aborted and "WireFormatError" in res.aborted
    assert torch.equal(server.weights, w0)


def test_fixed_sampling_picks_exact_count_of_distinct_clients():
    server = _server(num_clients=20, config=ServerConfig(fraction=0.25))
    for _ in range(20):
        chosen = server.sample()
        assert len(chosen) == 5 == len(set(chosen))
        assert all(0 <= c < 20 for c in chosen)


def test_poisson_sampling_rate():
    server = _server(num_clients=50, config=ServerConfig(fraction=0.2, sampling="poisson"))
    counts = [len(server.sample()) for _ in range(200)]
    mean = sum(counts) / len(counts)
    assert 9.0 < mean < 11.0  # expectation 10, sd of the mean ~0.2
    assert len(set(counts)) > 3


def test_client_dp_records_federation_spend_each_round():
    dp = DPConfig(dp="client", noise_multiplier=1.2, clip=0.5)
    server = _server(num_clients=4, dp=dp, config=ServerConfig(rounds=3))
    clients = [FakeClient(f"c{i}", torch.ones(4) * (i + 1), 1) for i in range(4)]
    for r in range(1, 4):
        res = server.run_round(r, clients)
    expect = accounting.epsilon_under("prv", ((1.2, 1.0, 3),), 1e-5)
    assert res.epsilon == pytest.approx(expect)
    assert [e["subject"] for e in server.ledger.entries] == ["federation"] * 3
    assert res.clip == 0.5


def test_client_dp_noise_is_added_to_the_average():
    dim = 2001
    dp = DPConfig(dp="client", noise_multiplier=1.0, clip=1.0)
    server = _server(dim=dim, num_clients=5, dp=dp)
    w0 = server.weights.clone()
    server.run_round(1, [FakeClient(f"c{i}", torch.zeros(dim), 1) for i in range(5)])
    noise = server.weights - w0
    # zero updates: the step is pure noise with std z*S/m = 1/5
    assert 0.18 < float(noise.std()) < 0.22


def test_adaptive_clip_moves_the_clip():
    dp = DPConfig(dp="client", noise_multiplier=0.5, clip=1.0, adaptive_clip=True, clip_count_stddev=0.5)
    server = _server(num_clients=10, dp=dp)
    clients = [FakeClient(f"c{i}", torch.full((4,), 0.01), 1) for i in range(10)]  # all tiny: all unclipped
    for r in range(1, 11):
        server.run_round(r, clients)
    # every client under the clip: each round multiplies it by about exp(-0.2 * 0.5)
    assert server.clip < 0.5


def test_robust_aggregator_rejected_under_hidden_updates():
    class Hidden(Plaintext):
        name = "hidden"
        sees_individual_updates = False

    from securefl.aggregation import AGGREGATORS

    AGGREGATORS["median_for_test"] = lambda u, w: u.median(0).values
    try:
        cfg = ServerConfig.__new__(ServerConfig)
        object.__setattr__(cfg, "__dict__", {**ServerConfig().__dict__, "aggregator": "median_for_test"})
        with pytest.raises(ConfigValueError) as info:
            _server(num_clients=2, config=cfg, protection=Hidden())
        assert info.value.field == "aggregator"
    finally:
        del AGGREGATORS["median_for_test"]


def test_ema_releases_the_moving_average_and_trains_the_iterate():
    server = _server(num_clients=1, config=ServerConfig(ema=0.5))
    w0 = server.weights.clone()
    step = torch.tensor([1.0, 0, 0, 0])
    client = FakeClient("c0", step, 1)
    server.run_round(1, [client])
    server.run_round(2, [client])
    # iterates w0+1, w0+2; released: 0.5*(0.5*w0 + 0.5*(w0+1)) + 0.5*(w0+2) = w0 + 1.25
    assert torch.allclose(server.weights, w0 + 2 * step)
    assert torch.allclose(get_flat(server.model), w0 + 1.25 * step)
    down = wire.decode(server.global_message(3))
    assert torch.allclose(wire.bytes_to_vector(down.payload, 4), w0 + 2 * step)  # clients get the iterate


def test_sample_dp_epsilon_comes_from_the_ledger_not_the_clients():
    from securefl import PrivacyLedger

    ledger = PrivacyLedger(None, delta=1e-5)
    server = _server(num_clients=2, dp=DPConfig(dp="sample", noise_multiplier=1.0), ledger=ledger)
    clients = [FakeClient("a", torch.ones(4), 1), FakeClient("b", torch.ones(4), 1)]
    assert server.run_round(1, clients).epsilon is None  # no client recorded anything
    for cid, steps in (("a", 1), ("b", 3)):
        ledger.record(subject=cid, round=2, mechanism="dp-sgd", noise_multiplier=1.0, sample_rate=0.5, steps=steps)
    res = server.run_round(2, clients)
    assert res.epsilon == pytest.approx(ledger.spent("b").prv) and res.epsilon > ledger.spent("a").prv
    assert res.epsilon_rdp == pytest.approx(ledger.spent("b").rdp)


def test_release_under_client_dp_publishes_the_expected_count_only():
    dp = DPConfig(dp="client", noise_multiplier=1.0, clip=0.5)
    server = _server(num_clients=4, dp=dp, config=ServerConfig(fraction=0.5, sampling="poisson"))
    res = server.run_round(1, [FakeClient(f"c{i}", torch.ones(4), 1) for i in range(4)])
    res.protection = {"survivors": 3, "bits": 32, "clip": 0.5}
    res.refused, res.aborted = ["c0"], "SecAggAbortError: 1 clients left"
    row = server.release(res)
    assert row["participants"] == 2.0 and row["participants_released"] == "expected"
    assert row["bytes_up"] is row["bytes_down"] is row["seconds"] is None
    assert "refused" not in row and "dropped" not in row and row["aborted"] == "aborted"
    assert row["protection"] == {"bits": 32, "clip": 0.5}
    named = {w["field"] for w in row["withheld"]}
    assert named == {"refused", "dropped", "bytes_up", "bytes_down", "seconds", "protection.survivors", "aborted"}
    assert res.refused == ["c0"] and res.protection["survivors"] == 3  # the server's own result is untouched


def test_release_without_client_dp_is_the_whole_result():
    server = _server(num_clients=2)
    res = server.run_round(1, [FakeClient("a", torch.ones(4), 1), FakeClient("b", torch.ones(4), 2)])
    assert server.release(res) == res.as_dict()
