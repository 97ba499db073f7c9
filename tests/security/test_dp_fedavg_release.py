"""F9: under client-level DP nothing released depends on the exact participant count.

DP-FedAvg divides by the expected count ``q N`` so that one client changes the
release by at most ``S / (q N)``; the accountant charges nothing for the count
itself. So metrics.json must not say how many clients took part (or refused, or
dropped), nor anything from which it follows exactly (bytes, wall time, cohort
statistics of the protection), and the model update must not depend on it beyond
the noised sum.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from securefl import DPConfig, RunConfig, SecureServer, ServerConfig, Simulation
from securefl.exceptions import BudgetExhaustedError, ClientDropout
from securefl.privacy.noise import SecureRNG
from securefl.protections import Plaintext
from securefl.server import CONTRACT_KEYS
from securefl.transport import wire

#: what may differ between the two runs: functions of the released (noised) model
MODEL_FIELDS = {"accuracy", "loss"}


def _run(tmp: Path, protect: str, gone: str | None, how: type[Exception] = ClientDropout) -> dict[str, Any]:
    flat = {"dataset": "digits", "clients": 5, "rounds": 2, "model": "logreg", "dp": "client",
            "noise_multiplier": 1.0, "clip": 0.5, "protect": protect, "reproducible_noise": True, "seed": 3}
    sim = Simulation(RunConfig.from_flat(flat), out_dir=tmp)
    for c in sim.clients:
        if c.client_id == gone:
            def away(message: bytes, cid: str = c.client_id) -> bytes:
                raise how(cid) if how is ClientDropout else how(cid, 1.0, 2.0, 1.5)

            c.fit = c.handle = away  # type: ignore[method-assign]
    result = sim.run()
    raw = [(r.participants, len(r.refused) + len(r.dropped)) for r in result.results]
    return {"metrics": json.loads((tmp / "metrics.json").read_text()), "raw": raw}


def _differing(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


@pytest.mark.parametrize("protect", ["none", "secagg"])
@pytest.mark.parametrize("how", [ClientDropout, BudgetExhaustedError], ids=["drops", "refuses"])
def test_metrics_do_not_depend_on_how_many_took_part(tmp_path, protect, how):
    full = _run(tmp_path / "full", protect, None)
    less = _run(tmp_path / "less", protect, "client-2", how)
    assert [p for p, _ in full["raw"]] == [5, 5] and [p for p, _ in less["raw"]] == [4, 4]  # the server knows
    for a, b in zip(full["metrics"]["rounds"], less["metrics"]["rounds"]):
        assert _differing(a, b) <= MODEL_FIELDS, _differing(a, b)
        assert a["participants"] == 5.0 and a["participants_released"] == "expected"
        assert set(CONTRACT_KEYS) <= set(a) and "refused" not in a and "dropped" not in a
        assert a["bytes_up"] is a["bytes_down"] is a["seconds"] is None
        named = {w["field"] for w in a["withheld"]}
        assert {"refused", "dropped", "bytes_up", "bytes_down", "seconds"} <= named
    fa, fb = full["metrics"]["final"], less["metrics"]["final"]
    assert _differing(fa, fb) <= MODEL_FIELDS, _differing(fa, fb)
    assert fa["refusals"] is fa["dropouts"] is fa["bytes_up"] is None
    assert full["metrics"]["partition"] is None


def test_cohort_statistics_are_withheld_under_client_dp(tmp_path):
    m = _run(tmp_path, "secagg", None)["metrics"]
    stats = m["rounds"][0]["protection"]
    assert stats and not {"survivors", "dropouts", "excluded", "saturated", "noise_stddev", "threshold"} & set(stats)
    assert {"protection.survivors", "protection.saturated"} <= {w["field"] for w in m["rounds"][0]["withheld"]}


def test_sample_dp_metrics_are_unchanged(tmp_path):
    flat = {"clients": 4, "rounds": 1, "model": "logreg", "dp": "sample", "noise_multiplier": 1.0}
    m = Simulation(RunConfig.from_flat(flat), out_dir=tmp_path).run().metrics
    row = m["rounds"][0]
    assert row["participants"] == 4 and row["refused"] == [] and row["bytes_up"] > 0 and "withheld" not in row
    assert m["final"]["bytes_up"] == row["bytes_up"] and m["partition"] is not None


# ------------------------------------------------------------ the released update
class ZeroOrGone:
    """An honest DP-FedAvg client with a fixed update; ``gone`` refuses the round."""

    def __init__(self, cid: str, update: torch.Tensor, gone: bool = False) -> None:
        self.client_id, self.update, self.gone = cid, update, gone

    def fit(self, message: bytes) -> bytes:
        msg = wire.decode(message, expect=wire.Kind.GLOBAL_MODEL)
        if self.gone:
            raise BudgetExhaustedError(self.client_id, 1.0, 2.0, 1.5)
        header = {"round": msg.header["round"], "client": self.client_id, "dim": msg.header["dim"]}
        return Plaintext().seal(self.update, {"weight": 1.0}, header)

    def handle(self, message: bytes) -> bytes:
        raise AssertionError("plaintext has no other stage")


def _released(last_gone: bool) -> tuple[torch.Tensor, dict[str, Any]]:
    dp = DPConfig(dp="client", noise_multiplier=1.0, clip=1.0)
    server = SecureServer(torch.nn.Linear(3, 1), dp=dp, num_clients=4, config=ServerConfig(rounds=1),
                          rng=SecureRNG.from_seed(0, "server"))
    ups = [torch.tensor([0.5, 0.0, 0.0, 0.0]), torch.tensor([0.0, -0.5, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.25, 0.0])]
    clients = [ZeroOrGone(f"c{i}", u) for i, u in enumerate(ups)]
    # the fourth client contributes nothing: a zero update, or no update at all
    clients.append(ZeroOrGone("c3", torch.zeros(4), gone=last_gone))
    w0 = server.weights.clone()
    res = server.run_round(1, clients)
    assert res.participants == (3 if last_gone else 4)
    return server.weights - w0, server.release(res)


def test_released_update_divides_by_the_expected_count():
    present, row_present = _released(last_gone=False)
    absent, row_absent = _released(last_gone=True)
    # same noise, same sum: a fixed denominator makes the release blind to the count
    torch.testing.assert_close(present, absent, rtol=0, atol=1e-7)
    assert _differing(row_present, row_absent) <= MODEL_FIELDS
    # and that denominator is q N = 4, not the 3 or 4 that answered
    noise = SecureRNG.from_seed(0, "server")
    noise.sample(4, 4)  # the server's sampling draw comes first
    from securefl.privacy.noise import noisy_on_grid

    query = torch.tensor([0.5, -0.5, 0.25, 0.0], dtype=torch.float64)
    expected = noisy_on_grid(query, noise_multiplier=1.0, clip=1.0, rng=noise) / 4
    torch.testing.assert_close(present, expected.float())
