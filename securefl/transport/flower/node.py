"""The node worker: one :class:`~securefl.client.SecureClient` per SuperNode and run.

Flower starts a fresh ClientApp process for every message, but a protocol's
secrets (secure aggregation's round keys and shares, the CKKS secret key) must
stay in memory between its stages and are never serialized. So the ClientApp
(``examples/flower_app``) is a relay: on the first message of a run it starts this
worker on the same machine, and every message is handed to it over a Unix socket
in the node's state directory (owner-only) and answered by the same
``SecureClient.fit`` / ``SecureClient.handle`` the simulation calls.

The socket protocol (also spoken by the relay): a request or reply is a frame,
``hlen`` (4 bytes, big-endian), ``plen`` (8 bytes), a JSON header and ``plen`` raw
bytes. A request's header names the ``method`` (``hello``, ``fit``, ``handle``);
a reply's has ``status`` (``ok``, ``refused``, ``error``), ``client``, and under
sample-level DP ``spend``: the client's own report of its ledger (epsilon over
every run on this machine), which it releases instead of the ledger itself.

The worker exits when the process that started it (the SuperNode's executor)
is gone, or after ``idle_timeout`` seconds without a message.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from securefl.config import DPMode
from securefl.exceptions import BudgetExhaustedError, SecureFLError
from securefl.runtime import apply_thread_policy
from securefl.transport.flower.parties import node_client, node_settings, run_settings

__all__ = ["read_frame", "serve", "write_frame"]

_FRAME = struct.Struct(">IQ")
#: the largest frame either side accepts (a CKKS key delivery is a few MB)
MAX_FRAME = 1 << 31


def write_frame(conn: socket.socket, header: dict[str, Any], payload: bytes = b"") -> None:
    """Send one frame."""
    hb = json.dumps(header).encode()
    conn.sendall(_FRAME.pack(len(hb), len(payload)) + hb + payload)


def _read_exact(conn: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed mid-frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(conn: socket.socket) -> tuple[dict[str, Any], bytes]:
    """Receive one frame."""
    hlen, plen = _FRAME.unpack(_read_exact(conn, _FRAME.size))
    if hlen > 1 << 20 or plen > MAX_FRAME:
        raise ConnectionError("frame exceeds the size limits")
    header = json.loads(_read_exact(conn, hlen).decode())
    return header, _read_exact(conn, plen)


class NodeWorker:
    """Answers the relay's requests with one client's ``fit`` and ``handle``."""

    def __init__(self, client: Any, sample_dp: bool, accountant: str) -> None:
        self.client = client
        self.sample_dp = sample_dp
        self.accountant = accountant
        self._spend: tuple[int, dict[str, Any]] | None = None

    def spend(self) -> dict[str, Any] | None:
        """The client's spend under sample-level DP (recomputed only when the ledger grows)."""
        if not self.sample_dp:
            return None
        ledger, cid = self.client.ledger, self.client.client_id
        n = len(ledger.entries)
        if self._spend is None or self._spend[0] != n:
            s = ledger.spent(cid)
            rounds = len([e for e in ledger.entries if e["subject"] == cid])
            report = {"epsilon": s.get(self.accountant), "epsilon_rdp": s.rdp, "rounds": rounds,
                      "noise_multiplier": self.client.noise_multiplier, "sample_rate": self.client.sample_rate}
            self._spend = (n, report)
        return self._spend[1]

    def answer(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        """One request -> one reply (header, payload); never raises for a client error."""
        method = header.get("method")
        # the node's own record of what it was asked, when (its worker.log)
        print(f"{time.time():.3f} {method} {len(payload)} bytes", flush=True)
        out: dict[str, Any] = {"client": self.client.client_id, "status": "ok"}
        body = b""
        try:
            if method in ("fit", "handle"):
                body = getattr(self.client, method)(payload)
            elif method != "hello":
                raise SecureFLError(f"unknown method {method!r}")
        except BudgetExhaustedError as exc:
            out.update(status="refused", error=type(exc).__name__, message=str(exc),
                       budget=[exc.spent, exc.would_be, exc.budget])
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the server, named
            out.update(status="error", error=type(exc).__name__, message=str(exc)[:2000])
        spend = self.spend()
        if spend is not None:
            out["spend"] = spend
        return out, body


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(worker: NodeWorker, sock_path: Path, *, watch_pid: int | None, idle_timeout: float) -> None:
    """Serve requests on ``sock_path`` until the watched process is gone or idle time runs out."""
    sock_path.unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        srv.bind(str(sock_path))
    finally:
        os.umask(old)
    srv.listen(8)
    srv.settimeout(1.0)
    last = time.monotonic()
    try:
        while _alive(watch_pid) and time.monotonic() - last < idle_timeout:
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(None)
                try:
                    header, payload = read_frame(conn)
                    write_frame(conn, *worker.answer(header, payload))
                except (ConnectionError, ValueError, OSError):
                    pass  # a relay that died mid-request: the server sees a dropout
            last = time.monotonic()
    finally:
        srv.close()
        sock_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m securefl.transport.flower.node --spec FILE --socket PATH [--watch-pid PID]``"""
    ap = argparse.ArgumentParser(prog="securefl-node", description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True, help="JSON: the run's run_config and this node's node_config")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--watch-pid", type=int, default=None)
    ap.add_argument("--idle-timeout", type=float, default=3600.0)
    args = ap.parse_args(argv)
    spec_path = Path(args.spec)
    spec = json.loads(spec_path.read_text())
    apply_thread_policy()
    config, _ = run_settings(spec["run_config"])
    node = node_settings(spec["node_config"])
    client = node_client(config, node, spec_path.parent)
    worker = NodeWorker(client, config.dp.mode is DPMode.SAMPLE, config.dp.accountant)
    serve(worker, Path(args.socket), watch_pid=args.watch_pid, idle_timeout=args.idle_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
