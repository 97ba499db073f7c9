"""What a CKKS aggregate must prove before a key holder decrypts it: the maths.

Every client encrypts one vector laid out as (:class:`Layout`)::

    [ x (dim) | weight | clipped | aux counters | participation (H) | tags (TAGS) ]

``participation`` is the one-hot vector of the client's index among the H key
holders pinned at key set-up; ``tags`` are ``TAGS`` linearly homomorphic MACs

    tag_j(k, t) = ( <r_{j,t}, body_k> / B + s_{j,k,t} ) / 2,

where ``body_k`` is everything before the tags, ``r_{j,t}`` a secret unit vector of
random signs and ``s_{j,k,t}`` a secret offset uniform in [-1/2, 1/2), both
derived with HKDF and ChaCha20 from the key holders' MAC key, the round ``t`` and
(for ``s``) the client id ``k``; ``B = sqrt(4 + len(aux))`` bounds ``||body_k||``
so every tag lies in [-3/4, 3/4]. A sum over a set ``S`` of genuine round-``t``
ciphertexts carries ``participation = 1_S`` and tags ``(<r, sum body>/B + sum_{k in S} s_k)/2``;
the key holder recomputes that from the decrypted body and the participation it
reads, so the aggregate is accepted only if

* every participation entry is 0 or 1 (a duplicated ciphertext gives 2, a scaled
  one c != 1): contributions are *distinct*;
* at least ``min_clients`` entries are 1: the release covers a real cohort;
* all tags match: each 1 is backed by that client's round-``t`` offset, which
  the server does not know. A fabricated, replayed (another round: other ``r``
  and ``s``) or cancelled (``E(a) - E(a')``) contribution must guess ``TAGS``
  independent offsets to within the decryption tolerance; the chance is
  :func:`forgery_bound` (below 2^-90 for every preset at the default error bound).

This is the linear MAC over an additively homomorphic scheme of Catalano and
Fiore (CCS 2013, "Practical homomorphic MACs for arithmetic circuits"), with the
CKKS rounding error as the verification tolerance. It holds against a server;
a key holder knows the MAC key and can forge (the shared-key model; SECURITY.md).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefl.crypto import primitives as P
from securefl.crypto.hazmat.ckks import TAIL

#: number of MAC tags appended to each update
TAGS = 6


@dataclass(frozen=True)
class Layout:
    """Where each value sits in the encrypted vector."""

    dim: int
    aux_keys: tuple[str, ...]  #: auxiliary counters besides the weight, sorted
    holders: int  #: H: key holders pinned at set-up (participation slots)

    @property
    def weight(self) -> int:
        return self.dim

    @property
    def clipped(self) -> int:
        return self.dim + 1

    def aux(self, i: int) -> int:
        return self.dim + 2 + i

    @property
    def participation(self) -> slice:
        start = self.dim + 2 + len(self.aux_keys)
        return slice(start, start + self.holders)

    @property
    def body(self) -> int:
        """Length of everything the tags cover."""
        return self.dim + 2 + len(self.aux_keys) + self.holders

    @property
    def tags(self) -> slice:
        return slice(self.body, self.body + TAGS)

    @property
    def length(self) -> int:
        return self.body + TAGS

    @property
    def norm_bound(self) -> float:
        """B: the largest ``||body||`` of one client (x, weight, clipped, aux, one-hot)."""
        return math.sqrt(4.0 + len(self.aux_keys))


def _key(mac_key: bytes, info: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"securefl-ckks-mac-v2", info=info.encode()).derive(mac_key)


def _sign_bits(mac_key: bytes, round_: int, length: int) -> np.ndarray:
    """The (TAGS, length) 0/1 matrix whose entries b give the signs 2b - 1 of ``r``."""
    raw = P.keystream(_key(mac_key, f"vectors:{round_}"), (TAGS * length + 7) // 8)
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=TAGS * length).reshape(TAGS, length)


def tag_vectors(mac_key: bytes, round_: int, length: int) -> np.ndarray:
    """``TAGS`` secret unit vectors of random signs over the body, one set per round."""
    return (_sign_bits(mac_key, round_, length) * 2.0 - 1.0) / math.sqrt(length)


def tag_products(mac_key: bytes, round_: int, body: np.ndarray) -> np.ndarray:
    """``tag_vectors(mac_key, round_, len(body)) @ body`` without the float matrix or
    BLAS (whose threads would compete with TenSEAL's): with ``r = (2b - 1)/sqrt(L)``,
    ``<r, body> = (2 <b, body> - sum(body)) / sqrt(L)``, the 0/1 bits cast in
    einsum's buffers."""
    body = np.ascontiguousarray(body, dtype=np.float64)
    ones = np.einsum("ij,j->i", _sign_bits(mac_key, round_, body.size), body)
    return (2.0 * ones - body.sum()) / math.sqrt(body.size)


def tag_offsets(mac_key: bytes, round_: int, client_id: str) -> np.ndarray:
    """``TAGS`` secret offsets of one client in one round, uniform in [-1/2, 1/2)."""
    cid = hashlib.sha256(client_id.encode()).hexdigest()
    return P.uniforms(_key(mac_key, f"offsets:{round_}:{cid}"), TAGS) - 0.5


def tags(mac_key: bytes, round_: int, layout: Layout, body: np.ndarray, members: list[str]) -> np.ndarray:
    """The tags a sum of ``members``' bodies must carry in ``round_``."""
    if len(body) != layout.body:
        raise ValueError(f"body holds {len(body)} values, the layout {layout.body}")
    offsets = sum((tag_offsets(mac_key, round_, m) for m in members), np.zeros(TAGS))
    return (tag_products(mac_key, round_, body) / layout.norm_bound + offsets) / 2.0


def tolerance(error_std: float) -> float:
    """How far a decrypted tag may sit from its recomputed value: the tag slot's own
    CKKS error plus that of ``<r, body>`` (``r`` is unit norm), TAIL deviations each."""
    return math.sqrt(2.0) * TAIL * error_std + 1e-12


def forgery_bound(error_std: float) -> float:
    """Chance that one forged, replayed or cancelled contribution passes all tags:
    each tag needs a uniform offset of width 1/2 (after the halving) guessed to
    within +-tolerance."""
    return min(1.0, 2.0 * tolerance(error_std) / 0.5) ** TAGS


def check(
    values: np.ndarray,
    layout: Layout,
    *,
    mac_key: bytes,
    round_: int,
    holders: list[str],
    min_clients: int,
    error_std: float,
) -> tuple[list[str], str | None]:
    """Verify a decrypted (unflooded) aggregate; return (contributors, problem)."""
    if not np.isfinite(values).all():
        return [], "decrypted aggregate is not finite"
    part = values[layout.participation]
    ones = np.rint(part)
    slack = TAIL * error_std + 1e-12
    if np.abs(part - ones).max(initial=0.0) > slack or not np.isin(ones, (0.0, 1.0)).all():
        return [], "participation entries must each be 0 or 1: a contribution is duplicated, scaled or garbage"
    members = [h for h, one in zip(holders, ones) if one == 1.0]
    count = len(members)
    if count < min_clients:
        return members, f"the aggregate holds {count} contributions, fewer than min_clients={min_clients}"
    if np.abs(values[: layout.body]).max() > count + slack:
        return members, f"decrypted aggregate exceeds the bound {count} of {count} contributions"
    expected = tags(mac_key, round_, layout, values[: layout.body], members)
    if np.abs(values[layout.tags] - expected).max() > tolerance(error_std):
        return members, "authentication tags do not match: a contribution is forged, replayed or from another round"
    return members, None
