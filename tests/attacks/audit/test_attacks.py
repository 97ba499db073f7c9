"""The audit's attacker: canaries and scorers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.audit.attacks import SCORERS, example_canaries
from attacks.common.grads import flat_per_example_grads
from securefl.privacy.noise import SecureRNG


def test_example_canaries_are_mislabelled_and_leave_the_real_data():
    x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    y = torch.arange(20) % 4
    idx, cx, cy = example_canaries(x, y, 8, 4, SecureRNG.from_seed(0, "c"))
    assert len(set(idx.tolist())) == 8
    assert torch.equal(cx, x[idx]) and (cy != y[idx]).all()


def test_gradient_alignment_scorer_rewards_a_step_along_the_negative_gradient():
    from securefl.models import build_model, get_flat

    model = build_model("logreg", (6,), 3, seed=0)
    rng = SecureRNG.from_seed(1, "g")
    x, y = rng.normal((5, 6)), torch.tensor([0, 1, 2, 0, 1])
    start = get_flat(model)
    scorer = SCORERS["gradient"]("gradient", model, start, x=x, y=y)
    scorer.before_round(start)
    step = -flat_per_example_grads(model, x[2:3], y[2:3])[0]
    scorer.after_round(start + 0.1 * step / step.norm())
    scores = scorer.final(start)
    assert int(np.argmax(scores)) == 2 and scores[2] == pytest.approx(0.1, rel=1e-5)
