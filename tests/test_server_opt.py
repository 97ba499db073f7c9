"""Server optimizers: FedAvg, FedAvgM, FedAdam (Reddi et al. 2021)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from securefl.server_opt import (
    SERVER_OPTIMIZERS,
    FedAdam,
    FedAvgM,
    FedAvgOpt,
    ServerOptimizer,
    make_server_optimizer,
)


@pytest.fixture
def wu():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, generator=g, dtype=torch.float64)
    u = torch.randn(7, generator=g, dtype=torch.float64)
    return w, u


def test_registry_and_factory():
    assert SERVER_OPTIMIZERS == {"fedavg": FedAvgOpt, "fedavgm": FedAvgM, "fedadam": FedAdam}
    opt = make_server_optimizer("fedavgm", lr=0.3, momentum=0.5)
    assert isinstance(opt, FedAvgM) and opt.lr == 0.3 and opt.momentum == 0.5
    assert isinstance(make_server_optimizer("fedavg", lr=1.0), FedAvgOpt)
    adam = make_server_optimizer("fedadam", lr=0.01)
    assert isinstance(adam, FedAdam) and adam.lr == 0.01
    assert (adam.beta1, adam.beta2, adam.tau) == (0.9, 0.99, 1e-3)
    with pytest.raises(TypeError):
        ServerOptimizer(1.0)  # type: ignore[abstract]


def test_fedavg_lr_one_adds_the_update(wu):
    w, u = wu
    opt = FedAvgOpt(1.0)
    assert torch.equal(opt.step(w, u), w + u)
    # stateless: the same step again gives the same result
    assert torch.equal(opt.step(w, u), w + u)


def test_fedavg_server_lr_scales(wu):
    w, u = wu
    assert torch.allclose(FedAvgOpt(0.25).step(w, u), w + 0.25 * u)


def test_fedavgm_velocity_accumulates(wu):
    w, u = wu
    lr, beta = 0.5, 0.9
    opt = FedAvgM(lr, momentum=beta)
    w1 = opt.step(w, u)
    assert torch.allclose(w1, w + lr * u)
    w2 = opt.step(w1, u)
    assert torch.allclose(w2, w + lr * u + lr * (beta * u + u))
    w3 = opt.step(w2, u)
    assert torch.allclose(w3, w2 + lr * (beta * (beta * u + u) + u))


def test_fedavgm_zero_momentum_is_fedavg(wu):
    w, u = wu
    m, a = FedAvgM(0.7, momentum=0.0), FedAvgOpt(0.7)
    wm = wa = w
    for k in range(3):
        step = u * (k + 1)
        wm, wa = m.step(wm, step), a.step(wa, step)
    assert torch.allclose(wm, wa)


def test_fedavgm_state_does_not_alias_the_update(wu):
    w, u = wu
    opt = FedAvgM(1.0, momentum=0.5)
    u_in = u.clone()
    opt.step(w, u_in)
    u_in.mul_(100.0)  # the caller reuses its buffer
    w2 = opt.step(w, u)
    assert torch.allclose(w2, w + (0.5 * u + u))


def _reddi_fedadam(w, updates, lr, beta1, beta2, tau):
    """Reddi et al. 2021, Algorithm 2 (FedAdam): m_0 = 0, v_0 = tau^2, no bias correction."""
    w = np.array(w, dtype=np.float64)
    m = np.zeros_like(w)
    v = np.full_like(w, tau**2)
    out = []
    for delta in updates:
        delta = np.asarray(delta, dtype=np.float64)
        m = beta1 * m + (1 - beta1) * delta
        v = beta2 * v + (1 - beta2) * delta**2
        w = w + lr * m / (np.sqrt(v) + tau)
        out.append(w.copy())
    return out


@pytest.mark.parametrize(
    "lr,beta1,beta2,tau",
    [(0.1, 0.9, 0.99, 1e-3), (1.0, 0.5, 0.9, 0.1), (0.01, 0.0, 0.999, 1e-2)],
)
def test_fedadam_matches_reference(lr, beta1, beta2, tau):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(9, generator=g, dtype=torch.float64)
    updates = [torch.randn(9, generator=g, dtype=torch.float64) * s for s in (1.0, 0.01, 3.0)]
    updates[1][0] = 0.0  # a coordinate with no signal: v stays near tau^2
    ref = _reddi_fedadam(w.numpy(), [u.numpy() for u in updates], lr, beta1, beta2, tau)
    opt = FedAdam(lr, beta1=beta1, beta2=beta2, tau=tau)
    cur = w
    for u, expected in zip(updates, ref):
        cur = opt.step(cur, u)
        np.testing.assert_allclose(cur.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_fedadam_default_hyperparameters_match_reference(wu):
    w, u = wu
    updates = [u, -0.5 * u, 2 * u]
    ref = _reddi_fedadam(w.numpy(), [x.numpy() for x in updates], 0.05, 0.9, 0.99, 1e-3)
    opt = FedAdam(0.05)
    cur = w
    for x, expected in zip(updates, ref):
        cur = opt.step(cur, x)
        np.testing.assert_allclose(cur.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_fedadam_first_step_is_about_lr_per_coordinate():
    w = torch.zeros(3, dtype=torch.float64)
    u = torch.tensor([10.0, -10.0, 0.0], dtype=torch.float64)
    out = FedAdam(0.1).step(w, u)
    # m = 0.1 u, sqrt(v) ~ 0.1 |u| >> tau  =>  step ~ lr * sign(u)
    assert torch.allclose(out, torch.tensor([0.1, -0.1, 0.0], dtype=torch.float64), atol=1e-3)


def test_fedadam_float32(wu):
    w, u = (t.float() for t in wu)
    ref = _reddi_fedadam(w.double().numpy(), [u.double().numpy()] * 3, 0.1, 0.9, 0.99, 1e-3)
    opt = FedAdam(0.1)
    cur = w
    for expected in ref:
        cur = opt.step(cur, u)
        assert cur.dtype == torch.float32
        np.testing.assert_allclose(cur.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make", [lambda: FedAvgOpt(1.0), lambda: FedAvgM(0.5, 0.9), lambda: FedAdam(0.1)], ids=["fedavg", "fedavgm", "fedadam"]
)
def test_inputs_not_mutated(make, wu):
    w, u = wu
    opt = make()
    w0, u0 = w.clone(), u.clone()
    cur = w
    for _ in range(3):
        new = opt.step(cur, u)
        assert new is not cur and new is not u
        assert torch.equal(u, u0)
        cur = new
    assert torch.equal(w, w0)
    # the returned weights do not alias the optimizer's state
    a, b = make(), make()
    wa, wb = a.step(w, u), b.step(w, u)
    wb_copy = wb.clone()
    wb.mul_(0.0)  # the caller scribbles on the tensor it got back
    assert torch.equal(a.step(wa, u), b.step(wb_copy, u))
