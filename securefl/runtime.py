"""The thread policy: how many CPU threads torch uses in a securefl run.

securefl's reference models are small (thousands to a few hundred thousand
parameters) and train on minibatches of tens of examples; at that size a second
intra-op thread costs more in synchronisation than it brings, and a run of
``Simulation`` with torch's default (one thread per core) is several times slower
than the same run pinned to one thread (README, "Threads"). So every entry point
applies one policy, here: the ``securefl`` command at start-up and
:func:`securefl.build.build` (thus :class:`~securefl.simulation.Simulation`) when a
run is built.

The policy, first match wins:

1. the ``threads`` argument of :func:`apply_thread_policy`;
2. the environment variable ``SECUREFL_THREADS``: a positive integer, or ``torch``
   to leave torch's own setting alone (for a large user model, or a caller that
   set ``torch.set_num_threads`` itself);
3. ``OMP_NUM_THREADS`` set: torch already follows it, so it is left alone;
4. otherwise one thread.

Parallel clients (``ServerConfig.workers`` > 1, :mod:`securefl.protections.threaded`)
split that count: while a stage's clients run on ``workers`` threads, torch gets
``max(1, threads // workers)`` intra-op threads (:func:`worker_threads`), so that
workers times intra-op threads stays within what the policy allowed, and the
count is restored when the stage ends.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from securefl.exceptions import ConfigValueError

__all__ = ["DEFAULT_THREADS", "ENV", "KEEP", "apply_thread_policy", "threads_wanted", "worker_threads"]

ENV = "SECUREFL_THREADS"
#: the value of ``SECUREFL_THREADS`` (or ``threads``) that leaves torch alone
KEEP = "torch"
DEFAULT_THREADS = 1


def threads_wanted(threads: int | str | None = None) -> int | None:
    """The thread count the policy asks for, or None to leave torch as it is."""
    value: int | str | None = threads
    field = "threads"
    if value is None and os.environ.get(ENV, "").strip():
        value, field = os.environ[ENV].strip(), ENV
    if value is None:
        return None if "OMP_NUM_THREADS" in os.environ else DEFAULT_THREADS
    if value == KEEP:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1 or str(n) != str(value).strip():
        raise ConfigValueError(field, value, f"must be a positive integer, or {KEEP!r} to leave torch's setting alone")
    return n


def apply_thread_policy(threads: int | str | None = None) -> int:
    """Apply the policy (module docstring); returns the thread count torch now uses."""
    import torch

    n = threads_wanted(threads)
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


@contextmanager
def worker_threads(workers: int) -> Iterator[int]:
    """Split torch's intra-op threads among ``workers`` concurrent clients for the
    duration of the block (``max(1, threads // workers)`` each); yields that
    count and restores the previous one afterwards."""
    import torch

    before = torch.get_num_threads()
    each = max(1, before // max(1, int(workers)))
    if each != before:
        torch.set_num_threads(each)
    try:
        yield each
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
