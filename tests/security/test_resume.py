"""Attacks on a resumed run: a crafted checkpoint, and a resume that would make a
client answer a round twice or forget a spend."""

import io
import pickle

import pytest

from securefl.checkpoint import CHECKPOINT
from securefl.config import RunConfig
from securefl.exceptions import ConfigValueError, ReplayError
from securefl.simulation import Simulation

FLAT = {"dataset": "digits", "clients": 4, "rounds": 3, "model": "logreg", "local_epochs": 0.5, "protect": "secagg"}


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_crafted_checkpoint_cannot_run_code(tmp_path):
    run = tmp_path / "run"
    Simulation(RunConfig.from_flat(FLAT), out_dir=run).run()
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    pickle.dump({"format": "securefl-checkpoint", "x": _Payload(str(marker))}, buf)
    (run / CHECKPOINT).write_bytes(buf.getvalue())
    with pytest.raises(ConfigValueError) as info:
        Simulation.resume(run)
    assert info.value.field == "resume" and not marker.exists()


def test_resumed_run_never_reuses_a_round_number_a_client_answered(tmp_path):
    sim = Simulation(RunConfig.from_flat(FLAT), out_dir=tmp_path)
    real = sim.server.protection.aggregate

    def dies_mid_round_2(chosen, down, dim, exchange):
        agg = real(chosen, down, dim, exchange)
        if exchange.round >= 2:  # every client answered every stage of round 2, then the server died
            raise KeyboardInterrupt
        return agg

    sim.server.protection.aggregate = dies_mid_round_2
    with pytest.raises(KeyboardInterrupt):
        sim.run()
    back = Simulation.resume(tmp_path)
    assert {g.last("fit") for g in back.guards} == {2}
    assert {g.last("secagg-advertise") for g in back.guards} == {2}
    with pytest.raises(ReplayError):  # the restarted client still refuses round 2
        back.clients[0].fit(back.server.global_message(2))
    result = back.run()
    assert [r.get("protocol_round") for r in result.metrics["rounds"]] == [None, 3, 4]
    assert not any(r["aborted"] for r in result.metrics["rounds"])
