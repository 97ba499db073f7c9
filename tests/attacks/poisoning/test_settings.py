"""The poisoning bench's named settings: the literature setting really is ReLU, worker
momentum and one step per round, and ``--setting`` picks it."""

from __future__ import annotations

import pytest
import torch

from attacks.poisoning.settings import SETTINGS, relu_mlp, setting
from securefl.build import build
from securefl.config import RunConfig
from securefl.exceptions import ConfigValueError


def test_literature_setting_builds_relu_clients_with_worker_momentum_and_one_step():
    config = RunConfig.from_flat({**SETTINGS["literature"].base, "rounds": 2, "seed": 0})
    fed = build(config)
    client = fed.clients[0]
    assert any(isinstance(m, torch.nn.ReLU) for m in client.model.modules())
    assert not any(isinstance(m, torch.nn.Tanh) for m in client.model.modules())
    assert client.local_steps == 1 and client.momentum_buffer is not None
    w = torch.zeros(client.dim)
    client.train(w, 1)
    first = client.state_dict()["momentum_buffer"].clone()
    assert first.norm() > 0  # the buffer is carried into the next round
    client.train(w, 2)
    assert not torch.equal(client.state_dict()["momentum_buffer"], first)


def test_default_setting_is_the_bench_base_and_keeps_no_client_state():
    from attacks.poisoning.bench import BASE

    assert SETTINGS["default"].base is BASE
    config = RunConfig.from_flat(BASE)
    assert config.client.client_momentum == 0 and config.client.local_steps is None and config.model == "mlp"


def test_unknown_setting_is_refused_with_the_field():
    with pytest.raises(ConfigValueError) as err:
        setting("bogus")
    assert err.value.field == "setting"


def test_relu_mlp_shape():
    out = relu_mlp((1, 8, 8), 10, hidden=16)(torch.zeros(3, 1, 8, 8))
    assert out.shape == (3, 10)


def test_quick_literature_suite_runs_the_chosen_cells(tmp_path):
    from attacks.poisoning.bench import run_suite

    res = run_suite(seeds=1, out=tmp_path, progress=False, quick=True, workers=1, setting="literature",
                    attacks=["none", "ipm_100"], defenses=["centered_clip_r1"])
    assert res["setting"]["name"] == "literature" and res["setting"]["base"]["client_momentum"] == 0.9
    assert {(r["attack"], r["defense"]) for r in res["runs"]} == {("none", "centered_clip_r1"), ("ipm_100", "centered_clip_r1")}
    assert "`literature`" in (tmp_path / "poisoning.md").read_text()
    with pytest.raises(ConfigValueError):
        run_suite(seeds=1, out=tmp_path, progress=False, quick=True, attacks=["bogus"])


def test_cli_refuses_an_unknown_setting(capsys):
    from securefl.cli import main

    assert main(["attack", "bench", "--suite", "poisoning", "--setting", "bogus", "--out", "/tmp/unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--setting" in err[0] and "bogus" in err[0]
