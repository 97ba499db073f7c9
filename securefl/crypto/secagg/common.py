"""What the client and server halves of secure aggregation agree on: the settings,
the per-round public parameters, and the exact bytes that get signed or keyed."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from securefl.crypto.encoding import b64, unb64
from securefl.crypto.identity import Identity, Roster
from securefl.crypto.quantize import FixedPoint, peak_abs
from securefl.crypto.secagg.graph import recommended_neighbors, share_threshold
from securefl.crypto.secagg.packing import NarrowFixedPoint
from securefl.exceptions import ConfigTypeError, ConfigValueError, ProtocolError
from securefl.validators import is_int, is_number


#: the range of B in ``--compress quant:B`` (above 16 bits the 32-bit ring is as small)
MIN_QUANT_BITS, MAX_QUANT_BITS = 2, 16


@dataclass(frozen=True)
class SecAggSettings:
    """Settings both halves hold (from ``secagg_*`` config fields).

    Args:
        clip: bound on each coordinate of an unweighted update Delta_k; the client
            clips ``n_k * Delta_k`` to ``+-n_k * clip`` and reports how many it clipped.
        max_weight: bound on a client's weight n_k (its sample count).
        bits: ring Z_(2^bits), 32 or 64.
        threshold: fraction of a secret's share holders needed to reconstruct it.
        neighbors: 0 for the complete graph (Bonawitz et al.); an even k for SecAgg+;
            -1 for SecAgg+ with k = O(log n) chosen per round (about 2 log2 n).
        malicious: Ed25519-signed keys and a consistency check against a malicious server.
        noise_multiplier: distributed DP (DP-FedAvg's z; 0 = off). ``clip`` is then the
            L2 clip S of each update, and every client adds rounded Gaussian noise of
            standard deviation ``z * (S + sqrt(d) * resolution) / sqrt(t)`` per
            coordinate (t = the round's threshold) before masking, so any t or more
            survivors' shares sum to at least N(0, (z S)^2) per coordinate and no
            party, the server included, sees an un-noised sum (after Kairouz, Liu and
            Steinke, ICML 2021; see :func:`distributed_noise_stddev`).
        min_clients: smallest cohort whose sum this party helps release
            (``ProtectConfig.min_clients``). A client refuses a smaller cohort at
            every stage, whatever the server says; the server aborts below it.
        quant_bits: 0, or B of ``--compress quant:B``: updates are rounded to a grid
            of ``2^B`` steps over ``[-clip, clip]`` in the narrowest ring whose sum
            cannot wrap, packed in that many bits (:mod:`securefl.crypto.secagg.packing`).
        l2_clip: ``clip`` is the L2 clip S of client-level DP (central noise); with
            ``quant_bits`` each update is clipped so that its rounded form stays within S
            (:func:`clip_input`).
    """

    clip: float = 1.0
    max_weight: float = 4096.0
    bits: int = 32
    threshold: float = 0.6
    neighbors: int = 0
    malicious: bool = False
    noise_multiplier: float = 0.0
    min_clients: int = 3
    quant_bits: int = 0
    l2_clip: bool = False

    def __post_init__(self) -> None:
        for name in ("clip", "max_weight", "threshold"):
            v = getattr(self, name)
            if not is_number(v):
                raise ConfigTypeError(f"secagg_{name}", v, "must be a number")
        if not 0 < self.clip < float("inf"):
            raise ConfigValueError("secagg_clip", self.clip, "must be positive and finite")
        if not 1 <= self.max_weight < float("inf"):
            raise ConfigValueError("secagg_max_weight", self.max_weight, "must be >= 1 and finite")
        if not is_int(self.bits):
            raise ConfigTypeError("secagg_bits", self.bits, "must be an integer")
        if self.bits not in (32, 64):
            raise ConfigValueError("secagg_bits", self.bits, "must be 32 or 64")
        if not 0.5 < self.threshold <= 1:
            raise ConfigValueError("secagg_threshold", self.threshold, "must be in (0.5, 1]")
        if not is_int(self.neighbors):
            raise ConfigTypeError("secagg_neighbors", self.neighbors, "must be an integer")
        if self.neighbors < -1 or (self.neighbors > 0 and (self.neighbors < 2 or self.neighbors % 2)):
            raise ConfigValueError(
                "secagg_neighbors", self.neighbors, "must be 0 (complete graph), -1 (auto, O(log n)) or an even number >= 2"
            )
        if not isinstance(self.malicious, bool):
            raise ConfigTypeError("secagg_malicious", self.malicious, "must be true or false")
        if not is_number(self.noise_multiplier):
            raise ConfigTypeError("noise_multiplier", self.noise_multiplier, "must be a number")
        if not 0 <= self.noise_multiplier < float("inf"):
            raise ConfigValueError("noise_multiplier", self.noise_multiplier, "must be >= 0 and finite")
        if self.noise_multiplier > 0 and self.max_weight != 1:
            raise ConfigValueError(
                "secagg_max_weight", self.max_weight, "distributed DP calibrates to unit-weight updates (dp='client'): must be 1"
            )
        if not is_int(self.min_clients):
            raise ConfigTypeError("min_clients", self.min_clients, "must be an integer")
        if self.min_clients < 2:
            raise ConfigValueError("min_clients", self.min_clients, "must be >= 2")
        if not is_int(self.quant_bits) or not (self.quant_bits == 0 or MIN_QUANT_BITS <= self.quant_bits <= MAX_QUANT_BITS):
            raise ConfigValueError(
                "compress", f"quant:{self.quant_bits}", f"bits must be an integer in [{MIN_QUANT_BITS}, {MAX_QUANT_BITS}]"
            )
        if not isinstance(self.l2_clip, bool):
            raise ConfigTypeError("l2_clip", self.l2_clip, "must be true or false")
        if self.quant_bits and self.noise_multiplier > 0:
            raise ConfigValueError(
                "compress", f"quant:{self.quant_bits}",
                "not with distributed DP: the noise share is calibrated to a fine grid (S + sqrt(d) * step)",
            )
        if self.malicious and self.threshold <= 2 / 3:
            raise ConfigValueError(
                "secagg_threshold", self.threshold, "the malicious-server option needs a threshold above 2/3"
            )

    @property
    def bound(self) -> float:
        """Largest magnitude of any encoded coordinate (weighted update or weight), with
        room for eight standard deviations of distributed noise on top."""
        return self.max_weight * max(self.clip, 1.0) + 8.0 * self.noise_multiplier * self.clip * 2.0

    def codec(self, clients: int) -> FixedPoint:
        if self.quant_bits:
            return NarrowFixedPoint.for_levels(clients=clients, bound=self.bound, clip=self.clip, levels_bits=self.quant_bits)
        return FixedPoint.for_sum(clients=clients, bound=self.bound, bits=self.bits)

    def degree(self, clients: int) -> int:
        """Neighbours of each client in a round of ``clients``."""
        k = recommended_neighbors(clients) if self.neighbors == -1 else self.neighbors
        if k == 0 or k >= clients - 1:
            return clients - 1
        return k

    def threshold_for(self, clients: int) -> int:
        """Shares needed per secret: each is held by the client and its neighbours."""
        return share_threshold(self.degree(clients) + 1, self.threshold)

    def cohort_floor(self, clients: int) -> int:
        """Fewest clients (in a round of ``clients``) that may be in a released sum:
        the share threshold and ``min_clients``, whichever is larger."""
        return max(self.threshold_for(clients), self.min_clients)

    def neighborhood_floor(self, clients: int) -> int:
        """Fewest live members of a client's neighbourhood, itself included. With the
        complete graph the neighbourhood is the cohort, so this is
        :meth:`cohort_floor`; a SecAgg+ neighbourhood (often smaller than
        ``min_clients``) needs only the share threshold, and ``min_clients`` is
        enforced on the cohort and on the released sum instead."""
        if self.degree(clients) == clients - 1:
            return self.cohort_floor(clients)
        return self.threshold_for(clients)


# ------------------------------------------------------------------ encodings


def id_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{what}: expected a list of client ids")
    if len(set(value)) != len(value):
        raise ProtocolError(f"{what}: duplicate client ids")
    return list(value)


def field(header: dict[str, Any], name: str, kind: type) -> Any:
    v = header.get(name)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise ProtocolError(f"message field {name!r} missing or of the wrong type")
    return v


#: round numbers travel as unsigned 64-bit integers in every transcript; a client's
#: round guard keeps them positive, so the valid range is [1, 2^63 - 1]
MAX_ROUND = 2**63 - 1


def round_field(header: Mapping[str, Any]) -> int:
    """The ``round`` of a stage message: an integer in [1, :data:`MAX_ROUND`]."""
    r = field(header, "round", int)
    if not 1 <= r <= MAX_ROUND:
        raise ProtocolError(f"message field 'round'={r} out of range [1, {MAX_ROUND}]")
    return r


def round_bytes(round_: int) -> bytes:
    if not isinstance(round_, int) or isinstance(round_, bool) or not 0 <= round_ < 2**64:
        raise ProtocolError(f"round {round_!r} is not an unsigned 64-bit integer")
    return struct.pack("<Q", round_)


def advert_transcript(round_: int, client: str, c_pk: bytes, s_pk: bytes) -> bytes:
    """The bytes a client signs when it advertises its round keys."""
    cid = client.encode()
    return b"securefl-secagg-advertise-v1" + round_bytes(round_) + struct.pack("<I", len(cid)) + cid + c_pk + s_pk


def survivors_transcript(round_: int, survivors: Iterable[str]) -> bytes:
    """The bytes a client signs in the consistency check: the round and the set of
    clients whose masked input the server claims to have."""
    body = json.dumps(sorted(survivors), separators=(",", ":")).encode()
    return b"securefl-secagg-consistency-v1" + round_bytes(round_) + body


def pair_info(round_: int) -> bytes:
    return b"pair" + round_bytes(round_)


def channel_info(round_: int) -> bytes:
    return b"channel" + round_bytes(round_)


def self_mask_info(round_: int, client: str) -> bytes:
    return b"self" + round_bytes(round_) + client.encode()


def pair_mask_info(round_: int) -> bytes:
    return b"pairmask" + round_bytes(round_)


def distributed_noise_stddev(settings: SecAggSettings, *, dim: int, threshold: int, resolution: float) -> float:
    """Per-coordinate standard deviation of one client's noise share.

    The DP-FedAvg sensitivity is the clip S, but stochastic rounding onto the
    fixed-point grid moves each of the ``dim`` coordinates by less than one
    ``resolution``, so the share is calibrated to ``S + sqrt(dim) * resolution``.
    With at least ``threshold`` survivors the shares sum to a variance of at least
    ``(z * S)^2``. Each share is an exact discrete Gaussian on the grid
    (:func:`noise_units` grid units, rounded up) from the ChaCha20 generator; for
    parameters of many grid units (thousands here) a sum of such shares is within a
    negligible distance of a discrete Gaussian of the summed variance (Kairouz, Liu
    and Steinke, ICML 2021), and a discrete Gaussian gives the continuous one's
    Renyi guarantee (Canonne, Kamath and Steinke 2020), which the accountant uses.
    """
    if settings.noise_multiplier == 0:
        return 0.0
    sensitivity = settings.clip + math.sqrt(dim) * resolution
    return settings.noise_multiplier * sensitivity / math.sqrt(threshold)


def clip_input(settings: SecAggSettings, values: Any, weight: float, resolution: float = 0.0) -> tuple[np.ndarray, int]:
    """Clip to a client's own bounds: each coordinate to ``+-weight * clip``
    (counted), and under distributed DP the L2 norm to ``clip`` too, so the noise
    share is calibrated to the sensitivity whatever clip the server announced.
    With ``quant_bits`` and ``l2_clip`` (client-level DP, central noise) the L2 norm
    goes to ``clip - sqrt(d) * resolution``: rounding moves each of the d coordinates
    by less than one step, so the encoded update stays within the clip S the noise
    is calibrated to. Returns ``values`` itself (no copy) when nothing needs clipping."""
    v = np.asarray(values, dtype=np.float64)
    peak = peak_abs(v, "update contains NaN or infinity")
    l2 = settings.clip if settings.noise_multiplier > 0 else None
    if settings.quant_bits and settings.l2_clip:
        l2 = settings.clip - math.sqrt(v.size) * resolution
        if l2 <= 0:
            raise ConfigValueError(
                "compress", f"quant:{settings.quant_bits}", f"rounding {v.size} coordinates to steps of {resolution:g} "
                f"can move an update further than the clip {settings.clip:g}; use more bits or a smaller randk fraction",
            )
    if l2 is not None:
        norm = float(np.linalg.norm(v))
        if norm > l2:
            v = v * (l2 / norm)
            peak = peak_abs(v, "update contains NaN or infinity")
    limit = weight * settings.clip
    if peak <= limit:
        return v, 0
    saturated = int(np.count_nonzero(np.abs(v) > limit))
    return np.clip(v, -limit, limit), saturated


def noise_units(sigma: float, resolution: float) -> int:
    """A noise share's discrete Gaussian parameter in grid units: ``ceil(sigma /
    resolution)``, never below the calibrated std; at most 2^24 (the sampler's range)."""
    units = max(1, math.ceil(sigma / resolution))
    if units > 1 << 24:
        raise ConfigValueError("noise_multiplier", sigma, f"noise share of {units} grid units exceeds 2^24; use a coarser ring")
    return units


def encode_with_noise(
    codec: FixedPoint, v: np.ndarray, extra: np.ndarray, sigma: float, rng: Any, *, out: np.ndarray | None = None,
    within: float | None = None,
) -> np.ndarray:
    """Encode ``v`` and the counters ``extra`` into the ring (rounding coins from
    :func:`securefl.crypto.quantize._coin_stream`) and add a DP noise share of std
    ``sigma`` to ``v``'s coordinates, on the grid, before any mask: the only draw
    from the (possibly seeded) ``rng``. Written into ``out`` (``v.size +
    extra.size`` ring elements) when given, with no intermediate copies. ``within``:
    a bound :func:`clip_input` already holds ``v`` to (see :meth:`FixedPoint.encode`)."""
    if out is None:
        out = np.empty(v.size + extra.size, dtype=codec.dtype)
    codec.encode(v, out=out[: v.size], within=within)
    codec.encode(extra, out=out[v.size :])
    if sigma > 0:
        # exact discrete Gaussian in grid units (Canonne, Kamath and Steinke 2020), never
        # a rounded float Gaussian: no floating-point artefact to attack (Mironov 2012)
        noise = rng.discrete_gaussian(v.size, noise_units(sigma, codec.resolution))
        head = out[: v.size]
        head += codec.wrap(noise)  # modular: wrap(signed + noise)
    return out


def check_party(client_id: str, settings: SecAggSettings, identity: Identity | None, roster: Roster | None) -> None:
    """Refuse at construction a client that could not check who it talks to."""
    if roster is not None and not isinstance(roster, Roster):
        raise ConfigTypeError("roster", type(roster).__name__, "must be a securefl.crypto.identity.Roster")
    if identity is not None and not isinstance(identity, Identity):
        raise ConfigTypeError("identity", type(identity).__name__, "must be a securefl.crypto.identity.Identity")
    if settings.malicious and roster is None:
        raise ConfigValueError(
            "roster", None, "secagg_malicious needs a roster of verification keys pinned out of band"
        )
    if settings.malicious and identity is None:
        raise ConfigValueError("identity", None, f"secagg_malicious needs the signing key of client {client_id}")
    if identity is not None and identity.client_id != client_id:
        raise ConfigValueError("identity", identity.client_id, f"is not the identity of client {client_id}")
    if roster is not None:
        if client_id not in roster:
            raise ConfigValueError("roster", sorted(roster.members), f"does not list client {client_id}")
        if identity is not None and roster.key(client_id) != identity.verification_key:
            raise ConfigValueError("roster", client_id, "pins another verification key than this client's identity")
