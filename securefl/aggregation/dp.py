"""Client-level DP as a wrapper around aggregation: DP-FedAvg.

DP-FedAvg (McMahan, Ramage, Talwar and Zhang, ICLR 2018) wraps a sum-compatible
aggregation (the weighted mean): every update is clipped to L2 norm ``S`` (by the
server as well, wherever it sees individual updates, since a malicious client
would not clip), Gaussian noise N(0, (z S)^2) is added to the sum, and the sum is
divided by the *expected* number of participants ``m = q N`` instead of the
actual one. With distributed noise the clients' shares already sum to at least
that noise (:mod:`securefl.crypto.secagg`) and the wrapper adds none. With
adaptive clipping (Andrew et al. 2021) ``S`` follows a private estimate of the
target quantile of update norms.

The mechanism runs every round, participants or not, and its cost is in the
ledger (subject :data:`~securefl.privacy.events.FEDERATION`) before anything of
the round is released.
"""

from __future__ import annotations

from typing import Any

import torch

from securefl.aggregation.strategy import Context, Contributions, PlainAggregation, RoundAggregation
from securefl.config import DPConfig
from securefl.exceptions import ConfigValueError
from securefl.privacy.client_dp import AdaptiveClipper, clip_update, noisy_average, update_noise_multiplier
from securefl.privacy.events import FEDERATION, Mechanism
from securefl.privacy.ledger import PrivacyLedger
from securefl.privacy.noise import SecureRNG

__all__ = ["DPFedAvg"]


class DPFedAvg(RoundAggregation):
    """DP-FedAvg around ``inner`` (which must work from the weighted sum).

    Args:
        inner: the aggregation it wraps; DP-FedAvg keeps its sum and replaces the
            denominator by the expected number of participants.
        dp: the run's privacy settings (clip, accountant, adaptive clipping).
        noise_multiplier: z, solved from the budget by
            :func:`securefl.privacy.calibration.noise_multiplier_for`.
        sample_rate: the Poisson rate q at which clients take part.
        expected_clients: m = q N.
        ledger: where each round's spend is recorded before release.
        rng: the secure generator of the central noise and the clip updates.
        distributed_noise: the clients add the noise in shares; the wrapper adds none.
    """

    hides_participants = True

    def __init__(
        self,
        inner: PlainAggregation,
        *,
        dp: DPConfig,
        noise_multiplier: float,
        sample_rate: float,
        expected_clients: float,
        ledger: PrivacyLedger,
        rng: SecureRNG,
        distributed_noise: bool = False,
    ) -> None:
        if not inner.sum_compatible:
            raise ConfigValueError(
                "aggregator", inner.name, "DP-FedAvg calibrates its noise to the sum of clipped updates; use 'mean'"
            )
        self.inner, self.rule = inner, inner.rule
        self.accountant = dp.accountant
        self.clip = float(dp.clip)
        self.sample_rate = sample_rate
        self.expected_clients = expected_clients
        self.ledger, self.rng = ledger, rng
        self.distributed_noise = distributed_noise
        self._prepaid: list[dict[str, Any]] = []
        self.noise_multiplier = float(noise_multiplier)
        #: the noise multiplier of the update sum (smaller than z when adaptive
        #: clipping spends part of the budget on the unclipped count)
        self.update_noise_multiplier = self.noise_multiplier
        self.clipper: AdaptiveClipper | None = None
        if dp.adaptive_clip:
            sigma_b = dp.clip_count_stddev or max(expected_clients / 20.0, self.noise_multiplier)
            self.update_noise_multiplier = update_noise_multiplier(self.noise_multiplier, sigma_b)
            self.clipper = AdaptiveClipper(
                dp.clip, target_quantile=dp.target_quantile, lr=dp.clip_lr, count_stddev=sigma_b,
                expected_clients=expected_clients,
            )

    def header(self) -> dict[str, Any]:
        return {"client_clip": self.clip}

    def prepay(self, entries: list[dict[str, Any]]) -> None:
        """Charges a killed run recorded for rounds whose noisy aggregate it never
        released; each covers one later round of the resumed run instead of a new
        entry. Only for central noise: the server that adds the noise saw nothing
        else, so the unreleased result cost nothing. With distributed noise the
        server has seen each noisy sum, so every round is charged anew."""
        if self.distributed_noise:
            return
        self._prepaid = [e for e in entries if e.get("mechanism") == Mechanism.DP_FEDAVG.value]

    def charge(self, round_: int) -> tuple[float | None, float | None]:
        if self._prepaid:
            entry = self._prepaid.pop(0)
            return entry["epsilon"][self.accountant], entry["epsilon"]["rdp"]
        entry = self.ledger.record(
            subject=FEDERATION,
            round=round_,
            mechanism=Mechanism.DP_FEDAVG,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=1,
        )
        return entry["epsilon"][self.accountant], entry["epsilon"]["rdp"]

    def aggregate(self, contributions: Contributions | None, dim: int, context: Context) -> torch.Tensor:
        """(sum of clipped updates + noise) / m; then the clip moves, if adaptive."""
        update = noisy_average(
            self.clipped_total(contributions, dim),
            noise_multiplier=0.0 if self.distributed_noise else self.update_noise_multiplier,
            clip=self.clip,
            denominator=self.expected_clients,
            rng=self.rng,
        )
        if self.clipper is not None:
            unclipped = contributions.aux.get("unclipped", 0.0) if contributions is not None else 0.0
            self.clip = self.clipper.update(unclipped, self.rng)
        return update

    def clipped_total(self, contributions: Contributions | None, dim: int) -> torch.Tensor:
        """The sum of clipped updates. Where the server sees individual updates it
        enforces the clip itself instead of trusting clients to have clipped; the
        number it had to clip is reported in the round's stats as ``server_clipped``."""
        c = contributions
        if c is None:
            return torch.zeros(dim)
        if c.individual is None:
            return c.total
        clipped = [clip_update(u * wt, self.clip) for u, wt in c.individual]
        c.stats["server_clipped"] = sum(1 for _, norm in clipped if norm > self.clip * (1 + 1e-6))
        return torch.stack([u for u, _ in clipped]).sum(0) if clipped else torch.zeros(dim)
