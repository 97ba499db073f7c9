"""Every error securefl raises.

The hierarchy mirrors what a caller can do about an error:

* :class:`ConfigError` and its two concrete forms are raised at construction when
  a value is of the wrong type (:class:`ConfigTypeError`, also a ``TypeError``)
  or out of range (:class:`ConfigValueError`, also a ``ValueError``). Both carry
  ``field`` and ``value`` so the CLI can print one line naming them.
* :class:`PrivacyError` covers budget and accounting failures; a client whose next
  round would exceed its budget raises :class:`BudgetExhaustedError` *before* it
  trains, and the server carries on without it.
* :class:`WireFormatError` is raised for any message that fails its length,
  version or digest checks; nothing from such a message is used.
* :class:`LedgerError` is raised for a ledger that is malformed, tampered with or
  inconsistent.
* :class:`CryptoUsageError` is raised when a cryptographic primitive is called with
  input it refuses (a vector outside the encoding range, a context without the key
  the call needs); :class:`RandomnessError` when the secure generator is (a key
  of the wrong size, an empty range). Both are also ``ValueError``s.
"""

from __future__ import annotations

from typing import Any


class SecureFLError(Exception):
    """Base class of every securefl error."""


class ConfigError(SecureFLError):
    """A configuration value is invalid. ``field`` and ``value`` name it."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {reason} (got {value!r})")


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value has the wrong type."""


class ConfigValueError(ConfigError, ValueError):
    """A configuration value is out of range or not one of the allowed choices."""


class PrivacyError(SecureFLError):
    """Base class of privacy-accounting errors."""


class BudgetExhaustedError(PrivacyError):
    """Training one more round would spend more privacy budget than allowed."""

    def __init__(self, client_id: str, spent: float, would_be: float, budget: float) -> None:
        self.client_id = client_id
        self.spent = spent
        self.would_be = would_be
        self.budget = budget
        super().__init__(
            f"client {client_id}: next round would raise epsilon from {spent:.4f} "
            f"to {would_be:.4f}, above the budget {budget:.4f}; refusing to train"
        )


class AccountingError(PrivacyError):
    """An accountant could not produce a sound bound for the requested parameters."""


class LedgerError(SecureFLError):
    """A privacy ledger is malformed, tampered with or inconsistent."""


class WireFormatError(SecureFLError):
    """A message failed its magic, version, length or digest checks."""


class ProtocolError(SecureFLError):
    """A participant sent something the protocol does not allow at this point."""


class ClientDropout(SecureFLError):
    """A client went away mid-round (raised by a client, or simulated by the
    server's exchange); the protocol carries on without it where it can."""


class AggregationError(SecureFLError):
    """Aggregation could not produce a valid result; the global model is left unchanged."""


class SecAggAbortError(AggregationError):
    """Secure aggregation lost too many clients: fewer than ``threshold`` remained
    at ``stage``, so the round is aborted and nothing further is revealed."""

    def __init__(self, survivors: int, threshold: int, stage: str) -> None:
        self.survivors = survivors
        self.threshold = threshold
        self.stage = stage
        super().__init__(
            f"secure aggregation aborted at the {stage} stage: {survivors} clients left, "
            f"fewer than the {threshold} needed (share threshold or min_clients)"
        )


class CKKSParameterError(ConfigValueError):
    """A CKKS parameter set is insecure (beyond the 128-bit table of the
    HomomorphicEncryption.org standard) or cannot hold the sum without wrapping."""


class CiphertextRejectedError(AggregationError):
    """A CKKS ciphertext failed its receipt checks (parse, parameters, shape) or its
    decryption failed the bound and authentication checks; the round is aborted."""


class ReplayError(ProtocolError):
    """A server asked a client to answer a round at or below the last one it
    answered (a replay, or an attempt to rerun a round with another cohort)."""


class CryptoUsageError(SecureFLError, ValueError):
    """A cryptographic primitive was called with input it refuses (values outside
    the encoding range, a public context asked to decrypt, a malformed buffer)."""


class RandomnessError(SecureFLError, ValueError):
    """The secure random generator was asked for something it cannot give (a key
    that is not 32 bytes, an empty range, more distinct samples than exist)."""
