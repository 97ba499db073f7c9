"""weighted_mean: FedAvg aggregation of stacked client updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from securefl.aggregation import AGGREGATORS, SUM_COMPATIBLE, weighted_mean
from securefl.exceptions import AggregationError, SecureFLError


def test_registry():
    assert AGGREGATORS["mean"] is weighted_mean
    assert "mean" in SUM_COMPATIBLE and SUM_COMPATIBLE <= set(AGGREGATORS)


def test_hand_computed_example():
    updates = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [-1.0, 0.0, 10.0]])
    weights = torch.tensor([1.0, 2.0, 5.0])
    # (1*[1,2,3] + 2*[4,5,6] + 5*[-1,0,10]) / 8
    expected = torch.tensor([(1 + 8 - 5) / 8, (2 + 10 + 0) / 8, (3 + 12 + 50) / 8])
    assert torch.allclose(weighted_mean(updates, weights), expected)


@st.composite
def stacks(draw):
    k = draw(st.integers(1, 6))
    d = draw(st.integers(1, 8))
    updates = draw(arrays(np.float64, (k, d), elements=st.floats(-1e3, 1e3)))
    weights = draw(arrays(np.float64, (k,), elements=st.floats(0.0, 1e4)))
    return updates, weights


@settings(max_examples=100, deadline=None)
@given(stack=stacks())
def test_matches_numpy(stack):
    updates, weights = stack
    if weights.sum() <= 0:
        with pytest.raises(AggregationError):
            weighted_mean(torch.from_numpy(updates), torch.from_numpy(weights))
        return
    expected = (weights[:, None] * updates).sum(0) / weights.sum()
    out = weighted_mean(torch.from_numpy(updates), torch.from_numpy(weights))
    assert out.shape == (updates.shape[1],) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out.numpy(), np.average(updates, axis=0, weights=weights), rtol=1e-9, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(
    updates=arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 8)), elements=st.floats(-100, 100, width=32)),
    w=st.floats(1e-3, 1e3),
)
def test_equal_weights_give_plain_mean(updates, w):
    u = torch.from_numpy(updates)
    weights = torch.full((u.shape[0],), w)
    out = weighted_mean(u, weights)
    assert torch.allclose(out, u.mean(0), atol=1e-4, rtol=1e-5)


def test_weights_are_relative_and_integer_counts_work():
    u = torch.tensor([[0.0, 2.0], [4.0, 6.0]])
    a = weighted_mean(u, torch.tensor([1, 3]))
    b = weighted_mean(u, torch.tensor([10.0, 30.0]))
    assert torch.allclose(a, torch.tensor([3.0, 5.0])) and torch.allclose(a, b)
    assert a.dtype == torch.float32
    # a zero-weight client contributes nothing
    assert torch.allclose(weighted_mean(u, torch.tensor([0.0, 7.0])), u[1])


def test_single_client_is_identity():
    u = torch.randn(1, 5)
    assert torch.allclose(weighted_mean(u, torch.tensor([17.0])), u[0])


def test_inputs_not_mutated():
    u = torch.randn(3, 4)
    w = torch.tensor([1.0, 2.0, 3.0])
    u0, w0 = u.clone(), w.clone()
    weighted_mean(u, w)
    assert torch.equal(u, u0) and torch.equal(w, w0)


@pytest.mark.parametrize(
    "updates,weights",
    [
        (torch.zeros(3, 4), torch.ones(2)),
        (torch.zeros(3, 4), torch.ones(4)),
        (torch.zeros(3, 4), torch.ones(3, 1)),
        (torch.zeros(3, 4), torch.ones(1, 3)),
        (torch.zeros(3, 4), torch.tensor(1.0)),
        (torch.zeros(4), torch.ones(4)),
        (torch.zeros(2, 3, 4), torch.ones(2)),
    ],
)
def test_shape_mismatch_raises(updates, weights):
    with pytest.raises(AggregationError, match="shape"):
        weighted_mean(updates, weights)


@pytest.mark.parametrize(
    "updates,weights",
    [
        (torch.ones(3, 4), torch.zeros(3)),
        (torch.ones(2, 4), torch.tensor([1.0, -1.0])),
        (torch.ones(2, 4), torch.tensor([-1.0, -2.0])),
        (torch.zeros(0, 4), torch.zeros(0)),
    ],
)
def test_no_weight_raises(updates, weights):
    with pytest.raises(AggregationError) as excinfo:
        weighted_mean(updates, weights)
    assert isinstance(excinfo.value, SecureFLError)


def test_nan_weight_raises():
    with pytest.raises(AggregationError):
        weighted_mean(torch.ones(2, 3), torch.tensor([float("nan"), 1.0]))
