"""The layer rules of docs/architecture.md, enforced on the source.

Every ``import`` and ``from ... import`` in every module of ``securefl`` counts,
wherever it sits: at the top, inside a function, or under ``if TYPE_CHECKING:``
(a type-only import still ties the two modules together for a reader and for a
refactoring). The rules:

1. no import cycle between modules;
2. a module imports only from lower layers, from its own component, or along
   one of the few sideways edges listed in :data:`SIDEWAYS`;
3. ``crypto`` imports nothing above it but the exceptions and validators (no
   config, training, privacy or protections);
4. ``securefl`` never imports ``attacks``;

with the upward imports of :data:`ALLOWED_UPWARD` as the only exceptions (at most
two, each explained).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "securefl"

#: components bottom up: (rank, component, module prefixes); the longest prefix wins
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "foundation", ("securefl.exceptions", "securefl.validators", "securefl._io", "securefl.userspec", "securefl.runtime")),
    (1, "config", ("securefl.config",)),
    (2, "crypto", ("securefl.crypto",)),
    (2, "privacy", ("securefl.privacy",)),
    (2, "data", ("securefl.data",)),
    (2, "models", ("securefl.models",)),
    (2, "wire", ("securefl.transport", "securefl.transport.wire")),
    (3, "aggregation", ("securefl.aggregation", "securefl.server_opt")),
    (3, "protections", ("securefl.protections",)),
    (4, "client", ("securefl.client",)),
    (4, "server", ("securefl.server",)),
    (5, "build", ("securefl.build",)),
    (6, "simulation", ("securefl.simulation", "securefl.checkpoint", "securefl.fedbuff")),
    (6, "flower", ("securefl.transport.flower",)),
    (7, "cli", ("securefl", "securefl.cli", "securefl.__main__")),
]

#: imports between two components of one layer that the design asks for
SIDEWAYS: dict[tuple[str, str], str] = {
    ("crypto", "wire"): "the protocol state machines read and write versioned wire messages",
}

#: downward imports the design still forbids
FORBIDDEN: dict[tuple[str, str], str] = {
    ("crypto", "config"): "crypto holds cryptography only and takes its parameters as arguments",
}

#: (importer, imported) module pairs that may run against the rules above, each
#: with the reason; the test fails if one is no longer needed, so this only shrinks
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

#: the most entries ALLOWED_UPWARD may ever hold
MAX_UPWARD = 2


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The securefl module ``name`` refers to (itself, or its longest module prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _package(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def imports_of(module: str) -> set[str]:
    """Every securefl module ``module`` imports, anywhere in its source."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package(module).split(".")
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            if name == "attacks" or name.startswith("attacks."):
                found.add(name)
                continue
            target = _resolve(name) if name.startswith("securefl") else None
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def layer(module: str) -> tuple[int, str]:
    best = max((p for _, _, ps in LAYERS for p in ps if module == p or module.startswith(p + ".")), key=len)
    return next((rank, comp) for rank, comp, ps in LAYERS if best in ps)


def violations() -> dict[tuple[str, str], str]:
    """(importer, imported) pairs against rules 2-3, with the rule broken."""
    out = {}
    for src, targets in GRAPH.items():
        (r1, c1) = layer(src)
        for dst in targets:
            if dst.startswith("attacks"):
                continue
            (r2, c2) = layer(dst)
            if (c1, c2) in FORBIDDEN:
                out[(src, dst)] = f"{c1} may not import {c2}"
            elif c1 != c2 and r2 > r1:
                out[(src, dst)] = f"{c1} (layer {r1}) imports {c2} (layer {r2})"
            elif c1 != c2 and r2 == r1 and (c1, c2) not in SIDEWAYS:
                out[(src, dst)] = f"{c1} imports {c2} sideways (layer {r1})"
    return out


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return found


# ------------------------------------------------------------------ the rules
def test_every_module_has_a_layer():
    for module in MODULES:
        assert layer(module)


def test_no_import_cycles():
    assert cycles() == []


def test_imports_follow_the_layers():
    found = violations()
    unexpected = {k: v for k, v in found.items() if k not in ALLOWED_UPWARD}
    assert unexpected == {}
    stale = [k for k in ALLOWED_UPWARD if k not in found]
    assert stale == [], "remove these from ALLOWED_UPWARD: they no longer happen"


def test_upward_imports_are_few_and_explained():
    assert len(ALLOWED_UPWARD) <= MAX_UPWARD
    assert all(reason.strip() for reason in ALLOWED_UPWARD.values())


def test_securefl_never_imports_attacks():
    assert {m: sorted(t for t in ts if t.startswith("attacks")) for m, ts in GRAPH.items() if any(t.startswith("attacks") for t in ts)} == {}


def test_config_imports_no_component():
    config_modules = [m for m in GRAPH if layer(m)[1] == "config"]
    assert len(config_modules) >= 2
    for m in config_modules:
        assert {layer(t)[1] for t in GRAPH[m]} <= {"foundation", "config"}, m


# ------------------------------------------------------------------ the walker itself
def test_walker_sees_function_level_and_type_checking_imports(tmp_path, monkeypatch):
    src = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from securefl.config import RunConfig\n"
        "def f():\n    from securefl.models import get_flat\n    import securefl.data\n"
        "from . import exceptions\n"
    )
    fake = ROOT / "_layers_probe.py"
    monkeypatch.setitem(MODULES, "securefl._layers_probe", fake)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: src if self == fake else Path.read_bytes(self).decode())
    assert imports_of("securefl._layers_probe") == {
        "securefl.config", "securefl.models", "securefl.data", "securefl.exceptions",
    }


@pytest.mark.parametrize(
    "module, expected",
    [
        ("securefl.crypto.hazmat.ckks", (2, "crypto")),
        ("securefl.transport.wire", (2, "wire")),
        ("securefl.config", (1, "config")),
        ("securefl", (7, "cli")),
    ],
)
def test_layer_lookup(module, expected):
    assert layer(module) == expected


# ------------------------------------------------------------------ size limits
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
#: functions that are argparse flag tables (one ``add_argument`` per line), exempt
ARGPARSE_TABLES = {"securefl.cli_flags.add_train_flags"}


def _functions(module: str):
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _is_argparse_table(node: ast.AST) -> bool:
    calls = [n for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    adds = [c for c in calls if c.func.attr in ("add_argument", "add_argument_group")]
    return len(adds) >= 0.8 * len(calls)


def test_no_module_over_the_line_limit():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_over_the_line_limit():
    long = {}
    for module in MODULES:
        for fn in _functions(module):
            length = fn.end_lineno - fn.lineno + 1
            name = f"{module}.{fn.name}"
            if length > MAX_FUNCTION_LINES and not (name in ARGPARSE_TABLES and _is_argparse_table(fn)):
                long[name] = length
    assert long == {}


@pytest.mark.parametrize(
    "src, dst, why",
    [
        ("securefl.crypto.ckks_auth", "securefl.privacy.noise", "sideways"),
        ("securefl.crypto.secagg.client", "securefl.config", "may not import"),
        ("securefl.config", "securefl.data", "imports data"),
        ("securefl.aggregation.dp", "securefl.server", "imports server"),
    ],
)
def test_rules_catch_a_bad_edge(monkeypatch, src, dst, why):
    monkeypatch.setitem(GRAPH, src, GRAPH[src] | {dst})
    assert why in violations()[(src, dst)]


def test_cycle_detection(monkeypatch):
    monkeypatch.setitem(GRAPH, "securefl.config", GRAPH["securefl.config"] | {"securefl.build"})
    assert any("securefl.config" in c and "securefl.build" in c for c in cycles())
