"""The server side of the Flower transport against an in-process Grid (no processes):
the same rounds as the simulation, and the dropout / refusal / error rules."""

from __future__ import annotations

import itertools
import json

import pytest


class _Meta:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Msg:
    def __init__(self, content, **meta):
        self.content, self.metadata = content, _Meta(**meta)

    def has_error(self):
        return False

    def has_content(self):
        return True


class FakeGrid:
    """A Grid whose nodes are in-process workers (``answer(header, payload)``);
    ``silent`` nodes never reply."""

    def __init__(self, workers, silent=()):
        self.workers, self.silent = workers, set(silent)
        self._ids, self._replies = itertools.count(), {}
        self.pushed = 0

    def get_node_ids(self):
        return list(self.workers)

    def create_message(self, content, message_type, dst_node_id, group_id):
        assert message_type == "query"
        return _Msg(content, dst_node_id=dst_node_id, group_id=group_id)

    def push_messages(self, messages):
        from flwr.app import ConfigRecord, RecordDict

        ids = []
        for m in messages:
            mid, rec = str(next(self._ids)), m.content.config_records["securefl"]
            self.pushed += 1
            if m.metadata.dst_node_id not in self.silent:
                h, body = self.workers[m.metadata.dst_node_id].answer({"method": rec["method"]}, bytes(rec["payload"]))
                content = RecordDict({"securefl": ConfigRecord({"header": json.dumps(h), "payload": body})})
                self._replies[mid] = _Msg(content, reply_to_message_id=mid)
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        return [self._replies.pop(i) for i in list(ids) if i in self._replies]


def _workers(flower, tmp_path, run_config):
    from securefl.config import DPMode
    from securefl.transport.flower.node import NodeWorker
    from securefl.transport.flower.parties import node_client, node_settings, run_settings

    config, _ = run_settings(run_config)
    out = {}
    for k in range(config.clients):
        node = node_settings({"partition-id": k, "state-dir": str(tmp_path / f"node-{k}")})
        client = node_client(config, node, node.state_dir / "runs" / "1")
        out[100 + k] = NodeWorker(client, config.dp.mode is DPMode.SAMPLE, config.dp.accountant)
    return config, out


@pytest.mark.parametrize("protect", ["none", "secagg"])
def test_rounds_over_a_grid_match_the_simulation(flower, tmp_path, protect):
    from securefl.simulation import Simulation
    from securefl.transport.flower import serverapp

    run_config = {"protect": protect, "rounds": 2, "clients": 4, "partition": "iid", "dp": "sample", "epsilon": 8.0,
                  "min-clients": 3, "reproducible-noise": True, "out-dir": str(tmp_path / "out"), "stage-timeout": 30.0}
    config, workers = _workers(flower, tmp_path, run_config)
    deployed = serverapp.run(FakeGrid(workers), run_config, run_id=1)
    simulated = Simulation(config).run().metrics
    assert deployed["final"]["epsilon"] == simulated["final"]["epsilon"]
    assert [r["accuracy"] for r in deployed["rounds"]] == pytest.approx([r["accuracy"] for r in simulated["rounds"]], abs=0.02)
    assert (tmp_path / "out" / "done").exists() and (tmp_path / "out" / "model.pt").exists()
    # the clients' spend is in their own ledgers, one client each, not in the server's
    assert '"client-1"' in (tmp_path / "node-1" / "ledger.json").read_text()
    assert '"client-1"' not in (tmp_path / "out" / "ledger.json").read_text()


def test_a_silent_node_is_a_dropout_and_secagg_completes_without_it(flower, tmp_path):
    from securefl.transport.flower import serverapp

    run_config = {"protect": "secagg", "rounds": 1, "clients": 4, "partition": "iid", "dp": "none",
                  "min-clients": 3, "out-dir": str(tmp_path / "out"), "stage-timeout": 0.5}
    _, workers = _workers(flower, tmp_path, run_config)
    grid = FakeGrid(workers)
    original = grid.push_messages

    def push(messages):  # node 103 answers its hello, then goes silent
        ids = original(messages)
        if any(m.content.config_records["securefl"]["method"] != "hello" for m in messages):
            grid.silent.add(103)
        return ids

    grid.push_messages = push
    row = serverapp.run(grid, run_config, run_id=1)["rounds"][0]
    assert row["aborted"] is None and row["dropped"] == ["client-3"] and row["participants"] == 3


def test_replies_become_the_errors_the_client_raised(flower):
    from securefl import exceptions as E
    from securefl.transport.flower.link import FlowerLink

    link = FlowerLink(grid=None, timeout=1.0)
    refused = link.unwrap(({"client": "client-0", "status": "refused", "budget": [7.0, 9.0, 8.0],
                            "spend": {"epsilon": 7.0}}, b""))
    assert isinstance(refused, E.BudgetExhaustedError) and refused.budget == 8.0
    assert link.spend["client-0"]["epsilon"] == 7.0 and link.max_spend()[0] == 7.0
    replay = link.unwrap(({"client": "client-1", "status": "error", "error": "ReplayError", "message": "old"}, b""))
    assert isinstance(replay, E.ReplayError)
    other = link.unwrap(({"client": "client-1", "status": "error", "error": "KeyError", "message": "x"}, b""))
    assert isinstance(other, E.ProtocolError) and "KeyError" in str(other)
    assert link.unwrap(({"client": "client-2", "status": "ok"}, b"reply")) == b"reply"


@pytest.mark.parametrize(
    "protect, extra",
    [("none", {}), ("ckks", {}), ("secagg", {}), ("secagg", {"secagg-distributed-dp": True})],
    ids=["none", "ckks", "secagg", "secagg-distributed"],
)
def test_client_level_dp_over_a_grid_matches_the_simulation(flower, tmp_path, protect, extra):
    """DP-FedAvg (central noise, and the distributed noise of secure aggregation) over
    the Flower transport: the server's federation ledger and epsilon are the simulation's."""
    from securefl.simulation import Simulation
    from securefl.transport.flower import serverapp

    run_config = {"protect": protect, "rounds": 2, "clients": 4, "partition": "iid", "dp": "client", "epsilon": 20.0,
                  "min-clients": 3, "reproducible-noise": True, "out-dir": str(tmp_path / "out"), "stage-timeout": 30.0,
                  **extra}
    config, workers = _workers(flower, tmp_path, run_config)
    deployed = serverapp.run(FakeGrid(workers), run_config, run_id=1)
    simulated = Simulation(config).run().metrics
    assert not any(r["aborted"] for r in deployed["rounds"])
    assert deployed["final"]["epsilon"] == simulated["final"]["epsilon"] is not None
    assert deployed["final"]["accuracy"] == pytest.approx(simulated["final"]["accuracy"], abs=0.02)
    assert '"federation"' in (tmp_path / "out" / "ledger.json").read_text()
