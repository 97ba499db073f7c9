"""User code named by a setting: ``MODULE:CALLABLE`` for ``--model`` and ``--dataset``.

A spec names a callable in a Python file (``examples/byo/model_and_data.py:factory``,
relative to the working directory) or in an importable module
(``mypackage.models:factory``). The config keeps the spec as a plain string (so
metrics.json and TOML files still hold plain data) and checks only its shape
(:func:`check_spec`); :mod:`securefl.models` and :mod:`securefl.data` resolve it
(:func:`load_callable`) when a run is built. Every failure is a
:class:`~securefl.exceptions.ConfigValueError` naming the field and the spec.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from securefl.exceptions import ConfigValueError

__all__ = ["SPEC_FORM", "check_spec", "is_user_spec", "load_callable", "describe"]

#: how a spec is written, for error messages and help texts
SPEC_FORM = "MODULE:CALLABLE (a .py file or an importable module, and a callable in it)"


def is_user_spec(value: Any) -> bool:
    """Whether ``value`` is written as a user spec (a string with a colon)."""
    return isinstance(value, str) and ":" in value


def check_spec(field: str, value: str) -> None:
    """The shape of a spec: a non-empty module part and a dotted identifier after the
    last colon (the part after it may name a class attribute: ``mod:Class.build``)."""
    module, _, attr = value.rpartition(":")
    if not module.strip() or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise ConfigValueError(field, value, f"must be {SPEC_FORM}")


def _is_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def _import_file(field: str, spec: str, module: str) -> Any:
    path = Path(module).expanduser().resolve()
    if not path.is_file():
        raise ConfigValueError(field, spec, f"file {module} not found (relative paths start at {Path.cwd()})")
    name = "securefl_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigValueError(field, spec, f"{module} cannot be imported as a Python file")
    mod = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = mod  # before running it: dataclasses and pickling look it up
    try:
        loader_spec.loader.exec_module(mod)
    except Exception as exc:  # the user's file failed: one line naming the field
        del sys.modules[name]
        raise ConfigValueError(field, spec, f"importing {module} failed: {type(exc).__name__}: {exc}") from None
    return mod


def _import_module(field: str, spec: str, module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            why = f"no module named {module!r} (give a path ending in .py, or install the module)"
        else:
            why = f"importing {module} failed: {exc}"
        raise ConfigValueError(field, spec, why) from None
    except Exception as exc:
        raise ConfigValueError(field, spec, f"importing {module} failed: {type(exc).__name__}: {exc}") from None


def load_callable(field: str, spec: str) -> Callable[..., Any]:
    """The callable ``spec`` names (see the module docstring). A file is imported
    once per process; later calls return the same objects."""
    check_spec(field, spec)
    module, _, attr = spec.rpartition(":")
    obj = _import_file(field, spec, module) if _is_path(module) else _import_module(field, spec, module)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigValueError(field, spec, f"{module} defines no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigValueError(field, spec, f"{attr} in {module} is a {type(obj).__name__}, not a callable")
    return obj


def describe(obj: Any) -> str:
    """A label for a callable or object passed directly (``module:qualname``), as a
    run's metrics record it in place of a spec."""
    target = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', type(obj).__name__)}"
