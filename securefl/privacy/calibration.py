"""Where a privacy budget becomes a noise multiplier: :func:`noise_multiplier_for`.

``--epsilon`` means one thing per mechanism: the budget of each client over the
run (sample-level DP-SGD) or of the federation (client-level DP-FedAvg, with its
noise added centrally or in shares by the clients). Either way the mechanism is a
Poisson-subsampled Gaussian run ``steps`` times at ``sample_rate``, and the noise
multiplier is the smallest one whose composition stays within ``epsilon`` at
``delta`` under the run's accountant. Every path that needs one (the composition
root :mod:`securefl.build`, and a :class:`~securefl.client.SecureClient` or
:class:`~securefl.server.SecureServer` built by hand) asks this function, so
the budget is solved in one place.
"""

from __future__ import annotations

from securefl.config import DPConfig
from securefl.exceptions import ConfigValueError
from securefl.privacy import accounting
from securefl.privacy.events import SelfComposedEvent, sampled_gaussian

__all__ = ["noise_multiplier_for", "planned_event"]


def noise_multiplier_for(dp: DPConfig, *, sample_rate: float, steps: int) -> float:
    """The noise multiplier of a mechanism run ``steps`` times at ``sample_rate``:
    ``dp.noise_multiplier`` when set, else the one solved from ``dp.epsilon``."""
    if dp.noise_multiplier is not None:
        return float(dp.noise_multiplier)
    if dp.epsilon is None:
        raise ConfigValueError("epsilon", None, f"dp={dp.dp!r} needs --epsilon or --noise-multiplier")
    return float(accounting.solve_noise_multiplier(dp.epsilon, dp.delta, sample_rate, steps, dp.accountant))


def planned_event(dp: DPConfig, *, sample_rate: float, steps: int) -> SelfComposedEvent:
    """The whole planned run of the mechanism as a typed event (its noise multiplier
    from :func:`noise_multiplier_for`)."""
    return sampled_gaussian(noise_multiplier_for(dp, sample_rate=sample_rate, steps=steps), sample_rate, steps)
