"""The composition root: one RunConfig -> one federation, the budget solved once.

``--epsilon`` becomes a noise multiplier in exactly one function,
:func:`securefl.privacy.calibration.noise_multiplier_for`, which every path uses:
sample-level DP-SGD, client-level DP-FedAvg with central noise, and distributed
noise in secure-aggregation shares.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import torch

from securefl.client import SecureClient
from securefl.config import DPConfig, DPMode, RunConfig
from securefl.crypto.secagg.common import SecAggSettings
from securefl.exceptions import ConfigValueError
from securefl.models import build_model
from securefl.privacy import accounting, calibration
from securefl.protections import PROTECTIONS, Plaintext, ProtectionSpec
from securefl.protections.ckks import CKKSSettings
from securefl.server import SecureServer

# ``securefl.build`` is the build function (exported by the package); the module:
B = importlib.import_module("securefl.build")
ROOT = Path(__file__).resolve().parents[1] / "securefl"
SOLVED = 1.2345  # what the stand-in solver returns: easy to follow through the federation


@pytest.fixture
def solver(monkeypatch):
    """Replace the bisection behind noise_multiplier_for by a counting stand-in."""
    calls: list[tuple] = []

    def fake(epsilon, delta, sample_rate, steps, accountant="prv", tol=0.005):
        calls.append((epsilon, delta, sample_rate, steps, accountant))
        return SOLVED

    monkeypatch.setattr(accounting, "solve_noise_multiplier", fake)
    return calls


def _small(**flat) -> RunConfig:
    base = {"dataset": "synthetic", "clients": 4, "rounds": 3, "model": "logreg", "seed": 0}
    return RunConfig.from_flat({**base, **flat})


# ------------------------------------------------------------------ one function
def test_only_calibration_calls_the_solver():
    """Static: nothing in securefl but the calibration module calls the solver."""
    callers = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name == "solve_noise_multiplier":
                    callers.append(path.relative_to(ROOT).as_posix())
    assert callers == ["privacy/calibration.py"]


def test_sample_level_path_uses_the_one_function(solver):
    cfg = _small(dp="sample", epsilon=2.0, sample_rate=0.5, local_epochs=1.0)
    fed = B.build(cfg)
    assert solver == [(2.0, 1e-5, 0.5, 3 * 2, "prv")]  # one schedule, one solve, for every client
    assert {c.noise_multiplier for c in fed.clients} == {SOLVED}
    assert fed.noise.sample_level == {c.client_id: SOLVED for c in fed.clients}
    assert fed.server.noise_multiplier is None


def test_client_level_central_path_uses_the_one_function(solver):
    cfg = _small(dp="client", epsilon=2.0, sampling="poisson", fraction=0.5)
    fed = B.build(cfg)
    assert solver == [(2.0, 1e-5, 0.5, 3, "prv")]
    assert fed.noise.client_level == fed.server.noise_multiplier == SOLVED
    assert all(c.noise_multiplier is None for c in fed.clients)
    assert fed.server.global_message(1)  # the wrapped aggregation is in place
    assert fed.server.aggregation.hides_participants


def test_distributed_path_uses_the_one_function(solver):
    cfg = _small(dp="client", epsilon=2.0, clip=0.5, protect="secagg", secagg_distributed_dp=True)
    fed = B.build(cfg)
    assert solver == [(2.0, 1e-5, 1.0, 3, "prv")]  # once, for the clients' shares and the accountant
    assert isinstance(fed.settings, SecAggSettings)
    assert fed.settings.noise_multiplier == fed.server.noise_multiplier == SOLVED
    assert all(c.protection.core.settings.noise_multiplier == SOLVED for c in fed.clients)
    assert fed.server.protection.distributed_noise


def test_hand_built_parties_solve_through_the_same_function(solver, digits):
    """A client or server composed by hand (no build) asks the same function."""
    dp = DPConfig(dp="sample", epsilon=3.0)
    x, y = digits.x_train[:50], digits.y_train[:50]
    client = SecureClient("c", x, y, model_fn=lambda: build_model("logreg", (64,), 10), dp=dp, planned_rounds=2)
    assert client.noise_multiplier == SOLVED and solver[-1][:3] == (3.0, 1e-5, client.sample_rate)
    server = SecureServer(torch.nn.Linear(2, 1), dp=DPConfig(dp="client", epsilon=1.0), num_clients=4)
    assert server.noise_multiplier == SOLVED and solver[-1] == (1.0, 1e-5, 1.0, 30, "prv")


def test_an_explicit_noise_multiplier_is_not_solved(solver):
    fed = B.build(_small(dp="client", noise_multiplier=0.7))
    assert solver == [] and fed.server.noise_multiplier == 0.7
    assert calibration.noise_multiplier_for(DPConfig(dp="sample", noise_multiplier=0.3), sample_rate=0.1, steps=5) == 0.3


def test_real_solve_meets_the_budget():
    dp = DPConfig(dp="client", epsilon=2.0)
    z = calibration.noise_multiplier_for(dp, sample_rate=0.5, steps=10)
    event = calibration.planned_event(dp, sample_rate=0.5, steps=10)
    assert event.history() == ((z, 0.5, 10),)
    assert accounting.epsilon_under("prv", event.history(), 1e-5) <= 2.0


# ------------------------------------------------------------------ settings and checks
def test_protections_get_their_own_settings_not_the_run_config():
    ckks = B.build(_small(protect="ckks", clients=3)).settings
    assert isinstance(ckks, CKKSSettings) and ckks.params.max_summands == 3
    sa = B.build(_small(protect="secagg")).settings
    assert isinstance(sa, SecAggSettings) and sa.noise_multiplier == 0.0
    assert B.build(_small()).settings is None


def test_check_names_the_field():
    with pytest.raises(ConfigValueError) as info:
        B.check(_small(protect="secagg", secagg_bits=16))
    assert info.value.field == "secagg_bits"
    with pytest.raises(ConfigValueError) as info:
        B.check(_small(protect="secagg", min_clients=5))
    assert info.value.field == "min_clients"
    with pytest.raises(ConfigValueError) as info:
        B.build(_small(ckks_preset="huge"))  # every protection's fields, whichever is chosen
    assert info.value.field == "ckks_preset"


def test_build_wires_one_federation(tmp_path):
    fed = B.build(_small(protect="secagg", dp="client", noise_multiplier=1.0), out_dir=tmp_path)
    assert [c.client_id for c in fed.clients] == [f"client-{k}" for k in range(4)]
    assert all(c.ledger is fed.ledger is fed.server.ledger for c in fed.clients)
    assert (tmp_path / "ledger.json").exists() and {g.path.parent for g in fed.guards} == {tmp_path / "state"}
    assert all(c.guard is g and c.protection.core.guard is g for c, g in zip(fed.clients, fed.guards))
    assert fed.config.dp.mode is DPMode.CLIENT


def test_a_registered_protection_runs_end_to_end():
    from securefl import config as config_mod
    from securefl.simulation import Simulation

    class Loud(Plaintext):
        name = "loud"

    spec = ProtectionSpec(client=lambda s, cid, rng, **_: Loud(), server=lambda s, rng, **_: Loud())
    try:
        from securefl.protections import register

        register("loud", spec)  # no settings function: its factories get None
        res = Simulation(_small(protect="loud", rounds=2)).run()
        B.register_settings("loud", lambda config, noise=None: {"rounds": config.server.rounds})
        assert B.protection_settings(_small(protect="loud")) == {"rounds": 3}
        assert res.metrics["final"]["accuracy"] is not None
        with pytest.raises(ConfigValueError):
            register("loud", spec)
    finally:
        PROTECTIONS.pop("loud", None)
        B.SETTINGS.pop("loud", None)
        if "loud" in config_mod.PROTECT_NAMES:
            config_mod.PROTECT_NAMES.remove("loud")
