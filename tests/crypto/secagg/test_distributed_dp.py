"""Distributed DP inside secure aggregation: the clients' noise shares sum to at
least DP-FedAvg's N(0, (z S)^2) per coordinate, dropouts included, and the server
adds none of its own."""

import math

import numpy as np
import pytest
import torch

from securefl.config import RunConfig
from securefl.crypto.secagg.common import SecAggSettings, distributed_noise_stddev
from securefl.exceptions import ConfigValueError

from tests.helpers.secagg import RecordingExchange, federation, global_model

DIM = 20_000
Z, S = 1.5, 0.5


def _noisy_sum(n: int, drop_at: dict[str, int] | None = None):
    s = SecAggSettings(clip=S, max_weight=1.0, threshold=0.6, noise_multiplier=Z)
    clients, server = federation(s, [np.zeros(DIM) for _ in range(n)])
    agg = server.aggregate(clients, global_model(1, DIM), DIM, RecordingExchange(1, drop_at))
    return s, clients, server, agg


def test_noise_shares_sum_to_the_calibrated_noise():
    s, clients, server, agg = _noisy_sum(10)
    t = s.threshold_for(10)
    codec = s.codec(10)
    share = distributed_noise_stddev(s, dim=DIM, threshold=t, resolution=codec.resolution)
    assert share == pytest.approx(Z * (S + math.sqrt(DIM) * codec.resolution) / math.sqrt(t))
    assert all(c.protection.core.last_noise_stddev == pytest.approx(share) for c in clients)
    total = agg.total.double()
    # every client sent zeros: what the server reads is the noise alone
    assert float(total.std()) == pytest.approx(share * math.sqrt(10), rel=0.03)
    assert abs(float(total.mean())) < 4 * share * math.sqrt(10) / math.sqrt(DIM)
    assert agg.stats["noise_stddev"] == pytest.approx(share * math.sqrt(10))
    assert agg.stats["noise_stddev"] >= Z * S
    assert server.distributed_noise


def test_noise_stays_above_z_s_with_dropouts_down_to_the_threshold():
    drop = {"c07": 3, "c08": 3, "c09": 3, "c06": 3}  # 6 of 10 mask their input, t = 6
    s, _, _, agg = _noisy_sum(10, drop)
    assert agg.stats["survivors"] == 6
    std = float(agg.total.double().std())
    assert std == pytest.approx(agg.stats["noise_stddev"], rel=0.03)
    assert std >= 0.97 * Z * S


def test_inputs_come_back_under_the_noise():
    s = SecAggSettings(clip=S, max_weight=1.0, threshold=0.6, noise_multiplier=Z)
    rng = np.random.default_rng(0)  # test data, not secret
    xs = [rng.uniform(-0.01, 0.01, DIM) for _ in range(8)]
    clients, server = federation(s, xs)
    agg = server.aggregate(clients, global_model(1, DIM), DIM, RecordingExchange(1))
    err = agg.total.double().numpy() - sum(xs)
    assert float(np.std(err)) == pytest.approx(agg.stats["noise_stddev"], rel=0.03)
    assert agg.stats["saturated"] == 0


def test_noise_share_comes_from_the_clients_own_settings():
    """A server configured without noise (or announcing anything else) cannot lower
    a client's noise share: it is computed from the client's own z, clip and
    threshold, and never sent by the server."""
    s = SecAggSettings(clip=S, max_weight=1.0, threshold=0.6, noise_multiplier=1.2)
    quiet = SecAggSettings(clip=S, max_weight=1.0, threshold=0.6, noise_multiplier=1.0)  # same ring, lower z
    assert quiet.codec(5).frac_bits == s.codec(5).frac_bits
    clients, server = federation(s, [np.zeros(DIM) for _ in range(5)], server_settings=quiet)
    server.aggregate(clients, global_model(1, DIM), DIM, RecordingExchange(1))
    codec = s.codec(5)
    share = distributed_noise_stddev(s, dim=DIM, threshold=s.threshold_for(5), resolution=codec.resolution)
    assert all(c.protection.core.last_noise_stddev == pytest.approx(share) for c in clients)
    total = codec.decode(server.last_result.ring_sum[:DIM])
    assert float(np.std(total)) == pytest.approx(share * math.sqrt(5), rel=0.03)


def test_update_is_l2_clipped_to_the_clients_own_clip():
    """Under distributed DP the client clips the L2 norm to its own S, so a larger
    clip announced by the server cannot raise the sensitivity the noise covers."""
    s = SecAggSettings(clip=S, max_weight=1.0, threshold=0.6, noise_multiplier=1e-3)
    big = np.full(DIM, 0.4)  # each coordinate inside +-S, L2 norm 0.4 * sqrt(DIM) >> S
    clients, server = federation(s, [big] * 4)
    agg = server.aggregate(clients, global_model(1, DIM), DIM, RecordingExchange(1))
    total = agg.total.double().numpy()
    assert np.linalg.norm(total) == pytest.approx(4 * S, rel=0.01)
    assert agg.stats["saturated"] == 0


def test_no_noise_without_the_option():
    s = SecAggSettings(clip=S, max_weight=1.0, threshold=0.6)
    clients, server = federation(s, [np.zeros(DIM) for _ in range(5)])
    agg = server.aggregate(clients, global_model(1, DIM), DIM, RecordingExchange(1))
    assert float(agg.total.abs().max()) == 0.0 and not server.distributed_noise
    assert agg.stats["noise_stddev"] == 0.0


@pytest.mark.parametrize("z", [-1.0, float("inf"), float("nan")])
def test_bad_noise_multiplier_names_the_field(z):
    with pytest.raises(ConfigValueError, match="noise_multiplier"):
        SecAggSettings(noise_multiplier=z)


@pytest.mark.parametrize(
    "flat",
    [
        {"protect": "none", "dp": "client", "noise_multiplier": 1.0},
        {"protect": "secagg", "dp": "none"},
        {"protect": "ckks", "dp": "client", "noise_multiplier": 1.0},
        {"protect": "secagg", "dp": "client", "noise_multiplier": 1.0, "adaptive_clip": True},
    ],
)
def test_config_refuses_distributed_dp_where_it_cannot_hold(flat):
    with pytest.raises(ConfigValueError, match="secagg_distributed_dp"):
        RunConfig.from_flat({"dataset": "synthetic", "clients": 4, "secagg_distributed_dp": True, **flat})


def test_cli_flag_bad_combination_exits_2(capsys):
    from securefl.cli import main

    rc = main(["train", "--dataset", "synthetic", "--clients", "4", "--rounds", "1", "--protect", "none",
               "--secagg-distributed-dp", "--out", "/nonexistent/never-written"])
    assert rc == 2 and "--secagg-distributed-dp" in capsys.readouterr().err


def test_federation_with_distributed_dp_adds_no_central_noise(monkeypatch):
    """The server's own noise call gets z = 0; the accountant still charges z, so the
    privacy spend equals the central-noise run's."""
    import securefl.aggregation.dp as server_mod  # DP-FedAvg wraps the server's aggregation
    from securefl.simulation import Simulation

    calls = []
    real = server_mod.noisy_average

    def spy(total, **kw):
        calls.append(kw["noise_multiplier"])
        return real(total, **kw)

    monkeypatch.setattr(server_mod, "noisy_average", spy)
    base = {"dataset": "synthetic", "clients": 6, "rounds": 2, "model": "logreg", "dp": "client",
            "noise_multiplier": 1.0, "clip": 0.5, "protect": "secagg", "seed": 0}
    seen = []  # the server's own round results (the released metrics withhold cohort-dependent stats)
    ddp = Simulation(RunConfig.from_flat({**base, "secagg_distributed_dp": True})).run(on_round=seen.append)
    assert calls == [0.0, 0.0]
    rounds = ddp.metrics["rounds"]
    assert len(seen) == 2 and all(r.protection["noise_stddev"] >= 0.5 for r in seen)
    calls.clear()
    central = Simulation(RunConfig.from_flat(base)).run()
    assert calls == [1.0, 1.0]
    assert ddp.metrics["final"]["epsilon"] == pytest.approx(central.metrics["final"]["epsilon"])
    assert torch.isfinite(torch.tensor([r["loss"] for r in rounds])).all()


def test_noise_share_is_an_exact_discrete_gaussian_not_a_rounded_float(monkeypatch):
    """The share is drawn by the exact discrete Gaussian sampler in grid units (no
    float Gaussian is ever drawn) with variance units^2 >= (sigma / resolution)^2."""
    import math as _math

    import numpy as _np

    from securefl.crypto.quantize import FixedPoint
    from securefl.crypto.secagg.common import encode_with_noise, noise_units
    from securefl.privacy.noise import SecureRNG

    def no_float_gaussian(*a, **k):
        raise AssertionError("a float Gaussian was drawn for a DP share")

    monkeypatch.setattr(SecureRNG, "normal", no_float_gaussian)
    codec = FixedPoint(bits=64, frac_bits=16, bound=1.0)
    sigma = 0.05
    units = noise_units(sigma, codec.resolution)
    assert units == _math.ceil(sigma / codec.resolution)
    n = 200_000
    out = encode_with_noise(codec, _np.zeros(n), _np.zeros(0), sigma, SecureRNG())
    share = codec.signed(out).astype(_np.float64)
    assert _np.all(share == _np.rint(share))
    assert abs(share.mean()) < 5 * units / _math.sqrt(n)
    assert abs(share.var() / units**2 - 1) < 0.02
