"""Update protections: what the client seals and what the server can open.

A protection turns a client's weighted update ``n_k * Delta_k`` plus a few
auxiliary counters (``weight`` = n_k, and e.g. ``unclipped`` for adaptive
clipping) into bytes, and turns the round's messages into an
:class:`AggregateInput`. The plaintext protection lets the server see every
individual update; encrypted and masked protections (CKKS, secure aggregation)
plug into this same seam and release only sums.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from securefl.exceptions import WireFormatError
from securefl.transport import wire


@dataclass
class AggregateInput:
    """What the server learns from one round of client messages."""

    total: torch.Tensor  #: sum of the weighted updates
    aux: dict[str, float]  #: sums of the auxiliary counters (always includes "weight")
    count: int  #: number of contributing clients
    individual: list[tuple[torch.Tensor, float]] | None = None  #: (update, weight), plaintext only
    headers: list[dict[str, Any]] = field(default_factory=list)


class Protection(ABC):
    """The client and server halves of one protection."""

    name: str = ""
    #: whether the server sees individual updates (robust aggregators need this)
    sees_individual_updates: bool = False

    @abstractmethod
    def seal(self, weighted_update: torch.Tensor, aux: dict[str, float], header: dict[str, Any]) -> bytes:
        """Client side: the bytes sent to the server for this round."""

    @abstractmethod
    def open(self, messages: list[bytes], dim: int) -> AggregateInput:
        """Server side: combine one round's messages."""


class Plaintext(Protection):
    """No protection: float32 updates in the clear (the baseline)."""

    name = "none"
    sees_individual_updates = True

    def seal(self, weighted_update: torch.Tensor, aux: dict[str, float], header: dict[str, Any]) -> bytes:
        return wire.encode(
            wire.Kind.CLIENT_UPDATE,
            {**header, "protect": self.name, "aux": {k: float(v) for k, v in aux.items()}},
            wire.vector_to_bytes(weighted_update),
        )

    def open(self, messages: list[bytes], dim: int) -> AggregateInput:
        total = torch.zeros(dim, dtype=torch.float64)
        aux: dict[str, float] = {}
        individual: list[tuple[torch.Tensor, float]] = []
        headers = []
        for raw in messages:
            msg = wire.decode(raw, expect=wire.Kind.CLIENT_UPDATE)
            if msg.header.get("protect") != self.name:
                raise WireFormatError(f"update sealed with {msg.header.get('protect')!r}, expected {self.name!r}")
            vec = wire.bytes_to_vector(msg.payload, dim)
            sums = msg.header.get("aux", {})
            weight = float(sums.get("weight", 0.0))
            if not weight > 0:
                raise WireFormatError(f"update weight must be positive, got {weight!r}")
            total += vec.double()
            for k, v in sums.items():
                aux[k] = aux.get(k, 0.0) + float(v)
            individual.append((vec / weight, weight))
            headers.append(msg.header)
        aux.setdefault("weight", 0.0)
        return AggregateInput(total.float(), aux, len(individual), individual, headers)


PROTECTIONS: dict[str, type[Protection]] = {"none": Plaintext}


def make_protection(name: str) -> Protection:
    return PROTECTIONS[name]()
