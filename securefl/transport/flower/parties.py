"""The two parties of a deployed federation, each built on its own machine.

A SuperNode builds one :class:`~securefl.client.SecureClient` (:func:`node_client`)
from the run's configuration and its node configuration: its partition index,
the embedded dataset split with the run's seed (every node derives the same
split, so each holds exactly its own partition), its privacy ledger, round memory
and identity key in its own state directory. The ServerApp builds the
:class:`~securefl.server.SecureServer` (:func:`server_party`). Both use the
composition root's parts (:mod:`securefl.build`: noise plan, protection settings,
noise generators, protection factories), so a deployed party is the party the
in-process simulation builds for the same configuration and seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from securefl.build import check, noise_plan, noise_rng, protection_settings, resolve_data, root_reference
from securefl.client import SecureClient
from securefl.config import RunConfig
from securefl.crypto.identity import Identity, Roster
from securefl.crypto.replay import RoundGuard
from securefl.data import FederatedData, partition
from securefl.exceptions import ConfigTypeError, ConfigValueError
from securefl.models import build_model
from securefl.privacy.ledger import PrivacyLedger
from securefl.protections import PROTECTIONS
from securefl.protections.compressed import compressed_client, compressed_server
from securefl.server import SecureServer

__all__ = ["NodeSettings", "TransportSettings", "node_client", "node_settings", "run_settings", "server_party"]

#: Flower run-config keys that configure the transport, not the federation
TRANSPORT_KEYS = ("out-dir", "stage-timeout", "wait-nodes", "roster", "federation")


@dataclass(frozen=True)
class TransportSettings:
    """The ServerApp's own settings (Flower run config)."""

    out_dir: str = ""  #: where metrics.json, ledger.json and model.pt go ('' = ./securefl-flower-out)
    stage_timeout: float = 120.0  #: seconds a node has to answer one protocol stage
    wait_nodes: float = 120.0  #: seconds to wait for the federation's SuperNodes to connect
    roster: str = ""  #: path of the pinned roster (JSON), or '' for none
    federation: str = ""  #: only SuperNodes whose node config names this federation take part


@dataclass(frozen=True)
class NodeSettings:
    """One SuperNode's settings (Flower node config)."""

    partition_id: int
    state_dir: Path
    roster: str = ""


def _flat(run_config: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): v for k, v in run_config.items() if k not in TRANSPORT_KEYS}


def run_settings(run_config: Mapping[str, Any]) -> tuple[RunConfig, TransportSettings]:
    """Split a Flower run config into the federation's :class:`RunConfig` (every key
    named as in ``securefl`` TOML files, ``-`` or ``_``) and the transport's settings."""
    config = RunConfig.from_flat(_flat(run_config))
    t = {k.replace("-", "_"): run_config[k] for k in TRANSPORT_KEYS if k in run_config}
    for name in ("stage_timeout", "wait_nodes"):
        if name in t and not (isinstance(t[name], (int, float)) and not isinstance(t[name], bool) and t[name] > 0):
            raise ConfigValueError(name.replace("_", "-"), t[name], "must be a positive number of seconds")
    return config, TransportSettings(**t)


def node_settings(node_config: Mapping[str, Any]) -> NodeSettings:
    """Read ``partition-id`` (required) and ``state-dir`` (default ``./securefl-node-<id>``)."""
    pid = node_config.get("partition-id")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
        raise ConfigValueError("partition-id", pid, "node config needs partition-id, a non-negative integer")
    state = node_config.get("state-dir", f"securefl-node-{pid}")
    if not isinstance(state, str) or not state:
        raise ConfigTypeError("state-dir", state, "must be a directory path")
    roster = node_config.get("roster", "")
    if not isinstance(roster, str):
        raise ConfigTypeError("roster", roster, "must be the path of a roster JSON file")
    return NodeSettings(pid, Path(state).expanduser().resolve(), roster)


def client_id(index: int) -> str:
    """The name of partition ``index``'s client (as in the simulation)."""
    return f"client-{index}"


def _model_fn(config: RunConfig, data: FederatedData):
    def model_fn():
        return build_model(config.model, data.input_shape, data.num_classes, hidden=config.hidden, seed=config.seed)

    return model_fn


def load_identity(state_dir: Path, cid: str) -> Identity:
    """This node's signing key (``state_dir/identity.json``, owner-only), made on first use."""
    path = state_dir / "identity.json"
    if path.exists():
        ident = Identity.load(path)
        if ident.client_id != cid:
            raise ConfigValueError("identity", str(path), f"belongs to {ident.client_id}, not {cid}")
        return ident
    ident = Identity.generate(cid)
    ident.save(path)
    return ident


def node_client(config: RunConfig, node: NodeSettings, run_dir: Path) -> SecureClient:
    """Partition ``node.partition_id``'s client, with its ledger (``state_dir/ledger.json``:
    the spend of this node's data over every run), identity and this run's round memory
    (``run_dir/rounds.json``)."""
    check(config)
    if node.partition_id >= config.clients:
        raise ConfigValueError("partition-id", node.partition_id, f"must be below the run's {config.clients} clients")
    node.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    c, cid = config, client_id(node.partition_id)
    data = resolve_data(c)
    parts = partition(data.y_train, c.clients, method=c.partition, seed=c.seed, alpha=c.alpha, shards_per_client=c.shards_per_client)
    idx = parts[node.partition_id]
    noise = noise_plan(c, {cid: len(idx)})
    settings = protection_settings(c, noise)
    ledger = PrivacyLedger(node.state_dir / "ledger.json", delta=c.dp.delta, budget=c.dp.epsilon, accountant=c.dp.accountant)
    ledger.save()
    guard = RoundGuard(run_dir / "rounds.json")
    identity = load_identity(node.state_dir, cid)
    roster = Roster.load(node.roster) if node.roster else None
    protection = compressed_client(c, PROTECTIONS[c.protect].client(
        settings, cid, noise_rng(c, f"protect-{cid}"), identity=identity if roster else None, roster=roster, guard=guard
    ))
    return SecureClient(
        cid, data.x_train[idx], data.y_train[idx], model_fn=_model_fn(c, data), task=data.task, config=c.client, dp=c.dp,
        planned_rounds=c.server.rounds, ledger=ledger, algorithm=c.server.algorithm, rng=noise_rng(c, cid),
        seed=c.seed, guard=guard, noise_multiplier=noise.sample_level.get(cid), protection=protection,
    )


def server_party(config: RunConfig, out_dir: Path, roster: Roster | None) -> SecureServer:
    """The server of ``config``: its ledger (client-level spend) in ``out_dir/ledger.json``,
    the held-out split of the embedded dataset for evaluation."""
    check(config)
    c = config
    out_dir.mkdir(parents=True, exist_ok=True)
    data = resolve_data(c)
    noise = noise_plan(c)
    settings = protection_settings(c, noise)
    path = out_dir / "ledger.json"
    path.unlink(missing_ok=True)  # a new run starts a new server ledger
    ledger = PrivacyLedger(path, delta=c.dp.delta, budget=c.dp.epsilon, accountant=c.dp.accountant)
    ledger.save()
    model_fn = _model_fn(c, data)
    return SecureServer(
        model_fn(), config=c.server, dp=c.dp, num_clients=c.clients, ledger=ledger, task=data.task,
        protection=compressed_server(c, PROTECTIONS[c.protect].server(settings, noise_rng(c, "protect-server"), roster=roster)),
        eval_data=(data.x_test, data.y_test), rng=noise_rng(c, "server"), noise_multiplier=noise.client_level,
        reference=root_reference(c, data.x_train, data.y_train, model_fn, data.task),
    )
