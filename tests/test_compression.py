"""--compress: the spec, the public coordinate choice, error feedback, config and CLI errors."""

import numpy as np
import pytest
import torch

from securefl.cli import main
from securefl.config.compression import CompressionSpec
from securefl.protections.compressed import public_coordinates, scatter, sparsify_with_feedback
from securefl.config import RunConfig
from securefl.exceptions import ConfigValueError


def test_parse_round_trips_and_counts_kept_coordinates():
    assert not CompressionSpec.parse("none").enabled
    spec = CompressionSpec.parse("randk:0.1+quant:8")
    assert (spec.fraction, spec.bits, str(spec)) == (0.1, 8, "randk:0.1+quant:8")
    assert CompressionSpec.parse("quant:4+randk:0.5") == CompressionSpec(0.5, 4)
    assert spec.kept(4810) == 481 and spec.kept(5) == 1 and CompressionSpec(1.0).kept(7) == 7
    assert CompressionSpec(bits=8).kept(10) == 10


@pytest.mark.parametrize(
    "text, part",
    [("randk:0", "(0, 1]"), ("randk:1.5", "(0, 1]"), ("randk:x", "not a number"), ("quant:1", "[2, 16]"),
     ("quant:17", "[2, 16]"), ("quant:8.5", "[2, 16]"), ("topk:0.1", "unknown"), ("randk:0.1+randk:0.2", "repeated"),
     ("", "must be"), (3, "must be")],
)
def test_bad_specs_name_the_field_and_value(text, part):
    with pytest.raises(ConfigValueError, match=part.replace("[", r"\[").replace("(", r"\(")) as info:
        CompressionSpec.parse(text)
    assert info.value.field == "compress"


def test_coordinates_are_shared_per_round_and_change_with_it():
    a = public_coordinates(7, 3, 1000, 100)
    assert np.array_equal(a, public_coordinates(7, 3, 1000, 100))  # every client computes the same
    assert len(set(a.tolist())) == 100 and np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 1000
    b = public_coordinates(7, 4, 1000, 100)
    c = public_coordinates(8, 3, 1000, 100)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    # over many rounds every coordinate gets its turn (uniform subsets)
    seen = np.concatenate([public_coordinates(0, r, 50, 5) for r in range(1, 200)])
    assert set(seen.tolist()) == set(range(50))


def test_error_feedback_carries_the_unsent_coordinates():
    idx1, idx2 = np.array([0, 2]), np.array([1, 2])
    u = torch.tensor([1.0, 2.0, 3.0, 4.0])
    sent, res = sparsify_with_feedback(u, torch.zeros(4), idx1)
    assert sent.tolist() == [1.0, 3.0] and res.tolist() == [0.0, 2.0, 0.0, 4.0]
    sent2, res2 = sparsify_with_feedback(u, res, idx2)
    assert sent2.tolist() == [4.0, 3.0] and res2.tolist() == [1.0, 0.0, 0.0, 8.0]
    # whatever was produced is sent or kept: nothing lost
    assert torch.equal(scatter(sent, idx1, 4) + scatter(sent2, idx2, 4) + res2, 2 * u)
    # without feedback only the fresh update's coordinates go
    assert sparsify_with_feedback(u, None, idx2)[0].tolist() == [2.0, 3.0]


def test_feedback_is_clipped_to_the_client_level_sensitivity():
    u = torch.full((100,), 0.1)  # norm 1
    res = torch.full((100,), 0.5)
    sent, rest = sparsify_with_feedback(u, res, np.arange(10), clip=1.0)
    assert float(torch.linalg.vector_norm(sent)) <= 1.0 + 1e-6
    assert float(torch.linalg.vector_norm(rest)) <= 1.0 + 1e-6


def flat(**kw):
    return {"clients": 5, "rounds": 2, "model": "mlp", "hidden": 16, "seed": 0, **kw}


@pytest.mark.parametrize(
    "kw, field, part",
    [
        ({"protect": "ckks", "compress": "quant:8"}, "compress", "per slot"),
        ({"protect": "none", "compress": "randk:0.1+quant:8"}, "compress", "float32"),
        ({"protect": "secagg", "compress": "quant:8", "dp": "client", "noise_multiplier": 1.0,
          "secagg_distributed_dp": True}, "compress", "distributed"),
        ({"protect": "secagg", "compress": "randk:0.1", "dp": "client", "noise_multiplier": 1.0,
          "sampling": "poisson", "fraction": 0.5}, "error_feedback", "no-error-feedback"),
        ({"compress": "randk:2"}, "compress", "(0, 1]"),
        ({"protect": "secagg", "compress": "quant:8", "dp": "client", "noise_multiplier": 1.0, "adaptive_clip": True},
         "compress", "adaptive"),
    ],
)
def test_config_refuses_what_it_cannot_do(kw, field, part):
    with pytest.raises(ConfigValueError, match=part.replace("(", r"\(").replace("[", r"\[")) as info:
        RunConfig.from_flat(flat(**kw))
    assert info.value.field == field


def test_config_accepts_sound_combinations():
    cfg = RunConfig.from_flat(flat(protect="secagg", compress="randk:0.1+quant:8", dp="client", noise_multiplier=1.0))
    assert cfg.protection.compression == CompressionSpec(0.1, 8)
    RunConfig.from_flat(flat(compress="randk:0.1", dp="client", noise_multiplier=1.0, sampling="poisson",
                             fraction=0.5, error_feedback=False))
    assert RunConfig.from_flat(flat(compress="randk:0.5")).to_flat()["compress"] == "randk:0.5"


@pytest.mark.parametrize("args", [["--compress", "quant:99"], ["--compress", "randk:0.1+quant:8", "--protect", "ckks"]])
def test_cli_bad_spec_exits_2(args, tmp_path, capsys):
    assert main(["train", *args, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "compress" in capsys.readouterr().err


def test_error_feedback_residual_survives_a_resume(tmp_path):
    # the unsent coordinates are client state: checkpointed, and restored by --resume
    from securefl.config import RunConfig
    from securefl.simulation import Simulation

    cfg = RunConfig.from_flat(dict(model="logreg", clients=4, rounds=2, protect="secagg", compress="randk:0.2"))
    first = Simulation(cfg, out_dir=tmp_path)
    first.run()
    saved = [c.protection.residual.clone() for c in first.clients]
    assert all(r.abs().sum() > 0 for r in saved)
    resumed = Simulation.resume(tmp_path)
    for c, r in zip(resumed.clients, saved):
        torch.testing.assert_close(c.protection.residual, r)
    client = resumed.clients[0]
    state = client.state_dict()
    state["residual"] = torch.full((3,), 1.0)
    with pytest.raises(ConfigValueError, match="residual"):
        client.load_state_dict(state)
    # a refused state changes nothing, not even its valid parts
    bad = {"momentum_buffer": torch.zeros(client.dim), "residual": torch.zeros(client.dim)}
    with pytest.raises(ConfigValueError, match="momentum_buffer"):
        client.load_state_dict(bad)
    torch.testing.assert_close(client.protection.residual, saved[0])
