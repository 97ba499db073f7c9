"""The typed vocabulary of what securefl's DP mechanisms do, in the spirit of
``dp_accounting``'s ``DpEvent``: a mechanism run is a value, not a string, and the
accountants (:mod:`securefl.privacy.accounting`) price values.

* :class:`Mechanism` names what ran, as the ledger records it: DP-SGD on one
  client's records (sample-level) or one round of DP-FedAvg over clients
  (client-level, central or distributed noise);
* :class:`GaussianEvent`, :class:`PoissonSampledEvent` and
  :class:`SelfComposedEvent` describe what it cost: ``count`` runs of a Gaussian
  mechanism of noise multiplier ``z`` on a Poisson sample of rate ``q``, whose
  :meth:`~SelfComposedEvent.history` is the ``((z, q, count),)`` an accountant takes.

The DP modes a run asks for (``--dp``) are :class:`securefl.config.DPMode`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from securefl.exceptions import ConfigValueError
from securefl.validators import is_int, is_number

__all__ = ["FEDERATION", "GaussianEvent", "Mechanism", "PoissonSampledEvent", "SelfComposedEvent", "sampled_gaussian"]

#: the ledger subject of client-level mechanisms (the federation as a whole)
FEDERATION = "federation"


class Mechanism(str, enum.Enum):
    """A DP mechanism as the ledger names it."""

    DP_SGD = "dp-sgd"  #: sample-level: DP-SGD steps on one client's records
    DP_FEDAVG = "dp-fedavg"  #: client-level: one round of DP-FedAvg over the federation

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class GaussianEvent:
    """The Gaussian mechanism with noise ``noise_multiplier`` times the sensitivity."""

    noise_multiplier: float

    def __post_init__(self) -> None:
        if not is_number(self.noise_multiplier) or not 0 <= self.noise_multiplier < math.inf:
            raise ConfigValueError("noise_multiplier", self.noise_multiplier, "must be a finite number >= 0")


@dataclass(frozen=True)
class PoissonSampledEvent:
    """``event`` run on a Poisson sample that holds each record (or client) with
    probability ``sample_rate``."""

    sample_rate: float
    event: GaussianEvent

    def __post_init__(self) -> None:
        if not is_number(self.sample_rate) or not 0 < self.sample_rate <= 1:
            raise ConfigValueError("sample_rate", self.sample_rate, "must be in (0, 1]")


@dataclass(frozen=True)
class SelfComposedEvent:
    """``count`` independent runs of ``event``."""

    event: PoissonSampledEvent
    count: int

    def __post_init__(self) -> None:
        if not is_int(self.count) or self.count < 1:
            raise ConfigValueError("steps", self.count, "must be an integer >= 1")

    def history(self) -> tuple[tuple[float, float, int], ...]:
        """The accountants' form: ``((noise_multiplier, sample_rate, count),)``."""
        return ((float(self.event.event.noise_multiplier), float(self.event.sample_rate), int(self.count)),)


def sampled_gaussian(noise_multiplier: float, sample_rate: float, steps: int) -> SelfComposedEvent:
    """``steps`` runs of a Poisson-subsampled Gaussian mechanism."""
    return SelfComposedEvent(PoissonSampledEvent(sample_rate, GaussianEvent(noise_multiplier)), steps)
