"""Membership-inference metrics: known answers."""

import numpy as np
import pytest

from attacks.membership.metrics import roc


def test_roc_known_answers():
    members = np.r_[np.ones(4), np.zeros(4)]
    perfect = roc(np.r_[5, 6, 7, 8, 1, 2, 3, 4.0], members)
    assert perfect["auc"] == 1.0 and perfect["tpr_at_fpr"]["0.01"] == 1.0
    reversed_ = roc(np.r_[1, 2, 3, 4, 5, 6, 7, 8.0], members)
    assert reversed_["auc"] == 0.0 and reversed_["tpr_at_fpr"]["0.001"] == 0.0
    half = roc(np.r_[1, 3, 5, 7, 2, 4, 6, 8.0], members)
    assert half["auc"] == pytest.approx(6 / 16)
