"""Membership inference: an overfit model leaks membership; DP-SGD hides it."""

import numpy as np
import pytest

from attacks.membership import MembershipConfig, calibrated_scores, roc, run, split
from securefl.exceptions import ConfigValueError
from securefl.privacy.noise import SecureRNG


def test_roc_known_answers():
    members = np.r_[np.ones(4), np.zeros(4)]
    perfect = roc(np.r_[5, 6, 7, 8, 1, 2, 3, 4.0], members)
    assert perfect["auc"] == 1.0 and perfect["tpr_at_fpr"]["0.01"] == 1.0
    reversed_ = roc(np.r_[1, 2, 3, 4, 5, 6, 7, 8.0], members)
    assert reversed_["auc"] == 0.0 and reversed_["tpr_at_fpr"]["0.001"] == 0.0
    half = roc(np.r_[1, 3, 5, 7, 2, 4, 6, 8.0], members)
    assert half["auc"] == pytest.approx(6 / 16)


def test_split_is_disjoint_and_balanced(digits):
    cfg = MembershipConfig(members=100, references=2)
    (xm, _), (xn, _), (xp, _) = split(digits, cfg)
    assert len(xm) == len(xn) == 100 and len(xp) == len(digits.x_train) + len(digits.x_test) - 200
    rows = {tuple(r) for r in xm.flatten(1).tolist()}
    assert not rows & {tuple(r) for r in xn.flatten(1).tolist()}


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


@pytest.mark.parametrize(
    "kwargs, field",
    [({"members": 0}, "members"), ({"dp": "client"}, "dp"), ({"noise_multiplier": -1.0}, "noise_multiplier"), ({"batch_size": 500}, "batch_size")],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigValueError) as exc:
        MembershipConfig(**kwargs)
    assert exc.value.field == field


def test_too_many_members_for_the_data(digits):
    with pytest.raises(ConfigValueError) as exc:
        run(digits, MembershipConfig(members=700, batch_size=20))
    assert exc.value.field == "members"
