"""Fixtures of the poisoning tests."""

import pytest

from securefl.config import RunConfig


@pytest.fixture
def run_config():
    """``run_config(**flat)``: a small synthetic federation (10 clients, IID, 3 rounds,
    logistic regression), flat settings overriding."""

    def make(**kw):
        base = {"dataset": "synthetic", "clients": 10, "partition": "iid", "rounds": 3, "model": "logreg",
                "local_epochs": 1.0, "seed": 0}
        return RunConfig.from_flat({**base, **kw})

    return make
