"""In-process federation: the embedded default runtime.

Builds the federation from one :class:`~securefl.config.RunConfig` through the
composition root (:func:`securefl.build.build`), runs the rounds, and writes
``metrics.json`` (after every round, atomically), ``ledger.json`` and ``accuracy.png``.
Clients and server share one ledger in one process, so it is written once per round
(``durability="deferred"``): after the round, before anything of it is written out,
printed or handed to ``on_round``, and when a round is interrupted. Client and
server still exchange bytes, so ``bytes_up``/``bytes_down`` are what a network would carry.

metrics.json holds what the server may publish (:meth:`SecureServer.release`): under
``dp="client"`` nothing from which the exact number of participants follows. The
unredacted per-round results stay in memory (``RunResult.results``) for experiments.
Each client keeps its round memory in ``out_dir/state/<client>.rounds.json``.

After every completed round the run is checkpointed (:mod:`securefl.checkpoint`);
:meth:`Simulation.resume` continues a killed run from its last completed round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from securefl import checkpoint
from securefl._io import atomic_write_json
from securefl.build import build
from securefl.client import SecureClient
from securefl.config import DPMode, RunConfig
from securefl.data import FederatedData, summarize
from securefl.exceptions import ConfigValueError
from securefl.fedbuff import BufferedAsync, LatencyModel
from securefl.privacy.events import FEDERATION
from securefl.privacy.ledger import PrivacyLedger
from securefl.server import COUNT_REASON, RoundResult, SecureServer


@dataclass
class RunResult:
    metrics: dict[str, Any]
    server: SecureServer
    clients: list[SecureClient]
    ledger: PrivacyLedger
    #: the server's unredacted round results (not published; for experiments)
    results: list[RoundResult] = field(default_factory=list)


class Simulation:
    """One federated run in this process.

    ``overwrite=False`` refuses an ``out_dir`` that already holds a run's ledger
    (the ``securefl`` command always passes it, unless ``--overwrite``); the
    default replaces the previous run's outputs, as it always has for API callers.
    ``model`` (a factory returning an ``nn.Module``) and ``data`` (``(X, y)``, a torch
    ``Dataset``, ``(train, test)`` of those, or :class:`FederatedData`) replace
    ``config.model`` and ``config.dataset`` (see :func:`securefl.build.build`)."""

    def __init__(
        self,
        config: RunConfig,
        *,
        out_dir: str | Path | None = None,
        data: FederatedData | Any = None,
        overwrite: bool = True,
        resume: bool = False,
        model: Callable[..., Any] | None = None,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        fresh = self.out_dir is not None and not resume
        if fresh:
            assert self.out_dir is not None
            prepare_out_dir(self.out_dir, overwrite=overwrite)
            existed = self.out_dir.exists()
            self.out_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.write_run_file(self.out_dir, config.to_flat())  # before the ledger exists
        try:
            fed = build(
                config, data=data, model=model, out_dir=self.out_dir, resume=resume, ledger_durability="deferred"
            )
        except BaseException:
            if fresh:  # a run that never started leaves nothing behind
                _abandon(self.out_dir, remove_dir=not existed)
            raise
        self.federation = fed
        self.data, self.parts, self.ledger = fed.data, fed.parts, fed.ledger
        self.identities, self.roster, self.guards = fed.identities, fed.roster, fed.guards
        self.clients, self.server = fed.clients, fed.server
        self.summary = summarize(self.parts, self.data.y_train, self.data.num_classes)
        self.rounds: list[dict[str, Any]] = []
        self.results: list[RoundResult] = []
        #: rounds completed, the protocol round number last used, seconds run before a resume
        self.completed, self.protocol_round, self._seconds_before = 0, 0, 0.0
        sched = config.schedule
        self.latency = LatencyModel.of(sched, len(self.clients), config.seed)
        self.engine: BufferedAsync | None = None
        if sched.asynchronous:
            assert self.latency is not None
            self.engine = BufferedAsync(self.server, self.clients, sched, self.latency, self.server.rng)

    @classmethod
    def resume(cls, out_dir: str | Path, *, data: FederatedData | None = None) -> "Simulation":
        """Continue the run in ``out_dir`` from its last completed round, with its
        settings (``run.json``), ledger, round memories and checkpoint.

        Rounds keep their numbers in metrics.json; the protocol runs the remaining
        ones under round numbers above every one a client or the ledger has seen
        (``protocol_round`` in their rows), so no client answers a round twice. A
        spend recorded in a round the kill interrupted stays in the ledger: a client's
        update may have left, so the redone round is charged again (under
        ``dp="client"`` with central noise the unreleased aggregate cost nothing,
        and its charge covers the redone round). A resumed run's epsilon is
        therefore never below an uninterrupted one's."""
        from securefl.config import RunConfig

        out = Path(out_dir)
        config = RunConfig.from_flat(checkpoint.read_run_file(out))
        if config.schedule.asynchronous:
            raise ConfigValueError("resume", str(out), "--resume continues synchronous runs; this one ran --mode async")
        sim = cls(config, out_dir=out, data=data, resume=True)
        sim._restore(checkpoint.load(out))
        return sim

    def _restore(self, ckpt: checkpoint.Checkpoint | None) -> None:
        last = 0
        if ckpt is not None:
            checkpoint.load_server_state(self.server, ckpt.server)
            checkpoint.load_client_states(self.clients, ckpt.clients)
            self.rounds, self.completed, self._seconds_before = list(ckpt.rows), ckpt.completed, ckpt.seconds
            last = ckpt.protocol_round
        seen = [g.highest() or 0 for g in self.guards] + [int(e["round"]) for e in self.ledger.entries]
        self.protocol_round = max([last, *seen])
        unreleased = [e for e in self.ledger.entries if e["subject"] == FEDERATION and int(e["round"]) > last]
        prepay = getattr(self.server.aggregation, "prepay", None)
        if unreleased and prepay is not None:
            prepay(unreleased)

    # ------------------------------------------------------------------ run
    def run(self, *, on_round: Callable[[RoundResult], None] | None = None) -> RunResult:
        c = self.config
        start = time.perf_counter() - self._seconds_before
        for k in range(self.completed + 1, c.server.rounds + 1):
            self.protocol_round += 1
            try:
                res = self._one_round()
            finally:  # the round's spends on disk before anything of it leaves the process
                self.ledger.sync()
            if res is None:
                break  # asynchronous: no client left to dispatch (every budget spent)
            self.results.append(res)
            row = self.server.release(res)
            if self.protocol_round != k:
                row = {**row, "round": k, "protocol_round": self.protocol_round}
            self.rounds.append(row)
            self.completed = k
            if self.out_dir is not None and self.engine is None:
                self._checkpoint(time.perf_counter() - start)
            elif self.out_dir is not None:
                atomic_write_json(self.out_dir / "metrics.json", self.metrics(time.perf_counter() - start))
            if on_round is not None:
                on_round(res)
        metrics = self.metrics(time.perf_counter() - start)
        if self.out_dir is not None:
            atomic_write_json(self.out_dir / "metrics.json", metrics)
            plot_run(metrics, self.out_dir / "accuracy.png")
        return RunResult(metrics, self.server, self.clients, self.ledger, list(self.results))

    def _one_round(self) -> RoundResult | None:
        """A synchronous round (timed by the latency model, if any: it lasts as long
        as its slowest sampled client), or the next asynchronous buffer."""
        if self.engine is not None:
            return self.engine.flush(self.protocol_round)
        res = self.server.run_round(self.protocol_round, self.clients)
        if self.latency is not None:  # continues from the last row (also after a resume)
            before = self.rounds[-1].get("schedule", {}).get("sim_time", 0.0) if self.rounds else 0.0
            took = max((self.latency.duration(i) for i in self.server.last_sample), default=0.0)
            res.schedule = {"sim_time": round(before + took, 6)}
        return res

    def _checkpoint(self, seconds: float) -> None:
        """The state after a completed round, then the metrics that publish it."""
        assert self.out_dir is not None
        state = checkpoint.Checkpoint(
            self.completed, self.protocol_round, float(seconds), checkpoint.server_state(self.server),
            checkpoint.client_states(self.clients), self.rounds,
        )
        checkpoint.save(self.out_dir, state)
        atomic_write_json(self.out_dir / "metrics.json", self.metrics(seconds))

    def metrics(self, seconds: float) -> dict[str, Any]:
        c = self.config
        last = self.rounds[-1] if self.rounds else {}
        per_client: dict[str, Any] = {}
        mode = c.dp.mode
        if mode is DPMode.SAMPLE:
            for cl in self.clients:
                s = self.ledger.spent(cl.client_id)
                per_client[cl.client_id] = {
                    "epsilon": s.get(c.dp.accountant),
                    "epsilon_rdp": s.rdp,
                    "epsilon_prv_lower": s.prv_lower,
                    "noise_multiplier": cl.noise_multiplier,
                    "sample_rate": cl.sample_rate,
                    "rounds": len([e for e in self.ledger.entries if e["subject"] == cl.client_id]),
                }
        final_eps = last.get("epsilon")
        if mode is DPMode.CLIENT and self.ledger.history(FEDERATION):
            final_eps = self.ledger.spent(FEDERATION).get(c.dp.accountant)
        final = {
            "accuracy": last.get("accuracy"),
            "loss": last.get("loss"),
            "epsilon": final_eps,
            "epsilon_rdp": last.get("epsilon_rdp"),
            "delta": c.dp.delta if c.dp.enabled else None,
            "accountant": c.dp.accountant if c.dp.enabled else None,
            "noise_multiplier": self.server.noise_multiplier
            if mode is DPMode.CLIENT
            else (self.clients[0].noise_multiplier if mode is DPMode.SAMPLE else None),
            **self._totals(seconds),
            "clients": per_client,
        }
        partition: list[dict] | None = self.summary
        if mode is DPMode.CLIENT:
            partition = None  # per-client sizes and label histograms are the clients' data
            final["withheld"].append({"field": "partition", "reason": "statistics of the clients' private data"})
        return {"config": {**c.to_flat(), **self.federation.sources}, "rounds": self.rounds, "final": final, "partition": partition}

    def _per_client_round(self) -> dict[str, Any]:
        """Mean bytes each contributing client sent and received per round or buffer
        (set-up included), and the simulated time the run took, if simulated."""
        taken = sum(r["participants"] for r in self.rounds) or None
        out = {
            f"bytes_{way}_per_client_round": None if taken is None else round(sum(r[f"bytes_{way}"] for r in self.rounds) / taken, 1)
            for way in ("up", "down")
        }
        if self.rounds and "schedule" in self.rounds[-1]:
            out["sim_time"] = self.rounds[-1]["schedule"]["sim_time"]
        return out

    def _totals(self, seconds: float) -> dict[str, Any]:
        """Run totals; under ``dp="client"`` the count-dependent ones are withheld (null)."""
        if self.config.dp.mode is not DPMode.CLIENT:
            return {
                "refusals": sum(len(r.refused) for r in self.results),
                "dropouts": sum(len(r.dropped) for r in self.results),
                "bytes_up": sum(r.bytes_up for r in self.results),
                "bytes_down": sum(r.bytes_down for r in self.results),
                **self._per_client_round(),
                "seconds": round(seconds, 3),
            }
        keys = ("refusals", "dropouts", "bytes_up", "bytes_down")
        withheld = [{"field": k, "reason": COUNT_REASON} for k in keys]
        withheld.append({"field": "seconds", "reason": "wall time grows with the number of participants"})
        return {**dict.fromkeys(keys), "seconds": None, "withheld": withheld}


#: what a run writes into its output folder (``state/`` holds the round memories)
RUN_OUTPUTS = ("ledger.json", "metrics.json", "accuracy.png", checkpoint.CHECKPOINT, checkpoint.RUN_FILE)


def prepare_out_dir(out_dir: Path, *, overwrite: bool = False) -> None:
    """Make ``out_dir`` ready for a new run. A folder that already holds a run's
    ledger is never replaced silently: without ``overwrite`` this raises a
    :class:`~securefl.exceptions.ConfigValueError` (field ``out_dir``); with it the
    previous run's outputs (ledger, metrics, plot, round memories) are removed."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigValueError("out_dir", str(out_dir), "is a file, not a directory")
    if not (out_dir / "ledger.json").exists():
        checkpoint.remove(out_dir)  # never resume into a stale checkpoint
        return
    if not overwrite:
        raise ConfigValueError(
            "out_dir", str(out_dir), "already holds a run (ledger.json); pass overwrite=True to replace it"
        )
    _remove_outputs(out_dir)


def _remove_outputs(out_dir: Path) -> None:
    """Remove a run's outputs and its clients' round memories from ``out_dir``."""
    for name in RUN_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    state = out_dir / "state"
    if state.is_dir():
        for f in state.glob("*.rounds.json"):
            f.unlink()


def _abandon(out_dir: Path, *, remove_dir: bool) -> None:
    """Remove what a run that failed before its first round wrote."""
    _remove_outputs(out_dir)
    state = out_dir / "state"
    if state.is_dir() and not any(state.iterdir()):
        state.rmdir()
    if remove_dir and not any(out_dir.iterdir()):
        out_dir.rmdir()


def plot_run(metrics: dict[str, Any], path: str | Path) -> None:
    """Accuracy (or loss) and epsilon per round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in metrics["rounds"]]
    acc = [r["accuracy"] for r in metrics["rounds"]]
    eps = [r["epsilon"] for r in metrics["rounds"]]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    if any(a is not None for a in acc):
        ax.plot(rounds, [np.nan if a is None else a for a in acc], "o-", ms=3, color="tab:blue")
        ax.set_ylabel("test accuracy", color="tab:blue")
    else:
        ax.plot(rounds, [r["loss"] for r in metrics["rounds"]], "o-", ms=3, color="tab:blue")
        ax.set_ylabel("test loss", color="tab:blue")
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    if any(e is not None for e in eps):
        ax2 = ax.twinx()
        ax2.plot(rounds, [np.nan if e is None else e for e in eps], "s--", ms=3, color="tab:red")
        ax2.set_ylabel(f"epsilon ({metrics['final'].get('accountant')})", color="tab:red")
    cfg = metrics["config"]
    ax.set_title(f"{cfg['dataset']}, {cfg['clients']} clients, dp={cfg['dp']}, protect={cfg['protect']}")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
