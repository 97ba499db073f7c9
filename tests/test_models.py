"""Model registry, Opacus compatibility, seeding and flat-vector I/O."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn

from securefl.data import load_dataset
from securefl.exceptions import ConfigValueError
from securefl.models import MODELS, build_model, get_flat, set_flat

# every model on every dataset it applies to
COMBOS = [
    ("logreg", "digits"),
    ("logreg", "breast_cancer"),
    ("logreg", "synthetic"),
    ("linreg", "linreg"),
    ("mlp", "digits"),
    ("mlp", "breast_cancer"),
    ("mlp", "synthetic"),
    ("mlp", "linreg"),
    ("cnn", "digits"),
]


@pytest.fixture(scope="module")
def datasets():
    return {name: load_dataset(name, seed=0) for name in ("digits", "breast_cancer", "synthetic", "linreg")}


def _build(model, data, seed=0, hidden=16):
    return build_model(model, data.input_shape, data.num_classes, hidden=hidden, seed=seed)


def test_registry_names():
    assert set(MODELS) == {"logreg", "linreg", "mlp", "cnn"}
    assert {m for m, _ in COMBOS} == set(MODELS)


@pytest.mark.parametrize("model,dataset", COMBOS)
def test_output_shape(model, dataset, datasets):
    data = datasets[dataset]
    net = _build(model, data)
    x = data.x_train[:7]
    out = net(x)
    expected = data.num_classes if data.task == "classification" else 1
    assert out.shape == (7, expected)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # and it trains: one loss/backward gives a gradient on every parameter
    if data.task == "classification":
        loss = nn.functional.cross_entropy(out, data.y_train[:7])
    else:
        loss = nn.functional.mse_loss(out, data.y_train[:7])
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize("model,dataset", COMBOS)
def test_opacus_compatible(model, dataset, datasets):
    data = datasets[dataset]
    net = _build(model, data)
    assert ModuleValidator.validate(net, strict=False) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    # per-sample gradients work and match one-example gradients
    gsm = GradSampleModule(_build(model, data), loss_reduction="sum")
    x, y = data.x_train[:4], data.y_train[:4]
    out = gsm(x)
    loss_fn = nn.functional.cross_entropy if data.task == "classification" else nn.functional.mse_loss
    loss_fn(out, y, reduction="sum").backward()
    ref = _build(model, data)
    ref.zero_grad()
    loss_fn(ref(x[1:2]), y[1:2], reduction="sum").backward()
    for p_gsm, p_ref in zip(gsm.parameters(), ref.parameters()):
        assert p_gsm.grad_sample.shape == (4, *p_gsm.shape)
        assert torch.allclose(p_gsm.grad_sample[1], p_ref.grad, atol=1e-5)


def test_cnn_uses_groupnorm():
    net = build_model("cnn", (1, 8, 8), 10)
    assert any(isinstance(m, nn.GroupNorm) for m in net.modules())
    assert any(isinstance(m, nn.Conv2d) for m in net.modules())


@pytest.mark.parametrize("shape", [(1, 5, 7), (3, 8, 8), (1, 28, 28)])
def test_cnn_other_image_shapes(shape):
    net = build_model("cnn", shape, 3, seed=0)
    assert net(torch.zeros(2, *shape)).shape == (2, 3)


def test_hidden_width_is_used():
    small = build_model("mlp", (30,), 2, hidden=4)
    big = build_model("mlp", (30,), 2, hidden=40)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(small) == 30 * 4 + 4 + 4 * 2 + 2
    assert n(big) == 30 * 40 + 40 + 40 * 2 + 2
    assert sum(p.numel() for p in build_model("logreg", (1, 8, 8), 10).parameters()) == 64 * 10 + 10


@pytest.mark.parametrize("name", sorted(MODELS))
def test_seeded_build_is_reproducible(name):
    shape = (1, 8, 8)
    a = get_flat(build_model(name, shape, 10, seed=7))
    b = get_flat(build_model(name, shape, 10, seed=7))
    c = get_flat(build_model(name, shape, 10, seed=8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_seeded_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    build_model("mlp", (30,), 2, seed=99)
    assert torch.equal(torch.rand(5), expected)


def test_unseeded_build_uses_global_rng():
    torch.manual_seed(5)
    a = get_flat(build_model("mlp", (30,), 2))
    torch.manual_seed(5)
    b = get_flat(build_model("mlp", (30,), 2))
    c = get_flat(build_model("mlp", (30,), 2))
    assert torch.equal(a, b) and not torch.equal(b, c)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_get_set_flat_round_trip(name):
    src = build_model(name, (1, 8, 8), 10, seed=1)
    dst = build_model(name, (1, 8, 8), 10, seed=2)
    vec = get_flat(src)
    assert vec.ndim == 1 and vec.dtype == torch.float32
    assert vec.numel() == sum(p.numel() for p in src.parameters())
    # parameter order: the vector starts with the first parameter
    first = next(src.parameters())
    assert torch.equal(vec[: first.numel()], first.detach().reshape(-1))
    assert not torch.equal(get_flat(dst), vec)
    set_flat(dst, vec)
    assert torch.equal(get_flat(dst), vec)
    for p, q in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(p, q)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(src(x), dst(x))


def test_get_flat_is_a_copy():
    net = build_model("mlp", (30,), 2, seed=0)
    vec = get_flat(net)
    before = vec.clone()
    vec.add_(1.0)
    assert torch.equal(get_flat(net), before)
    set_flat(net, before)
    before.add_(1.0)  # the model does not alias the vector it was loaded from
    assert not torch.equal(get_flat(net), before)


def test_set_flat_arbitrary_vector():
    net = build_model("logreg", (3,), 2)
    vec = torch.arange(8, dtype=torch.float32)
    set_flat(net, vec)
    assert torch.equal(net.linear.weight.detach(), torch.arange(6.0).reshape(2, 3))
    assert torch.equal(net.linear.bias.detach(), torch.tensor([6.0, 7.0]))


@pytest.mark.parametrize("delta", [-1, 1, -100])
def test_set_flat_rejects_wrong_length(delta):
    net = build_model("mlp", (30,), 2, seed=0)
    before = get_flat(net)
    with pytest.raises(ValueError, match="parameters"):
        set_flat(net, torch.zeros(before.numel() + delta))
    assert torch.equal(get_flat(net), before)  # nothing was written


@pytest.mark.parametrize("shape", [(30,), (8, 8), (1, 1, 8, 8), ()])
def test_cnn_rejects_non_image_input(shape):
    with pytest.raises(ConfigValueError) as excinfo:
        build_model("cnn", shape, 10)
    assert excinfo.value.field == "model" and excinfo.value.value == "cnn"
    assert str(shape) in str(excinfo.value)


def test_build_model_rejects_unknown_name():
    with pytest.raises(ConfigValueError) as excinfo:
        build_model("resnet", (30,), 2)
    assert excinfo.value.field == "model" and excinfo.value.value == "resnet"


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_flat_models_give_one_output_for_regression(name):
    assert build_model(name, (10,), 0)(torch.zeros(2, 10)).shape == (2, 1)


def test_cnn_gives_one_output_for_regression():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_model("cnn", (1, 8, 8), 0)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 1)
