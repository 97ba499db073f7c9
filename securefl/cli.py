"""The ``securefl`` command.

``securefl train`` runs one federated training job and writes metrics.json,
ledger.json and accuracy.png; ``securefl demo`` runs the main job on the
embedded digits data. Usage errors print one line naming the flag and the value
and exit with status 2.

The command is the composition root of the project: besides its own
subcommands it mounts plug-in commands (:func:`plugins`): securefl's own
(``audit budget``) and every entry point of the group :data:`PLUGIN_GROUP` that an
installed distribution declares (this project's pyproject.toml declares the
``attack`` family and ``audit empirical``). An entry point named ``FAMILY.NAME``
mounts under ``securefl FAMILY``, one without a dot at the top level. Each
plug-in is a ``register(subparsers)`` function, which adds its parsers and sets
``handler`` (a function ``Namespace -> int``) on them. The library names no
plug-in package: it only reads the entry-point metadata.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from securefl.exceptions import ConfigError, ConfigValueError, SecureFLError

EXIT_USAGE = 2
#: the shell's status for a command ended by SIGINT (128 + 2)
EXIT_INTERRUPTED = 130

#: the tuned DP-SGD job `securefl demo` runs (see README, "Choosing DP-SGD settings")
DEMO_SETTINGS: dict[str, Any] = {
    "dataset": "digits",
    "clients": 10,
    "partition": "dirichlet",
    "alpha": 1.0,
    "rounds": 30,
    "dp": "sample",
    "epsilon": 3.0,
    "delta": 1e-5,
    # one full-batch DP-SGD step per client per round: at a fixed epsilon the
    # signal-to-noise ratio of DP-SGD barely depends on the sampling rate, and fewer,
    # less noisy steps train a small model better (README, "Choosing DP-SGD settings")
    "model": "logreg",
    "sample_rate": 1.0,
    # the public lot size DP-SGD divides by (the mean client size, 1437 / 10), so
    # that no client's update scale reveals its own n_k
    "batch_size": 144,
    "local_epochs": 1.0,
    "lr": 4.0,
    "clip": 0.5,
    # server momentum averages the clients' independent noise over rounds
    "server_opt": "fedavgm",
    "server_lr": 0.5,
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


from securefl.cli_flags import _flag, add_train_flags  # noqa: E402,F401  (re-exported)


#: entry-point group of plug-in commands: ``"FAMILY.NAME" = "module:register"``
PLUGIN_GROUP = "securefl.commands"


def plugins() -> dict[str, list[Callable[[Any], None]]]:
    """Plug-in ``register`` functions by family (``""``: the top level): securefl's
    own first, then the :data:`PLUGIN_GROUP` entry points in name order (a name
    found twice, e.g. in a source checkout's metadata and the installed one, once)."""
    from importlib.metadata import entry_points

    from securefl.privacy import audit_budget

    found: dict[str, list[Callable[[Any], None]]] = {}
    seen: set[str] = set()
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        if ep.name in seen:
            continue
        seen.add(ep.name)
        found.setdefault(ep.name.rpartition(".")[0], []).append(ep.load())
    found.setdefault("audit", []).insert(0, audit_budget.register)
    return found


FAMILY_HELP = {
    "attack": "attack benchmarks: poisoning, inversion, membership inference",
    "audit": "privacy audits: the budget from the ledger and empirical lower bounds",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("securefl")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="securefl", description="Privacy-hardened federated learning.")
    parser.add_argument("--version", action="version", version=f"securefl {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = sub.add_parser("train", help="run one federated training job")
    add_train_flags(train)
    train.add_argument(
        "--resume", type=Path, default=None, metavar="DIR",
        help="continue the killed or interrupted run in DIR from its last completed round, with its settings",
    )
    train.set_defaults(handler=cmd_train)
    demo = sub.add_parser("demo", help="the main job on the embedded digits data")
    demo.add_argument("--out", type=Path, default=Path("securefl-demo"))
    demo.add_argument("--rounds", type=int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument("--overwrite", action="store_true", help="replace the outputs of a previous demo in --out")
    demo.set_defaults(handler=cmd_demo)
    for family, registers in plugins().items():
        if family == "":
            target = sub
        else:
            fam = sub.add_parser(family, help=FAMILY_HELP.get(family))
            target = fam.add_subparsers(dest="subcommand", required=True, parser_class=_Parser)
        for register in registers:
            register(target)
    return parser


def _load_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError("config", str(path), f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(path), f"not valid TOML: {exc}") from None
    from securefl.config import RunConfig

    return RunConfig.flatten_sections(data)


def config_from_args(ns: argparse.Namespace, extra_skip: Sequence[str] = ()):
    """Defaults < DP defaults (:mod:`securefl.defaults`, announced on stderr) < TOML
    file < explicit flags. ``extra_skip`` names flags of a plug-in command that are
    not run settings."""
    from securefl.config import RunConfig
    from securefl.defaults import describe, with_dp_defaults

    skip = {"command", "subcommand", "handler", "config", "out", "no_progress", "overwrite", "resume", *extra_skip}
    values: dict[str, Any] = {}
    if getattr(ns, "config", None) is not None:
        values.update(_load_toml(ns.config))
    values.update({k: v for k, v in vars(ns).items() if k not in skip})
    RunConfig.from_flat(values)  # a bad setting is reported before any default is worked out
    values, chosen = with_dp_defaults(values)
    if chosen:
        sys.stderr.write(f"securefl: {describe(str(values['dp']), chosen)}\n")
    config = RunConfig.from_flat(values)
    _check_dp_flags(config, values)
    return config


def _check_dp_flags(config, values: dict[str, Any]) -> None:
    """A DP setting given (flag or TOML) without ``--dp sample|client`` is an error,
    not silently ignored."""
    from securefl.config import RunConfig

    if config.dp.enabled:
        return
    owner = RunConfig.field_owner()
    for key, value in values.items():
        if owner.get(key) == "dp" and key != "dp" and value is not None:
            raise ConfigValueError(key, value, "is a DP setting; it needs --dp sample or --dp client")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an unusable output folder before anything is written: a file, an unwritable
    place, or a folder holding a run's ledger (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise ConfigValueError("out", str(out), "is a file, not a directory")
    if (out / "ledger.json").exists() and not overwrite:
        raise ConfigValueError(
            "out",
            str(out),
            f"already holds a run (ledger.json); continue it with --resume {out} or replace it with --overwrite",
        )
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigValueError("out", str(out), f"cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigValueError("out", str(out), f"is not writable ({probe})")


def check_outcome(metrics: dict[str, Any]) -> str | None:
    """Why a finished run failed (no round or at most half aggregated), or None."""
    rounds = metrics.get("rounds", [])
    aborted = sum(1 for r in rounds if r.get("aborted"))
    if rounds and aborted == len(rounds):
        return f"all {aborted} rounds aborted; no round was aggregated (see 'aborted' in metrics.json)"
    if aborted * 2 > len(rounds):
        return f"{aborted} of {len(rounds)} rounds aborted (see 'aborted' in metrics.json)"
    return None


def _progress(total: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="round", disable=disable, file=sys.stderr, dynamic_ncols=True)


def run_training(
    config, out: Path, no_progress: bool, overwrite: bool = False, resume: bool = False
) -> dict[str, Any]:
    """Run one job with a progress bar; return its metrics (also written under ``out``).
    ``resume`` continues the run in ``out`` (``config`` is then ignored)."""
    from securefl.simulation import Simulation

    sim = Simulation.resume(out) if resume else Simulation(config, out_dir=out, overwrite=overwrite)
    bar = _progress(sim.config.server.rounds, no_progress)
    bar.update(sim.completed)

    def on_round(res) -> None:
        post = {"acc": f"{res.accuracy:.3f}" if res.accuracy is not None else f"loss {res.loss:.4f}"}
        eps = sim.rounds[-1]["epsilon"]
        if eps is not None:
            post["eps"] = f"{eps:.2f}"
        bar.set_postfix(post)
        bar.update(1)

    try:
        result = sim.run(on_round=on_round)
    except KeyboardInterrupt:
        raise Interrupted(sim.completed, sim.config.server.rounds, out) from None
    finally:
        bar.close()
    return result.metrics


class Interrupted(Exception):
    """Ctrl-C during a run: the rounds completed so far and the ledger are on disk."""

    def __init__(self, completed: int, rounds: int, out: Path) -> None:
        super().__init__(
            f"interrupted after {completed} of {rounds} rounds; the ledger and a checkpoint are in {out} "
            f"(continue with: securefl train --resume {out})"
        )


def _summary_line(m: dict[str, Any], out: Path) -> str:
    f = m["final"]
    acc = f"accuracy {f['accuracy']:.4f}" if f["accuracy"] is not None else f"test loss {f['loss']:.5f}"
    eps = f", epsilon {f['epsilon']:.3f} ({f['accountant']}) at delta {f['delta']:g}" if f["epsilon"] is not None else ""
    return f"final {acc}{eps}; wrote {out}/metrics.json, {out}/ledger.json, {out}/accuracy.png"


class RunFailed(SecureFLError):
    """A run finished without a usable model (its rounds aborted)."""


def _resume_conflicts(ns: argparse.Namespace) -> None:
    """``--resume DIR`` takes every setting from the run in DIR: a run flag beside it is an error."""
    fixed = {"command", "handler", "resume", "out", "no_progress", "overwrite", "config"}
    given = [k for k in ("overwrite", "config") if getattr(ns, k)] + sorted(k for k in vars(ns) if k not in fixed)
    if given:
        flag = _flag(given[0]) if given[0] != "config" else "--config"
        raise ConfigValueError(
            given[0], getattr(ns, given[0]), f"--resume takes the settings of the run in {ns.resume}; drop {flag}"
        )


def cmd_train(ns: argparse.Namespace) -> int:
    from securefl.build import check

    if ns.resume is not None:
        _resume_conflicts(ns)
        metrics = run_training(None, ns.resume, ns.no_progress, resume=True)
        out = ns.resume
    else:
        config = config_from_args(ns)
        check(config)  # cross-component checks, before anything is written
        check_out(ns.out, ns.overwrite)
        metrics = run_training(config, ns.out, ns.no_progress, overwrite=ns.overwrite)
        out = ns.out
    failed = check_outcome(metrics)
    if failed:
        raise RunFailed(failed)
    print(_summary_line(metrics, out))
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from securefl.config import RunConfig

    base = {**DEMO_SETTINGS, "rounds": ns.rounds, "seed": ns.seed}
    for sub in ("plain", "dp-sgd"):
        check_out(ns.out / sub, ns.overwrite)
    print(f"securefl demo: {base['clients']} clients on digits (Dirichlet alpha={base['alpha']}), {ns.rounds} rounds")
    plain_config = RunConfig.from_flat({**base, "dp": "none", "epsilon": None})
    plain = run_training(plain_config, ns.out / "plain", ns.no_progress, overwrite=ns.overwrite)
    private = run_training(RunConfig.from_flat(base), ns.out / "dp-sgd", ns.no_progress, overwrite=ns.overwrite)
    fp, fd = plain["final"], private["final"]
    print()
    print(f"{'run':<34}{'test accuracy':>14}{'epsilon':>10}{'MB up':>9}")
    print(f"{'FedAvg, no DP':<34}{fp['accuracy']:>14.4f}{'-':>10}{fp['bytes_up'] / 1e6:>9.2f}")
    label = f"FedAvg + DP-SGD (eps<={base['epsilon']:g}/client)"
    print(f"{label:<34}{fd['accuracy']:>14.4f}{fd['epsilon']:>10.3f}{fd['bytes_up'] / 1e6:>9.2f}")
    print()
    print(f"per-client privacy spend (delta={fd['delta']:g}; PRV upper bound, RDP for comparison):")
    for cid, c in fd["clients"].items():
        print(f"  {cid:<10} rounds {c['rounds']:>3}  eps_prv {c['epsilon']:.3f}  eps_rdp {c['epsilon_rdp']:.3f}  sigma {c['noise_multiplier']:.3f}")
    print(f"\nwrote {ns.out}/plain/ and {ns.out}/dp-sgd/ (metrics.json, ledger.json, accuracy.png)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    prog = " ".join(["securefl", ns.command, *([ns.subcommand] if getattr(ns, "subcommand", None) else [])])
    try:
        from securefl.runtime import apply_thread_policy

        apply_thread_policy()  # one thread unless SECUREFL_THREADS / OMP_NUM_THREADS say otherwise
        return ns.handler(ns)
    except ConfigError as exc:
        flag = exc.field if exc.field.isupper() else (_flag(exc.field) if exc.field != "config" else "--config")
        sys.stderr.write(f"{prog}: error: {flag}: {exc.reason} (got {exc.value!r})\n")
        return EXIT_USAGE
    except SecureFLError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 1
    except Interrupted as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("dp_accounting"):
            raise
        sys.stderr.write(
            f"{prog}: error: --pld needs the dp-accounting package; install it with "
            "'pip install dp-accounting' (or the dev extra: pip install 'securefl[dev]')\n"
        )
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
