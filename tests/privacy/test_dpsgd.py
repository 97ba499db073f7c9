"""Tests of :mod:`securefl.privacy.dpsgd` (DP-SGD on Opacus with SecureRNG noise).

With ``loss_reduction="mean"`` the optimizer's gradient is
``(sum_i clip(g_i) + N(0, (sigma C)^2 I)) / (q n)`` where ``q n`` is the expected
batch size, so one SGD step moves the parameters by ``-lr`` times that.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.nn.utils import parameters_to_vector

from securefl.privacy.dpsgd import SecureDPOptimizer, dp_sgd_train, steps_per_round
from securefl.privacy.noise import SecureRNG

ALPHA = 1e-6
Z = stats.norm.isf(ALPHA / 2)


def _sgd(lr):
    return lambda params: torch.optim.SGD(params, lr=lr)


def _train(model, x, y, *, sigma, clip, q, steps=1, lr=0.1, rng=None, loss_fn=F.mse_loss):
    before = parameters_to_vector(model.parameters()).detach().clone()
    loss = dp_sgd_train(
        model,
        x,
        y,
        loss_fn=loss_fn,
        optimizer_fn=_sgd(lr),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        sample_rate=q,
        steps=steps,
        rng=rng if rng is not None else SecureRNG(),
    )
    delta = parameters_to_vector(model.parameters()).detach() - before
    return delta, loss


def _per_example_grads(model: nn.Linear, x, y):
    """Closed-form per-example gradients of (w.x + b - y)^2 for a 1-output linear model."""
    r = (x @ model.weight.detach().T + model.bias.detach() - y)  # (n, 1)
    gw = 2 * r * x  # (n, d)
    gb = 2 * r  # (n, 1)
    return torch.cat([gw, gb], dim=1)  # flattened in parameter order (weight, bias)


def _chi2_ok(resid: np.ndarray, sd: float) -> bool:
    s = float(np.sum(resid.astype(np.float64) ** 2)) / sd**2
    return stats.chi2.ppf(ALPHA / 2, resid.size) <= s <= stats.chi2.isf(ALPHA / 2, resid.size)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.randn(8, 1, generator=g, dtype=torch.float64)
    return x, y


@pytest.fixture
def linear():
    torch.manual_seed(3)
    return nn.Linear(5, 1).double()  # float64 so that exact comparisons are meaningful


# ------------------------------------------------------- no noise, no clip
def test_noiseless_full_batch_is_plain_sgd(linear, data):
    x, y = data
    lr = 0.1
    g = _per_example_grads(linear, x, y)
    expected = -lr * g.mean(0)
    expected_loss = float(((x @ linear.weight.detach().T + linear.bias.detach() - y) ** 2).mean())
    delta, loss = _train(linear, x, y, sigma=0.0, clip=1e6, q=1.0, lr=lr)
    torch.testing.assert_close(delta, expected, rtol=1e-9, atol=1e-12)
    assert loss == pytest.approx(expected_loss, rel=1e-9)


def test_noiseless_full_batch_several_steps(linear, data):
    x, y = data
    lr, steps = 0.05, 3
    ref = copy.deepcopy(linear)
    start = parameters_to_vector(ref.parameters()).detach().clone()
    for _ in range(steps):
        g = _per_example_grads(ref, x, y).mean(0)
        with torch.no_grad():
            ref.weight -= lr * g[:-1].reshape(1, -1)
            ref.bias -= lr * g[-1:]
    expected = parameters_to_vector(ref.parameters()).detach() - start
    delta, _ = _train(linear, x, y, sigma=0.0, clip=1e6, q=1.0, steps=steps, lr=lr)
    torch.testing.assert_close(delta, expected, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------- clipping
def test_tiny_clip_bounds_step_and_matches_clipped_mean(linear, data):
    x, y = data
    lr, clip = 0.5, 1e-3
    g = _per_example_grads(linear, x, y).double()
    norms = g.norm(dim=1)
    assert (norms > 100 * clip).all()  # every example is clipped
    delta, _ = _train(linear, x, y, sigma=0.0, clip=clip, q=1.0, lr=lr)
    assert float(delta.double().norm()) <= lr * clip * (1 + 1e-5)
    # per-example (flat, all parameters together) clipping, then the mean
    expected = -lr * (g * (clip / norms)[:, None]).mean(0)
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-12)
    # and it is not plain SGD
    assert not torch.allclose(delta.double(), -lr * g.mean(0), rtol=1e-2)


def test_clip_only_affects_large_gradients(linear, data):
    x, y = data
    lr = 0.1
    g = _per_example_grads(linear, x, y).double()
    norms = g.norm(dim=1)
    clip = float(norms.median())
    factors = torch.clamp(clip / norms, max=1.0)
    assert (factors < 1).any() and (factors == 1).any()
    delta, _ = _train(linear, x, y, sigma=0.0, clip=clip, q=1.0, lr=lr)
    torch.testing.assert_close(delta, -lr * (g * factors[:, None]).mean(0), rtol=1e-5, atol=1e-12)


# -------------------------------------------------------------------- noise
def _wide_model(seed=0, zero=False):
    torch.manual_seed(seed)
    m = nn.Linear(500, 200)  # 100,200 parameters
    if zero:
        with torch.no_grad():
            m.weight.zero_()
            m.bias.zero_()
    return m


def test_noise_std_full_batch():
    n, sigma, clip, lr = 4, 2.0, 0.5, 1.0
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(n, 500, generator=g), torch.randn(n, 200, generator=g)
    base = _wide_model()
    clean, _ = _train(copy.deepcopy(base), x, y, sigma=0.0, clip=clip, q=1.0, lr=lr)
    noisy, _ = _train(copy.deepcopy(base), x, y, sigma=sigma, clip=clip, q=1.0, lr=lr)
    assert clean.abs().sum() > 0  # real gradient signal, removed below
    resid = (noisy - clean).numpy()
    sd = lr * sigma * clip / n
    assert abs(float(resid.mean())) <= Z * sd / math.sqrt(resid.size)
    assert _chi2_ok(resid, sd)
    assert stats.kstest(resid, "norm", args=(0.0, sd)).pvalue > ALPHA


def test_noise_divided_by_expected_not_actual_batch_size():
    # zero weights and zero targets: every per-example gradient is exactly 0, so the
    # step is pure noise / (q n); with a Poisson batch of random size the divisor must
    # still be q n
    n, q, sigma, clip, lr = 8, 0.5, 1.5, 2.0, 0.3
    x, y = torch.randn(n, 200), torch.zeros(n, 50)
    sd = lr * sigma * clip / (q * n)
    for _ in range(8):
        torch.manual_seed(0)
        model = nn.Linear(200, 50)
        with torch.no_grad():
            model.weight.zero_()
            model.bias.zero_()
        delta, _ = _train(model, x, y, sigma=sigma, clip=clip, q=q, lr=lr)
        assert _chi2_ok(delta.numpy(), sd)


def test_noise_accumulates_over_steps():
    steps, n, sigma, clip, lr = 4, 5, 1.0, 1.0, 1.0
    model = _wide_model(zero=True)
    x, y = torch.randn(n, 500), torch.zeros(n, 200)
    delta, _ = _train(model, x, y, sigma=sigma, clip=clip, q=1.0, steps=steps, lr=lr)
    assert _chi2_ok(delta.numpy(), lr * sigma * clip / n * math.sqrt(steps))


def test_empty_batch_takes_noise_only_step():
    # q n = 1e-6: the batch is (almost surely) empty, the step is N(0, (sigma C)^2) / (q n)
    q, sigma, clip = 1e-6, 2.0, 0.5
    lr = q  # undoes the 1/(q n) with n = 1
    model = nn.Linear(200, 50)
    x, y = torch.randn(1, 200), torch.randn(1, 50)
    delta, loss = _train(model, x, y, sigma=sigma, clip=clip, q=q, lr=lr)
    assert math.isnan(loss)  # no batch was ever non-empty
    assert _chi2_ok(delta.numpy(), sigma * clip)
    # and without noise an empty batch changes nothing
    delta, loss = _train(nn.Linear(200, 50), x, y, sigma=0.0, clip=clip, q=q, lr=lr)
    assert math.isnan(loss) and torch.equal(delta, torch.zeros_like(delta))


def test_noisy_runs_from_same_weights_differ(linear, data):
    x, y = data
    a, _ = _train(copy.deepcopy(linear), x, y, sigma=1.0, clip=1.0, q=1.0)
    b, _ = _train(copy.deepcopy(linear), x, y, sigma=1.0, clip=1.0, q=1.0)
    assert not torch.allclose(a, b)


def test_noise_not_from_torch_global_rng(linear, data):
    x, y = data
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(_train(copy.deepcopy(linear), x, y, sigma=1.0, clip=1.0, q=1.0)[0])
    assert not torch.allclose(runs[0], runs[1])
    # conversely a seeded SecureRNG reproduces the run whatever torch's RNG state is
    seeded = []
    for torch_seed in (1, 2):
        torch.manual_seed(torch_seed)
        seeded.append(_train(copy.deepcopy(linear), x, y, sigma=1.0, clip=1.0, q=0.5, steps=3, rng=SecureRNG.from_seed(9))[0])
    assert torch.equal(seeded[0], seeded[1])
    other = _train(copy.deepcopy(linear), x, y, sigma=1.0, clip=1.0, q=0.5, steps=3, rng=SecureRNG.from_seed(10))[0]
    assert not torch.allclose(seeded[0], other)


def test_poisson_sampling_not_from_torch_global_rng():
    # no noise: the only randomness is the batch selection
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(20, 5, generator=g), torch.randn(20, 1, generator=g)
    torch.manual_seed(5)
    base = nn.Linear(5, 1)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(_train(copy.deepcopy(base), x, y, sigma=0.0, clip=1e6, q=0.5, steps=3)[0])
    assert not torch.allclose(runs[0], runs[1])


def test_secure_optimizer_add_noise_draws_from_rng():
    p = nn.Parameter(torch.zeros(1000))
    opt = SecureDPOptimizer(
        torch.optim.SGD([p], lr=1.0), noise_multiplier=2.0, max_grad_norm=0.5, expected_batch_size=1, rng=SecureRNG.from_seed(1)
    )
    assert opt.noise_multiplier == 2.0 and opt.max_grad_norm == 0.5
    p.summed_grad = torch.zeros(1000)
    opt.add_noise()
    from securefl.privacy.noise import noisy_on_grid

    ref = noisy_on_grid(torch.zeros(1000), noise_multiplier=2.0, clip=0.5, rng=SecureRNG.from_seed(1)).float()
    torch.testing.assert_close(p.grad, ref, rtol=0, atol=0)


# ---------------------------------------------------------- Poisson sampling
def test_poisson_batches_have_rate_q_and_loss_is_their_mean():
    n, q, steps = 50, 0.2, 300
    sizes, losses = [], []

    def loss_fn(out, target, reduction):
        assert reduction == "sum"
        loss = F.mse_loss(out, target, reduction="sum")
        sizes.append(len(target))
        losses.append(loss.item() / len(target))
        return loss

    x, y = torch.randn(n, 3), torch.randn(n, 1)
    _, mean_loss = _train(nn.Linear(3, 1), x, y, sigma=0.0, clip=1e6, q=q, steps=steps, lr=0.0, loss_fn=loss_fn)
    nonempty = len(sizes)
    assert steps - 2 <= nonempty <= steps  # P(empty) = 0.8^50
    total = sum(sizes)
    assert abs(total - steps * n * q) <= Z * math.sqrt(steps * n * q * (1 - q))
    assert 4.5 <= float(np.var(sizes, ddof=1)) <= 12.0  # Binomial(50, 0.2) has variance 8
    assert mean_loss == pytest.approx(float(np.mean(losses)), rel=1e-9)


def test_training_leaves_model_usable(linear, data):
    x, y = data
    _train(linear, x, y, sigma=0.5, clip=1.0, q=0.5, steps=2)
    # the GradSampleModule wrapper is removed: plain forward/backward works, no hooks left
    out = linear(x).sum()
    out.backward()
    assert not hasattr(linear.weight, "grad_sample") or linear.weight.grad_sample is None
    assert isinstance(linear, nn.Linear)


# ---------------------------------------------------------- steps_per_round
@pytest.mark.parametrize(
    "epochs,q,expected",
    [(1, 0.1, 10), (1, 0.3, 4), (2, 0.5, 4), (0.01, 0.5, 1), (3, 0.1, 30), (1, 1 / 3, 3), (1, 1.0, 1), (0.7, 0.1, 7)],
)
def test_steps_per_round(epochs, q, expected):
    assert steps_per_round(epochs, q) == expected
