"""Checks for settings values, shared by every frozen settings object.

Each check raises :class:`~securefl.exceptions.ConfigTypeError` for a value of the
wrong type and :class:`~securefl.exceptions.ConfigValueError` for one out of range;
both name the field and the value, so a command line can print one line about it.
``bool`` is never accepted where a number is asked for (``True`` is an ``int`` to
Python, not to a user).

The predicates :func:`is_int` and :func:`is_number` answer the same questions
without raising, for code that reports a problem in its own terms (a protocol
message, say).
"""

from __future__ import annotations

import math
from typing import Any, Collection

from securefl.exceptions import ConfigTypeError, ConfigValueError

__all__ = ["check_bool", "check_choice", "check_float", "check_int", "is_int", "is_number"]


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool`` (finite or not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    """``value`` is an integer in ``[lo, hi]`` (either bound may be None)."""
    if not is_int(value):
        raise ConfigTypeError(name, value, "must be an integer")
    if lo is not None and value < lo:
        raise ConfigValueError(name, value, f"must be >= {lo}")
    if hi is not None and value > hi:
        raise ConfigValueError(name, value, f"must be <= {hi}")


def check_float(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """``value`` is a finite number between ``lo`` and ``hi`` (open or closed ends)."""
    if not is_number(value):
        raise ConfigTypeError(name, value, "must be a number")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        finite = False
    if not finite:
        raise ConfigValueError(name, value, "must be finite")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigValueError(name, value, f"must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise ConfigValueError(name, value, f"must be {'<' if hi_open else '<='} {hi}")


def check_choice(name: str, value: Any, choices: Collection[str]) -> None:
    """``value`` is one of the strings ``choices`` (case-sensitive)."""
    if not isinstance(value, str):
        raise ConfigTypeError(name, value, "must be a string")
    if value not in choices:
        raise ConfigValueError(name, value, f"must be one of {', '.join(choices)}")


def check_bool(name: str, value: Any) -> None:
    """``value`` is ``True`` or ``False`` (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ConfigTypeError(name, value, "must be true or false")
