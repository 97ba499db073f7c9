import pytest
import torch

from securefl.data import load_digits, partition


@pytest.fixture(scope="session")
def digits():
    return load_digits(seed=0)


@pytest.fixture(scope="session")
def digits_parts(digits):
    return partition(digits.y_train, 10, method="dirichlet", alpha=1.0, seed=0)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # the reference models are tiny: a second intra-op thread only adds overhead
    torch.set_num_threads(1)
