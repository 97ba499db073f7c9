"""The inversion case releases what the library releases, for the same inputs and the
same seeded SecureRNG: DP-SGD as SecureClient trains, DP-FedAvg clipping as
SecureClient sends, and distributed-DP noise shares as the real secure-aggregation
protocol sums them. A case with a formula of its own fails these tests."""

import copy

import numpy as np
import pytest
import torch

from attacks.inversion.cases import CaseConfig, build_case_model, local_update, run_round, trial_batches
from securefl.client import SecureClient
from securefl.config import ClientConfig, DPConfig, ServerConfig
from securefl.models import get_flat
from securefl.privacy.noise import SecureRNG
from securefl.server import SecureServer
from securefl.transport import wire


def _batches(digits, case, seed=0):
    idx = trial_batches(digits.y_train, case, 0, seed)
    return [(digits.x_train[i], digits.y_train[i]) for i in idx]


def _library_client(cid, model, x, y, case, *, dp, rng=None, protection=None):
    """A SecureClient doing what the case's client does: full-batch local steps."""
    config = ClientConfig(local_epochs=float(case.local_steps), batch_size=len(x), sample_rate=1.0, lr=case.local_lr)
    return SecureClient(cid, x, y, model_fn=lambda: copy.deepcopy(model), config=config, dp=dp,
                        algorithm="fedsgd" if dp.dp != "sample" else "fedavg", rng=rng, protection=protection)


@pytest.mark.parametrize("batch, steps, sigma", [(1, 1, 0.5), (3, 2, 1.0)])
def test_dp_sgd_update_equals_secure_client(digits, batch, steps, sigma):
    case = CaseConfig(batch_size=batch, local_steps=steps, dp="sample", clip=0.1, noise_multiplier=sigma)
    model = build_case_model(case, digits.input_shape, digits.num_classes, seed=3)
    x, y = digits.x_train[:batch], digits.y_train[:batch]
    delta, _ = local_update(model, x, y, case, SecureRNG.from_seed(11, "case-dp-sgd"))
    dp = DPConfig(dp="sample", noise_multiplier=sigma, clip=case.clip)
    client = _library_client("c0", model, x, y, case, dp=dp, rng=SecureRNG.from_seed(11, "case-dp-sgd"))
    assert client.local_steps == steps and client.sample_rate == 1.0
    released = client.train(get_flat(model), 1).update
    assert torch.equal(torch.cat([d.reshape(-1) for d in delta]), released)


def test_dp_sgd_view_is_the_clients_release_with_weight_one(digits):
    case = CaseConfig(batch_size=2, dp="sample", clip=0.1, noise_multiplier=1.0)
    model = build_case_model(case, digits.input_shape, digits.num_classes, seed=0)
    (x, y), = _batches(digits, case)
    view, _ = run_round(case, model, [(x, y)], SecureRNG.from_seed(5, "view"))
    client = _library_client("c0", model, x, y, case, dp=DPConfig(dp="sample", noise_multiplier=1.0, clip=0.1),
                             rng=SecureRNG.from_seed(5, "view"))
    assert view.weight == 1.0
    assert torch.equal(torch.cat([u.reshape(-1) for u in view.update]), client.train(get_flat(model), 1).update)


def test_client_level_clip_equals_what_secure_client_sends(digits):
    case = CaseConfig(dp="client", clip=1e-3, noise_multiplier=1.0)  # protect none: the server noises later
    model = build_case_model(case, digits.input_shape, digits.num_classes, seed=0)
    (x, y), = _batches(digits, case)
    view, truth = run_round(case, model, [(x, y)], SecureRNG())
    assert truth.clipped_fraction == 1.0
    client = _library_client("c0", model, x, y, case, dp=DPConfig(dp="client", noise_multiplier=1.0, clip=case.clip))
    w = get_flat(model)
    message = wire.encode(wire.Kind.GLOBAL_MODEL, {"round": 1, "dim": w.numel(), "client_clip": case.clip},
                          wire.vector_to_bytes(w))
    sent = wire.decode(client.fit(message))
    assert sent.header["aux"] == {"weight": 1.0} and view.weight == 1.0
    released = wire.bytes_to_vector(sent.payload, w.numel())
    got = torch.cat([u.reshape(-1) for u in view.update])
    assert float(got.double().norm()) == pytest.approx(case.clip, rel=1e-6)
    torch.testing.assert_close(got, released, rtol=1e-5, atol=1e-10)


def test_distributed_noise_release_equals_the_secure_aggregation_protocol(digits):
    from securefl.protections.secagg import SecAggClientProtection, SecAggServerProtection

    case = CaseConfig(protect="secagg", clients=10, dp="client", clip=0.01, noise_multiplier=1.0)
    model = build_case_model(case, digits.input_shape, digits.num_classes, seed=0)
    batches = _batches(digits, case)
    view, _ = run_round(case, model, batches, SecureRNG.from_seed(7, "noise-shares"))
    # the library: ten SecureClients under client-level DP, each sealing through the real
    # secure-aggregation client (one seeded noise stream, drawn in client order), and a server
    settings = case.secagg_settings()
    dp = DPConfig(dp="client", noise_multiplier=case.noise_multiplier, clip=case.clip)
    noise = SecureRNG.from_seed(7, "noise-shares")
    clients = [
        _library_client(f"c{k:02d}", model, x, y, case, dp=dp,
                        protection=SecAggClientProtection(client_id=f"c{k:02d}", settings=settings, rng=noise))
        for k, (x, y) in enumerate(batches)
    ]
    half = SecAggServerProtection(settings=settings)
    server = SecureServer(copy.deepcopy(model), config=ServerConfig(rounds=1), dp=dp, num_clients=10, protection=half)
    res = server.run_round(1, clients)
    assert res.aborted is None and half.last_result.aux["weight"] == view.weight == 10.0
    released = half.last_result.total  # the unmasked sum of the noised shares (float64)
    got = torch.cat([u.reshape(-1) for u in view.update]).double().numpy()
    # equal up to the protocol's stochastic rounding of each value (one grid unit per client)
    resolution = settings.codec(10).resolution
    np.testing.assert_allclose(got, released, rtol=0, atol=10 * resolution + 1e-8)
    assert float(np.std(released)) > case.noise_multiplier * case.clip  # the noise is there
