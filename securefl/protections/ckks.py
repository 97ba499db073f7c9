"""CKKS-encrypted aggregation (``--protect ckks``): what both halves share.

The server sums updates it cannot read. Roles (DESIGN.md section 4.1): the *key
holders* are the clients; one of them generates the CKKS secret key and a MAC key
and hands them to every other client sealed to that client's X25519 key
(:mod:`securefl.crypto.ckks_keys`), relayed by the server. The server only ever
holds a public context, so it can add ciphertexts but not decrypt them.

One round:

1. the server sends the global model (``fit``); each client trains, clips its
   update ``Delta_k`` to L2 norm ``C`` (counted), and encrypts
   ``x_k = (n_k / W) * Delta_k / C`` (every entry in [-1, 1]), its counters, a
   one-hot participation vector over the pinned key holders and MAC tags bound
   to the round and to itself (:mod:`securefl.crypto.ckks_auth`);
2. the server checks every ciphertext on receipt (parse, SEAL validity, shape,
   parameter id, key fingerprint) and adds them with ``+=``; fewer than
   ``min_clients`` contributions abort the round before anyone decrypts;
3. the round's one designated key holder (a rule every holder computes from the
   pinned key set) decrypts the sum at most once, refuses any round at or below
   the last it decrypted, checks that it holds at least ``min_clients`` distinct,
   genuine contributions of this round (participation and tags), floods it with
   Gaussian noise of ``2^flood_bits`` times the CKKS error from the OS CSPRNG and
   rounds it to a grid before releasing it (Li and Micciancio, Eurocrypt 2021:
   exact CKKS decryptions together with their ciphertexts reveal the secret key);
4. the server bound-checks the released sums and rescales them to
   ``sum n_k Delta_k`` and ``sum n_k``: that is all it learns.

Any failed check raises :class:`~securefl.exceptions.CiphertextRejectedError`,
which aborts the round and leaves the global model unchanged.

The client half is :class:`securefl.protections.ckks_client.CKKSClient`, the server
half :class:`securefl.protections.ckks_server.CKKSServer`; this module holds their
:class:`CKKSSettings` and the message helpers both use. The maths live in
:mod:`securefl.crypto.hazmat.ckks` (the scheme), :mod:`securefl.crypto.ckks_keys`
(key distribution) and :mod:`securefl.crypto.ckks_auth` (the MAC over the sum).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from securefl.crypto import ckks_auth as auth
from securefl.crypto.hazmat import ckks as hz
from securefl.exceptions import ConfigValueError, ProtocolError
from securefl.validators import is_int, is_number

__all__ = ["CKKSSettings", "DEFAULT_MAX_WEIGHT", "MAX_DIM", "MAX_FORGERY", "NAME"]

NAME = "ckks"
#: default bound on n_k for weighted FedAvg (1 under client-level DP, where weights are 1)
DEFAULT_MAX_WEIGHT = 1000.0
#: a forged contribution must pass the MAC tags with at most this chance
MAX_FORGERY = 2.0**-64


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class CKKSSettings:
    """What both halves agree on before the first round (``settings_id`` names it),
    plus ``min_clients``, each party's own floor on the cohort it helps release."""

    params: hz.CKKSParams
    clip: float
    max_weight: float
    min_clients: int = 3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigValueError("ckks_clip", self.clip, "must be a positive number")
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ConfigValueError("ckks_max_weight", self.max_weight, "must be a positive number")
        if not is_int(self.min_clients) or self.min_clients < 2:
            raise ConfigValueError("min_clients", self.min_clients, "must be an integer >= 2")
        if self.min_clients > self.params.max_summands:
            raise ConfigValueError(
                "min_clients", self.min_clients, f"exceeds the {self.params.max_summands} clients a round can sum"
            )
        bound = auth.forgery_bound(self.error_std)
        if bound > MAX_FORGERY:
            raise ConfigValueError(
                "ckks_max_error",
                self.params.max_error(self.params.max_summands),
                f"lets a forged contribution pass the MAC tags with chance 2^{math.log2(bound):.0f}; lower it",
            )

    @property
    def error_std(self) -> float:
        """CKKS error of one slot in the largest sum (the verification tolerance)."""
        return self.params.error_std(self.params.max_summands)

    def describe(self) -> dict[str, Any]:
        return {**self.params.describe(), "clip": self.clip, "max_weight": self.max_weight}

    @property
    def settings_id(self) -> str:
        blob = json.dumps(self.describe(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ------------------------------------------------------------------ message parts
def pack_parts(parts: dict[str, bytes]) -> tuple[dict[str, list[int]], bytes]:
    offsets, blob, at = {}, [], 0
    for key, data in parts.items():
        offsets[key] = [at, len(data)]
        blob.append(data)
        at += len(data)
    return offsets, b"".join(blob)


def unpack_part(offsets: Any, payload: bytes, key: str) -> bytes:
    try:
        at, n = offsets[key]
        at, n = int(at), int(n)
    except (KeyError, TypeError, ValueError):
        raise ProtocolError(f"message has no part {key!r}") from None
    if at < 0 or n < 0 or at + n > len(payload):
        raise ProtocolError(f"part {key!r} lies outside the payload")
    return payload[at : at + n]


#: the largest round number or dimension a message may carry (rounds are hashed as
#: unsigned 64-bit integers; a dimension this large would not fit in memory anyway)
MAX_FIELD_INT = 2**63 - 1
#: the largest model dimension a decryption request may name (2^31 coordinates)
MAX_DIM = 2**31
#: at most this many auxiliary counters, each name at most this long
MAX_AUX_KEYS, MAX_AUX_KEY_LEN = 16, 64


def max_update_bytes(params: hz.CKKSParams, dim: int, holders: int) -> int:
    """The largest encrypted update of a ``dim``-parameter model a server reads: enough
    ciphertexts for the longest layout (every counter slot used, ``holders``
    participation slots), each at most two uncompressed polynomials, plus headers.
    No message may exceed :data:`securefl.transport.wire.MAX_MESSAGE`, which bounds
    the model size a preset can carry (:func:`securefl.build.check_ckks_size`)."""
    from securefl.crypto.hazmat import ckks_seal as hzs

    length = auth.Layout(dim, ("",) * MAX_AUX_KEYS, max(1, holders)).length
    per_ct = 2 * params.poly_modulus_degree * len(params.coeff_mod_bit_sizes) * 8 + 4096
    return (1 << 22) + hzs.num_ciphertexts(params, length) * per_ct


def int_field(header: dict[str, Any], name: str, *, minimum: int = 0, maximum: int = MAX_FIELD_INT) -> int:
    v = header.get(name)
    if not is_int(v):
        raise ProtocolError(f"message field {name!r} missing or not an integer")
    if not minimum <= v <= maximum:
        raise ProtocolError(f"message field {name!r}={v} out of range [{minimum}, {maximum}]")
    return v


def aux_keys_field(header: dict[str, Any]) -> tuple[str, ...]:
    """The auxiliary counter names of an update or a decryption request: a sorted
    list of distinct short strings other than ``weight`` (which has its own slot)."""
    keys = header.get("aux_keys", [])
    if (
        not isinstance(keys, list)
        or len(keys) > MAX_AUX_KEYS
        or not all(isinstance(k, str) and 0 < len(k) <= MAX_AUX_KEY_LEN and k != "weight" for k in keys)
        or keys != sorted(set(keys))
    ):
        raise ProtocolError(f"message field 'aux_keys' must be a sorted list of at most {MAX_AUX_KEYS} distinct names")
    return tuple(keys)


def number_field(header: dict[str, Any], name: str) -> float:
    """A finite real number (int or float, not bool) from a message header."""
    v = header.get(name)
    if not is_number(v):
        raise ProtocolError(f"message field {name!r} missing or not a number")
    try:
        f = float(v)
    except OverflowError:
        raise ProtocolError(f"message field {name!r} is out of range") from None
    if not math.isfinite(f):
        raise ProtocolError(f"message field {name!r} is not finite")
    return f

