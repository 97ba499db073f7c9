"""SecureServer: rounds, client sampling, aggregation, server optimizer, evaluation.

The server only ever handles bytes from clients and opens them through the
round's :class:`~securefl.protect.ServerProtection`. It never trusts an aggregate it
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
from securefl.config import DPConfig, ServerConfig
from securefl.exceptions import AggregationError, ConfigValueError, ProtocolError, WireFormatError
from securefl.models import get_flat, set_flat
from securefl.privacy.client_dp import (
    AdaptiveClipper,
    clip_update,
    noisy_average,
    resolve_noise_multiplier,
    update_noise_multiplier,
)
from securefl.privacy.ledger import PrivacyLedger
from securefl.privacy.noise import SecureRNG
from securefl.protect import ClientLike, Exchange, Plaintext, ServerProtection
from securefl.server_opt import make_server_optimizer
from securefl.transport import wire

FEDERATION = "federation"


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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
        dp: privacy settings; ``dp.dp == "client"`` makes the server run DP-FedAvg.
        num_clients: size of the population (for the client-level sampling rate).
        protection: the server half of the clients' protection.
        ledger: where client-level spend is recorded (subject ``"federation"``).
        eval_data: ``(x, y)`` held-out data for per-round evaluation.
        task: ``"classification"`` or ``"regression"``.
        rng: secure randomness for client sampling and central noise.
        reference: ``(weights, round) -> update`` on the server's own root dataset, for
            aggregators that need one (FLTrust; see :mod:`securefl.aggregation.root`).
    """

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
        self.aggregator = make_aggregator(config.aggregator, config)
        self.reference = reference
        self.previous_update: torch.Tensor | None = None
        if "reference" in self.aggregator.needs and reference is None:
            raise ConfigValueError(
                "aggregator", config.aggregator, "needs a server root dataset: pass reference=RootReference(...)"
            )
        # client-level DP (DP-FedAvg)
        self.client_rate = config.fraction
        self.expected_clients = max(1e-12, config.fraction * num_clients)
        self.noise_multiplier: float | None = None
        self.update_noise_multiplier: float | None = None
        self.clipper: AdaptiveClipper | None = None
        self.clip = dp.clip
        if dp.dp == "client":
            z = resolve_noise_multiplier(dp, sample_rate=self.client_rate, rounds=config.rounds)
            self.noise_multiplier = z
            self.update_noise_multiplier = z
            if dp.adaptive_clip:
                sigma_b = dp.clip_count_stddev or max(self.expected_clients / 20.0, z)
                self.update_noise_multiplier = update_noise_multiplier(z, sigma_b)
                self.clipper = AdaptiveClipper(
                    dp.clip,
                    target_quantile=dp.target_quantile,
                    lr=dp.clip_lr,
                    count_stddev=sigma_b,
                    expected_clients=self.expected_clients,
                )

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
    def global_message(self, round_: int) -> bytes:
        header: dict[str, Any] = {"round": round_, "dim": int(self.weights.numel())}
        if self.dp.dp == "client":
            header["client_clip"] = self.clip
        return wire.encode(wire.Kind.GLOBAL_MODEL, header, wire.vector_to_bytes(self.weights))

    def run_round(self, round_: int, clients: Sequence[ClientLike]) -> RoundResult:
        """Sample, broadcast, collect, aggregate, step, evaluate."""
        t0 = time.perf_counter()
        if not self._set_up:
            setup = Exchange(0)
            self.protection.setup(clients, setup)
            self._set_up = True
            setup_up, setup_down = setup.bytes_up, setup.bytes_down
        else:
            setup_up = setup_down = 0
        chosen = [clients[i] for i in self.sample()]
        down = self.global_message(round_)
        exchange = Exchange(round_, self.draw_dropouts(chosen))
        dim = int(self.weights.numel())
        clip_used = self.clip if self.dp.dp == "client" else None
        epsilon = epsilon_rdp = None
        aborted = None
        update = None
        agg = None
        try:
            if self.dp.dp == "client":
                # the mechanism runs every round, even with no participants; its
                # spend is on disk before anything is released
                entry = self.ledger.record(
                    subject=FEDERATION,
                    round=round_,
                    mechanism="dp-fedavg",
                    noise_multiplier=float(self.noise_multiplier or 0.0),
                    sample_rate=self.client_rate,
                    steps=1,
                )
                epsilon, epsilon_rdp = entry["epsilon"][self.dp.accountant], entry["epsilon"]["rdp"]
            agg = self.protection.aggregate(chosen, down, dim, exchange)
            if self.dp.dp == "client":
                # with distributed noise the clients' shares already sum to at least
                # N(0, (z S)^2) (securefl.crypto.secagg); the server adds none
                central = not self.protection.distributed_noise
                update = noisy_average(
                    self._client_dp_total(agg, dim),
                    noise_multiplier=float(self.update_noise_multiplier or 0.0) if central else 0.0,
                    clip=self.clip,
                    denominator=self.expected_clients,
                    rng=self.rng,
                )
                if self.clipper is not None:
                    unclipped = agg.aux.get("unclipped", 0.0) if agg is not None else 0.0
                    self.clip = self.clipper.update(unclipped, self.rng)
            elif agg is not None and agg.count:
                if agg.individual is not None and self.config.aggregator != "mean":
                    stack = torch.stack([u for u, _ in agg.individual])
                    w = torch.tensor([wt for _, wt in agg.individual])
                    update = self.aggregator(stack, w, **self._aggregation_context(round_))
                else:
                    update = agg.total / agg.aux["weight"]
            if update is not None:
                if not torch.isfinite(update).all():
                    raise AggregationError("aggregate is not finite")
                self.weights = self.optimizer.step(self.weights, update)
                self.previous_update = update
                beta = self.config.ema
                self.released = beta * self.released + (1 - beta) * self.weights if beta else self.weights
                set_flat(self.model, self.released)
        except (AggregationError, WireFormatError, ProtocolError) as exc:
            # nothing from a round that fails validation reaches the global model
            aborted = f"{type(exc).__name__}: {exc}"
        if self.dp.dp == "sample":
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

    def _sample_epsilon(self) -> tuple[float | None, float | None]:
        """Sample-level DP: the largest client spend recorded in this server's ledger
        (the shared ledger in a simulation; None if it holds no client entries)."""
        spent = [self.ledger.spent(s) for s in self.ledger.subjects() if s != FEDERATION]
        if not spent:
            return None, None
        return max(s.get(self.dp.accountant) for s in spent), max(s.rdp for s in spent)

    def release(self, result: RoundResult) -> dict[str, Any]:
        """The publishable form of ``result`` (a metrics.json row); see :func:`release_round`."""
        row = result.as_dict()
        if self.dp.dp != "client":
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

    def _client_dp_total(self, agg: Any, dim: int) -> torch.Tensor:
        """DP-FedAvg's sum of clipped updates. Where the server sees individual
        updates it enforces the clip itself instead of trusting clients to have
        clipped (a malicious client would not); the number it had to clip is
        reported in the round's ``protection`` stats as ``server_clipped``."""
        if agg is None:
            return torch.zeros(dim)
        if agg.individual is None:
            return agg.total
        clipped = [clip_update(u * wt, self.clip) for u, wt in agg.individual]
        agg.stats["server_clipped"] = sum(1 for _, norm in clipped if norm > self.clip * (1 + 1e-6))
        return torch.stack([c for c, _ in clipped]).sum(0) if clipped else torch.zeros(dim)

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
