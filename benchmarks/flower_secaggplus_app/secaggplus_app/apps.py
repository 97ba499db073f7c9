"""Flower SecAgg+ (Bell et al. 2020, as Flower implements it) on securefl's clients.

The ClientApp trains exactly as a securefl client without DP (securefl's
SecureClient.train on the node's partition); the ServerApp runs Flower's
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` with FedAvg over every
client, through a Grid that counts the bytes of every record it pushes and pulls
and times every round (group id = round).
"""

import json
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow


def record_bytes(content) -> int:
    """Payload bytes of a RecordDict: array data, bytes and strings, 8 per number."""
    total = 0
    for rec in content.values():
        for value in rec.values():
            total += _size(value)
    return total


def _size(value) -> int:
    if hasattr(value, "data") and isinstance(getattr(value, "data"), (bytes, bytearray)):
        return len(value.data)
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (list, tuple)):
        return sum(_size(v) for v in value)
    return 8


class CountingGrid:
    """A Grid that counts record bytes both ways and times each message group."""

    def __init__(self, grid):
        self._grid = grid
        self.down, self.up, self.first, self.last = {}, {}, {}, {}
        self._group = {}

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(self._grid.push_messages(messages))
        now = time.monotonic()
        for msg, mid in zip(messages, ids):
            g = msg.metadata.group_id
            self._group[mid] = g
            self.down[g] = self.down.get(g, 0) + record_bytes(msg.content)
            self.first.setdefault(g, now)
        return ids

    def pull_messages(self, message_ids):
        out = list(self._grid.pull_messages(message_ids))
        now = time.monotonic()
        for msg in out:
            g = self._group.get(msg.metadata.reply_to_message_id, "?")
            if msg.has_content():
                self.up[g] = self.up.get(g, 0) + record_bytes(msg.content)
            self.last[g] = now
        return out

    def send_and_receive(self, messages, *, timeout=None):
        ids = set(self.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else 1e9)
        got = []
        while ids and time.monotonic() < end:
            for msg in self.pull_messages(list(ids)):
                ids.discard(msg.metadata.reply_to_message_id)
                got.append(msg)
            if ids:
                time.sleep(0.5)
        return got


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    clients, rounds = int(context.run_config["clients"]), int(context.run_config["rounds"])
    counting = CountingGrid(grid)
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=clients,
                      min_available_clients=clients, min_evaluate_clients=0)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=clients, reconstruction_threshold=3))
    t0 = time.monotonic()
    workflow(counting, legacy)
    out = Path(str(context.run_config["out-dir"]))
    out.mkdir(parents=True, exist_ok=True)
    rounds_out = [
        {"round": g, "bytes_down": counting.down.get(g, 0), "bytes_up": counting.up.get(g, 0),
         "seconds": counting.last.get(g, 0) - counting.first.get(g, 0)}
        for g in sorted(counting.first, key=lambda g: (len(g), g))
    ]
    (out / "metrics.json").write_text(json.dumps({"rounds": rounds_out, "seconds": time.monotonic() - t0}))
    (out / "done").write_text("ok\n")


class SecureflTrainer(NumPyClient):
    """securefl's local training (no DP, no protection) as a Flower NumPyClient."""

    def __init__(self, context: Context):
        self.context = context

    def fit(self, parameters, config):
        import numpy as np
        import torch

        from securefl.config import RunConfig
        from securefl.transport.flower.parties import node_client, node_settings

        node = node_settings(self.context.node_config)
        cfg = RunConfig.from_flat({"clients": int(self.context.run_config["clients"]), "partition": "iid", "dp": "none"})
        client = node_client(cfg, node, node.state_dir / "baseline")
        flat = torch.from_numpy(np.concatenate([p.ravel() for p in parameters]).astype(np.float32))
        res = client.train(flat, int(config.get("server_round", 1)))
        new = (flat + res.update).numpy()
        out, i = [], 0
        for p in parameters:
            out.append(new[i:i + p.size].reshape(p.shape))
            i += p.size
        return out, res.num_samples, {}

    def get_parameters(self, config):
        import torch

        from securefl.config import RunConfig
        from securefl.build import resolve_data
        from securefl.models import build_model

        cfg = RunConfig.from_flat({"clients": int(self.context.run_config["clients"]), "partition": "iid"})
        data = resolve_data(cfg)
        model = build_model(cfg.model, data.input_shape, data.num_classes, hidden=cfg.hidden, seed=cfg.seed)
        return [p.detach().numpy() for p in model.parameters()]


def _client_fn(context: Context):
    return SecureflTrainer(context).to_client()


client = ClientApp(client_fn=_client_fn, mods=[secaggplus_mod])
