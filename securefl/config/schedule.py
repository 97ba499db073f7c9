"""When the server aggregates: synchronous rounds or buffered asynchronous updates,
and the simulated speeds of the clients."""

from __future__ import annotations

from dataclasses import dataclass

from securefl.exceptions import ConfigValueError
from securefl.validators import check_choice as _choice
from securefl.validators import check_float as _float
from securefl.validators import check_int as _int

#: ``--mode``: rounds that wait for every sampled client, or FedBuff's buffer
SCHEDULE_MODES = ("sync", "async")
#: ``--staleness-weight``: how an update s server steps old is discounted (all <= 1)
STALENESS_WEIGHTS = ("sqrt", "inverse", "constant")


@dataclass(frozen=True)
class ScheduleConfig:
    """Synchronous rounds, or buffered asynchronous aggregation (FedBuff, Nguyen et
    al. 2022): up to ``concurrency`` clients train at once, each from the model
    version it was given; the server applies one update every ``buffer`` arrivals,
    each weighted by ``staleness_weight`` of its staleness s (server steps since its
    version), and refuses updates with s above ``max_staleness``. In async mode
    ``rounds`` counts server updates.

    Client speeds are simulated: client k's mean task time is fixed between 1 (the
    fastest) and ``latency_spread`` (the slowest), log-spaced and assigned by the
    run's seed; each task's time is that mean times a log-normal factor of sigma
    ``latency_jitter``. Both are public simulation parameters (seeded numpy), not
    secrets. ``max_updates`` (async with ``dp='sample'``): the number of updates
    each client's DP-SGD noise is solved for and its budget allows; None solves for
    ``rounds`` (a client joins a buffer at most once per server update)."""

    mode: str = "sync"
    buffer: int = 5
    concurrency: int | None = None
    staleness_weight: str = "sqrt"
    max_staleness: int = 8
    latency_spread: float = 1.0
    latency_jitter: float = 0.0
    max_updates: int | None = None

    def __post_init__(self) -> None:
        _choice("mode", self.mode, SCHEDULE_MODES)
        _int("buffer", self.buffer, 1, 100_000)
        if self.concurrency is not None:
            _int("concurrency", self.concurrency, 1, 100_000)
            if self.concurrency < self.buffer:
                why = f"fewer clients in flight than the buffer of {self.buffer} would never fill it"
                raise ConfigValueError("concurrency", self.concurrency, why)
        _choice("staleness_weight", self.staleness_weight, STALENESS_WEIGHTS)
        _int("max_staleness", self.max_staleness, 0, 1_000_000)
        _float("latency_spread", self.latency_spread, 1.0, 1e6)
        _float("latency_jitter", self.latency_jitter, 0.0, 5.0)
        if self.max_updates is not None:
            _int("max_updates", self.max_updates, 1, 10_000_000)

    @property
    def asynchronous(self) -> bool:
        return self.mode == "async"

    def in_flight(self, clients: int) -> int:
        """Clients training at once: ``concurrency``, or twice the buffer, at most all."""
        return min(clients, self.concurrency if self.concurrency is not None else 2 * self.buffer)
