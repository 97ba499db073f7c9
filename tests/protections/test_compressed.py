"""Shared-seed sparsification around the protections: the sums still add up."""

import json

import numpy as np
import pytest
import torch

from securefl import RunConfig, Simulation
from securefl.config.compression import CompressionSpec
from securefl.crypto.secagg.common import SecAggSettings
from securefl.protections import Exchange
from securefl.protections.base import Plaintext
from securefl.protections.compressed import CompressedClient, CompressedServer, public_coordinates, scatter
from securefl.protections.secagg import SecAggClientProtection
from securefl.privacy.noise import SecureRNG
from securefl.transport import wire

from tests.helpers.secagg import global_model, federation

SEED, DIM, N = 11, 40, 5


def compressed_secagg(spec: CompressionSpec, inputs):
    settings = SecAggSettings(clip=1.0, max_weight=1.0, quant_bits=spec.bits or 0, min_clients=3)
    clients, server = federation(settings, inputs)
    for c in clients:
        inner = SecAggClientProtection(client_id=c.client_id, settings=settings, rng=SecureRNG(), roster=None)
        c.protection = CompressedClient(inner, spec, SEED)
    return clients, CompressedServer(server, spec, SEED)


@pytest.mark.parametrize("text", ["randk:0.25", "randk:0.25+quant:8"])
def test_secagg_sum_is_exactly_the_sparsified_sum_with_feedback(text):
    spec = CompressionSpec.parse(text)
    rng = np.random.default_rng(0)  # test data only
    # values on the quantization grid (step 2^-7 for quant:8, clip 1): the clients' rounding is exact
    inputs = [rng.integers(-40, 41, DIM) / 128 for _ in range(N)]
    clients, server = compressed_secagg(spec, inputs)
    k = spec.kept(DIM)
    residuals = [np.zeros(DIM) for _ in range(N)]
    for round_ in (1, 2):
        idx = public_coordinates(SEED, round_, DIM, k)
        agg = server.aggregate(clients, global_model(round_, DIM), DIM, Exchange(round_))
        full = [x + r for x, r in zip(inputs, residuals)]  # error feedback: last round's unsent part added
        expected = np.zeros(DIM)
        expected[idx] = sum(f[idx] for f in full)
        assert agg.total.shape == (DIM,) and np.array_equal(agg.total.numpy().astype(np.float64), expected)
        assert agg.aux["weight"] == N and agg.count == N
        assert agg.stats["coordinates_sent"] == k
        if spec.bits:
            assert agg.stats["bits"] == server.settings.codec(N).bits < 32
        for i, f in enumerate(full):
            residuals[i] = f.copy()
            residuals[i][idx] = 0.0
        assert not np.array_equal(idx, public_coordinates(SEED, round_ + 1, DIM, k))


def test_quantized_secagg_off_grid_is_within_one_step_per_client_and_packed():
    spec = CompressionSpec.parse("randk:0.5+quant:6")
    rng = np.random.default_rng(1)
    inputs = [rng.uniform(-0.9, 0.9, DIM) for _ in range(N)]
    clients, server = compressed_secagg(spec, inputs)
    agg = server.aggregate(clients, global_model(1, DIM), DIM, Exchange(1))
    idx = public_coordinates(SEED, 1, DIM, spec.kept(DIM))
    step = server.settings.codec(N).resolution
    exact = sum(x[idx] for x in inputs)
    got = agg.total.numpy().astype(np.float64)
    assert np.all(np.abs(got[idx] - exact) <= N * step) and np.all(got[np.setdiff1d(np.arange(DIM), idx)] == 0)
    assert np.allclose(got[idx] / step, np.round(got[idx] / step))  # on the grid
    bits = server.settings.codec(N).bits
    masked = [wire.decode(m) for c in clients for m in c.sent if wire.decode(m).kind is wire.Kind.SECAGG_MASKED_INPUT]
    assert len(masked) == N
    # k coordinates + 1 counter (weight) + the saturation count, each in `bits` bits
    assert all(len(m.payload) == (bits * (spec.kept(DIM) + 2) + 7) // 8 for m in masked)


def test_plaintext_individual_updates_are_scattered():
    spec = CompressionSpec.parse("randk:0.1")
    dim = 100

    class Client:
        def __init__(self, cid, x):
            self.client_id, self.x = cid, x
            self.protection = CompressedClient(Plaintext(), spec, SEED, error_feedback=False)

        def fit(self, message):
            h = wire.decode(message).header
            self.protection.begin(h)
            return self.protection.seal(torch.from_numpy(self.x).float(), {"weight": 1.0}, {"round": h["round"]})

    xs = [np.arange(dim, dtype=np.float32) * (i + 1) for i in range(3)]
    clients = [Client(f"c{i}", x) for i, x in enumerate(xs)]
    agg = CompressedServer(Plaintext(), spec, SEED).aggregate(clients, global_model(5, dim), dim, Exchange(5))
    idx = public_coordinates(SEED, 5, dim, 10)
    assert torch.equal(agg.total, scatter(torch.from_numpy(sum(xs)[idx]), idx, dim))
    assert all(torch.equal(u, scatter(torch.from_numpy(x[idx]), idx, dim)) for (u, _), x in zip(agg.individual, xs))


def test_ckks_sum_is_the_sparsified_sum_within_ckks_error():
    from securefl.crypto.hazmat import ckks as hz
    from securefl.protections.ckks import CKKSSettings
    from securefl.protections.ckks_client import CKKSClient
    from securefl.protections.ckks_server import CKKSServer

    spec = CompressionSpec.parse("randk:0.2")
    dim = 50
    settings = CKKSSettings(hz.derive_params("small-model", max_summands=3, max_error=1e-3), 1.0, 1.0, 3)

    class Client:
        def __init__(self, cid, x):
            self.client_id, self.x = cid, x
            self.protection = CompressedClient(CKKSClient(client_id=cid, settings=settings), spec, SEED)

        def fit(self, message):
            h = wire.decode(message).header
            self.protection.begin(h)
            return self.protection.seal(torch.from_numpy(self.x), {"weight": 1.0}, {"round": h["round"], "dim": dim})

        def handle(self, message):
            return self.protection.handle(message)

    rng = np.random.default_rng(2)
    xs = [rng.uniform(-0.1, 0.1, dim) for _ in range(3)]
    clients = [Client(f"c{i}", x) for i, x in enumerate(xs)]
    server = CompressedServer(CKKSServer(settings=settings), spec, SEED)
    server.setup(clients, Exchange(0))
    agg = server.aggregate(clients, global_model(1, dim), dim, Exchange(1))
    idx = public_coordinates(SEED, 1, dim, spec.kept(dim))
    expected = np.zeros(dim)
    expected[idx] = sum(x[idx] for x in xs)
    got = agg.total.numpy().astype(np.float64)
    assert np.max(np.abs(got - expected)) < 1e-3 and np.all(got[np.setdiff1d(np.arange(dim), idx)] == 0)
    assert abs(agg.aux["weight"] - 3) < 1e-2


def test_simulation_with_compression_trains_and_shrinks_bytes(tmp_path):
    def run(compress, out):
        cfg = RunConfig.from_flat({"clients": 5, "rounds": 2, "model": "mlp", "hidden": 16, "local_epochs": 1.0,
                                   "protect": "secagg", "seed": 0, "compress": compress})
        Simulation(cfg, out_dir=out).run()
        return json.loads((out / "metrics.json").read_text())["rounds"]

    base, comp = run("none", tmp_path / "a"), run("randk:0.1+quant:8", tmp_path / "b")
    assert all(r["aborted"] is None for r in base + comp)
    p, q = base[-1]["protection"], comp[-1]["protection"]
    assert q["bits"] < 32 and q["coordinates_sent"] == -(-p["float32_bytes"] // 40)
    assert q["masked_input_bytes"] < 0.1 * p["masked_input_bytes"]
    assert comp[-1]["bytes_up"] < base[-1]["bytes_up"]


def test_client_level_clip_bounds_every_release_with_feedback():
    spec = CompressionSpec.parse("randk:0.5")
    client = CompressedClient(Plaintext(), spec, SEED)
    dim = 64
    for round_ in range(1, 6):
        client.begin({"round": round_, "client_clip": 1.0})  # the clip the client checked against its own config
        update = torch.full((dim,), 1.0 / 8)  # norm 1: already clipped by the client
        sealed = client.seal(update, {"weight": 1.0}, {"round": round_, "dim": dim})
        sent = wire.bytes_to_vector(wire.decode(sealed).payload, spec.kept(dim))
        assert float(torch.linalg.vector_norm(sent)) <= 1.0 + 1e-5  # the residual does not raise the sensitivity
        assert float(torch.linalg.vector_norm(client.residual)) <= 1.0 + 1e-5
    assert float(torch.linalg.vector_norm(client.residual)) > 0.1  # the residual is carried
