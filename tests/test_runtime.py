"""The thread policy: one place decides how many threads torch uses."""

import pytest
import torch

from securefl import RunConfig
from securefl.build import build
from securefl.exceptions import ConfigValueError
from securefl.runtime import ENV, apply_thread_policy, threads_wanted


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_one_thread_and_omp_is_respected(monkeypatch):
    assert threads_wanted() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads_wanted() is None  # torch already follows OMP_NUM_THREADS


def test_argument_beats_env_which_beats_omp(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setenv(ENV, "2")
    assert threads_wanted() == 2 and threads_wanted(3) == 3
    monkeypatch.setenv(ENV, "torch")
    assert threads_wanted() is None


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_env_values_name_the_variable(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ConfigValueError) as info:
        threads_wanted()
    assert info.value.field == ENV and info.value.value == value


def test_apply_sets_torch_threads():
    torch.set_num_threads(2)
    assert apply_thread_policy() == 1 and torch.get_num_threads() == 1
    assert apply_thread_policy(2) == 2


def test_build_applies_the_policy(monkeypatch):
    config = RunConfig(clients=2)
    torch.set_num_threads(2)
    build(config)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    monkeypatch.setenv(ENV, "torch")
    build(config)
    assert torch.get_num_threads() == 2


def test_cli_refuses_a_bad_env_value_in_one_line(monkeypatch, capsys, tmp_path):
    from securefl.cli import main

    monkeypatch.setenv(ENV, "many")
    assert main(["train", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"error: {ENV}: must be a positive integer" in err
