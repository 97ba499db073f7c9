"""SecureServer: rounds, client sampling, aggregation, server optimizer, evaluation.

The server only ever handles bytes from clients and opens them through the
round's :class:`~securefl.protections.base.ServerProtection`, and turns what that
yields into the round's update with its :class:`~securefl.aggregation.strategy.RoundAggregation`
(FedAvg, a robust rule, or client-level DP wrapped around the mean:
:class:`~securefl.aggregation.dp.DPFedAvg`). It never trusts an aggregate it
cannot validate: a round whose aggregate is not finite is aborted and the global
model is left unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from securefl.aggregation import SUM_COMPATIBLE, make_aggregator
from securefl.aggregation.dp import DPFedAvg
from securefl.aggregation.strategy import PlainAggregation, RoundAggregation
from securefl.config import DPConfig, DPMode, ServerConfig
from securefl.exceptions import (
    AggregationError,
    BudgetExhaustedError,
    ConfigValueError,
    ProtocolError,
    WireFormatError,
)
from securefl.models import get_flat, set_flat
from securefl.privacy.calibration import noise_multiplier_for
from securefl.privacy.client_dp import AdaptiveClipper
from securefl.privacy.events import FEDERATION
from securefl.privacy.ledger import PrivacyLedger
from securefl.privacy.noise import SecureRNG
from securefl.protections.base import ClientLike, Exchange, GlobalMessage, Plaintext, ServerProtection
from securefl.server_opt import make_server_optimizer
from securefl.transport import wire

__all__ = ["CONTRACT_KEYS", "COUNT_REASON", "FEDERATION", "RoundResult", "SecureServer", "release_round"]


@dataclass
class RoundResult:
    """Metrics of one round as the server knows them; metrics.json holds their
    publishable form, :meth:`SecureServer.release`."""

    round: int
    accuracy: float | None
    loss: float
    epsilon: float | None
    bytes_up: int
    bytes_down: int
    seconds: float
    participants: int
    refused: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    epsilon_rdp: float | None = None
    clip: float | None = None
    aborted: str | None = None
    protection: dict[str, Any] = field(default_factory=dict)
    #: simulated time and staleness (asynchronous buffers, or a latency model)
    schedule: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        row = dict(self.__dict__)
        if not row["schedule"]:
            del row["schedule"]
        return row


#: protection statistics fixed by the run's settings, whoever takes part in a round
COHORT_FREE_STATS = frozenset(
    {
        "preset",
        "encryption",
        "poly_modulus_degree",
        "coeff_mod_bit_sizes",
        "scale_bits",
        "ciphertexts_per_client",
        "clip",
        "bits",
        "float32_bytes",
    }
)
#: why DP-FedAvg releases no exact count (McMahan et al. 2018 divide by the expected one)
COUNT_REASON = "follows exactly from the number of participants, which DP-FedAvg does not release"
#: keys of a round row the metrics contract requires (withheld ones are kept as null)
CONTRACT_KEYS = ("round", "accuracy", "loss", "epsilon", "bytes_up", "bytes_down", "seconds")


def release_round(row: dict[str, Any], *, expected_clients: float) -> dict[str, Any]:
    """A round row as DP-FedAvg may publish it: nothing the client-level guarantee
    does not cover. ``participants`` becomes the expected count ``q N`` (the fixed
    denominator, marked ``participants_released="expected"``); refused/dropped lists,
    byte counts and wall time (all grow with the count), cohort-dependent protection
    statistics and abort details are withheld: null where :data:`CONTRACT_KEYS`
    require the key, absent otherwise, and each is named with its reason in
    ``withheld``."""
    out = dict(row)
    withheld: list[dict[str, str]] = []

    def withhold(key: str, reason: str = COUNT_REASON) -> None:
        if key in out:
            if key in CONTRACT_KEYS:
                out[key] = None
            else:
                del out[key]
            withheld.append({"field": key, "reason": reason})

    for key in ("refused", "dropped", "bytes_up", "bytes_down"):
        withhold(key)
    withhold("seconds", "wall time grows with the number of participants")
    withhold("schedule", "simulated arrival times and staleness depend on who took part")
    out["participants"] = float(expected_clients)
    out["participants_released"] = "expected"
    stats = dict(out.get("protection") or {})
    hidden = sorted(k for k in stats if k not in COHORT_FREE_STATS)
    out["protection"] = {k: v for k, v in stats.items() if k in COHORT_FREE_STATS}
    withheld += [{"field": f"protection.{k}", "reason": "depends on who took part in the round"} for k in hidden]
    if out.get("aborted"):
        out["aborted"] = "aborted"
        withheld.append({"field": "aborted", "reason": "the abort reason may state counts of clients"})
    out["withheld"] = withheld
    return out


class SecureServer:
    """Coordinates federated rounds over clients that speak bytes.

    Args:
        model: the released global model (updated in place after each successful round;
            with ``config.ema`` it holds the moving average of the iterates).
        config: rounds, sampling, aggregation and server optimizer.
        dp: privacy settings; ``dp.mode is DPMode.CLIENT`` wraps the aggregation in DP-FedAvg.
        num_clients: size of the population (for the client-level sampling rate).
        protection: the server half of the clients' protection.
        ledger: where client-level spend is recorded (subject ``"federation"``).
        eval_data: ``(x, y)`` held-out data for per-round evaluation.
        task: ``"classification"`` or ``"regression"``.
        rng: secure randomness for client sampling and central noise.
        reference: ``(weights, round) -> update`` on the server's own root dataset, for
            aggregators that need one (FLTrust; see :mod:`securefl.aggregation.root`).
        noise_multiplier: client-level DP's z when the caller solved it
            (:mod:`securefl.build` does); otherwise it is solved here by the same
            function, :func:`securefl.privacy.calibration.noise_multiplier_for`.
        cohort: the buffer size K of asynchronous aggregation (:mod:`securefl.fedbuff`):
            client-level DP's denominator, with sampling rate 1 in the accounting.
    """

    #: the round's traffic; a networked transport substitutes a subclass that delivers
    #: each stage's messages concurrently (:meth:`Exchange.send_many`)
    exchange_type: Callable[..., Exchange] = Exchange
    #: sample-level DP with ledgers on the clients' machines: ``() -> (epsilon,
    #: epsilon_rdp)`` from the spend the clients report (None: read ``ledger``)
    spend_report: Callable[[], tuple[float | None, float | None]] | None = None

    def __init__(
        self,
        model: nn.Module,
        *,
        config: ServerConfig = ServerConfig(),
        dp: DPConfig = DPConfig(),
        num_clients: int,
        protection: ServerProtection | None = None,
        ledger: PrivacyLedger | None = None,
        eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        task: str = "classification",
        rng: SecureRNG | None = None,
        reference: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        noise_multiplier: float | None = None,
        cohort: int | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.dp = dp
        self.num_clients = num_clients
        self.protection = protection or Plaintext()
        self._set_up = False
        self.ledger = ledger or PrivacyLedger(None, delta=dp.delta, budget=dp.epsilon, accountant=dp.accountant)
        self.eval_data = eval_data
        self.task = task
        self.rng = rng or SecureRNG()
        self.weights = get_flat(model)
        #: the released model's weights: ``weights`` itself, or its moving average
        self.released = self.weights.clone()
        self.optimizer = make_server_optimizer(
            config.server_opt, lr=config.server_lr, momentum=config.server_momentum
        )
        if config.aggregator not in SUM_COMPATIBLE and not self.protection.sees_individual_updates:
            raise ConfigValueError(
                "aggregator",
                config.aggregator,
                f"needs individual updates, which protect={self.protection.name!r} hides from the server; "
                "under a protection use aggregator 'mean' with client-side norm bounding or DP",
            )
        self.reference = reference
        self.previous_update: torch.Tensor | None = None
        #: indices of the clients the last synchronous round sampled
        self.last_sample: list[int] = []
        # an asynchronous buffer of ``cohort`` arrivals is no secret Poisson sample:
        # DP-FedAvg then divides by the buffer size and claims no amplification
        self.client_rate = config.fraction if cohort is None else 1.0
        self.expected_clients = max(1e-12, config.fraction * num_clients) if cohort is None else float(cohort)
        self.aggregation = self._aggregation(noise_multiplier)
        if "reference" in self.aggregator.needs and reference is None:
            raise ConfigValueError(
                "aggregator", config.aggregator, "needs a server root dataset: pass reference=RootReference(...)"
            )

    def _aggregation(self, noise_multiplier: float | None) -> RoundAggregation:
        """The configured rule, wrapped in DP-FedAvg under client-level DP."""
        plain = PlainAggregation(make_aggregator(self.config.aggregator, self.config))
        if self.dp.mode is not DPMode.CLIENT:
            return plain
        if noise_multiplier is None:
            noise_multiplier = noise_multiplier_for(self.dp, sample_rate=self.client_rate, steps=self.config.rounds)
        return DPFedAvg(
            plain,
            dp=self.dp,
            noise_multiplier=noise_multiplier,
            sample_rate=self.client_rate,
            expected_clients=self.expected_clients,
            ledger=self.ledger,
            rng=self.rng,
            # with distributed noise the clients' shares already sum to at least
            # N(0, (z S)^2) (securefl.crypto.secagg); the server adds none
            distributed_noise=self.protection.distributed_noise,
        )

    # ------------------------------------------------------------ client-level DP state
    @property
    def aggregator(self) -> Callable[..., torch.Tensor]:
        """The bound aggregation rule (:class:`~securefl.aggregation.BoundAggregator`)."""
        return self.aggregation.rule

    @aggregator.setter
    def aggregator(self, rule: Callable[..., torch.Tensor]) -> None:
        self.aggregation.rule = rule

    @property
    def clip(self) -> float:
        """The client-level clip S of the next round (``dp.clip`` without client-level DP)."""
        return self.dp.clip if self.aggregation.clip is None else self.aggregation.clip

    @property
    def noise_multiplier(self) -> float | None:
        """DP-FedAvg's z (None without client-level DP)."""
        return getattr(self.aggregation, "noise_multiplier", None)

    @property
    def update_noise_multiplier(self) -> float | None:
        return getattr(self.aggregation, "update_noise_multiplier", None)

    @property
    def clipper(self) -> AdaptiveClipper | None:
        return getattr(self.aggregation, "clipper", None)

    # ------------------------------------------------------------ sampling
    def sample(self) -> list[int]:
        """Indices of this round's clients: a fixed fraction, or Poisson with rate q."""
        n, q = self.num_clients, self.config.fraction
        if self.config.sampling == "poisson":
            return [int(i) for i in range(n) if self.rng.uniform(1)[0] < q]
        return self.rng.sample(n, max(1, round(q * n)))

    def draw_dropouts(self, chosen: Sequence[ClientLike]) -> dict[str, int]:
        """Simulated dropouts: each chosen client vanishes with probability
        ``config.dropout``, at a stage drawn uniformly among the protocol's."""
        p = self.config.dropout
        if p <= 0:
            return {}
        stages = max(1, int(self.protection.stages))
        return {c.client_id: 1 + self.rng.below(stages) for c in chosen if self.rng.uniform(1)[0] < p}

    # ------------------------------------------------------------ one round
    def global_message(
        self, round_: int, weights: torch.Tensor | None = None, extra: dict[str, Any] | None = None
    ) -> bytes:
        """The GLOBAL_MODEL message of ``round_``: the current weights (or ``weights``,
        an earlier version, for an asynchronous client) with the round's header."""
        header: dict[str, Any] = {"round": round_, "dim": int(self.weights.numel()), **self.aggregation.header()}
        payload = self.weights if weights is None else weights
        return wire.encode(wire.Kind.GLOBAL_MODEL, {**header, **(extra or {})}, wire.vector_to_bytes(payload))

    def run_round(self, round_: int, clients: Sequence[ClientLike]) -> RoundResult:
        """Sample, broadcast, collect, aggregate, step, evaluate."""
        self.last_sample = self.sample()
        chosen = [clients[i] for i in self.last_sample]
        return self.run_cohort(round_, clients, chosen, self.global_message(round_))

    def run_cohort(
        self, round_: int, clients: Sequence[ClientLike], chosen: Sequence[ClientLike], down: GlobalMessage
    ) -> RoundResult:
        """One aggregation over ``chosen`` (a sampled round, or an asynchronous buffer
        whose members each get their own GLOBAL_MODEL in ``down``): collect,
        aggregate, step, evaluate. ``clients`` is the federation (for the set-up)."""
        t0 = time.perf_counter()
        setup_up, setup_down = self._setup(clients)
        exchange = self.exchange_type(round_, self.draw_dropouts(chosen))
        dim = int(self.weights.numel())
        clip_used = self.aggregation.clip
        epsilon = epsilon_rdp = aborted = agg = None
        try:
            # a DP mechanism runs every round, even with no participants; its
            # spend is on disk before anything is released
            epsilon, epsilon_rdp = self.aggregation.charge(round_)
            agg = self.protection.aggregate(chosen, down, dim, exchange)
            update = self.aggregation.aggregate(agg, dim, lambda: self._aggregation_context(round_))
            if update is not None:
                self._apply(update)
        except (AggregationError, WireFormatError, ProtocolError, BudgetExhaustedError) as exc:
            # nothing from a round that fails validation (or that the budget no
            # longer covers) reaches the global model
            aborted = f"{type(exc).__name__}: {exc}"
        if self.dp.mode is DPMode.SAMPLE:
            # clients report no epsilon (it is a function of their data): read the ledger
            epsilon, epsilon_rdp = self._sample_epsilon()
        acc, loss = self.evaluate()
        return RoundResult(
            round=round_,
            accuracy=acc,
            loss=loss,
            epsilon=epsilon,
            bytes_up=exchange.bytes_up + setup_up,
            bytes_down=exchange.bytes_down + setup_down,
            seconds=time.perf_counter() - t0,
            participants=agg.count if agg is not None else 0,
            refused=exchange.refused,
            dropped=exchange.dropped,
            epsilon_rdp=epsilon_rdp,
            clip=clip_used,
            aborted=aborted,
            protection=dict(agg.stats) if agg is not None else {},
        )

    def _setup(self, clients: Sequence[ClientLike]) -> tuple[int, int]:
        """The protection's one-off set-up before the first round; its bytes (up, down)."""
        if self._set_up:
            return 0, 0
        setup = self.exchange_type(0)
        self.protection.setup(clients, setup)
        self._set_up = True
        return setup.bytes_up, setup.bytes_down

    def _apply(self, update: torch.Tensor) -> None:
        """Step the server optimizer with a validated update and release the result."""
        if not torch.isfinite(update).all():
            raise AggregationError("aggregate is not finite")
        self.weights = self.optimizer.step(self.weights, update)
        self.previous_update = update
        beta = self.config.ema
        self.released = beta * self.released + (1 - beta) * self.weights if beta else self.weights
        set_flat(self.model, self.released)

    def _sample_epsilon(self) -> tuple[float | None, float | None]:
        """Sample-level DP: the largest client spend recorded in this server's ledger
        (the shared ledger in a simulation; None if it holds no client entries), or,
        where the ledgers stay on the clients' machines, what ``spend_report`` returns."""
        if self.spend_report is not None:
            return self.spend_report()
        spent = [self.ledger.spent(s) for s in self.ledger.subjects() if s != FEDERATION]
        if not spent:
            return None, None
        return max(s.get(self.dp.accountant) for s in spent), max(s.rdp for s in spent)

    def release(self, result: RoundResult) -> dict[str, Any]:
        """The publishable form of ``result`` (a metrics.json row); see :func:`release_round`."""
        row = result.as_dict()
        if not self.aggregation.hides_participants:
            return row
        return release_round(row, expected_clients=self.expected_clients)

    def _aggregation_context(self, round_: int) -> dict[str, torch.Tensor | None]:
        """What the round's aggregator needs besides the updates (AGGREGATOR_CONTEXT)."""
        ctx: dict[str, torch.Tensor | None] = {}
        if "reference" in self.aggregator.needs:
            assert self.reference is not None  # checked at construction
            ctx["reference"] = self.reference(self.weights, round_)
        if "previous" in self.aggregator.needs:
            ctx["previous"] = self.previous_update
        return ctx

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> tuple[float | None, float]:
        """Accuracy (classification; None for regression) and mean loss on eval data."""
        if self.eval_data is None:
            return None, float("nan")
        x, y = self.eval_data
        self.model.eval()
        out = self.model(x)
        if self.task == "classification":
            return float((out.argmax(1) == y).float().mean()), float(F.cross_entropy(out, y))
        return None, float(F.mse_loss(out, y))
