"""The registry of protections: ``--protect NAME`` -> a :class:`ProtectionSpec`.

A spec's factories build the two halves from the protection's own frozen
settings object (``None`` for plaintext, :class:`~securefl.protections.ckks.CKKSSettings`,
:class:`~securefl.crypto.secagg.common.SecAggSettings`), never from a whole run
configuration: :mod:`securefl.build` derives the settings from a
:class:`~securefl.config.RunConfig`. The CKKS and secure-aggregation modules are
imported only when their factory is called (TenSEAL loads only when used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from securefl.config import PROTECT_NAMES
from securefl.exceptions import ConfigValueError
from securefl.protections.base import ClientProtection, Plaintext, ServerProtection

__all__ = ["PROTECTIONS", "ProtectionSpec", "register"]


@dataclass(frozen=True)
class ProtectionSpec:
    """How to build both halves of a protection.

    ``client(settings, client_id, rng, identity=..., roster=..., guard=...)`` and
    ``server(settings, rng, roster=...)`` receive the protection's settings object.
    ``rng`` is for DP noise only (it is seeded under ``reproducible_noise``); keys,
    masks, shares, nonces and rounding always come from the OS CSPRNG. ``identity``
    is the client's long-term signing key, ``roster`` the members pinned out of band
    (:mod:`securefl.crypto.identity`), ``guard`` the client's round memory
    (:mod:`securefl.crypto.replay`), shared with its :class:`~securefl.client.SecureClient`.
    """

    client: Callable[..., ClientProtection]
    server: Callable[..., ServerProtection]


def _plaintext_client(settings: Any, client_id: str, rng: Any, **party: Any) -> ClientProtection:
    return Plaintext()


def _plaintext_server(settings: Any, rng: Any, **party: Any) -> ServerProtection:
    return Plaintext()


def _ckks_client(settings: Any, client_id: str, rng: Any, **party: Any) -> ClientProtection:
    """The CKKS client half (``rng``, the DP noise stream, is not used: CKKS adds no
    DP noise, and its flooding noise always comes from the OS)."""
    from securefl.protections.ckks_client import CKKSClient  # lazy: TenSEAL loads only when used

    return CKKSClient(client_id=client_id, settings=settings, **party)


def _ckks_server(settings: Any, rng: Any, **party: Any) -> ServerProtection:
    from securefl.protections.ckks_server import CKKSServer

    return CKKSServer(settings=settings, **party)


def _secagg_client(settings: Any, client_id: str, rng: Any, **party: Any) -> ClientProtection:
    """The secure-aggregation client half; ``rng`` draws the distributed-DP noise
    share and nothing else."""
    from securefl.protections.secagg import SecAggClientProtection

    return SecAggClientProtection(client_id=client_id, settings=settings, rng=rng, **party)


def _secagg_server(settings: Any, rng: Any, **party: Any) -> ServerProtection:
    """The server half; it draws no noise (``rng`` is unused: the SecAgg+ graph comes
    from the OS CSPRNG)."""
    from securefl.protections.secagg import SecAggServerProtection

    return SecAggServerProtection(settings=settings, **party)


PROTECTIONS: dict[str, ProtectionSpec] = {
    "none": ProtectionSpec(client=_plaintext_client, server=_plaintext_server),
    "ckks": ProtectionSpec(client=_ckks_client, server=_ckks_server),
    "secagg": ProtectionSpec(client=_secagg_client, server=_secagg_server),
}


def register(name: str, spec: ProtectionSpec) -> None:
    """Add a protection under ``name``: ``--protect NAME`` and
    ``RunConfig(protect=NAME)`` accept it from then on. Give
    :func:`securefl.build.register_settings` the function that derives its settings
    from a run configuration (plaintext-like protections need none)."""
    if not isinstance(name, str) or not name or name in PROTECTIONS:
        raise ConfigValueError("protect", name, "must be a new, non-empty name")
    if not isinstance(spec, ProtectionSpec):
        raise ConfigValueError("protect", name, "needs a ProtectionSpec")
    PROTECTIONS[name] = spec
    PROTECT_NAMES.append(name)
