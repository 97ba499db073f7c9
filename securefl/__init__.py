"""securefl: privacy-hardened federated learning.

Entry points: :class:`~securefl.client.SecureClient`,
:class:`~securefl.server.SecureServer`, :class:`~securefl.simulation.Simulation`,
the configs in :mod:`securefl.config`, and the ``securefl`` command.
"""

__version__ = "0.1.0"

from securefl.client import SecureClient
from securefl.config import ClientConfig, DPConfig, RunConfig, ServerConfig
from securefl.privacy.ledger import PrivacyLedger
from securefl.server import SecureServer
from securefl.simulation import Simulation

__all__ = [
    "ClientConfig",
    "DPConfig",
    "PrivacyLedger",
    "RunConfig",
    "SecureClient",
    "SecureServer",
    "ServerConfig",
    "Simulation",
    "__version__",
]
