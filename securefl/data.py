"""Embedded datasets and federated partitioners.

Every dataset here ships inside a dependency (scikit-learn) or is synthetic, so
nothing is downloaded at run time. Any ``torch.utils.data.Dataset`` of
``(x, y)`` pairs from the user works as well: :func:`as_tensors` turns it into the
tensor form the clients train on, and :func:`as_federated` (or a ``MODULE:CALLABLE``
spec given to :func:`load_dataset`) turns a user's data into :class:`FederatedData`.

Partitioners return one index array per client, are seeded, and never drop or
duplicate an example.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from securefl.exceptions import ConfigError, ConfigValueError
from securefl.userspec import SPEC_FORM, is_user_spec, load_callable


@dataclass(frozen=True)
class FederatedData:
    """A train/test split plus what a model needs to know about it."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int  # 0 for regression
    task: str  # "classification" or "regression"

    @property
    def train(self) -> TensorDataset:
        return TensorDataset(self.x_train, self.y_train)

    @property
    def test(self) -> TensorDataset:
        return TensorDataset(self.x_test, self.y_test)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, stratify: bool):
    from sklearn.model_selection import train_test_split

    return train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y if stratify else None
    )


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0) + 1e-8
    return (x_train - mean) / std, (x_test - mean) / std


def _classification(name, x, y, shape, classes, test_fraction, seed, standardize=False):
    x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, seed, stratify=True)
    if standardize:
        x_tr, x_te = _standardize(x_tr, x_te)
    return FederatedData(
        name=name,
        x_train=torch.tensor(x_tr, dtype=torch.float32).reshape(-1, *shape),
        y_train=torch.tensor(y_tr, dtype=torch.long),
        x_test=torch.tensor(x_te, dtype=torch.float32).reshape(-1, *shape),
        y_test=torch.tensor(y_te, dtype=torch.long),
        input_shape=shape,
        num_classes=classes,
        task="classification",
    )


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> FederatedData:
    """scikit-learn's 1,797 8x8 handwritten digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _load

    ds = _load()
    return _classification(
        "digits", ds.data / 16.0, ds.target, (1, 8, 8), 10, test_fraction, seed
    )


def load_breast_cancer(*, test_fraction: float = 0.2, seed: int = 0) -> FederatedData:
    """scikit-learn's Wisconsin breast cancer table (569 x 30, binary), standardized."""
    from sklearn.datasets import load_breast_cancer as _load

    ds = _load()
    return _classification(
        "breast_cancer", ds.data, ds.target, (30,), 2, test_fraction, seed, standardize=True
    )


def load_synthetic(
    *, test_fraction: float = 0.2, seed: int = 0, n: int = 3000, features: int = 20, classes: int = 4
) -> FederatedData:
    """A seeded synthetic classification task (scikit-learn ``make_classification``)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n,
        n_features=features,
        n_informative=features // 2,
        n_redundant=features // 4,
        n_classes=classes,
        n_clusters_per_class=1,
        random_state=seed,
    )
    return _classification(
        "synthetic", x, y, (features,), classes, test_fraction, seed, standardize=True
    )


def load_linreg(
    *, test_fraction: float = 0.2, seed: int = 0, n: int = 2000, features: int = 10, noise: float = 0.1
) -> FederatedData:
    """A seeded linear-regression task ``y = x w + b + noise`` (the FedAvg textbook case)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=features)
    x = rng.normal(size=(n, features))
    y = x @ w + 0.5 + noise * rng.normal(size=n)
    x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, seed, stratify=False)
    return FederatedData(
        name="linreg",
        x_train=torch.tensor(x_tr, dtype=torch.float32),
        y_train=torch.tensor(y_tr, dtype=torch.float32).unsqueeze(1),
        x_test=torch.tensor(x_te, dtype=torch.float32),
        y_test=torch.tensor(y_te, dtype=torch.float32).unsqueeze(1),
        input_shape=(features,),
        num_classes=0,
        task="regression",
    )


DATASETS: dict[str, Callable[..., FederatedData]] = {
    "digits": load_digits,
    "breast_cancer": load_breast_cancer,
    "synthetic": load_synthetic,
    "linreg": load_linreg,
}


def load_dataset(name: str, *, test_fraction: float = 0.2, seed: int = 0) -> FederatedData:
    """Load an embedded dataset by name (see ``DATASETS``), or a user's dataset named
    by a ``MODULE:CALLABLE`` spec (see :func:`as_federated` for what it may return)."""
    if is_user_spec(name):
        fn = load_callable("dataset", name)
        return as_federated(_call_dataset(fn, name, seed), name=name, test_fraction=test_fraction, seed=seed)
    if name not in DATASETS:
        raise ConfigValueError("dataset", name, f"must be one of {', '.join(sorted(DATASETS))} or {SPEC_FORM}")
    return DATASETS[name](test_fraction=test_fraction, seed=seed)


def _call_dataset(fn: Callable[..., object], name: str, seed: int) -> object:
    try:
        takes_seed = "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_seed = False
    try:
        return fn(seed=seed) if takes_seed else fn()
    except ConfigError:
        raise
    except Exception as exc:  # the user's callable failed: one line naming the field
        raise ConfigValueError("dataset", name, f"the callable raised {type(exc).__name__}: {exc}") from None


def as_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a user ``Dataset`` of ``(x, y)`` pairs into two tensors."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))  # type: ignore[arg-type]
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor(np.asarray(ys))


_FORMS = "(X, y) tensors or arrays, a torch Dataset of (x, y) pairs, or a pair (train, test) of those"


def _is_array(v: object) -> bool:
    return isinstance(v, (torch.Tensor, np.ndarray))


def _xy(obj: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One set as ``(x, y)`` tensors: features float32 with a batch axis first."""
    if isinstance(obj, Dataset):
        x, y = as_tensors(obj)
    elif isinstance(obj, (tuple, list)) and len(obj) == 2 and all(_is_array(v) for v in obj):
        x, y = torch.as_tensor(obj[0]), torch.as_tensor(obj[1])
    else:
        raise ConfigValueError("dataset", name, f"returned a {type(obj).__name__}; it must return {_FORMS}")
    if x.dtype.is_complex or not (x.dtype.is_floating_point or x.dtype in _INT_DTYPES) or len(x) == 0:
        raise ConfigValueError("dataset", name, f"features must be a non-empty real tensor (got {x.dtype}, {len(x)} rows)")
    if len(x) != len(y):
        raise ConfigValueError("dataset", name, f"has {len(x)} inputs but {len(y)} targets")
    return (x.float().unsqueeze(1) if x.dim() == 1 else x.float()), y


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)


def _user_split(obj: object, name: str, test_fraction: float, seed: int):
    """``(x_tr, y_tr, x_te, y_te)`` from what a user's callable returned; one set is
    split with the run's seed (stratified by label when that is possible)."""
    two = isinstance(obj, (tuple, list)) and len(obj) == 2 and not all(_is_array(v) for v in obj)
    if two:
        (x_tr, y_tr), (x_te, y_te) = _xy(obj[0], name), _xy(obj[1], name)
        return x_tr, y_tr, x_te, y_te
    x, y = _xy(obj, name)
    if len(x) < 2:
        raise ConfigValueError("dataset", name, f"has {len(x)} example; a train/test split needs at least 2")
    classify = not y.dtype.is_floating_point
    try:
        x_tr, x_te, y_tr, y_te = _split(x.numpy(), y.numpy(), test_fraction, seed, stratify=classify)
    except ValueError:  # a class too small to stratify
        x_tr, x_te, y_tr, y_te = _split(x.numpy(), y.numpy(), test_fraction, seed, stratify=False)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_tr, y_tr, x_te, y_te))


def as_federated(obj: object, *, name: str = "user", test_fraction: float = 0.2, seed: int = 0) -> FederatedData:
    """A user's data as :class:`FederatedData`.

    ``obj`` is ``(X, y)`` (tensors or arrays), a ``Dataset`` of ``(x, y)`` pairs, or
    ``(train, test)`` of those; a single set is split with ``test_fraction`` and
    ``seed``. Integer labels make a classification task (classes ``0..max``),
    floating-point targets a regression."""
    if isinstance(obj, FederatedData):
        return obj
    x_tr, y_tr, x_te, y_te = _user_split(obj, name, test_fraction, seed)
    if tuple(x_tr.shape[1:]) != tuple(x_te.shape[1:]):
        raise ConfigValueError("dataset", name, f"train inputs {tuple(x_tr.shape[1:])} and test inputs {tuple(x_te.shape[1:])} differ")
    if y_tr.dtype.is_floating_point:
        y_tr, y_te = (y.float().reshape(len(y), -1) for y in (y_tr, y_te))
        classes, task = 0, "regression"
    else:
        y_tr, y_te = (y.long().reshape(-1) for y in (y_tr, y_te))
        if min(int(y_tr.min()), int(y_te.min()) if len(y_te) else 0) < 0:
            raise ConfigValueError("dataset", name, "class labels must be integers >= 0")
        classes, task = int(max(int(y_tr.max()), int(y_te.max()) if len(y_te) else 0)) + 1, "classification"
    return FederatedData(name, x_tr.float(), y_tr, x_te.float(), y_te, tuple(x_tr.shape[1:]), classes, task)


# ----------------------------------------------------------------- partitioners
def partition_iid(labels: np.ndarray, clients: int, *, seed: int = 0, **_: object) -> list[np.ndarray]:
    """Shuffle and split as evenly as possible."""
    rng = np.random.default_rng(seed)
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), clients)]


def partition_dirichlet(
    labels: np.ndarray, clients: int, *, alpha: float = 1.0, seed: int = 0, min_size: int = 2, **_: object
) -> list[np.ndarray]:
    """Label skew: each class is split across clients by proportions ~ Dir(alpha).

    Small ``alpha`` gives clients few classes each (Hsu et al. 2019). Draws are
    repeated until every client holds at least ``min_size`` examples.
    """
    if alpha <= 0:
        raise ConfigValueError("alpha", alpha, "must be > 0")
    if len(labels) < clients * min_size:
        raise ConfigValueError("clients", clients, f"too many for {len(labels)} examples")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _attempt in range(1000):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigValueError("alpha", alpha, "could not give every client enough examples")


def partition_shards(
    labels: np.ndarray, clients: int, *, shards_per_client: int = 2, seed: int = 0, **_: object
) -> list[np.ndarray]:
    """Pathological non-IID split (McMahan et al. 2017): sort by label, cut into
    ``clients * shards_per_client`` shards, give each client ``shards_per_client``."""
    n_shards = clients * shards_per_client
    if n_shards > len(labels):
        raise ConfigValueError("shards_per_client", shards_per_client, "more shards than examples")
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, n_shards)
    assignment = rng.permutation(n_shards).reshape(clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in assignment]


PARTITIONERS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": partition_iid,
    "dirichlet": partition_dirichlet,
    "shards": partition_shards,
}


def partition(
    labels: np.ndarray | torch.Tensor,
    clients: int,
    *,
    method: str = "iid",
    seed: int = 0,
    alpha: float = 1.0,
    shards_per_client: int = 2,
) -> list[np.ndarray]:
    """Split example indices across ``clients`` with a named partitioner."""
    if method not in PARTITIONERS:
        raise ConfigValueError("partition", method, f"must be one of {', '.join(sorted(PARTITIONERS))}")
    labels = np.asarray(labels)
    if labels.ndim > 1 or labels.dtype.kind == "f":
        # regression targets: label skew is undefined, bin them into deciles
        flat = labels.reshape(len(labels), -1)[:, 0]
        labels = np.searchsorted(np.quantile(flat, np.linspace(0, 1, 11)[1:-1]), flat)
    return PARTITIONERS[method](
        labels, clients, seed=seed, alpha=alpha, shards_per_client=shards_per_client
    )


def summarize(parts: list[np.ndarray], labels: np.ndarray | torch.Tensor, num_classes: int) -> list[dict]:
    """Per-client size and label histogram (regression: size only)."""
    labels = np.asarray(labels)
    out = []
    for k, idx in enumerate(parts):
        row: dict = {"client": k, "size": int(len(idx))}
        if num_classes:
            row["labels"] = np.bincount(labels[idx], minlength=num_classes).tolist()
        out.append(row)
    return out


def minibatches(n: int, batch_size: int, *, epochs: float, steps: int | None, key: str) -> list[torch.Tensor]:
    """The index batches of one round of plain local training: shuffled passes over
    ``n`` examples in batches of ``batch_size``; exactly ``steps`` batches when given
    (continuing into further passes), else ``round(epochs * batches_per_pass)`` (at
    least one). ``key`` seeds the shuffle through SHA-256 (reproducible, not secret)."""
    import hashlib
    import math

    digest = hashlib.sha256(key.encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    bs = min(batch_size, n)
    total = steps if steps is not None else max(1, round(epochs * math.ceil(n / bs)))
    batches: list[torch.Tensor] = []
    while len(batches) < total:
        perm = torch.randperm(n, generator=gen)
        batches.extend(perm[i : i + bs] for i in range(0, n, bs))
    return batches[:total]
