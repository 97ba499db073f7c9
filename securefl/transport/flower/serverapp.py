"""The ServerApp's body: a securefl run over the SuperNodes of a Flower Grid.

:func:`run` reads the run config (:func:`~securefl.transport.flower.parties.run_settings`),
waits for the federation's SuperNodes, asks each which client it runs (its
``partition-id``; this first message also starts each node's worker, see
:mod:`securefl.transport.flower.node`), builds the :class:`~securefl.server.SecureServer`
and drives ``SecureServer.run_round`` over :class:`~securefl.transport.flower.link.RemoteClient`
proxies, exactly as the simulation drives it over in-process clients. Every stage
of every protocol (CKKS key set-up, secure aggregation's advertise / share /
masked input / (consistency) / unmask) is one round of Flower messages.

Outputs in ``out-dir``: ``metrics.json`` (after every round; the same keys as the
simulation's; under ``dp="sample"`` epsilon is what the clients report of their own
ledgers), the server's ``ledger.json`` (client-level spend), ``model.pt`` (the
released global model's flat weights) and ``done`` when the run has finished.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from securefl._io import atomic_write_json
from securefl.config import DPMode, RunConfig
from securefl.crypto.identity import Roster
from securefl.exceptions import ConfigValueError
from securefl.privacy.events import FEDERATION
from securefl.runtime import apply_thread_policy
from securefl.server import COUNT_REASON, RoundResult, SecureServer
from securefl.transport.flower.link import FlowerExchange, FlowerLink, RemoteClient
from securefl.transport.flower.parties import client_id, run_settings, server_party

__all__ = ["connect_clients", "metrics", "run"]


def _hello(link: FlowerLink, nodes: list[int], by_id: dict[str, int]) -> None:
    """Ask ``nodes`` which client each runs, into ``by_id``; nodes of another federation skip."""
    for node, outcome in zip(nodes, link.call_many([(n, "hello", b"") for n in nodes], group="hello")):
        if not isinstance(outcome, Exception) and outcome[0].get("status") == "skip":
            continue
        got = link.unwrap(outcome)
        if isinstance(got, Exception):
            raise ConfigValueError("node", node, f"did not start its client: {got}")
        cid = str(outcome[0].get("client"))  # type: ignore[index]
        if cid in by_id:
            raise ConfigValueError("partition-id", cid, f"is claimed by nodes {by_id[cid]} and {node}")
        by_id[cid] = node


def connect_clients(grid: Any, link: FlowerLink, clients: int, timeout: float) -> list[RemoteClient]:
    """Find the SuperNodes of this federation: ask every node that connects (within
    ``timeout`` seconds) which client it runs, until ``client-0 .. client-(N-1)`` are
    all found; those clients in order (as the simulation lists them), each behind its node.
    The first message also starts each node's worker, so it gets the longer timeout."""
    t0, asked, by_id = time.monotonic(), set(), {}
    hello = FlowerLink(grid, timeout=timeout + link.timeout)
    while True:
        new = sorted(int(n) for n in grid.get_node_ids() if int(n) not in asked)
        if new:
            _hello(hello, new, by_id)
            asked.update(new)
        missing = [client_id(k) for k in range(clients) if client_id(k) not in by_id]
        if not missing:
            return [RemoteClient(link, by_id[client_id(k)], client_id(k)) for k in range(clients)]
        if time.monotonic() - t0 > timeout:
            raise ConfigValueError("partition-id", missing, f"no SuperNode runs these clients (waited {timeout:g} s)")
        time.sleep(0.5)


def _totals(config: RunConfig, results: list[RoundResult], seconds: float) -> dict[str, Any]:
    if config.dp.mode is not DPMode.CLIENT:
        return {
            "refusals": sum(len(r.refused) for r in results),
            "dropouts": sum(len(r.dropped) for r in results),
            "bytes_up": sum(r.bytes_up for r in results),
            "bytes_down": sum(r.bytes_down for r in results),
            "seconds": round(seconds, 3),
        }
    keys = ("refusals", "dropouts", "bytes_up", "bytes_down")
    withheld = [{"field": k, "reason": COUNT_REASON} for k in keys]
    withheld.append({"field": "seconds", "reason": "wall time grows with the number of participants"})
    return {**dict.fromkeys(keys), "seconds": None, "withheld": withheld}


def metrics(config: RunConfig, server: SecureServer, link: FlowerLink, rows: list[dict], results: list[RoundResult],
            seconds: float) -> dict[str, Any]:
    """metrics.json of a deployed run: the simulation's layout; the partition stays on the nodes."""
    mode, last = config.dp.mode, (rows[-1] if rows else {})
    final_eps = last.get("epsilon")
    if mode is DPMode.CLIENT and server.ledger.history(FEDERATION):
        final_eps = server.ledger.spent(FEDERATION).get(config.dp.accountant)
    per_client = dict(sorted(link.spend.items())) if mode is DPMode.SAMPLE else {}
    any_client = next(iter(per_client.values()), {})
    final = {
        "accuracy": last.get("accuracy"), "loss": last.get("loss"), "epsilon": final_eps,
        "epsilon_rdp": last.get("epsilon_rdp"),
        "delta": config.dp.delta if config.dp.enabled else None,
        "accountant": config.dp.accountant if config.dp.enabled else None,
        "noise_multiplier": server.noise_multiplier if mode is DPMode.CLIENT else any_client.get("noise_multiplier"),
        **_totals(config, results, seconds),
        "clients": per_client,
        "transport": {"runtime": "flower", "stage_seconds": [round(s, 3) for s in link.stage_seconds]},
    }
    return {"config": config.to_flat(), "rounds": rows, "final": final, "partition": None}


def run(grid: Any, run_config: dict[str, Any], *, run_id: int | str = "") -> dict[str, Any]:
    """Run the federation ``run_config`` describes over ``grid``; returns metrics.json's
    content. A run that fails writes ``out-dir/failed`` (the error) and re-raises."""
    apply_thread_policy()
    config, transport = run_settings(run_config)
    out_dir = Path(transport.out_dir or f"securefl-flower-out/{run_id}").expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("done", "failed"):
        (out_dir / name).unlink(missing_ok=True)
    try:
        return _run(grid, config, transport, out_dir)
    except BaseException as exc:
        (out_dir / "failed").write_text(f"{type(exc).__name__}: {exc}\n")
        raise


def _run(grid: Any, config: RunConfig, transport: Any, out_dir: Path) -> dict[str, Any]:
    link = FlowerLink(grid, timeout=transport.stage_timeout)
    clients = connect_clients(grid, link, config.clients, transport.wait_nodes)
    roster = Roster.load(transport.roster) if transport.roster else None
    server = server_party(config, out_dir, roster)
    server.exchange_type = FlowerExchange
    if config.dp.mode is DPMode.SAMPLE:
        server.spend_report = link.max_spend
    rows: list[dict] = []
    results: list[RoundResult] = []
    start = time.perf_counter()
    for r in range(1, config.server.rounds + 1):
        res = server.run_round(r, clients)
        results.append(res)
        rows.append(server.release(res))
        atomic_write_json(out_dir / "metrics.json", metrics(config, server, link, rows, results, time.perf_counter() - start))
    out = metrics(config, server, link, rows, results, time.perf_counter() - start)
    atomic_write_json(out_dir / "metrics.json", out)
    torch.save(server.released.clone(), out_dir / "model.pt")
    (out_dir / "done").write_text("ok\n")
    return out
