"""F4: a client's clip comes from its own configuration, never from the server.

A malicious server announcing a huge ``client_clip`` would make a client's update
far larger than its noise (central or distributed) is calibrated for. The client
decides client-level clipping from its own DPConfig; with fixed clipping any other
clip is refused, with adaptive clipping (central DP only) only a sane one is taken.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from securefl import DPConfig, RunConfig, SecureClient, Simulation
from securefl.exceptions import ProtocolError
from securefl.models import build_model, get_flat
from securefl.protections import Plaintext
from securefl.transport import wire

OWN_CLIP = 0.1


def _client(digits, digits_parts, dp: DPConfig, **kw) -> SecureClient:
    idx = digits_parts[0]
    model_fn = lambda: build_model("logreg", digits.input_shape, 10, seed=0)  # noqa: E731
    return SecureClient("client-0", digits.x_train[idx], digits.y_train[idx], model_fn=model_fn, dp=dp, **kw)


def _global(client: SecureClient, round_: int = 1, **extra: Any) -> bytes:
    w = get_flat(client.model)
    return wire.encode(wire.Kind.GLOBAL_MODEL, {"round": round_, "dim": w.numel(), **extra}, wire.vector_to_bytes(w))


def _untrained(client: SecureClient, monkeypatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(client, "train", lambda *a: calls.append(1))
    return calls


FIXED = DPConfig(dp="client", noise_multiplier=1.0, clip=OWN_CLIP)
ADAPTIVE = DPConfig(dp="client", noise_multiplier=1.0, clip=OWN_CLIP, adaptive_clip=True)


def test_fixed_clip_refuses_a_larger_server_clip_naming_both(digits, digits_parts, monkeypatch):
    client = _client(digits, digits_parts, FIXED)
    calls = _untrained(client, monkeypatch)
    with pytest.raises(ProtocolError) as info:
        client.fit(_global(client, client_clip=1e6))
    assert "1000000.0" in str(info.value) and str(OWN_CLIP) in str(info.value)
    assert calls == [] and client.guard.last("fit") is None


@pytest.mark.parametrize("dp", [FIXED, ADAPTIVE], ids=["fixed", "adaptive"])
def test_missing_clip_is_refused_under_client_dp(digits, digits_parts, dp, monkeypatch):
    client = _client(digits, digits_parts, dp)
    calls = _untrained(client, monkeypatch)
    with pytest.raises(ProtocolError, match="client_clip missing"):
        client.fit(_global(client))
    assert calls == []


@pytest.mark.parametrize("dp", [DPConfig(), DPConfig(dp="sample", noise_multiplier=1.0)], ids=["none", "sample"])
def test_clip_is_refused_when_not_configured_for_client_dp(digits, digits_parts, dp, monkeypatch):
    client = _client(digits, digits_parts, dp)
    calls = _untrained(client, monkeypatch)
    with pytest.raises(ProtocolError, match="client_clip=0.1"):
        client.fit(_global(client, client_clip=0.1))
    assert calls == []


@pytest.mark.parametrize("bad", [math.inf, math.nan, 0.0, -1.0, "0.1", True])
def test_adaptive_clip_must_be_positive_and_finite(digits, digits_parts, bad, monkeypatch):
    client = _client(digits, digits_parts, ADAPTIVE)
    calls = _untrained(client, monkeypatch)
    with pytest.raises(ProtocolError, match="client_clip"):
        client.fit(_global(client, client_clip=bad))
    assert calls == []


def test_honest_clip_bounds_the_update(digits, digits_parts):
    client = _client(digits, digits_parts, FIXED, protection=Plaintext())
    msg = wire.decode(client.fit(_global(client, client_clip=OWN_CLIP)))
    sent = wire.bytes_to_vector(msg.payload, msg.header["dim"])
    assert float(sent.double().norm()) <= OWN_CLIP * (1 + 1e-6)
    assert msg.header["aux"] == {"weight": 1.0}


def test_adaptive_clip_takes_the_servers_moving_clip(digits, digits_parts):
    client = _client(digits, digits_parts, ADAPTIVE, protection=Plaintext())
    msg = wire.decode(client.fit(_global(client, client_clip=0.02)))
    sent = wire.bytes_to_vector(msg.payload, msg.header["dim"])
    assert float(sent.double().norm()) <= 0.02 * (1 + 1e-6)


# ------------------------------------------------------------ through a federation
def _federation(distributed: bool) -> tuple[Simulation, list[torch.Tensor]]:
    flat = {"dataset": "digits", "clients": 4, "rounds": 1, "model": "logreg", "dp": "client",
            "noise_multiplier": 1.0, "clip": OWN_CLIP, "lr": 1.0}
    if distributed:
        flat.update(protect="secagg", secagg_distributed_dp=True)
    sim = Simulation(RunConfig.from_flat(flat))
    sealed: list[torch.Tensor] = []
    for c in sim.clients:
        seal = c.protection.seal

        def recording_seal(update, aux, header, seal=seal):
            sealed.append(update.detach().clone())
            return seal(update, aux, header)

        c.protection.seal = recording_seal  # type: ignore[method-assign]
    return sim, sealed


def _malicious(server, clip: float) -> None:
    """The server announces its own clip instead of the federation's."""
    honest = server.global_message

    def global_message(round_: int) -> bytes:
        msg = wire.decode(honest(round_))
        return wire.encode(msg.kind, {**msg.header, "client_clip": clip}, msg.payload)

    server.global_message = global_message


@pytest.mark.parametrize("distributed", [False, True], ids=["central", "secagg-distributed"])
def test_malicious_server_clip_is_refused_in_a_federation(distributed):
    sim, sealed = _federation(distributed)
    _malicious(sim.server, 1e6)
    w0 = sim.server.weights.clone()
    res = sim.server.run_round(1, sim.clients)
    assert res.aborted and "client_clip=1000000.0" in res.aborted and str(OWN_CLIP) in res.aborted
    assert sealed == []  # no client sealed (or trained towards) anything
    assert torch.equal(sim.server.weights, w0)


@pytest.mark.parametrize("distributed", [False, True], ids=["central", "secagg-distributed"])
def test_honest_server_clip_bounds_every_update_in_a_federation(distributed):
    sim, sealed = _federation(distributed)
    res = sim.server.run_round(1, sim.clients)
    assert res.aborted is None and len(sealed) == 4
    norms = [float(u.double().norm()) for u in sealed]
    assert max(norms) <= OWN_CLIP * (1 + 1e-6) and min(norms) > 0.5 * OWN_CLIP  # lr 1: every update clipped
