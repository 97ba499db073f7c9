"""Embedded datasets, partitioners and summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from securefl.data import (
    DATASETS,
    PARTITIONERS,
    load_breast_cancer,
    load_dataset,
    load_digits,
    load_linreg,
    load_synthetic,
    partition,
    summarize,
)
from securefl.exceptions import ConfigValueError


@pytest.fixture(scope="module")
def digits_data():
    return load_digits(seed=0)


def _covers_exactly_once(parts, n):
    assert all(isinstance(p, np.ndarray) for p in parts)
    assert all(np.issubdtype(p.dtype, np.integer) for p in parts)
    flat = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    assert len(flat) == n, "an example was dropped or duplicated"
    assert np.array_equal(np.sort(flat), np.arange(n))


def _max_class_fraction(parts, labels):
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


# ------------------------------------------------------------------ datasets
def test_registry_names():
    assert set(DATASETS) == {"digits", "breast_cancer", "synthetic", "linreg"}
    assert set(PARTITIONERS) == {"iid", "dirichlet", "shards"}


def test_digits(digits_data):
    d = digits_data
    assert d.name == "digits" and d.task == "classification" and d.num_classes == 10
    assert d.input_shape == (1, 8, 8)
    assert len(d.x_train) + len(d.x_test) == 1797
    assert len(d.x_test) == 360  # ceil(0.2 * 1797)
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_test.shape[1:] == (1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.long
    for x in (d.x_train, d.x_test):
        assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert set(d.y_train.tolist()) == set(range(10)) and set(d.y_test.tolist()) == set(range(10))
    assert len(d.y_train) == len(d.x_train) and len(d.y_test) == len(d.x_test)
    # stratified: class proportions in train and test agree closely
    tr = np.bincount(d.y_train.numpy(), minlength=10) / len(d.y_train)
    te = np.bincount(d.y_test.numpy(), minlength=10) / len(d.y_test)
    assert np.abs(tr - te).max() < 0.01
    # the TensorDataset views line up with the tensors
    x0, y0 = d.train[0]
    assert torch.equal(x0, d.x_train[0]) and y0 == d.y_train[0]
    assert len(d.test) == len(d.x_test)


def test_digits_pixels_are_the_sklearn_pixels_over_16(digits_data):
    from sklearn.datasets import load_digits as sk_load

    raw = sk_load().data / 16.0
    all_x = torch.cat([digits_data.x_train, digits_data.x_test]).reshape(-1, 64).numpy()
    # same multiset of images (split is a permutation of the rows)
    key = lambda a: np.lexsort(np.round(a * 16).astype(int).T[::-1])  # noqa: E731
    assert np.allclose(all_x[key(all_x)], raw[key(raw)], atol=1e-6)


def test_split_depends_on_seed_and_fraction():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    half = load_digits(test_fraction=0.5)
    assert len(half.x_test) == 899 and len(half.x_train) == 898


def test_breast_cancer_is_standardized_on_train():
    d = load_breast_cancer(seed=0)
    assert d.task == "classification" and d.num_classes == 2 and d.input_shape == (30,)
    assert len(d.x_train) + len(d.x_test) == 569
    assert d.x_train.shape[1] == 30
    x = d.x_train.double()
    assert x.mean(0).abs().max().item() < 1e-5
    assert (x.std(0, unbiased=False) - 1).abs().max().item() < 1e-4
    # the test split uses the train statistics, not its own
    xt = d.x_test.double()
    assert xt.mean(0).abs().max().item() > 1e-3
    assert set(d.y_train.tolist()) == {0, 1}


def test_synthetic_shape_and_determinism():
    d = load_synthetic(seed=3)
    assert d.input_shape == (20,) and d.num_classes == 4 and d.task == "classification"
    assert len(d.x_train) + len(d.x_test) == 3000
    assert set(d.y_train.tolist()) == {0, 1, 2, 3}
    assert torch.equal(d.x_train, load_synthetic(seed=3).x_train)
    assert not torch.equal(d.x_train, load_synthetic(seed=4).x_train)


def test_linreg_is_a_linear_regression_task():
    d = load_linreg(seed=0)
    assert d.name == "linreg" and d.task == "regression" and d.num_classes == 0
    assert d.input_shape == (10,)
    assert len(d.x_train) + len(d.x_test) == 2000
    assert d.y_train.dtype == torch.float32 and d.y_train.shape == (len(d.x_train), 1)
    assert d.y_test.shape == (len(d.x_test), 1)
    y = d.y_train.numpy().ravel()
    assert not np.allclose(y, np.round(y))  # real-valued, not class labels
    # an ordinary least-squares fit explains it up to the 0.1 noise
    x = np.c_[d.x_train.numpy(), np.ones(len(y))]
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    assert 0.07 < resid.std() < 0.13
    assert abs(coef[-1] - 0.5) < 0.05
    assert y.std() > 1.0


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_load_dataset_by_name(name):
    d = load_dataset(name, seed=0)
    assert d.name == name
    assert tuple(d.x_train.shape[1:]) == d.input_shape
    assert torch.isfinite(d.x_train).all()


def test_load_dataset_unknown_name():
    with pytest.raises(ConfigValueError) as excinfo:
        load_dataset("mnist")
    assert excinfo.value.field == "dataset" and excinfo.value.value == "mnist"


# ------------------------------------------------------------------ partitioners
small_labels = arrays(np.int64, st.integers(1, 60), elements=st.integers(0, 4))
seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=60, deadline=None)
@given(labels=small_labels, clients=st.integers(1, 12), seed=seeds)
def test_iid_covers_every_index_once_and_is_balanced(labels, clients, seed):
    parts = partition(labels, clients, method="iid", seed=seed)
    assert len(parts) == clients
    _covers_exactly_once(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    again = partition(labels, clients, method="iid", seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@settings(max_examples=60, deadline=None)
@given(
    labels=arrays(np.int64, st.integers(10, 60), elements=st.integers(0, 4)),
    clients=st.integers(1, 6),
    alpha=st.floats(0.3, 100.0),
    seed=seeds,
)
def test_dirichlet_covers_every_index_once(labels, clients, alpha, seed):
    assume(len(labels) >= 5 * clients)
    parts = partition(labels, clients, method="dirichlet", alpha=alpha, seed=seed)
    assert len(parts) == clients
    _covers_exactly_once(parts, len(labels))
    assert min(len(p) for p in parts) >= 2  # min_size
    again = partition(labels, clients, method="dirichlet", alpha=alpha, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@settings(max_examples=60, deadline=None)
@given(
    labels=small_labels,
    clients=st.integers(1, 10),
    shards_per_client=st.integers(1, 4),
    seed=seeds,
)
def test_shards_covers_every_index_once(labels, clients, shards_per_client, seed):
    assume(clients * shards_per_client <= len(labels))
    parts = partition(labels, clients, method="shards", shards_per_client=shards_per_client, seed=seed)
    assert len(parts) == clients
    _covers_exactly_once(parts, len(labels))
    again = partition(labels, clients, method="shards", shards_per_client=shards_per_client, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@pytest.mark.parametrize("method", sorted(PARTITIONERS))
def test_partition_differs_across_seeds(method):
    labels = np.repeat(np.arange(10), 20)
    runs = [partition(labels, 8, method=method, seed=s, alpha=1.0) for s in range(4)]
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            assert any(not np.array_equal(a, b) for a, b in zip(runs[i], runs[j])), (method, i, j)


@pytest.mark.parametrize("method", sorted(PARTITIONERS))
def test_partition_accepts_torch_labels(method, digits_data):
    parts_t = partition(digits_data.y_train, 7, method=method, seed=5)
    parts_n = partition(digits_data.y_train.numpy(), 7, method=method, seed=5)
    _covers_exactly_once(parts_t, len(digits_data.y_train))
    assert all(np.array_equal(a, b) for a, b in zip(parts_t, parts_n))


@pytest.mark.parametrize("method", sorted(PARTITIONERS))
def test_partition_regression_targets(method):
    d = load_linreg(seed=0)
    parts = partition(d.y_train, 6, method=method, seed=0, alpha=0.5)
    _covers_exactly_once(parts, len(d.y_train))


def test_dirichlet_small_alpha_skews_labels(digits_data):
    y = digits_data.y_train.numpy()
    skewed = [_max_class_fraction(partition(y, 10, method="dirichlet", alpha=0.1, seed=s), y) for s in range(3)]
    flat = [_max_class_fraction(partition(y, 10, method="dirichlet", alpha=100.0, seed=s), y) for s in range(3)]
    iid = _max_class_fraction(partition(y, 10, method="iid", seed=0), y)
    assert min(skewed) > 0.4
    assert max(flat) < 0.2 and iid < 0.2
    assert np.mean(skewed) - np.mean(flat) > 0.3


def test_shards_limit_labels_per_client():
    # 10 balanced classes of 20 -> 20 shards of 10, each a single class
    labels = np.repeat(np.arange(10), 20)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    for seed in range(5):
        parts = partition(labels, 10, method="shards", shards_per_client=2, seed=seed)
        assert all(len(p) == 20 for p in parts)
        assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    parts = partition(labels, 20, method="shards", shards_per_client=1, seed=0)
    assert all(len(np.unique(labels[p])) == 1 for p in parts)


def test_shards_on_digits_are_label_sparse(digits_data):
    y = digits_data.y_train.numpy()
    parts = partition(y, 10, method="shards", shards_per_client=2, seed=0)
    # each shard is a contiguous run of sorted labels, shorter than a class
    assert all(len(np.unique(y[p])) <= 4 for p in parts)
    assert np.mean([len(np.unique(y[p])) for p in parts]) <= 3
    iid = partition(y, 10, method="iid", seed=0)
    assert all(len(np.unique(y[p])) == 10 for p in iid)


def test_partition_errors():
    labels = np.arange(10) % 3
    with pytest.raises(ConfigValueError) as excinfo:
        partition(labels, 2, method="round_robin")
    assert excinfo.value.field == "partition" and excinfo.value.value == "round_robin"
    with pytest.raises(ConfigValueError) as excinfo:
        partition(labels, 6, method="dirichlet")  # 6 clients * min_size 2 > 10
    assert excinfo.value.field == "clients"
    with pytest.raises(ConfigValueError) as excinfo:
        partition(labels, 2, method="dirichlet", alpha=0.0)
    assert excinfo.value.field == "alpha"
    with pytest.raises(ConfigValueError) as excinfo:
        partition(labels, 4, method="shards", shards_per_client=3)
    assert excinfo.value.field == "shards_per_client"


# ------------------------------------------------------------------ summarize
@pytest.mark.parametrize("method", sorted(PARTITIONERS))
def test_summarize(method, digits_data):
    y = digits_data.y_train.numpy()
    parts = partition(y, 8, method=method, seed=1, alpha=0.5)
    rows = summarize(parts, digits_data.y_train, 10)
    assert [r["client"] for r in rows] == list(range(8))
    assert sum(r["size"] for r in rows) == len(y)
    for r, p in zip(rows, parts):
        assert r["size"] == len(p)
        assert len(r["labels"]) == 10 and sum(r["labels"]) == r["size"]
        assert r["labels"] == np.bincount(y[p], minlength=10).tolist()
    totals = np.sum([r["labels"] for r in rows], axis=0)
    assert totals.tolist() == np.bincount(y, minlength=10).tolist()


def test_summarize_regression_has_sizes_only():
    d = load_linreg(seed=0)
    parts = partition(d.y_train, 4, method="iid")
    rows = summarize(parts, d.y_train, 0)
    assert all("labels" not in r for r in rows)
    assert sum(r["size"] for r in rows) == len(d.y_train)
