"""SecureClient: local training, DP-SGD spend recording, budget refusal, sealing."""

import math

import pytest
import torch

from securefl import ClientConfig, DPConfig, PrivacyLedger, SecureClient
from securefl.exceptions import BudgetExhaustedError, ProtocolError
from securefl.models import build_model, get_flat
from securefl.privacy import accounting
from securefl.transport import wire


def _model_fn(digits):
    return lambda: build_model("mlp", digits.input_shape, 10, seed=0)


def _global(weights, round_=1, **extra):
    header = {"round": round_, "dim": weights.numel(), **extra}
    return wire.encode(wire.Kind.GLOBAL_MODEL, header, wire.vector_to_bytes(weights))


def _client(digits, parts, k=0, **kw):
    idx = parts[k]
    return SecureClient(f"client-{k}", digits.x_train[idx], digits.y_train[idx], model_fn=_model_fn(digits), **kw)


def test_plain_fit_returns_weighted_update_that_lowers_local_loss(digits, digits_parts):
    client = _client(digits, digits_parts)
    w0 = get_flat(_model_fn(digits)())
    msg = wire.decode(client.fit(_global(w0)), expect=wire.Kind.CLIENT_UPDATE)
    n = client.num_samples
    assert msg.header["aux"]["weight"] == n
    update = wire.bytes_to_vector(msg.payload, w0.numel()) / n
    assert update.norm() > 0

    def local_loss(w):
        m = _model_fn(digits)()
        from securefl.models import set_flat

        set_flat(m, w)
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(m(client.x), client.y))

    assert local_loss(w0 + update) < local_loss(w0) - 0.1


def test_dp_client_records_spend_before_training(digits, digits_parts, tmp_path, monkeypatch):
    ledger = PrivacyLedger(tmp_path / "ledger.json", delta=1e-5, budget=3.0)
    client = _client(digits, digits_parts, dp=DPConfig(dp="sample", epsilon=3.0), planned_rounds=5, ledger=ledger)

    def crash(*a, **k):
        raise RuntimeError("power cut during training")

    monkeypatch.setattr("securefl.client.dp_sgd_train", crash)
    with pytest.raises(RuntimeError):
        client.fit(_global(get_flat(_model_fn(digits)())))
    on_disk = PrivacyLedger.load(tmp_path / "ledger.json")
    assert len(on_disk.entries) == 1
    assert on_disk.entries[0]["subject"] == "client-0"
    assert on_disk.entries[0]["epsilon"]["prv"] > 0


def test_noise_multiplier_is_solved_for_the_planned_rounds(digits, digits_parts):
    rounds = 6
    client = _client(digits, digits_parts, dp=DPConfig(dp="sample", epsilon=2.0), planned_rounds=rounds)
    history = ((client.noise_multiplier, client.sample_rate, rounds * client.local_steps),)
    eps = accounting.epsilon_under("prv", history, 1e-5)
    assert 1.9 <= eps <= 2.0
    # a noticeably smaller sigma would break the budget
    assert accounting.epsilon_under("prv", ((client.noise_multiplier * 0.9, client.sample_rate, rounds * client.local_steps),), 1e-5) > 2.0


def test_client_refuses_a_round_over_budget_and_records_nothing(digits, digits_parts, tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.json", delta=1e-5, budget=1.0)
    dp = DPConfig(dp="sample", epsilon=1.0, noise_multiplier=3.0)
    client = _client(digits, digits_parts, dp=dp, ledger=ledger, config=ClientConfig(sample_rate=0.2, local_epochs=1.0))
    w = get_flat(_model_fn(digits)())
    trained = 0
    with pytest.raises(BudgetExhaustedError) as info:
        for r in range(1, 50):
            client.fit(_global(w, r))
            trained += 1
    assert trained >= 1
    assert info.value.would_be > 1.0 >= info.value.spent
    assert len(PrivacyLedger.load(tmp_path / "l.json").entries) == trained


def test_dp_sgd_update_differs_between_runs_and_plain_does_not(digits, digits_parts):
    w = get_flat(_model_fn(digits)())
    dp = DPConfig(dp="sample", noise_multiplier=1.0)
    a = _client(digits, digits_parts, dp=dp).train(w, 1).update
    b = _client(digits, digits_parts, dp=dp).train(w, 1).update
    assert not torch.allclose(a, b)
    p1 = _client(digits, digits_parts).train(w, 1).update
    p2 = _client(digits, digits_parts).train(w, 1).update
    assert torch.allclose(p1, p2)


def test_client_level_clip_bounds_the_sent_update(digits, digits_parts):
    clip = 0.05
    client = _client(digits, digits_parts, dp=DPConfig(dp="client", noise_multiplier=1.0, clip=clip))
    w = get_flat(_model_fn(digits)())
    msg = wire.decode(client.fit(_global(w, client_clip=clip)))
    sent = wire.bytes_to_vector(msg.payload, w.numel())
    assert float(sent.norm()) <= clip * (1 + 1e-5)
    assert msg.header["aux"] == {"weight": 1.0}  # fixed clipping: no unclipped bit leaves


def test_adaptive_clipping_reports_the_unclipped_bit(digits, digits_parts):
    dp = DPConfig(dp="client", noise_multiplier=1.0, clip=0.05, adaptive_clip=True)
    client = _client(digits, digits_parts, dp=dp)
    w = get_flat(_model_fn(digits)())
    tight = wire.decode(client.fit(_global(w, 1, client_clip=0.05)))
    assert tight.header["aux"] == {"weight": 1.0, "unclipped": 0.0}
    loose = wire.decode(client.fit(_global(w, 2, client_clip=1e6)))  # the server's moving clip
    assert loose.header["aux"] == {"weight": 1.0, "unclipped": 1.0}


def test_fedsgd_takes_exactly_one_step(digits, digits_parts):
    client = _client(digits, digits_parts, algorithm="fedsgd", config=ClientConfig(lr=0.1))
    w = get_flat(_model_fn(digits)())
    res = client.train(w, 1)
    assert res.steps == 1
    # one full-batch gradient step: update == -lr * grad
    m = _model_fn(digits)()
    loss = torch.nn.functional.cross_entropy(m(client.x), client.y)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(m.parameters()))])
    assert torch.allclose(res.update, -0.1 * grad, atol=1e-6)


def test_sample_rate_defaults_to_batch_over_n(digits, digits_parts):
    client = _client(digits, digits_parts, config=ClientConfig(batch_size=16, local_epochs=1.0))
    assert math.isclose(client.sample_rate, 16 / client.num_samples)
    assert client.local_steps == math.ceil(client.num_samples / 16)


def test_training_loss_stays_on_the_client_under_a_hiding_protection(digits, digits_parts):
    from securefl.protections import ClientProtection, Plaintext

    class Recorder(ClientProtection):
        name = "recorder"

        def seal(self, weighted_update, aux, header):
            self.header = header
            return b""

    hidden, shown = Recorder(), Plaintext()
    w0 = get_flat(_model_fn(digits)())
    _client(digits, digits_parts, protection=hidden).fit(_global(w0))
    assert set(hidden.header) == {"round", "client", "dim"} and hidden.header["round"] == 1
    msg = wire.decode(_client(digits, digits_parts, protection=shown).fit(_global(w0)))
    assert msg.header["loss"] > 0 and msg.header["steps"] >= 1  # plaintext: the server sees the update anyway


@pytest.mark.parametrize(
    "header, needle",
    [
        ({"round": 0, "dim": None}, "round=0"),
        ({"round": "1", "dim": None}, "round='1'"),
        ({"round": True, "dim": None}, "round=True"),
        ({"round": 1, "dim": 3}, "dim=3"),
    ],
)
def test_malformed_round_or_dim_is_refused_before_training(digits, digits_parts, header, needle):
    client = _client(digits, digits_parts)
    w = get_flat(_model_fn(digits)())
    header = {**header, "dim": w.numel() if header["dim"] is None else header["dim"]}
    raw = wire.encode(wire.Kind.GLOBAL_MODEL, header, wire.vector_to_bytes(w))
    with pytest.raises(ProtocolError, match=needle):
        client.fit(raw)
    assert client.guard.last("fit") is None
