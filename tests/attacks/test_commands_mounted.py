"""The attack and audit commands are mounted from the ``securefl.commands`` entry points
that pyproject.toml declares (run ``pip install -e .`` after changing them)."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from securefl import cli

DECLARED = {
    "attack.bench": "attacks.common.commands:register",
    "attack.poison": "attacks.poisoning.commands:register",
    "attack.invert": "attacks.inversion.commands:register",
    "attack.membership": "attacks.membership.commands:register",
    "audit.empirical": "attacks.audit.commands:register",
}


def test_entry_points_are_declared_and_load():
    found = {ep.name: ep for ep in entry_points(group=cli.PLUGIN_GROUP)}
    assert {name: ep.value for name, ep in found.items() if name in DECLARED} == DECLARED
    for name in DECLARED:
        assert callable(found[name].load())


@pytest.mark.parametrize(
    "argv",
    [
        ["attack", "bench", "--suite", "poisoning"],
        ["attack", "poison", "--attack", "ipm"],
        ["attack", "invert"],
        ["attack", "membership"],
        ["audit", "budget", "ledger.json"],
        ["audit", "empirical"],
        ["audit", "mechanism", "--noise-multiplier", "1"],
    ],
)
def test_every_command_is_mounted_with_a_handler(argv):
    ns = cli.build_parser().parse_args(argv)
    assert callable(ns.handler)
    assert (ns.command, ns.subcommand) == (argv[0], argv[1])


def test_plugins_keep_securefl_own_command_first():
    found = cli.plugins()
    assert sorted(found) == ["", "attack", "audit"]
    assert found["audit"][0].__module__.startswith("securefl.")
    assert [f.__module__ for f in found[""]] == ["securefl.bench.commands"]
    assert len(found["attack"]) == 4 and len(found["audit"]) == 2
