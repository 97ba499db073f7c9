"""securefl: privacy-hardened federated learning.

Entry points: :class:`~securefl.simulation.Simulation` (run a
:class:`~securefl.config.RunConfig` in this process), `securefl.build_federation` (:func:`securefl.build.build`,
the composition root it runs: a config -> clients, server and protection),
:class:`~securefl.client.SecureClient` and :class:`~securefl.server.SecureServer`
(to compose by hand), and the ``securefl`` command.

The extension seam for a new protection: subclass :class:`ClientProtection` and
:class:`ServerProtection`, give their factories a frozen settings object, and
register both (:func:`securefl.protections.register` with a :class:`ProtectionSpec`,
:func:`securefl.build.register_settings` for the settings). The built-in settings
are :class:`CKKSSettings` and :class:`SecAggSettings`.
"""

__version__ = "0.1.0"

from securefl.build import Federation, NoisePlan, register_settings
from securefl.build import build as build_federation
from securefl.build import check as check_config
from securefl.client import SecureClient
from securefl.config import ClientConfig, DPConfig, DPMode, ProtectConfig, RunConfig, ServerConfig
from securefl.crypto.secagg.common import SecAggSettings
from securefl.defaults import config_with_dp_defaults, with_dp_defaults
from securefl.privacy.ledger import PrivacyLedger
from securefl.protections import (
    AggregateInput,
    ClientProtection,
    Exchange,
    Plaintext,
    ProtectionSpec,
    ServerProtection,
    register,
)
from securefl.protections.ckks import CKKSSettings
from securefl.server import SecureServer
from securefl.simulation import Simulation

__all__ = [
    "AggregateInput",
    "CKKSSettings",
    "ClientConfig",
    "ClientProtection",
    "DPConfig",
    "DPMode",
    "Exchange",
    "Federation",
    "NoisePlan",
    "Plaintext",
    "PrivacyLedger",
    "ProtectConfig",
    "ProtectionSpec",
    "RunConfig",
    "SecAggSettings",
    "SecureClient",
    "SecureServer",
    "ServerConfig",
    "ServerProtection",
    "Simulation",
    "__version__",
    "build_federation",
    "check_config",
    "config_with_dp_defaults",
    "register",
    "register_settings",
    "with_dp_defaults",
]
