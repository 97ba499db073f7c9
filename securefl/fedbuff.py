"""Buffered asynchronous aggregation (FedBuff: Nguyen et al., "Federated Learning
with Buffered Asynchronous Aggregation", AISTATS 2022) with every protection.

Up to ``concurrency`` clients train at once, each from the model version it was
given. The server keeps the last ``max_staleness + 1`` versions; every ``buffer``
arrivals it runs *one* aggregation over the buffered clients through
:meth:`SecureServer.run_cohort`: one secure aggregation (the buffer is the secagg
cohort, dropouts inside it handled by the protocol, the threshold and
``min_clients`` enforced) or one CKKS sum, and steps the model once. Each member's
GLOBAL_MODEL carries its own version's weights, the buffer's protocol round and its
staleness s (server steps since that version); the client itself checks s against
its bound and scales its released update by w(s) <= 1 (:class:`~securefl.aggregation.staleness.StalenessPolicy`), so
a lying server can neither amplify an update nor make a client answer a staler
version than it agreed to. Updates staler than the bound are refused at arrival and
counted; the server never sends one.

Simulated time: each task lasts a duration drawn from :class:`LatencyModel`; a
buffer's time is the arrival of its last member. Training runs when the buffer is
aggregated, on the version the client was given at dispatch: a client's update
depends only on that version and its own state, so the result is the same as
training at dispatch time, and each client has at most one task in flight.

Privacy. Sample-level DP is per client as in synchronous rounds (each update is
one DP-SGD run on the client's ledger, its budget solved for
``max_updates`` or ``rounds`` updates; a client whose budget is spent refuses and is
not dispatched again). Client-level DP (DP-FedAvg on each buffer): the sum of
w_i * clip(Delta_i) with w_i <= 1 has sensitivity S, divided by the fixed
denominator K; the accountant composes one Gaussian mechanism per buffer with
sampling rate 1: buffer membership follows arrival order, not a secret Poisson
draw, so no amplification by sampling is claimed.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from securefl.aggregation.staleness import STALENESS_WEIGHTS, StalenessPolicy
from securefl.config import ScheduleConfig
from securefl.privacy.noise import SecureRNG
from securefl.protections.base import ClientLike
from securefl.server import RoundResult, SecureServer

__all__ = ["STALENESS_WEIGHTS", "BufferedAsync", "LatencyModel", "StalenessPolicy"]


class LatencyModel:
    """Simulated task times: client k's mean time is log-spaced in ``[1, spread]``
    (assigned by a seeded permutation), times a log-normal factor of sigma
    ``jitter`` per task. Public simulation randomness (seeded numpy), not a secret."""

    def __init__(self, clients: int, *, spread: float = 1.0, jitter: float = 0.0, seed: int = 0) -> None:
        self._rng = np.random.default_rng([int(seed), 0x1A7E])
        steps = np.arange(clients) / max(1, clients - 1)
        self.means = (float(spread) ** steps)[self._rng.permutation(clients)]
        self.jitter = float(jitter)

    @classmethod
    def of(cls, schedule: ScheduleConfig, clients: int, seed: int) -> "LatencyModel | None":
        """The run's model; None for the default (every task takes one time unit)."""
        if schedule.latency_spread == 1.0 and schedule.latency_jitter == 0.0 and not schedule.asynchronous:
            return None
        return cls(clients, spread=schedule.latency_spread, jitter=schedule.latency_jitter, seed=seed)

    def duration(self, k: int) -> float:
        """The time client ``k`` takes for one task."""
        factor = math.exp(self.jitter * float(self._rng.standard_normal())) if self.jitter else 1.0
        return float(self.means[k]) * factor


@dataclass(order=True)
class _Task:
    end: float
    seq: int
    client: int = field(compare=False)
    version: int = field(compare=False)


class BufferedAsync:
    """FedBuff's server loop over a :class:`SecureServer` (see the module docstring).

    :meth:`flush` advances simulated time until ``buffer`` fresh-enough updates have
    arrived and aggregates them as protocol round ``round_``; None once no client
    can be dispatched (every budget spent)."""

    def __init__(
        self,
        server: SecureServer,
        clients: Sequence[ClientLike],
        schedule: ScheduleConfig,
        latency: LatencyModel,
        rng: SecureRNG,
    ) -> None:
        self.server, self.clients, self.schedule, self.latency, self.rng = server, clients, schedule, latency, rng
        self.in_flight = schedule.in_flight(len(clients))
        self.version = 0
        self.versions: dict[int, torch.Tensor] = {0: server.weights.clone()}
        self.clock = 0.0
        self._heap: list[_Task] = []
        self._seq = 0
        self._busy: set[int] = set()
        self.retired: set[int] = set()  #: clients whose budget is spent (refused)
        self.buffer: list[_Task] = []
        self.stale_refused = 0  #: arrivals refused as staler than the bound
        self.applied_staleness: list[int] = []  #: staleness of every update aggregated
        self._dispatch()

    def _dispatch(self) -> None:
        """Start tasks on idle clients, chosen uniformly, until ``in_flight`` run."""
        while len(self._busy) < self.in_flight:
            idle = [k for k in range(len(self.clients)) if k not in self._busy and k not in self.retired]
            if not idle:
                return
            k = idle[self.rng.below(len(idle))]
            self._busy.add(k)
            self._seq += 1
            heapq.heappush(self._heap, _Task(self.clock + self.latency.duration(k), self._seq, k, self.version))

    def _fill(self) -> bool:
        """Take arrivals until the buffer is full; False if none can come."""
        while len(self.buffer) < self.schedule.buffer:
            if not self._heap:
                return False
            task = heapq.heappop(self._heap)
            self.clock = task.end
            self._busy.discard(task.client)
            if self.version - task.version > self.schedule.max_staleness:
                self.stale_refused += 1  # never aggregated: the client is free for new work
            else:
                self.buffer.append(task)
                self._busy.add(task.client)  # its update waits in the buffer
            self._dispatch()
        return True

    def flush(self, round_: int) -> RoundResult | None:
        """One buffer: fill it, aggregate it as protocol round ``round_``, step."""
        if not self._fill():
            return None
        members, tasks = [self.clients[t.client] for t in self.buffer], list(self.buffer)
        staleness = [self.version - t.version for t in tasks]  # <= max_staleness (checked at arrival)
        down = {}
        for c, t, s in zip(members, tasks, staleness):
            extra = {"version": t.version, "staleness": s}
            down[c.client_id] = self.server.global_message(round_, self.versions[t.version], extra)
        before = self.server.weights
        result = self.server.run_cohort(round_, self.clients, members, down)
        self.buffer.clear()
        for t, c in zip(tasks, members):
            self._busy.discard(t.client)
            if c.client_id in result.refused:
                self.retired.add(t.client)
        if self.server.weights is not before:  # an update was applied
            self.applied_staleness += [s for s, c in zip(staleness, members) if c.client_id not in result.dropped + result.refused]
            self.version += 1
            self.versions[self.version] = self.server.weights.clone()
            for v in [v for v in self.versions if v < self.version - self.schedule.max_staleness]:
                del self.versions[v]
        result.schedule = {
            "sim_time": round(self.clock, 6),
            "version": self.version,
            "staleness": staleness,
            "stale_refused": self.stale_refused,
        }
        self._dispatch()
        return result
