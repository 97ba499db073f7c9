"""The DP-SGD section of ``securefl bench``: what sample-level DP costs per step and
per run.

* **Step cost.** For each reference model (logreg, mlp, cnn on 8x8 digits, batch
  144: the DP recipe's lot size with 10 clients) and each grad-sample mode of
  :mod:`securefl.privacy.dpsgd` (hooks, ew, ghost, bk), one DP-SGD step on a fixed
  batch (forward, per-sample clipping, clipped sum, optimizer step) beside one
  plain SGD step on the same batch (forward, backward, step), interleaved in one
  process on one thread. The secure discrete Gaussian noise (Canonne, Kamath and
  Steinke 2020), the same for every mode, is timed on its own (``noise_ms``) and
  added for the full step's ratio. ``auto`` names the mode securefl picks.
* **Accounting overhead.** A short DP run with the DP-SGD recipe (digits, 10
  clients): the time spent solving the noise multiplier, recording each round's
  spend in the ledger (budget check, PRV and RDP epsilon), writing the ledger
  (``sync``: one atomic write per round, the simulation's ledger being deferred;
  the writes' share is also given as ``persist``) and reading epsilons back,
  against the time spent in DP-SGD training. The accountant caches are cleared first, so the solve
  is measured cold.

Times are medians of repeats, CPU (``time.process_time``) and wall; the machine's
load average is recorded before and after (other processes distort wall time).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import statistics
import tempfile
import time
import warnings
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from securefl.bench import timing
from securefl.models import build_model, num_parameters
from securefl.privacy import accounting
from securefl.privacy.dpsgd import GradSampleWrapper, choose_grad_sample_mode
from securefl.privacy.noise import SecureRNG, noisy_on_grid

#: targets from issue 15 (ratio of a DP-SGD step to a plain step; accounting / training)
TARGETS = {"mlp_step_ratio": 3.5, "cnn_step_ratio": 3.0, "accounting_overhead": 0.10}
MODELS = ("logreg", "mlp", "cnn")
MODES = ("hooks", "ew", "ghost", "bk")
SHAPE, CLASSES, BATCH = (1, 8, 8), 10, 144


def machine() -> dict[str, Any]:
    """Platform, core count, torch threads and the load average now."""
    return {**timing.machine(torch=torch.__version__), "torch_threads": torch.get_num_threads()}


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - t0


def _ms(values: list[float]) -> float:
    return round(1e3 * statistics.median(values), 3)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------ step cost
def _plain_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, reduction="sum").backward()
        opt.step()

    return step


def _dp_step(model: torch.nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor) -> tuple[Callable[[], None], Any]:
    """One DP-SGD step without noise (``noise_multiplier`` 0: the clipped sum passes
    through); the noise is timed separately."""
    wrapper = GradSampleWrapper(model, mode, max_grad_norm=1.0)
    opt = wrapper.optimizer(
        torch.optim.SGD(wrapper.gsm.parameters(), lr=0.01), noise_multiplier=0.0,
        expected_batch_size=float(len(x)), rng=SecureRNG.from_seed(0),
    )  # fmt: skip

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        wrapper.backward(x, y, F.cross_entropy)
        opt.step()

    return step, wrapper


def step_costs(name: str, repeats: int, warmup: int = 3) -> dict[str, Any]:
    """Median CPU and wall ms of a plain step and of a DP step per mode on one batch."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, *SHAPE, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)
    base = build_model(name, SHAPE, CLASSES, seed=0)
    dim = num_parameters(base)
    steps: dict[str, Callable[[], None]] = {"plain": _plain_step(copy.deepcopy(base), x, y)}
    wrappers = []
    for mode in MODES:
        steps[mode], w = _dp_step(copy.deepcopy(base), mode, x, y)
        wrappers.append(w)
    rng = SecureRNG.from_seed(1)
    flat = torch.zeros(dim, dtype=torch.float64)
    steps["noise"] = lambda: noisy_on_grid(flat, noise_multiplier=1.0, clip=1.0, rng=rng)
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    wall: dict[str, list[float]] = {k: [] for k in steps}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # inputs need no grad
        for i in range(warmup + repeats):
            for key, fn in steps.items():  # interleaved: load changes hit every variant alike
                c, w = _timed(fn)
                if i >= warmup:
                    cpu[key].append(c)
                    wall[key].append(w)
    for w in wrappers:
        w.close()
    plain, noise = statistics.median(cpu["plain"]), statistics.median(cpu["noise"])
    modes = {
        mode: {
            "cpu_ms": _ms(cpu[mode]),
            "wall_ms": _ms(wall[mode]),
            "ratio_cpu": round(statistics.median(cpu[mode]) / plain, 2),
            "ratio_wall": round(statistics.median(wall[mode]) / statistics.median(wall["plain"]), 2),
            "ratio_with_noise_cpu": round((statistics.median(cpu[mode]) + noise) / plain, 2),
        }
        for mode in MODES
    }
    auto = choose_grad_sample_mode(base)
    return {
        "model": name,
        "params": dim,
        "batch": BATCH,
        "repeats": repeats,
        "plain_cpu_ms": _ms(cpu["plain"]),
        "plain_wall_ms": _ms(wall["plain"]),
        "noise_cpu_ms": _ms(cpu["noise"]),
        "noise_wall_ms": _ms(wall["noise"]),
        "modes": modes,
        "auto": auto,
        "auto_ratio_cpu": modes[auto]["ratio_cpu"],
        "best": min(MODES, key=lambda m: modes[m]["cpu_ms"]),
    }


# ------------------------------------------------------------------ accounting overhead
class _Clock:
    """Accumulated CPU and wall seconds of the calls it wraps, per label."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            c0, t0 = time.process_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[label] = self.cpu.get(label, 0.0) + time.process_time() - c0
                self.wall[label] = self.wall.get(label, 0.0) + time.perf_counter() - t0
                self.calls[label] = self.calls.get(label, 0) + 1

        return timed


@contextlib.contextmanager
def _patched(clock: _Clock) -> Iterator[None]:
    """Time the accounting and training entry points of a run (restored afterwards)."""
    import securefl.build as build
    import securefl.client as client
    from securefl.privacy.ledger import PrivacyLedger

    targets = [
        (build, "noise_multiplier_for", "solve"),
        (PrivacyLedger, "record", "record"),
        (PrivacyLedger, "spent", "epsilon_reads"),
        (PrivacyLedger, "sync", "sync"),  # the simulation's once-per-round write
        (PrivacyLedger, "save", "persist"),  # inside sync (or record): the atomic, fsynced write
        (client, "dp_sgd_train", "training"),
    ]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in targets]
    try:
        for obj, attr, label in targets:
            setattr(obj, attr, clock.wrap(label, getattr(obj, attr)))
        yield
    finally:
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)


def _clear_accounting_caches() -> None:
    accounting.clear_caches()


def accounting_overhead(rounds: int, model: str = "logreg", epsilon: float = 3.0) -> dict[str, Any]:
    """Accounting time against DP-SGD training time in one short DP run (the
    ``--dp sample`` recipe on digits, 10 clients, ledger on disk)."""
    from securefl.defaults import config_with_dp_defaults
    from securefl.simulation import Simulation

    flat = {"dataset": "digits", "clients": 10, "rounds": rounds, "dp": "sample", "epsilon": epsilon,
            "delta": 1e-5, "seed": 0, "model": model}  # fmt: skip
    config, _ = config_with_dp_defaults(flat)
    clock = _Clock()
    _clear_accounting_caches()
    with tempfile.TemporaryDirectory() as out, _patched(clock):
        c0, t0 = time.process_time(), time.perf_counter()
        result = Simulation(config, out_dir=out).run()
        run_cpu, run_wall = time.process_time() - c0, time.perf_counter() - t0
    acct = ("solve", "record", "sync", "epsilon_reads")
    acct_cpu = sum(clock.cpu.get(k, 0.0) for k in acct)
    acct_wall = sum(clock.wall.get(k, 0.0) for k in acct)
    train_cpu, train_wall = clock.cpu.get("training", 0.0), clock.wall.get("training", 0.0)
    return {
        "model": model,
        "rounds": rounds,
        "clients": 10,
        "epsilon": round(float(result.metrics["final"]["epsilon"]), 4),
        "accountant": config.dp.accountant,
        "run_cpu_s": round(run_cpu, 3),
        "run_wall_s": round(run_wall, 3),
        "training_cpu_s": round(train_cpu, 3),
        "training_wall_s": round(train_wall, 3),
        "accounting_cpu_s": round(acct_cpu, 3),
        "accounting_wall_s": round(acct_wall, 3),
        "parts_cpu_s": {k: round(clock.cpu.get(k, 0.0), 3) for k in (*acct, "persist")},
        "parts_wall_s": {k: round(clock.wall.get(k, 0.0), 3) for k in (*acct, "persist")},
        "overhead_cpu_without_persist": round((acct_cpu - clock.cpu.get("persist", 0.0)) / train_cpu, 3) if train_cpu else None,
        "calls": dict(clock.calls),
        "overhead_cpu": round(acct_cpu / train_cpu, 3) if train_cpu else None,
        "overhead_wall": round(acct_wall / train_wall, 3) if train_wall else None,
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """The whole section (``quick``: fewer repeats and a shorter run)."""
    before = machine()
    with _threads(1):
        steps = [step_costs(name, 10 if quick else 30) for name in MODELS]
        overhead = accounting_overhead(10 if quick else 20)
    return {
        "section": "dpsgd",
        "machine": before,
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "targets": TARGETS,
        "step_cost": steps,
        "accounting_overhead": overhead,
    }


def markdown(result: dict[str, Any]) -> str:
    """The section as Markdown tables (for the README and ``securefl bench``)."""
    lines = ["| model | params | plain CPU (ms) | mode | DP step CPU (ms) | ratio | ratio with noise | auto |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in result["step_cost"]:
        for mode, m in r["modes"].items():
            mark = "yes" if mode == r["auto"] else ""
            lines.append(f"| {r['model']} | {r['params']:,} | {r['plain_cpu_ms']} | {mode} | {m['cpu_ms']} | "
                         f"{m['ratio_cpu']}x | {m['ratio_with_noise_cpu']}x | {mark} |")  # fmt: skip
    o = result["accounting_overhead"]
    lines += ["", f"Accounting overhead of a {o['rounds']}-round DP run ({o['model']}, {o['clients']} clients): "
              f"{o['accounting_cpu_s']} s CPU of accounting against {o['training_cpu_s']} s CPU of DP-SGD "
              f"training ({100 * (o['overhead_cpu'] or 0):.1f}%; parts: {o['parts_cpu_s']})."]  # fmt: skip
    return "\n".join(lines)
