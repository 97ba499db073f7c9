"""The audit's settings and secret coins."""

from __future__ import annotations

import pytest

from attacks.audit.cases import EmpiricalAuditConfig
from securefl.exceptions import ConfigValueError
from securefl.privacy.noise import SecureRNG


def test_inclusion_coins_follow_the_seed():
    a = SecureRNG.from_seed(5, "audit-inclusion").bernoulli(0.5, 64)
    b = SecureRNG.from_seed(5, "audit-inclusion").bernoulli(0.5, 64)
    c = SecureRNG.from_seed(6, "audit-inclusion").bernoulli(0.5, 64)
    assert (a == b).all() and not (a == c).all()


@pytest.mark.parametrize(
    "kwargs, dp, field",
    [
        ({"canaries": 1}, "none", "canaries"),
        ({"kind": "sample"}, "none", "canary_kind"),
        ({"kind": "client"}, "sample", "canary_kind"),
        ({"kind": "client", "score": "loss"}, "client", "score"),
        ({"confidence": 1.5}, "none", "confidence"),
        ({"canaries": 10, "k_pos": 8, "k_neg": 5}, "none", "k_pos"),
    ],
)
def test_bad_audit_settings_name_the_field(kwargs, dp, field):
    with pytest.raises(ConfigValueError) as info:
        EmpiricalAuditConfig(**kwargs).resolved(dp)
    assert info.value.field == field
