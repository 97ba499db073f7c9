"""``securefl attack poison``: one poisoning experiment.

Runs the federation described by the train flags twice, clean and with
``--malicious-fraction`` of the clients running ``--attack`` (the last clients of the
list; full knowledge of the round's honest updates unless ``--knowledge own``), and
writes ``OUT/poison.json`` with ``main_accuracy`` and ``attack_success_rate`` (the
backdoor's success on triggered inputs, or the accuracy drop for untargeted attacks).
Attack parameters go as ``--attack-arg KEY=VALUE`` (e.g. ``--attack-arg epsilon=100``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from securefl.exceptions import ConfigValueError

_SKIP = ["attack", "malicious_fraction", "knowledge", "attack_arg"]


def parse_attack_args(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are read as JSON when they parse (numbers, null,
    true/false), else kept as strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigValueError("attack_arg", item, "must be KEY=VALUE")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out


def run(ns: argparse.Namespace) -> int:
    from attacks.poisoning.attacks import make_attack
    from attacks.poisoning.cases import PoisonCase
    from attacks.poisoning.run import poison_experiment
    from securefl._io import atomic_write_json
    from securefl.cli import config_from_args

    config = config_from_args(ns, extra_skip=_SKIP)
    attack = make_attack(ns.attack, parse_attack_args(ns.attack_arg))
    case = PoisonCase(ns.malicious_fraction, ns.knowledge)
    if case.num_malicious(config.clients) == 0 and ns.attack != "none":
        raise ConfigValueError(
            "malicious_fraction", ns.malicious_fraction, f"gives no malicious client among {config.clients}"
        )
    result = poison_experiment(config, attack, case)
    result["config"] = config.to_flat()
    ns.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ns.out / "poison.json", result)
    asr = result["attack_success_rate"]
    kind = "backdoor success" if result["targeted"] else "accuracy drop"
    print(
        f"{ns.attack} vs {config.server.aggregator}: main accuracy {result['main_accuracy']:.4f} "
        f"(clean {result['clean_accuracy']:.4f}), attack success {asr:.4f} ({kind}); wrote {ns.out}/poison.json"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from attacks.poisoning.attacks import ATTACKS
    from attacks.poisoning.cases import KNOWLEDGE
    from securefl.cli import add_train_flags

    p = subparsers.add_parser("poison", help="poisoning attack against an aggregator (clean vs attacked run)")
    p.add_argument("--attack", required=True, help=" | ".join(ATTACKS))
    p.add_argument("--malicious-fraction", type=float, default=0.2, help="fraction of clients that are malicious (0.2)")
    p.add_argument("--knowledge", default="omniscient", help=" | ".join(KNOWLEDGE) + " (omniscient)")
    p.add_argument("--attack-arg", action="append", metavar="KEY=VALUE", help="attack parameter (repeatable)")
    add_train_flags(p)
    p.set_defaults(handler=run)
