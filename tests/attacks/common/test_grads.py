"""Per-example gradients (attacks.common.grads)."""

from __future__ import annotations

import torch

from attacks.common.grads import flat_per_example_grads
from securefl.privacy.noise import SecureRNG


def test_per_example_gradients_match_autograd():
    from securefl.models import build_model, get_flat

    model = build_model("mlp", (8,), 3, hidden=5, seed=0)
    rng = SecureRNG.from_seed(0, "g")
    x = rng.normal((4, 8))
    y = torch.tensor([0, 2, 1, 2])
    got = flat_per_example_grads(model, x, y)
    assert got.shape == (4, get_flat(model).numel())
    for i in range(4):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        want = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        assert torch.allclose(got[i], want, atol=1e-6)
