"""securefl never imports attacks, by name or otherwise: no import statement, no
string that names an attacks module (what importlib or __import__ would need), and
no attacks module in sys.modules after importing every securefl module. The CLI
finds the attack commands through entry-point metadata only."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import securefl

ROOT = Path(securefl.__file__).parent
_NAMES_ATTACKS = re.compile(r"^\s*attacks(\.|:|\s*$)")


def _offences(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name == "attacks" or a.name.startswith("attacks.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "attacks" or node.module.startswith("attacks."):
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _NAMES_ATTACKS.match(node.value):
            found.append(f"string {node.value[:60]!r}")
    return [f"{path.relative_to(ROOT.parent)}:{o}" for o in found]


def test_no_securefl_module_names_attacks():
    modules = sorted(ROOT.rglob("*.py"))
    assert len(modules) > 20  # the walk found the library
    offences = [o for m in modules for o in _offences(m)]
    assert offences == []


def test_the_check_catches_each_way_of_naming_attacks(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import attacks.poisoning\nfrom attacks.audit import run\nimport importlib\n"
        "importlib.import_module('attacks.inversion.commands')\nX = 'attacks'\nok = 'the attacks package'\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        got = _offences(bad)
    finally:
        ROOT = saved
    assert len(got) == 4 and not any("package" in g for g in got)


def test_cli_has_no_string_naming_attacks():
    tree = ast.parse((ROOT / "cli.py").read_text())
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert [s for s in strings if "attacks" in s] == []


def test_importing_all_of_securefl_loads_no_attacks_module():
    code = r"""
import importlib, json, pkgutil, sys
import securefl
failed = []
for info in pkgutil.walk_packages(securefl.__path__, "securefl."):
    if info.name == "securefl.__main__":
        continue
    try:
        importlib.import_module(info.name)
    except ImportError as exc:  # an optional dependency (e.g. flwr) that is not installed
        failed.append(f"{info.name}: {exc}")
print(json.dumps({"loaded": sorted(m for m in sys.modules if m == "attacks" or m.startswith("attacks.")),
                  "modules": sum(m.startswith("securefl.") for m in sys.modules), "failed": failed}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["modules"] > 20
    assert report["loaded"] == []
