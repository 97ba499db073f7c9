"""Parallel clients in one process: an :class:`Exchange` that runs a stage on threads.

:class:`ThreadedExchange` is the in-process counterpart of the Flower transport's
:class:`~securefl.transport.flower.link.FlowerExchange`: it delivers each protocol
stage's messages (:meth:`~securefl.protections.base.Exchange.send_many`) to its
clients on a pool of ``workers`` threads. Local training (torch), TenSEAL's CKKS and
numpy release the GIL for most of their work, so on a machine with several cores the
clients of a stage overlap. It is opt-in (``ServerConfig.workers``, ``--workers N``;
:func:`securefl.build.build` installs it when ``workers > 1``).

The result is that of the serial exchange: replies come back in request order, and
the counting, refusals and dropouts go through :meth:`Exchange.admit` and
:meth:`Exchange.settle` in request order too, so ``bytes_up``, ``bytes_down``,
``refused`` and ``dropped`` (with its order) are those of a serial run. Every client
keeps its own state and randomness (its own :class:`~securefl.privacy.noise.SecureRNG`
stream under ``reproducible_noise``), so with the same seed a parallel run trains
the same models bit for bit; the shared :class:`~securefl.privacy.ledger.PrivacyLedger`
serializes its appends, so only the order of a round's entries in the ledger (and
their ``seq``, ``time`` and hashes) may differ. One difference remains: where the
serial exchange stops at the first client that fails (any error other than a
refusal or a dropout), the parallel one has already started the others; it still
counts nothing past the failing request and raises the same error.

While a stage runs, torch's intra-op threads are split among the workers
(:func:`securefl.runtime.worker_threads`) so that they do not oversubscribe the cores.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Callable, Sequence

from securefl.exceptions import ConfigValueError
from securefl.protections.base import ClientLike, Exchange
from securefl.runtime import worker_threads
from securefl.validators import is_int

__all__ = ["MAX_WORKERS", "ThreadedExchange", "check_workers", "exchange_factory"]

#: the most client threads a run may ask for
MAX_WORKERS = 1024


def check_workers(workers: object) -> int:
    """``workers`` as an int in [1, MAX_WORKERS], or a ConfigValueError naming it."""
    if not is_int(workers) or not 1 <= workers <= MAX_WORKERS:  # type: ignore[operator]
        raise ConfigValueError("workers", workers, f"must be an integer from 1 to {MAX_WORKERS}")
    return int(workers)  # type: ignore[arg-type]


class ThreadedExchange(Exchange):
    """An :class:`Exchange` whose stages run on ``workers`` threads (module docstring)."""

    def __init__(self, round_: int, drop_at: dict[str, int] | None = None, *, workers: int = 2) -> None:
        super().__init__(round_, drop_at)
        self.workers = check_workers(workers)

    def _admissible(self, client_id: str) -> bool:
        """What :meth:`admit` will answer for ``client_id``, without counting anything.
        No other request of a stage of distinct clients changes it."""
        return not self.gone(client_id) and self._drop_at.get(client_id) != self._asked.get(client_id, 0) + 1

    def send_many(
        self, requests: Sequence[tuple[ClientLike, bytes]], *, method: str = "handle"
    ) -> list[bytes | None]:
        ids = [c.client_id for c, _ in requests]
        launch = [i for i, cid in enumerate(ids) if self._admissible(cid)]
        if self.workers < 2 or len(launch) < 2 or len(set(ids)) != len(ids):
            return super().send_many(requests, method=method)
        out: list[bytes | None] = [None] * len(requests)
        workers = min(self.workers, len(launch))
        with worker_threads(workers), ThreadPoolExecutor(workers, thread_name_prefix="securefl-client") as pool:
            futures = {i: pool.submit(_call, requests[i][0], method, requests[i][1]) for i in launch}
            try:
                for i, (client, message) in enumerate(requests):
                    if self.admit(client.client_id, message) != (i in futures):
                        raise RuntimeError(f"parallel exchange: admission of {client.client_id} changed during the stage")
                    if i in futures:
                        out[i] = self.settle(client.client_id, futures[i].result())
            except BaseException:
                for f in futures.values():
                    f.cancel()  # those not started yet; the pool waits for the running ones
                raise
        return out


def _call(client: ClientLike, method: str, message: bytes) -> bytes | Exception:
    """One client's answer, or the exception it raised (settled in request order)."""
    try:
        return getattr(client, method)(message)
    except Exception as exc:  # noqa: BLE001 - handed to Exchange.settle, which re-raises the unexpected
        return exc


def exchange_factory(workers: int) -> Callable[..., Exchange]:
    """What :attr:`SecureServer.exchange_type` should be for ``workers`` client threads:
    the serial :class:`Exchange` for 1, else a :class:`ThreadedExchange`."""
    n = check_workers(workers)
    return Exchange if n == 1 else partial(ThreadedExchange, workers=n)

