"""Audit cases: the audited federation and where the canaries sit in it.

The federation is the library's own: a :class:`securefl.simulation.Simulation` of
the run's :class:`~securefl.config.RunConfig` (data split, clients, DP-SGD or
DP-FedAvg, ledger, server), changed only where the audit's threat model says so:

* example canaries: the pool images a mislabelled canary is made of leave the real
  data before the split; canary ``j`` then lives on client ``j mod K``, which holds
  it only if the canary's coin says "included". A client's sampling rate is fixed
  from its candidate count (real records plus every canary assigned to it), so it
  does not depend on the coins;
* client canaries: ``m`` canary clients join the population the server samples
  from; an excluded canary never answers (a dropout), so the population, and every
  denominator that follows from it, does not depend on the coins either.

Which canaries are included is the audit's secret coin (see :mod:`attacks.audit`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.audit.attacks import CANARY_DATA, SCORERS, CanaryScorer, random_directions
from attacks.audit.metrics import check_level
from attacks.common.federation import with_data, with_population
from securefl.data import load_dataset
from securefl.exceptions import ClientDropout, ConfigValueError
from securefl.privacy.noise import SecureRNG
from securefl.simulation import Simulation
from securefl.transport import wire

CANARY_KINDS = ("example", "client")
#: scores available per canary kind; the first is the default
SCORES: dict[str, tuple[str, ...]] = {"example": ("loss", "gradient"), "client": ("cosine",)}


@dataclass(frozen=True)
class EmpiricalAuditConfig:
    """Settings of ``securefl audit empirical`` besides the run's own.

    ``kind`` defaults to ``example`` canaries under sample-level DP (the unit
    that DP-SGD protects) and to ``client`` canaries otherwise (client-level DP,
    or no DP, where they give the strongest bound); ``score`` to the kind's
    first score.
    ``k_pos``/``k_neg`` fix the guess; by default a few sizes are tried with a
    Bonferroni-corrected confidence (see :func:`~attacks.audit.metrics.one_run_audit`).
    ``canary_data`` names how example canaries are made (:data:`~attacks.audit.attacks.CANARY_DATA`);
    ``canary_norm`` is the update norm of client canaries when there is no
    client-level clip to follow.
    """

    canaries: int = 1000
    kind: str | None = None
    score: str | None = None
    confidence: float = 0.95
    k_pos: int | None = None
    k_neg: int = 0
    canary_norm: float | None = None
    canary_data: str = "noise"

    def __post_init__(self) -> None:
        if isinstance(self.canaries, bool) or not isinstance(self.canaries, int) or self.canaries < 2:
            raise ConfigValueError("canaries", self.canaries, "must be an integer >= 2")
        if self.kind is not None and self.kind not in CANARY_KINDS:
            raise ConfigValueError("canary_kind", self.kind, f"must be one of {', '.join(CANARY_KINDS)}")
        if self.score is not None and self.score not in {s for v in SCORES.values() for s in v}:
            raise ConfigValueError("score", self.score, "must be loss, gradient or cosine")
        check_level("confidence", self.confidence, closed_low=False)
        if self.k_pos is not None and not 1 <= self.k_pos + self.k_neg <= self.canaries:
            raise ConfigValueError("k_pos", self.k_pos, f"k_pos + k_neg must be in [1, {self.canaries}]")
        if self.canary_data not in CANARY_DATA:
            raise ConfigValueError("canary_data", self.canary_data, f"must be one of {', '.join(CANARY_DATA)}")
        if self.canary_norm is not None and not self.canary_norm > 0:
            raise ConfigValueError("canary_norm", self.canary_norm, "must be > 0")

    def resolved(self, dp: str) -> "EmpiricalAuditConfig":
        kind = self.kind or ("example" if dp == "sample" else "client")
        score = self.score or SCORES[kind][0]
        if score not in SCORES[kind]:
            raise ConfigValueError("score", score, f"{kind} canaries support {', '.join(SCORES[kind])}")
        if kind == "client" and dp == "sample":
            raise ConfigValueError(
                "canary_kind", kind, "sample-level DP does not bound a whole client's influence; use example canaries"
            )
        return replace(self, kind=kind, score=score)


class CanaryClient:
    """A client-level canary (Andrew et al. 2024): each round it sends its fixed
    unit ``direction`` scaled to the clip norm the server announces (or to
    ``norm`` without client-level DP). An excluded canary is part of the
    population but never answers (it raises :class:`ClientDropout`), so the
    population size, and with it every denominator, does not depend on the coins."""

    def __init__(self, client_id: str, direction: torch.Tensor, *, included: bool, norm: float, weight: float) -> None:
        from securefl.protections import Plaintext

        self.client_id = client_id
        self.direction = direction
        self.included = bool(included)
        self.norm = float(norm)
        self.weight = float(weight)
        self.protection = Plaintext()

    def fit(self, message: bytes) -> bytes:
        if not self.included:
            raise ClientDropout(f"{self.client_id} is an excluded canary")
        msg = wire.decode(message, expect=wire.Kind.GLOBAL_MODEL)
        header = {"round": int(msg.header["round"]), "client": self.client_id, "dim": int(msg.header["dim"]),
                  "loss": 0.0, "steps": 0, "epsilon": None}
        clip = msg.header.get("client_clip")
        if clip is not None:
            return self.protection.seal(self.direction * float(clip), {"weight": 1.0, "unclipped": 1.0}, header)
        return self.protection.seal(self.direction * (self.norm * self.weight), {"weight": self.weight}, header)

    def handle(self, message: bytes) -> bytes:
        return self.protection.handle(message)


@dataclass
class AuditedRun:
    """A federation ready to run with its canaries, and the scorer that watches it."""

    sim: Simulation
    scorer: CanaryScorer
    included: np.ndarray  #: each canary's coin (True: included)


def _insert_example_canaries(sim: Simulation, run: Any, cx: torch.Tensor, cy: torch.Tensor, included: np.ndarray) -> None:
    """Canary ``j`` on client ``j mod K``, in its data only if included."""
    m = len(included)
    for k, client in enumerate(sim.clients):
        mine = np.arange(k, m, run.clients)
        inc = mine[included[mine]]
        # the sampling rate must not depend on the coins: fix it from the candidate count
        rate = run.client.sample_rate or min(1.0, run.client.batch_size / max(1, client.num_samples + len(mine)))
        sim.clients[k] = with_data(
            client, torch.cat([client.x, cx[inc]]), torch.cat([client.y, cy[inc]]),
            config=replace(run.client, sample_rate=rate), planned_rounds=run.server.rounds,
        )


def _add_canary_clients(sim: Simulation, run: Any, audit: EmpiricalAuditConfig, directions: torch.Tensor,
                        included: np.ndarray) -> None:
    """One canary client per direction, joining the population the server samples from."""
    weight = float(np.mean([len(p) for p in sim.parts]))
    norm = audit.canary_norm or run.dp.clip
    sim.clients += [
        CanaryClient(f"canary-{j}", directions[j], included=bool(included[j]), norm=norm, weight=weight)
        for j in range(len(included))
    ]
    sim.server = with_population(sim.server, len(sim.clients))


def build_federation(run: Any, audit: EmpiricalAuditConfig, included: np.ndarray, *,
                     out_dir: str | Path | None = None) -> AuditedRun:
    """The library's federation for ``run`` (a :class:`~securefl.config.RunConfig`)
    with ``len(included)`` canaries of ``audit`` (resolved) and their scorer."""
    if run.protect != "none":
        raise ConfigValueError(
            "protect", run.protect, "the audit scores the released model; a protection releases the same "
            "aggregate, so audit with --protect none",
        )
    content = SecureRNG.from_seed(run.seed, "audit-canaries")
    data = load_dataset(run.dataset, test_fraction=run.test_fraction, seed=run.seed)
    if audit.kind == "example":
        used, cx, cy = CANARY_DATA[audit.canary_data](data.x_train, data.y_train, len(included), data.num_classes, content)
        keep = np.setdiff1d(np.arange(len(data.x_train)), used)
        data = replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    sim = Simulation(run, data=data, out_dir=out_dir)
    start = sim.server.weights.clone()
    model = copy.deepcopy(sim.server.model)
    if audit.kind == "example":
        _insert_example_canaries(sim, run, cx, cy, included)
        scorer = SCORERS[audit.score](audit.score, model, start, x=cx, y=cy)
    else:
        directions = random_directions(len(included), start.numel(), content)
        _add_canary_clients(sim, run, audit, directions, included)
        scorer = SCORERS[audit.score](audit.score, model, start, directions=directions)
    return AuditedRun(sim, scorer, included)
