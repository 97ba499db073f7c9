"""Membership inference: an overfit model leaks membership; DP-SGD hides it."""

import pytest

from attacks.membership.attacks import calibrated_scores
from attacks.membership.cases import MembershipConfig
from attacks.membership.run import run
from securefl.exceptions import ConfigValueError
from securefl.privacy.noise import SecureRNG


def test_overfit_model_leaks_and_dp_leaks_less(digits):
    base = dict(members=100, epochs=60, batch_size=20, lr=0.2, hidden=128, references=1, seed=0)
    plain = run(digits, MembershipConfig(**base))
    # reproducible noise so the test is deterministic (the library default is unseeded)
    private = run(digits, MembershipConfig(**base, dp="sample", noise_multiplier=8.0), rng=SecureRNG.from_seed(0))
    assert plain.train_accuracy == 1.0
    assert plain.summary()["auc"] > 0.6
    assert private.epsilon is not None and private.epsilon < 3
    assert private.attacks["loss"]["auc"] < plain.attacks["loss"]["auc"] - 0.05
    assert set(plain.summary()["tpr_at_fpr"]) == {"0.01", "0.001"}


def test_calibrated_attack_needs_references(digits):
    with pytest.raises(ConfigValueError) as exc:
        calibrated_scores(None, None, None, [])
    assert exc.value.field == "references"
