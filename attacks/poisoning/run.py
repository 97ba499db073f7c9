"""Run one poisoning experiment: a clean federation and the same federation with
malicious clients, and the metrics of both (:mod:`attacks.poisoning.metrics`)."""

from __future__ import annotations

import time
from typing import Any

from attacks.poisoning.attacks import PoisonAttack
from attacks.poisoning.cases import PoisonCase, install
from attacks.poisoning.metrics import accuracy, attack_success_rate, targeted_success
from securefl.config import RunConfig
from securefl.data import FederatedData
from securefl.simulation import Simulation


def run_federation(
    config: RunConfig,
    attack: PoisonAttack,
    case: PoisonCase,
    *,
    data: FederatedData | None = None,
    out_dir: Any = None,
    metric_attack: PoisonAttack | None = None,
) -> dict[str, Any]:
    """One federated run with ``case``'s malicious clients running ``attack``;
    targeted success is measured for ``metric_attack`` (default: ``attack``), so a
    clean run can report how often the trigger alone yields the target."""
    t0 = time.perf_counter()
    sim = Simulation(config, data=data, out_dir=out_dir)
    installed = install(sim, attack, case, seed=config.seed)
    result = sim.run()
    model, d = result.server.model, sim.data
    rounds = result.metrics["rounds"]
    return {
        "main_accuracy": accuracy(model, d.x_test, d.y_test),
        "targeted_success": targeted_success(model, metric_attack or attack, d.x_test, d.y_test),
        "accuracy_per_round": [r["accuracy"] for r in rounds],
        "aborted_rounds": sum(1 for r in rounds if r["aborted"]),
        # the experimenter reads the server's own (unpublished) counts: under client-level
        # DP metrics.json withholds them
        "server_clipped": sum(int(r.protection.get("server_clipped", 0)) for r in result.results),
        "num_malicious": len(installed.malicious_ids),
        "malicious_ids": installed.malicious_ids,
        "mean_malicious_norm": _mean([h["malicious_norm"] for h in installed.coalition.history]),
        "mean_benign_norm": _mean([h["benign_norm"] for h in installed.coalition.history]),
        "epsilon": result.metrics["final"]["epsilon"],
        "seconds": time.perf_counter() - t0,
    }


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def poison_experiment(
    config: RunConfig,
    attack: PoisonAttack,
    case: PoisonCase,
    *,
    data: FederatedData | None = None,
    clean: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The attacked run plus (unless ``clean`` is given) the clean run with the same
    config; returns the contract's keys ``main_accuracy`` and ``attack_success_rate``
    with the details of both runs."""
    from attacks.poisoning.attacks import NoAttack

    if clean is None:
        clean = run_federation(config, NoAttack(), PoisonCase(0.0, "own"), data=data, metric_attack=attack)
    attacked = run_federation(config, attack, case, data=data)
    return {
        "attack": attack.name,
        "attack_params": attack.params(),
        "targeted": attacked["targeted_success"] is not None,
        "malicious_fraction": case.malicious_fraction,
        "knowledge": case.knowledge,
        "aggregator": config.server.aggregator,
        "dp": config.dp.dp,
        "seed": config.seed,
        "main_accuracy": attacked["main_accuracy"],
        "clean_accuracy": clean["main_accuracy"],
        "accuracy_drop": clean["main_accuracy"] - attacked["main_accuracy"],
        "attack_success_rate": attack_success_rate(
            attack,
            attacked_accuracy=attacked["main_accuracy"],
            clean_accuracy=clean["main_accuracy"],
            targeted=attacked["targeted_success"],
        ),
        "attacked": attacked,
        "clean": clean,
    }
