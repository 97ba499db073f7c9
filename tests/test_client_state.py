"""SecureClient's state across rounds: worker momentum (Karimireddy et al. 2021),
``local_steps`` rounds, and what DP-SGD is charged for them."""

import pytest
import torch

from securefl import ClientConfig, DPConfig, PrivacyLedger, SecureClient
from securefl.build import noise_plan
from securefl.config import RunConfig
from securefl.exceptions import ConfigValueError
from securefl.models import build_model, get_flat, set_flat
from securefl.privacy import accounting

LR, BETA = 0.2, 0.9


def _model_fn(digits):
    return lambda: build_model("mlp", digits.input_shape, 10, seed=0)


def _client(digits, parts, k=0, **kw):
    idx = parts[k]
    return SecureClient(f"client-{k}", digits.x_train[idx], digits.y_train[idx], model_fn=_model_fn(digits), **kw)


def _full_batch_grad(digits, client, w):
    m = _model_fn(digits)()
    set_flat(m, w)
    loss = torch.nn.functional.cross_entropy(m(client.x), client.y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(m.parameters()))])


def _momentum_config(**kw):
    # one full-batch step per round: the update is -lr * (the momentum buffer)
    return ClientConfig(lr=LR, batch_size=10_000, local_steps=1, client_momentum=BETA, **kw)


def test_worker_momentum_persists_across_rounds_and_changes_the_update(digits, digits_parts):
    client = _client(digits, digits_parts, config=_momentum_config())
    plain = _client(digits, digits_parts, config=ClientConfig(lr=LR, batch_size=10_000, local_steps=1))
    w0 = get_flat(_model_fn(digits)())
    g0 = _full_batch_grad(digits, client, w0)
    first = client.train(w0, 1)
    assert torch.allclose(first.update, -LR * (1 - BETA) * g0, atol=1e-6)
    assert torch.allclose(client.state_dict()["momentum_buffer"], (1 - BETA) * g0, atol=1e-6)
    w1 = w0 - 0.5 * g0  # any new global model
    g1 = _full_batch_grad(digits, client, w1)
    second = client.train(w1, 2)
    expected = -LR * (BETA * (1 - BETA) * g0 + (1 - BETA) * g1)
    assert torch.allclose(second.update, expected, atol=1e-6)
    # without worker momentum the same round is a plain gradient step
    assert torch.allclose(plain.train(w1, 2).update, -LR * g1, atol=1e-6)
    assert (second.update - plain.train(w1, 2).update).norm() > 0.1 * second.update.norm()


def test_state_dict_round_trip_restores_the_next_update(digits, digits_parts):
    client = _client(digits, digits_parts, config=_momentum_config())
    w0 = get_flat(_model_fn(digits)())
    for r in (1, 2, 3):
        client.train(w0, r)
    state = client.state_dict()
    assert set(state) == {"momentum_buffer"} and state["momentum_buffer"].shape == (client.dim,)
    restored = _client(digits, digits_parts, config=_momentum_config())
    restored.load_state_dict({"momentum_buffer": state["momentum_buffer"].tolist()})  # plain lists load too
    fresh = _client(digits, digits_parts, config=_momentum_config())
    expected = client.train(w0, 4).update
    assert torch.allclose(restored.train(w0, 4).update, expected, atol=1e-6)
    assert not torch.allclose(fresh.train(w0, 4).update, expected, atol=1e-4)
    with pytest.raises(ConfigValueError, match="momentum_buffer"):
        restored.load_state_dict({"momentum_buffer": torch.zeros(3)})
    with pytest.raises(ConfigValueError, match="momentum_buffer"):
        _client(digits, digits_parts).load_state_dict(state)  # no worker momentum configured


class _StepCounter:
    def __init__(self, monkeypatch):
        self.count = 0
        step = torch.optim.SGD.step

        def counted(opt, *a, **k):
            self.count += 1
            return step(opt, *a, **k)

        monkeypatch.setattr(torch.optim.SGD, "step", counted)


@pytest.mark.parametrize("steps", [1, 3, 40])  # 40 batches of 16: more than one pass
def test_local_steps_takes_exactly_that_many_optimizer_steps(digits, digits_parts, monkeypatch, steps):
    counter = _StepCounter(monkeypatch)
    client = _client(digits, digits_parts, config=ClientConfig(batch_size=16, local_steps=steps))
    res = client.train(get_flat(_model_fn(digits)()), 1)
    assert counter.count == steps and res.steps == steps


@pytest.mark.parametrize("momentum", [0.0, BETA])
def test_dp_sgd_is_charged_exactly_local_steps_per_round(digits, digits_parts, monkeypatch, momentum):
    steps, rounds, delta = 4, 3, 1e-5
    ledger = PrivacyLedger(None, delta=delta, budget=10.0)
    config = ClientConfig(batch_size=32, local_steps=steps, client_momentum=momentum)
    client = _client(digits, digits_parts, dp=DPConfig(dp="sample", epsilon=3.0), config=config,
                     planned_rounds=rounds, ledger=ledger)
    assert client.local_steps == steps
    counter = _StepCounter(monkeypatch)
    w0 = get_flat(_model_fn(digits)())
    for r in range(1, rounds + 1):
        client.train(w0, r)
    assert counter.count == rounds * steps
    assert [e["steps"] for e in ledger.entries] == [steps] * rounds
    history = ((client.noise_multiplier, client.sample_rate, rounds * steps),)
    spent = accounting.epsilon_under("prv", history, delta)
    assert spent == pytest.approx(ledger.entries[-1]["epsilon"]["prv"], rel=1e-6)
    assert 2.8 <= spent <= 3.0  # the noise was solved for rounds * local_steps steps
    if momentum:
        assert client.state_dict()["momentum_buffer"].norm() > 0


def test_noise_plan_solves_for_local_steps(digits):
    flat = {"dp": "sample", "epsilon": 3.0, "rounds": 5, "batch_size": 32}
    fewer = noise_plan(RunConfig.from_flat({**flat, "local_steps": 2}), {"c": 400})
    more = noise_plan(RunConfig.from_flat({**flat, "local_steps": 20}), {"c": 400})
    assert more.sample_level["c"] > fewer.sample_level["c"]


def test_flags_reach_every_client_of_a_run():
    from securefl.cli import build_parser, config_from_args
    from securefl.simulation import Simulation

    ns = build_parser().parse_args(["train", "--dataset", "breast_cancer", "--clients", "3", "--model", "logreg",
                                    "--rounds", "2", "--local-steps", "2", "--client-momentum", "0.9"])
    config = config_from_args(ns)
    assert (config.client.local_steps, config.client.client_momentum) == (2, 0.9)
    result = Simulation(config).run()
    assert all(c.local_steps == 2 and c.state_dict()["momentum_buffer"].norm() > 0 for c in result.clients)
