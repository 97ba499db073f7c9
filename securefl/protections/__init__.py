"""Update protections: the seam where plaintext, CKKS and secure aggregation plug in.

* :mod:`.base`: the two halves (:class:`ClientProtection`, :class:`ServerProtection`),
  what the server learns (:class:`AggregateInput`), the round's traffic
  (:class:`Exchange`) and the plaintext baseline (:class:`Plaintext`);
* :mod:`.registry`: ``--protect NAME`` -> :class:`ProtectionSpec`, whose factories
  take the protection's own settings object;
* :mod:`.ckks`, :mod:`.ckks_client`, :mod:`.ckks_server`: CKKS-encrypted sums;
* :mod:`.secagg`: secure aggregation (the protocol state machines are in
  :mod:`securefl.crypto.secagg`).
"""

from securefl.protections.base import (
    AggregateInput,
    ClientLike,
    ClientProtection,
    Exchange,
    Plaintext,
    ServerProtection,
)
from securefl.protections.registry import PROTECTIONS, ProtectionSpec, register

__all__ = [
    "PROTECTIONS",
    "AggregateInput",
    "ClientLike",
    "ClientProtection",
    "Exchange",
    "Plaintext",
    "ProtectionSpec",
    "ServerProtection",
    "register",
]
