"""``--protect secagg`` through SecureServer, Simulation and the CLI."""

import json

import numpy as np
import pytest
import torch

from securefl import RunConfig, Simulation
from securefl.build import check, secagg_settings
from securefl.cli import main
from securefl.config import ServerConfig
from securefl.crypto.identity import Identity, Roster
from securefl.crypto.secagg.common import SecAggSettings
from securefl.exceptions import ConfigValueError
from securefl.protections import PROTECTIONS
from securefl.server import SecureServer

from tests.helpers.secagg import federation



def small(protect: str, **kw):
    return RunConfig.from_flat(
        {"clients": 5, "rounds": 2, "model": "mlp", "hidden": 16, "local_epochs": 1.0, "protect": protect, "seed": 0, **kw}
    )


def test_secagg_run_matches_plaintext_up_to_rounding(tmp_path):
    plain = Simulation(small("none")).run()
    sa = Simulation(small("secagg"), out_dir=tmp_path).run()
    w_plain, w_sa = plain.server.weights, sa.server.weights
    assert not torch.equal(w_plain, w_sa)  # stochastic rounding happened ...
    assert torch.allclose(w_plain, w_sa, atol=1e-5)  # ... and is far below the update scale
    m = json.loads((tmp_path / "metrics.json").read_text())
    dim = w_sa.numel()
    for r in m["rounds"]:
        p = r["protection"]
        assert r["aborted"] is None and r["participants"] == 5
        assert p["saturated"] == 0 and p["survivors"] == 5 and p["float32_bytes"] == 4 * dim
        # the masked input costs at most 5% over float32; key material is O(n)
        assert p["masked_input_ratio"] <= 1.05
        assert p["key_bytes_per_client"] <= 800 * 5
        assert p["bytes_up_per_client"] <= 1.05 * 4 * dim + p["key_bytes_per_client"]


def test_too_few_survivors_abort_round_and_keep_model():
    cfg = small("secagg", clients=4)
    settings = SecAggSettings(threshold=1.0)  # every client needed
    clients, protection = federation(settings, [np.zeros(3) for _ in range(4)])
    server = SecureServer(torch.nn.Linear(2, 1), config=ServerConfig(dropout=0.0), num_clients=4, protection=protection)
    before = server.weights.clone()
    server.draw_dropouts = lambda chosen: {"c02": 3}  # one client vanishes before masking
    res = server.run_round(1, clients)
    assert res.aborted.startswith("SecAggAbortError") and "fewer than the 4 needed" in res.aborted
    assert torch.equal(server.weights, before) and res.dropped == ["c02"]
    del cfg


def test_factory_registered_and_validates_settings():
    assert "secagg" in PROTECTIONS
    # factories take the protection's own settings, derived from a RunConfig by securefl.build
    cfg = small("secagg", secagg_neighbors=2, secagg_threshold=0.7)
    prot = PROTECTIONS["secagg"].server(secagg_settings(cfg), None)
    assert prot.stages == 4 and prot.settings.neighbors == 2
    malicious = secagg_settings(small("secagg", secagg_malicious=True, secagg_threshold=0.8))
    roster = Roster.of(Identity.generate(f"client-{k}") for k in range(5))
    assert PROTECTIONS["secagg"].server(malicious, None, roster=roster).stages == 5
    with pytest.raises(ConfigValueError, match="roster"):  # the malicious option needs pinned keys
        PROTECTIONS["secagg"].server(malicious, None)
    with pytest.raises(ConfigValueError, match="2/3"):
        check(small("secagg", secagg_malicious=True))
    with pytest.raises(ConfigValueError) as info:
        secagg_settings(small("secagg", secagg_max_weight=1e9))
    assert info.value.field == "secagg_bits"
    with pytest.raises(ConfigValueError, match="secagg_neighbors"):
        check(small("secagg", secagg_neighbors=3))


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--secagg-threshold", "0.4"], "--secagg-threshold"),
        (["--secagg-bits", "16"], "--secagg-bits"),
        (["--aggregator", "median"], "--aggregator"),
    ],
)
def test_cli_usage_errors(args, flag, capsys, tmp_path):
    rc = main(["train", "--protect", "secagg", "--rounds", "1", "--out", str(tmp_path), "--no-progress", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and flag in err[0]


def test_cli_secagg_with_dropouts_counts_them(tmp_path, capsys):
    rc = main(
        ["train", "--protect", "secagg", "--clients", "6", "--rounds", "2", "--model", "logreg", "--local-epochs", "0.5",
         "--dropout", "0.5", "--secagg-threshold", "0.51", "--out", str(tmp_path), "--no-progress"]
    )
    m = json.loads((tmp_path / "metrics.json").read_text())
    aborted = sum(r["aborted"] is not None for r in m["rounds"])
    # dropouts are drawn fresh each run; a run that lost more than half its rounds must say so
    assert rc == (1 if 2 * aborted > len(m["rounds"]) else 0)
    assert m["final"]["dropouts"] == sum(len(r["dropped"]) for r in m["rounds"]) > 0
    for r in m["rounds"]:
        if r["aborted"] is None:
            assert r["protection"]["dropouts"] == len(r["dropped"])


@pytest.mark.slow
def test_digits_30_rounds_within_half_a_point_of_plaintext(tmp_path):
    base = {"dataset": "digits", "clients": 10, "rounds": 30, "seed": 0}
    plain = Simulation(RunConfig.from_flat({**base, "protect": "none"})).run().metrics["final"]["accuracy"]
    sa = Simulation(RunConfig.from_flat({**base, "protect": "secagg"})).run().metrics["final"]["accuracy"]
    assert abs(plain - sa) <= 0.005
