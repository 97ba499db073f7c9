"""Shared-seed random-k sparsification around any protection (``--compress randk:F``).

:class:`CompressedClient` wraps a client half: it keeps this round's public
coordinates (:func:`public_coordinates`, computed by the
client from the run seed and the GLOBAL_MODEL's ``round``), with error feedback,
and has the inner protection seal that k-vector. :class:`CompressedServer` wraps
the server half: the inner protection aggregates k-vectors (every client kept the
same coordinates, so masked or encrypted sums add up) and the result is scattered
back to the model's d coordinates before the aggregation rule. Quantization
(``quant:B``) lives in the secure-aggregation ring itself
(:class:`~securefl.crypto.secagg.common.SecAggSettings` ``quant_bits``).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Sequence

import numpy as np
import torch

from securefl.config import RunConfig
from securefl.config.compression import CompressionSpec
from securefl.exceptions import ConfigValueError
from securefl.protections.base import AggregateInput, ClientLike, ClientProtection, Exchange, ServerProtection

__all__ = [
    "CompressedClient", "CompressedServer", "compressed_client", "compressed_server", "public_coordinates", "scatter",
    "sparsify_with_feedback",
]


def public_coordinates(seed: int, round_: int, dim: int, k: int) -> np.ndarray:
    """The ``k`` coordinates (sorted, int64) every client keeps in ``round_``: a
    uniform k-subset of ``range(dim)`` drawn by a generator keyed with
    ``SHA-256("securefl-randk-v1" | seed | round | dim)``. Public by design (the
    seed is the run's); the same for every client and the server."""
    if not (0 < k <= dim):
        raise ConfigValueError("compress", k, f"kept coordinates must be in [1, {dim}]")
    digest = hashlib.sha256(b"securefl-randk-v1" + struct.pack("<QQQ", seed % 2**64, round_ % 2**64, dim)).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return np.sort(rng.choice(dim, size=k, replace=False)).astype(np.int64)


def sparsify_with_feedback(
    update: torch.Tensor, residual: torch.Tensor | None, idx: np.ndarray, clip: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sent, new_residual)``: add the ``residual`` (None: no error feedback) to
    ``update``, clip the sum's L2 norm to ``clip`` when given (client-level DP: each
    release stays within the sensitivity S), send its coordinates ``idx``, and keep
    the rest as the next residual (at most S in norm too, so it cannot grow without
    bound)."""
    full = update.detach().to(torch.float32).reshape(-1)
    if residual is not None:
        full = full + residual
    if clip is not None:
        norm = float(torch.linalg.vector_norm(full))
        if norm > clip:
            full = full * (clip / norm)
    pos = torch.from_numpy(idx)
    sent = full[pos].clone()
    rest = full.clone()
    rest[pos] = 0.0
    return sent, rest


def scatter(values: torch.Tensor, idx: np.ndarray, dim: int) -> torch.Tensor:
    """A ``dim``-vector holding ``values`` at ``idx`` and zero elsewhere."""
    out = torch.zeros(dim, dtype=values.dtype)
    out[torch.from_numpy(idx)] = values
    return out


class CompressedClient(ClientProtection):
    """The client half: sparsify (with error feedback) then seal with ``inner``.

    Args:
        inner: the protection that seals the kept coordinates.
        spec: the run's compression; only its ``fraction`` acts here.
        seed: the run's public seed (the coordinate choice is a function of it and the round).
        error_feedback: keep the unsent coordinates and add them to the next update.
    """

    def __init__(self, inner: ClientProtection, spec: CompressionSpec, seed: int, *, error_feedback: bool = True) -> None:
        self.inner, self.spec, self.seed = inner, spec, int(seed)
        self.name, self.reveals_update = inner.name, inner.reveals_update
        self.error_feedback = bool(error_feedback)
        #: the coordinates not sent yet (stays on the client; see securefl.config.compression on DP)
        self.residual: torch.Tensor | None = None
        self._clip: float | None = None

    def begin(self, header: dict[str, Any]) -> None:
        # the client has checked client_clip against its own config before this call
        clip = header.get("client_clip")
        self._clip = float(clip) if clip is not None else None
        self.inner.begin(header)

    def handle(self, message: bytes) -> bytes:
        return self.inner.handle(message)

    def seal(self, weighted_update: torch.Tensor, aux: dict[str, float], header: dict[str, Any]) -> bytes:
        if self.spec.fraction is None:
            return self.inner.seal(weighted_update, aux, header)
        dim = int(weighted_update.numel())
        idx = public_coordinates(self.seed, int(header["round"]), dim, self.spec.kept(dim))
        if self.error_feedback and self.residual is None:
            self.residual = torch.zeros(dim)
        sent, rest = sparsify_with_feedback(weighted_update, self.residual, idx, self._clip)
        if self.error_feedback:
            self.residual = rest
        return self.inner.seal(sent, aux, {**header, "dim": int(idx.size)})


class CompressedServer(ServerProtection):
    """The server half: ``inner`` aggregates the round's k-vectors; the sum (and any
    individual updates) are scattered back to ``dim``."""

    def __init__(self, inner: ServerProtection, spec: CompressionSpec, seed: int) -> None:
        self.inner, self.spec, self.seed = inner, spec, int(seed)
        self.name = inner.name
        self.sees_individual_updates = inner.sees_individual_updates
        self.distributed_noise = inner.distributed_noise
        self.stages = inner.stages

    def __getattr__(self, name: str) -> Any:
        # the inner protection's own attributes (e.g. secagg's last_result)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def setup(self, clients: Sequence[ClientLike], exchange: Exchange) -> None:
        self.inner.setup(clients, exchange)

    def aggregate(self, clients: Sequence[ClientLike], global_message: Any, dim: int, exchange: Exchange) -> AggregateInput | None:
        if self.spec.fraction is None:
            return self.inner.aggregate(clients, global_message, dim, exchange)
        idx = public_coordinates(self.seed, exchange.round, dim, self.spec.kept(dim))
        agg = self.inner.aggregate(clients, global_message, int(idx.size), exchange)
        if agg is None:
            return None
        agg.total = scatter(agg.total, idx, dim)
        if agg.individual is not None:
            agg.individual = [(scatter(u, idx, dim), w) for u, w in agg.individual]
        agg.stats = {**agg.stats, "coordinates_sent": int(idx.size)}
        return agg


def compressed_client(config: RunConfig, inner: ClientProtection) -> ClientProtection:
    """``inner`` behind ``--compress randk:F``; ``inner`` itself otherwise
    (``quant:B`` lives in the secure-aggregation settings)."""
    p = config.protection
    if p.compression.fraction is None:
        return inner
    return CompressedClient(inner, p.compression, config.seed, error_feedback=p.error_feedback)


def compressed_server(config: RunConfig, inner: ServerProtection) -> ServerProtection:
    """The server half matching :func:`compressed_client`."""
    if config.protection.compression.fraction is None:
        return inner
    return CompressedServer(inner, config.protection.compression, config.seed)
