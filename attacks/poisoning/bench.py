"""``securefl attack bench --suite poisoning``: the attack x defense matrix.

Two named settings (:mod:`attacks.poisoning.settings`, ``--setting``): ``default``
and ``literature`` (ReLU MLP, worker momentum 0.9, one minibatch step per round,
150 rounds), the setting in which the adaptive attacks of the literature were shown.

Default setting (README quotes it): scikit-learn digits, 20 clients with
an IID split, 20% (4) malicious clients with full knowledge of the round's honest
updates, FedAvg (1 local epoch of SGD, lr 0.3, batch 32) for 20 rounds, an MLP with
64 hidden units, robust aggregators told the true f = 4. Every cell is the mean over
``seeds`` seeds (the seed sets the train/test split, the partition and the model
initialisation). The defenses include client-level DP (DP-FedAvg with the clip
enforced by the server, which sees the updates, and noise multiplier z).

Three backdoor rows separate what the scaling does from what the poisoned data does:
``backdoor`` is model replacement (a sixth of the attacker's training set triggered,
update scaled by n/m = 5), ``backdoor_unscaled`` the same data without the scaling
(gamma = 1), ``backdoor_heavy`` the scaled attack with a third of its training set
triggered (poison_fraction 0.5), which no longer needs the scaling.

For each defense the "none" attack row is the clean run; an untargeted attack's
success is the accuracy it costs against that run, the backdoor's is the fraction
of triggered non-target test digits classified as the target.

Runs go to a pool of worker processes (one torch thread each) and a progress bar
counts them. Outputs under ``out``: ``runs.csv`` (every run), ``summary.csv`` (mean
and std over seeds), ``results.json``, ``poisoning.md`` (tables) and two heatmaps.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from attacks.common import report
from attacks.poisoning.settings import SETTINGS, setting as named_setting

#: attack label -> (attack name, parameters)
ATTACK_GRID: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("none", {}),
    "label_flip": ("label_flip", {}),
    "sign_flip": ("sign_flip", {}),
    "gaussian": ("gaussian", {"std": 30.0}),
    "backdoor": ("backdoor", {"target": 0}),
    "backdoor_unscaled": ("backdoor", {"target": 0, "gamma": 1.0}),
    "backdoor_heavy": ("backdoor", {"target": 0, "poison_fraction": 0.5}),
    "alie": ("alie", {}),
    "ipm_0.1": ("ipm", {"epsilon": 0.1}),  # Xie et al. 2019's small epsilon
    "ipm_0.5": ("ipm", {"epsilon": 0.5}),
    "ipm_100": ("ipm", {"epsilon": 100.0}),
    "minmax": ("minmax", {}),
    "minsum": ("minsum", {}),
}

#: defense label -> run settings (flat RunConfig fields)
DEFENSES: dict[str, dict[str, Any]] = {
    "mean": {"aggregator": "mean"},
    "median": {"aggregator": "median"},
    "trimmed_mean": {"aggregator": "trimmed_mean"},
    "krum": {"aggregator": "krum"},
    "multikrum": {"aggregator": "multikrum"},
    "bulyan": {"aggregator": "bulyan"},
    "centered_clip": {"aggregator": "centered_clipping"},
    "centered_clip_r1": {"aggregator": "centered_clipping", "clip_radius": 1.0},
    "norm_bound": {"aggregator": "norm_bound"},
    "fltrust": {"aggregator": "fltrust"},
    # client-level DP (DP-FedAvg): server-enforced clip S = 0.2, noise z; epsilon over
    # 20 rounds at delta 1e-5 is about 11.5 (z = 2) and 7.0 (z = 3). The noise is keyed
    # from the seed (reproducible_noise) so that the matrix can be rerun exactly; that
    # voids the DP guarantee against whoever knows the seed, which does not matter for
    # a robustness benchmark and must not be copied into a deployment.
    "dp_z2": {"aggregator": "mean", "dp": "client", "noise_multiplier": 2.0, "clip": 0.2, "reproducible_noise": True},
    "dp_z3": {"aggregator": "mean", "dp": "client", "noise_multiplier": 3.0, "clip": 0.2, "reproducible_noise": True},
}

BASE: dict[str, Any] = SETTINGS["default"].base
#: the rows and columns of the full suite (the grids also hold labels for focused runs)
SUITE_ATTACKS = tuple(a for a in ATTACK_GRID if a != "ipm_0.1")
SUITE_DEFENSES = tuple(d for d in DEFENSES if d != "centered_clip_r1")
MALICIOUS_FRACTION = 0.2
KNOWLEDGE = "omniscient"

QUICK_ATTACKS = ("none", "ipm_100", "backdoor")
QUICK_DEFENSES = ("mean", "median")
QUICK_BASE = {**BASE, "clients": 10, "rounds": 3, "byzantine": 2}

#: an untargeted attack "breaks" a defense when it costs more than this accuracy;
#: a backdoor when more than this fraction of triggered inputs hit the target
BREAK_DROP = 0.10
BREAK_BACKDOOR = 0.5

_DATA_CACHE: dict[tuple[str, int], Any] = {}


def run_cell(task: dict[str, Any]) -> dict[str, Any]:
    """One run of the matrix (executed in a worker process)."""
    import torch

    torch.set_num_threads(1)
    from attacks.poisoning.attacks import make_attack
    from attacks.poisoning.cases import PoisonCase
    from attacks.poisoning.run import run_federation
    from securefl.config import RunConfig
    from securefl.data import load_dataset

    settings = {**task["base"], **DEFENSES[task["defense"]], "seed": task["seed"]}
    key = (settings["dataset"], task["seed"])
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(settings["dataset"], seed=task["seed"])
    name, params = ATTACK_GRID[task["attack"]]
    attack = make_attack(name, params)
    fraction = 0.0 if name == "none" else task["malicious_fraction"]
    res = run_federation(
        RunConfig.from_flat(settings), attack, PoisonCase(fraction, task["knowledge"]), data=_DATA_CACHE[key]
    )
    return {
        "attack": task["attack"],
        "defense": task["defense"],
        "seed": task["seed"],
        "main_accuracy": res["main_accuracy"],
        "targeted_success": res["targeted_success"],
        "num_malicious": res["num_malicious"],
        "aborted_rounds": res["aborted_rounds"],
        "server_clipped": res["server_clipped"],
        "epsilon": res["epsilon"],
        "mean_malicious_norm": res["mean_malicious_norm"],
        "mean_benign_norm": res["mean_benign_norm"],
        "seconds": res["seconds"],
    }


def _describe(named: Any, base: dict[str, Any], seeds: int, quick: bool) -> str:
    """The setting as the tables state it."""
    return (
        f"`{named.name}`: {base['dataset']}, {base['clients']} clients ({base['partition']}), "
        f"{int(round(MALICIOUS_FRACTION * base['clients']))} malicious ({KNOWLEDGE} knowledge), "
        f"{named.summary}{' (quick: 3 rounds)' if quick else ''}, mean of {seeds} seed(s)"
    )


def _check_labels(attacks: list[str], defenses: list[str]) -> None:
    from securefl.exceptions import ConfigValueError

    for field, labels, grid in (("attacks", attacks, ATTACK_GRID), ("defenses", defenses, DEFENSES)):
        for label in labels:
            if label not in grid:
                raise ConfigValueError(field, label, f"must be one of {', '.join(grid)}")


def _add_success(rows: list[dict[str, Any]]) -> None:
    """attack_success_rate: backdoor rate, or the accuracy drop against the clean run."""
    clean = {(r["defense"], r["seed"]): r["main_accuracy"] for r in rows if r["attack"] == "none"}
    for r in rows:
        if r["targeted_success"] is not None:
            r["attack_success_rate"] = r["targeted_success"]
        elif r["attack"] == "none":
            r["attack_success_rate"] = 0.0
        else:
            c = clean.get((r["defense"], r["seed"]))
            r["attack_success_rate"] = None if c is None else c - r["main_accuracy"]
        r["clean_accuracy"] = clean.get((r["defense"], r["seed"]))


def _verdict(row: dict[str, Any], attack: str) -> str:
    asr = row.get("attack_success_rate")
    if asr is None or attack == "none":
        return "–"
    limit = BREAK_BACKDOOR if ATTACK_GRID[attack][0] == "backdoor" else BREAK_DROP
    return "broken" if asr > limit else "holds"


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished worker processes."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _run_tasks(tasks: list[dict[str, Any]], workers: int, progress: bool) -> list[dict[str, Any]]:
    """Every run, in a pool of ``workers`` processes (in this one when 1), in task order."""
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(tasks), unit="run", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        if workers == 1:
            for t in tasks:
                rows.append(run_cell(t))
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(run_cell, t) for t in tasks]
                for fut in as_completed(futures):
                    rows.append(fut.result())
                    bar.set_postfix(last=f"{rows[-1]['attack']}/{rows[-1]['defense']}")
                    bar.update(1)
    finally:
        bar.close()
    order = {(t["attack"], t["defense"], t["seed"]): i for i, t in enumerate(tasks)}
    rows.sort(key=lambda r: order[(r["attack"], r["defense"], r["seed"])])
    return rows


def _write_tables(out: Path, summary: list[dict[str, Any]], attacks: list[str], defenses: list[str],
                  setting: str, timing: str) -> tuple[Any, Any]:
    """Heatmaps and poisoning.md; returns the accuracy and success matrices."""
    acc = report.pivot(summary, "attack", "defense", "main_accuracy", attacks, defenses)
    asr = report.pivot(summary, "attack", "defense", "attack_success_rate", attacks, defenses)
    ver = report.pivot(summary, "attack", "defense", "verdict", attacks, defenses)
    report.heatmap(out / "accuracy.png", *acc, title=f"main accuracy\n{setting}", vmin=0, vmax=1,
                   xlabel="defense", ylabel="attack")
    report.heatmap(out / "attack_success.png", *asr, title=f"attack success (backdoor rate / accuracy drop)\n{setting}",
                   cmap="magma", vmin=0, vmax=1, xlabel="defense", ylabel="attack")
    md = [
        "# Poisoning benchmark",
        "",
        f"Setting: {setting}. {timing}",
        "",
        "## Main-task accuracy",
        "",
        report.markdown_table(*acc, corner="attack \\ defense"),
        "",
        "## Attack success rate",
        "",
        "Backdoor: fraction of triggered non-target test digits classified as the target. "
        "Untargeted: accuracy lost against the clean run of the same defense.",
        "",
        report.markdown_table(*asr, corner="attack \\ defense"),
        "",
        f"## Which attack breaks which defense (drop > {BREAK_DROP:g}, backdoor > {BREAK_BACKDOOR:g})",
        "",
        report.markdown_table(*ver, corner="attack \\ defense", fmt=lambda v: str(v) if v is not None else "–"),
        "",
    ]
    (out / "poisoning.md").write_text("\n".join(md))
    return acc, asr


def run_suite(
    *, seeds: int, out: Path, progress: bool = True, quick: bool = False, workers: int | None = None,
    model: str | None = None, dataset: str | None = None, setting: str = "default",
    attacks: list[str] | None = None, defenses: list[str] | None = None,
) -> dict[str, Any]:
    """Run the matrix over ``seeds`` seeds and write the tables and plots under ``out``;
    ``setting`` names the base configuration (:mod:`attacks.poisoning.settings`),
    ``model`` and ``dataset`` (``MODULE:CALLABLE`` or built-in names) replace its own,
    ``attacks``/``defenses`` (labels of the grids) narrow the matrix."""
    named = named_setting(setting)
    attacks = list(attacks or (QUICK_ATTACKS if quick else SUITE_ATTACKS))
    defenses = list(defenses or (QUICK_DEFENSES if quick else SUITE_DEFENSES))
    _check_labels(attacks, defenses)
    quick_base = {**named.base, "clients": 10, "rounds": 3, "byzantine": 2}
    base = {**(quick_base if quick else named.base), **{k: v for k, v in (("model", model), ("dataset", dataset)) if v}}
    tasks = [
        {"attack": a, "defense": d, "seed": s, "base": base, "malicious_fraction": MALICIOUS_FRACTION, "knowledge": KNOWLEDGE}
        for s in range(seeds) for d in defenses for a in attacks
    ]
    workers = workers or min(len(tasks), max(1, os.cpu_count() or 1))
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    rows = _run_tasks(tasks, workers, progress)
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    _add_success(rows)
    summary = report.mean_over_seeds(
        rows, ["attack", "defense"], ["main_accuracy", "attack_success_rate", "targeted_success", "seconds"]
    )
    for r in summary:
        r["verdict"] = _verdict(r, r["attack"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report.write_csv(out / "runs.csv", rows)
    report.write_csv(out / "summary.csv", summary)
    described = _describe(named, base, seeds, quick)
    timing = f"{len(rows)} runs: wall time {wall:.0f} s with {workers} worker(s), {cpu:.0f} CPU-seconds in all."
    acc, asr = _write_tables(out, summary, attacks, defenses, described, timing)
    result = {
        "suite": "poisoning",
        "quick": quick,
        "seeds": seeds,
        "setting": {"name": named.name, "base": base, "malicious_fraction": MALICIOUS_FRACTION, "knowledge": KNOWLEDGE,
                    "attacks": {a: ATTACK_GRID[a] for a in attacks}, "defenses": {d: DEFENSES[d] for d in defenses}},
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "workers": workers,
        "runs": rows,
        "matrix": summary,
        "summary": {
            "runs": len(rows),
            "wall_seconds": round(wall, 1),
            "cpu_seconds": round(cpu, 1),
            "out": str(out),
            "main_accuracy": {a: dict(zip(defenses, row)) for a, row in zip(attacks, acc[2])},
            "attack_success_rate": {a: dict(zip(defenses, row)) for a, row in zip(attacks, asr[2])},
        },
    }
    report.write_json(out / "results.json", result)
    return result
