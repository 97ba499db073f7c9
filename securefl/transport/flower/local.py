"""A Flower deployment on one machine: a SuperLink and SuperNodes as processes.

For tests, benchmarks and trying the app: every process listens on 127.0.0.1 on
a free port, without TLS (``--insecure``; the README shows the TLS and node
authentication flags for separate hosts). Each process runs in its own process
group, so :meth:`LocalDeployment.kill_node` and :meth:`LocalDeployment.stop` also
end what it started (Flower's executor, ClientApps, the node's securefl worker).
``FLWR_HOME`` points to a private folder holding the ``flwr`` CLI's connection
to this SuperLink.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LocalDeployment", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(v: Any) -> str:
    """``v`` as a TOML value (Flower's --node-config and --run-config take TOML)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


@dataclass
class LocalDeployment:
    """One SuperLink and any number of SuperNodes under ``root``."""

    root: Path
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: processes already stopped or killed (kept to check that nothing of theirs lingers)
    stopped: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(self.root / "flwr-home")
        env.setdefault("SECUREFL_THREADS", "1")
        return env

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env, cwd=self.root, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_superlink(self, timeout: float = 60.0) -> None:
        """Start the SuperLink and write the ``flwr`` CLI's connection to it."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        home = self.root / "flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        self._spawn("superlink", [str(self.bin_dir / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                                  "--host", "127.0.0.1",
                                  "--port", str(self.port)])
        self._wait_port(self.port, timeout, "superlink")

    def _wait_port(self, port: int, timeout: float, name: str) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited: {(self.root / f'{name}.log').read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"{name} did not listen on port {port} within {timeout:g} s")

    def start_node(self, name: str, node_config: dict[str, Any]) -> subprocess.Popen:
        """Start a SuperNode with ``node_config`` (e.g. ``partition-id``, ``state-dir``)."""
        cfg = " ".join(f"{k}={_toml_value(v)}" for k, v in node_config.items())
        return self._spawn(name, [str(self.bin_dir / "flower-supernode"), "--insecure", "--superlink",
                                  f"127.0.0.1:{self.port}", "--host", "127.0.0.1", "--port", str(free_port()),
                                  "--node-config", cfg])

    def flwr_run(self, app: Path, run_config: dict[str, Any], timeout: float = 120.0) -> str:
        """Submit ``app`` with ``run_config`` overrides; returns the CLI's output."""
        overrides = " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())
        out = subprocess.run([str(self.bin_dir / "flwr"), "run", str(app), "local", "--run-config", overrides],
                             env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0 or "Successfully started run" not in out.stdout:
            raise RuntimeError(f"flwr run failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
        return out.stdout

    def kill_node(self, name: str) -> None:
        """SIGKILL a node and everything in its process group (its ClientApps and worker)."""
        proc = self.procs.pop(name)
        _killpg(proc, signal.SIGKILL)
        proc.wait(10.0)
        self.stopped.append(proc)

    def stop(self, names: list[str] | None = None) -> None:
        """Terminate the named processes (all by default) and their groups; kill what lingers."""
        targets = {n: p for n, p in self.procs.items() if names is None or n in names}
        for proc in targets.values():
            _killpg(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for proc in targets.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(proc, signal.SIGKILL)
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        for n in targets:
            self.stopped.append(self.procs.pop(n))


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid
    except (ProcessLookupError, PermissionError):
        pass
