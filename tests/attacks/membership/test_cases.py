"""Membership-inference cases: the record split and the recipe's validation."""

import pytest

from attacks.membership.cases import MembershipConfig, split
from attacks.membership.run import run
from securefl.exceptions import ConfigValueError


def test_split_is_disjoint_and_balanced(digits):
    cfg = MembershipConfig(members=100, references=2)
    (xm, _), (xn, _), (xp, _) = split(digits, cfg)
    assert len(xm) == len(xn) == 100 and len(xp) == len(digits.x_train) + len(digits.x_test) - 200
    rows = {tuple(r) for r in xm.flatten(1).tolist()}
    assert not rows & {tuple(r) for r in xn.flatten(1).tolist()}


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
