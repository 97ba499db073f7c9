"""What every fuzz target shares: the case counter, the containment check and
structure-aware mutations of valid wire messages (digests recomputed)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from securefl.exceptions import AggregationError, ProtocolError, SecureFLError, WireFormatError
from securefl.transport import wire

COUNTS: Counter[str] = Counter()

#: deterministic in CI: same examples every run, no example database
def fuzz_settings(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


#: what may leave a server protection's handlers: SecureServer.run_round turns
#: exactly these into an aborted round with the model unchanged
ROUND_ABORTS = (AggregationError, WireFormatError, ProtocolError)


def contained(target: str, fn: Callable[[], Any], allowed: tuple[type[BaseException], ...] = (SecureFLError,)) -> Any:
    """Run one case: an ``allowed`` securefl error is the answer to bad input; anything
    else escapes (and fails the test with its traceback)."""
    COUNTS[target] += 1
    try:
        return fn()
    except allowed as exc:
        return exc


EDGE_INTS = [0, -1, 1, 2, 3, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), 10**30, -(10**30)]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(EDGE_INTS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324, 0.5]),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=4,
)


def mutate_bytes(data: st.DataObject, blob: bytes) -> bytes:
    """A byte-level mutation: flip, truncate, extend, splice or replace."""
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "replace", "splice", "same"]))
    if how == "same" or (not blob and how in ("flip", "truncate", "splice")):
        return blob
    if how == "flip":
        i = data.draw(st.integers(0, len(blob) - 1))
        b = bytearray(blob)
        b[i] ^= data.draw(st.integers(1, 255))
        return bytes(b)
    if how == "truncate":
        return blob[: data.draw(st.integers(0, len(blob) - 1))]
    if how == "extend":
        return blob + data.draw(st.binary(min_size=1, max_size=16))
    if how == "splice":
        i = data.draw(st.integers(0, len(blob)))
        return blob[:i] + data.draw(st.binary(max_size=16)) + blob[i:]
    return data.draw(st.binary(max_size=64))


def mutate_header(data: st.DataObject, header: dict[str, Any], fields: list[str] | None = None) -> dict[str, Any]:
    """Set, delete or add one or more fields (to any JSON value)."""
    h = dict(header)
    names = sorted(set(fields or []) | set(h)) or ["x"]
    for _ in range(data.draw(st.integers(1, 2))):
        name = data.draw(st.sampled_from(names))
        op = data.draw(st.sampled_from(["set", "set", "delete"]))
        if op == "delete":
            h.pop(name, None)
        else:
            h[name] = data.draw(json_values)
    return h


def mutate_message(data: st.DataObject, raw: bytes, fields: list[str] | None = None) -> bytes:
    """A structure-aware mutation of a valid message: header fields, payload, kind,
    re-encoded with a fresh digest; sometimes the raw bytes instead."""
    msg = wire.decode(raw)
    where = data.draw(st.sampled_from(["header", "header", "payload", "both", "kind", "raw"]))
    if where == "raw":
        return mutate_bytes(data, raw)
    header, payload, kind = msg.header, msg.payload, msg.kind
    if where in ("header", "both"):
        header = mutate_header(data, header, fields)
    if where in ("payload", "both"):
        payload = mutate_bytes(data, payload)
    if where == "kind":
        kind = data.draw(st.sampled_from(list(wire.Kind)))
    try:
        return wire.encode(kind, header, payload)
    except SecureFLError:
        return raw
