"""The ClientApp: a relay to this node's securefl client.

Flower runs a new ClientApp process for each message; secure aggregation's round
keys and the CKKS secret key must live in memory across a round's stages. So the
first message of a run starts the node's worker (``python -m
securefl.transport.flower.node``) on this machine, and every message is passed to it
over a Unix socket in the node's state directory. This module imports neither
torch nor securefl, so a message costs Flower's process start-up only.

Node config (``flower-supernode --node-config``): ``partition-id`` (required),
``state-dir`` (ledger, identity key, per-run round memory; default
``./securefl-node-<partition-id>``), optionally ``roster`` (pinned verification keys)
and ``federations`` (space-separated names: the node serves only runs whose run config
``federation`` is one of them, each with its own ledger and keys in
``state-dir/<federation>``; by default only runs without a federation name, in ``state-dir``).
"""

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()

RECORD = "securefl"
_FRAME = struct.Struct(">IQ")
START_TIMEOUT = 600.0


def _read_exact(conn, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("node worker closed the connection")
        buf += chunk
    return bytes(buf)


def _exchange(path, method, payload):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(path))
        head = json.dumps({"method": method}).encode()
        conn.sendall(_FRAME.pack(len(head), len(payload)) + head + payload)
        hlen, plen = _FRAME.unpack(_read_exact(conn, _FRAME.size))
        return _read_exact(conn, hlen).decode(), _read_exact(conn, plen)


def _state_dir(context):
    """This node's state for the run's federation: ``state-dir`` itself, or its
    subfolder named after the federation (each federation keeps its own ledger)."""
    base = context.node_config.get("state-dir", f"securefl-node-{context.node_config.get('partition-id')}")
    state = Path(str(base)).expanduser().resolve()
    federation = str(context.run_config.get("federation", ""))
    return state / federation if federation else state


def _paths(context, run_id):
    run_dir = _state_dir(context) / "runs" / str(run_id)
    sock = run_dir / "node.sock"
    if len(str(sock)) > 100:  # AF_UNIX paths are short
        digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:20]
        sock = Path(tempfile.gettempdir()) / f"securefl-{digest}.sock"
    return run_dir, sock


def _start_worker(context, run_dir, sock):
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    spec = run_dir / "spec.json"
    fd = os.open(spec, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        node_config = {**dict(context.node_config), "state-dir": str(_state_dir(context))}
        json.dump({"run_config": dict(context.run_config), "node_config": node_config}, fh)
    log = open(run_dir / "worker.log", "ab")
    cmd = [sys.executable, "-m", "securefl.transport.flower.node", "--spec", str(spec), "--socket", str(sock),
           "--watch-pid", str(os.getppid())]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _call(context, run_id, method, payload):
    run_dir, sock = _paths(context, run_id)
    try:
        return _exchange(sock, method, payload)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    proc = _start_worker(context, run_dir, sock)
    t0 = time.monotonic()
    while time.monotonic() - t0 < START_TIMEOUT:
        if proc.poll() is not None:
            tail = (run_dir / "worker.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"securefl node worker exited ({proc.returncode}): {tail}")
        try:
            return _exchange(sock, method, payload)
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.1)
    raise TimeoutError(f"securefl node worker did not start within {START_TIMEOUT:g} s")


def _member(context):
    """Whether this node serves the run: the run config's ``federation`` (default '')
    is one of the node config's ``federations`` (space-separated; default: '' only)."""
    joined = str(context.node_config.get("federations", "")).split() or [""]
    name = str(context.run_config.get("federation", ""))
    safe = name == "" or (name.replace("-", "").replace("_", "").isalnum() and name.isascii())
    return safe and name in joined


@app.query()
def query(msg: Message, context: Context) -> Message:
    rec = msg.content.config_records[RECORD]
    if not _member(context):  # answered here: no worker starts for another federation's run
        header, body = json.dumps({"status": "skip", "message": "not a member of this federation"}), b""
    else:
        header, body = _call(context, msg.metadata.run_id, str(rec["method"]), bytes(rec["payload"]))
    return Message(RecordDict({RECORD: ConfigRecord({"header": header, "payload": body})}), reply_to=msg)
