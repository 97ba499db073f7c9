"""Checkpoints of a run, so that a killed run continues where it stopped.

A run folder holds, besides the ledger and the clients' round memories:

* ``run.json``: the run's settings, written before the first round, so that even a
  run killed before its first round can be resumed;
* ``checkpoint.pt``: written atomically (temp file, fsync, rename) after every
  completed round: the server's global and released weights, its optimizer's
  moments, the last update, the client-level clip, each client's own state and the
  published metrics rows. It holds tensors and plain data only, read back with
  ``torch.load(weights_only=True)``, so a crafted file cannot run code.

What a resumed run does with them is :meth:`securefl.simulation.Simulation.resume`'s
business; this module only writes, reads and validates.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from securefl._io import atomic_write_bytes, atomic_write_json
from securefl.exceptions import ConfigValueError
from securefl.validators import is_int

CHECKPOINT = "checkpoint.pt"
RUN_FILE = "run.json"
_FORMAT = "securefl-checkpoint"
_RUN_FORMAT = "securefl-run"
_VERSION = 1
#: optimizer attributes that carry state between rounds (FedAvgM, FedAdam)
_OPT_STATE = ("velocity", "m", "v")


@dataclass
class Checkpoint:
    """The state of a run after ``completed`` rounds (``protocol_round`` is the
    number the last of them ran under; it differs after a resume)."""

    completed: int
    protocol_round: int
    seconds: float
    server: dict[str, Any]
    clients: dict[str, Any]
    rows: list[dict[str, Any]]


def _bad(path: Path, why: str) -> ConfigValueError:
    return ConfigValueError("resume", str(path), why)


# ------------------------------------------------------------------ run.json
def write_run_file(out_dir: Path, config_flat: dict[str, Any]) -> None:
    """Record the run's settings before its first round."""
    atomic_write_json(out_dir / RUN_FILE, {"format": _RUN_FORMAT, "version": _VERSION, "config": config_flat})


def read_run_file(out_dir: Path) -> dict[str, Any]:
    """The settings of the run in ``out_dir`` (flat); ConfigValueError (field
    ``resume``) if the folder holds no run or the file is unreadable."""
    path = out_dir / RUN_FILE
    if not path.is_file():
        raise _bad(out_dir, f"holds no run to resume (no {RUN_FILE})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise _bad(path, f"unreadable ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != _RUN_FORMAT or not isinstance(data.get("config"), dict):
        raise _bad(path, "not a securefl run file")
    return dict(data["config"])


# ------------------------------------------------------------------ server state
def server_state(server: Any) -> dict[str, Any]:
    """What of a :class:`~securefl.server.SecureServer` a later round depends on."""
    opt = {k: getattr(server.optimizer, k) for k in _OPT_STATE if getattr(server.optimizer, k, None) is not None}
    clipper = server.clipper
    return {
        "weights": server.weights.clone(),
        "released": server.released.clone(),
        "previous_update": None if server.previous_update is None else server.previous_update.clone(),
        "optimizer": opt,
        "clip": getattr(server.aggregation, "clip", None),
        "clipper_clip": None if clipper is None else float(clipper.clip),
    }


def load_server_state(server: Any, state: dict[str, Any]) -> None:
    """Put ``state`` (from :func:`server_state`) back into ``server``."""
    from securefl.models import set_flat

    dim = server.weights.numel()
    for key in ("weights", "released"):
        if not isinstance(state.get(key), torch.Tensor) or state[key].numel() != dim:
            raise ConfigValueError("resume", key, f"checkpoint weights do not fit this model ({dim} parameters)")
    server.weights, server.released = state["weights"].clone(), state["released"].clone()
    server.previous_update = state.get("previous_update")
    for key, value in (state.get("optimizer") or {}).items():
        if key in _OPT_STATE:
            setattr(server.optimizer, key, value)
    if state.get("clip") is not None and hasattr(server.aggregation, "clip"):
        server.aggregation.clip = float(state["clip"])
    if state.get("clipper_clip") is not None and server.clipper is not None:
        server.clipper.clip = float(state["clipper_clip"])
    set_flat(server.model, server.released)


def client_states(clients: list[Any]) -> dict[str, Any]:
    """Each client's own state (local optimizer moments...), for clients that keep one."""
    return {c.client_id: c.state_dict() for c in clients if callable(getattr(c, "state_dict", None))}


def load_client_states(clients: list[Any], states: dict[str, Any]) -> None:
    for c in clients:
        if c.client_id in states and callable(getattr(c, "load_state_dict", None)):
            c.load_state_dict(states[c.client_id])


# ------------------------------------------------------------------ checkpoint.pt
def save(out_dir: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` atomically as ``out_dir/checkpoint.pt``."""
    buf = io.BytesIO()
    torch.save({"format": _FORMAT, "version": _VERSION, **ckpt.__dict__}, buf)
    atomic_write_bytes(out_dir / CHECKPOINT, buf.getvalue())


def load(out_dir: Path) -> Checkpoint | None:
    """The checkpoint in ``out_dir`` (None if the run never completed a round)."""
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    try:
        with open(path, "rb") as fh:
            data = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on a torn or crafted file
        raise _bad(path, f"unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("version") != _VERSION:
        raise _bad(path, "not a securefl checkpoint")
    completed, prot, secs = data.get("completed"), data.get("protocol_round"), data.get("seconds")
    if not (is_int(completed) and is_int(prot) and 0 <= completed <= prot):
        raise _bad(path, f"bad round counters (completed={completed!r}, protocol_round={prot!r})")
    if not isinstance(secs, float) or not math.isfinite(secs):
        raise _bad(path, f"bad seconds={secs!r}")
    parts = {k: data.get(k) for k in ("server", "clients", "rows")}
    if not isinstance(parts["server"], dict) or not isinstance(parts["clients"], dict) or not isinstance(parts["rows"], list):
        raise _bad(path, "missing server, clients or rows")
    if len(parts["rows"]) != completed:
        raise _bad(path, f"{len(parts['rows'])} metrics rows for {completed} completed rounds")
    return Checkpoint(completed, prot, secs, parts["server"], parts["clients"], parts["rows"])


def remove(out_dir: Path) -> None:
    for name in (CHECKPOINT, RUN_FILE):
        try:
            os.unlink(out_dir / name)
        except FileNotFoundError:
            pass
