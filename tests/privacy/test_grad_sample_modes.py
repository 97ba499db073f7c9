"""DP-SGD's grad-sample modes (hooks, ExpandedWeights, ghost clipping, book-keeping): the same
clipped gradient sum, the same accounting, and the wrapped model kept across rounds."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector

from securefl import ClientConfig, DPConfig, SecureClient
from securefl.exceptions import ConfigValueError
from securefl.models import build_model, get_flat
from securefl.privacy.dpsgd import GRAD_SAMPLE_MODES, WrapperCache, choose_grad_sample_mode, dp_sgd_train
from securefl.privacy.noise import SecureRNG

MODES = ("hooks", "ew", "ghost", "bk")
SHAPE = (1, 8, 8)


def _model(name: str) -> nn.Module:
    return build_model(name, SHAPE, 10, hidden=16, seed=3).double()


def _batch(n: int = 24):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, *SHAPE, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def _reference_clipped_sum(model: nn.Module, x, y, clip: float) -> torch.Tensor:
    """One example at a time: sum_i g_i min(1, C / (||g_i|| + 1e-6))."""
    total = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        total += g * min(1.0, clip / (float(g.norm()) + 1e-6))
    return total


def _clipped_sum(model: nn.Module, x, y, clip: float, mode: str) -> torch.Tensor:
    """The clipped sum DP-SGD adds noise to, read off one noiseless full-batch step
    (lr 1, lot size 1: the parameters move by exactly minus the sum)."""
    before = parameters_to_vector(model.parameters()).detach().clone()
    dp_sgd_train(
        model, x, y, loss_fn=F.cross_entropy, optimizer_fn=lambda ps: torch.optim.SGD(ps, lr=1.0),
        noise_multiplier=0.0, max_grad_norm=clip, sample_rate=1.0, steps=1, rng=SecureRNG.from_seed(0),
        expected_batch_size=1.0, grad_sample_mode=mode,
    )  # fmt: skip
    return before - parameters_to_vector(model.parameters()).detach()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_every_mode_gives_the_same_clipped_sum(name):
    x, y = _batch()
    clip = 0.05  # small enough that most examples are clipped
    base = _model(name)
    ref = _reference_clipped_sum(copy.deepcopy(base), x, y, clip)
    norms = [float(g.norm()) for g in [ref]]
    assert norms[0] > 0
    sums = {mode: _clipped_sum(copy.deepcopy(base), x, y, clip, mode) for mode in (*MODES, "auto")}
    for mode, s in sums.items():
        torch.testing.assert_close(s, ref, rtol=1e-9, atol=1e-12, msg=f"{name}: mode {mode}")
    # clipping bound: no example contributes more than C
    assert float(ref.norm()) <= len(x) * clip + 1e-9


class _SharedSequence(nn.Module):
    """A linear layer over a sequence (T = 4) and one used twice, one without bias:
    the book-keeping mode forms these per-sample gradients explicitly."""

    def __init__(self) -> None:
        super().__init__()
        self.seq, self.twice = nn.Linear(16, 6, bias=False), nn.Linear(6, 6)
        self.out = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.seq(x.reshape(len(x), 4, 16)))
        return self.out(self.twice(torch.tanh(self.twice(h))).reshape(len(x), -1))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_book_keeping_with_sequences_and_a_reused_layer():
    x, y = _batch()
    base = _SharedSequence().double()
    ref = _reference_clipped_sum(copy.deepcopy(base), x, y, 0.05)
    for mode in ("bk", "auto"):
        torch.testing.assert_close(_clipped_sum(copy.deepcopy(base), x, y, 0.05, mode), ref, rtol=1e-9, atol=1e-12)


def test_book_keeping_refuses_tied_linear_weights():
    tied = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    tied[2].weight = tied[0].weight
    with pytest.raises(ConfigValueError, match="shares its parameters"):
        WrapperCache().get(tied, "bk", 1.0)


def test_auto_rule():
    assert choose_grad_sample_mode(_model("logreg")) == "bk"
    assert choose_grad_sample_mode(_model("mlp")) == "bk"
    assert choose_grad_sample_mode(_model("cnn")) == "bk"
    assert choose_grad_sample_mode(nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2))) == "ew"  # no linear layer
    assert choose_grad_sample_mode(nn.Sequential(nn.Linear(3, 3), nn.PReLU())) == "hooks"


def test_unknown_mode_is_refused():
    x, y = _batch(4)
    with pytest.raises(ConfigValueError, match="grad_sample_mode"):
        dp_sgd_train(
            _model("logreg"), x, y, loss_fn=F.cross_entropy, optimizer_fn=lambda ps: torch.optim.SGD(ps, lr=1.0),
            noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1.0, steps=1, rng=SecureRNG(), grad_sample_mode="fast",
        )  # fmt: skip
    assert "auto" in GRAD_SAMPLE_MODES


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_takes_a_noise_only_step(mode):
    model = _model("mlp")
    x, y = _batch(3)
    before = parameters_to_vector(model.parameters()).detach().clone()
    dp_sgd_train(
        model, x, y, loss_fn=F.cross_entropy, optimizer_fn=lambda ps: torch.optim.SGD(ps, lr=1.0),
        noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1e-12, steps=1, rng=SecureRNG.from_seed(1),
        expected_batch_size=1.0, grad_sample_mode=mode,
    )  # fmt: skip
    moved = parameters_to_vector(model.parameters()).detach() - before
    assert 0.5 < float(moved.std()) < 2.0  # pure N(0, 1) noise per coordinate


def _dp_client(digits, parts, mode: str, seed: int = 11) -> SecureClient:
    idx = parts[0]
    client = SecureClient(
        "c0", digits.x_train[idx], digits.y_train[idx],
        model_fn=lambda: build_model("mlp", digits.input_shape, 10, hidden=16, seed=0),
        dp=DPConfig(dp="sample", epsilon=3.0), config=ClientConfig(sample_rate=0.25, local_epochs=1.0),
        planned_rounds=3, rng=SecureRNG.from_seed(seed),
    )  # fmt: skip
    client.grad_sample_mode = mode
    return client


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_accounting_is_identical_whatever_the_mode(digits, digits_parts):
    ledgers = {}
    for mode in (*MODES, "auto"):
        client = _dp_client(digits, digits_parts, mode)
        w = get_flat(client.model)
        for r in (1, 2, 3):
            w = w + client.train(w, r).update
        ledgers[mode] = [{k: e[k] for k in ("subject", "round", "noise_multiplier", "sample_rate", "steps", "epsilon")}
                         for e in client.ledger.entries]  # fmt: skip
    assert len(ledgers["hooks"]) == 3 and ledgers["hooks"][-1]["epsilon"]["prv"] > 0
    assert all(entries == ledgers["hooks"] for entries in ledgers.values())


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("mode", MODES)
def test_kept_wrapper_gives_identical_rounds(digits, digits_parts, mode):
    """A client keeps its wrapped model across rounds; the rounds are bit for bit
    those of a client that re-wraps every round (same seeded noise and sampling)."""
    kept, fresh = _dp_client(digits, digits_parts, mode), _dp_client(digits, digits_parts, mode)
    w_kept = w_fresh = get_flat(kept.model)
    for r in (1, 2, 3):
        fresh._dp_wrappers.close()  # unwrapped: a new wrapper every round
        w_kept = w_kept + kept.train(w_kept, r).update
        w_fresh = w_fresh + fresh.train(w_fresh, r).update
        assert torch.equal(w_kept, w_fresh)
    assert len(kept._dp_wrappers._wrappers) == 1
    wrapper = next(iter(kept._dp_wrappers._wrappers.values()))
    assert wrapper.model is kept.model and wrapper.mode == mode
    kept._dp_wrappers.close()
    assert not any(hasattr(p, "grad_sample") for p in kept.model.parameters())


def test_cache_rewraps_on_a_new_mode_or_clip():
    cache, model = WrapperCache(), _model("logreg")
    a = cache.get(model, "hooks", 1.0)
    assert cache.get(model, "hooks", 1.0) is a
    b = cache.get(model, "ghost", 1.0)
    assert b is not a and cache.get(model, "ghost", 0.5) is not b
    cache.close()
