"""The protection seam: the two halves every update protection is made of.

A protection has two halves:

* a :class:`ClientProtection` on every client, which holds that client's secrets,
  seals the client's weighted update ``n_k * Delta_k`` plus a few auxiliary
  counters (``weight`` = n_k; ``unclipped`` for adaptive clipping) into bytes,
  and answers the protocol messages of its kind (:meth:`ClientProtection.handle`);
* a :class:`ServerProtection` on the server, which runs the round's protocol over
  an :class:`Exchange` (the only way it talks to clients: bytes out, bytes in,
  every byte counted) and returns an :class:`AggregateInput` — what the server
  learns. Only the plaintext protection lets it see individual updates.

Protocol state machines (who sends what, when) live in each protection's module;
the cryptographic maths (what a message contains) live in :mod:`securefl.crypto`;
the bytes on the wire are :mod:`securefl.transport.wire` messages.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import torch

from securefl.exceptions import BudgetExhaustedError, ClientDropout, ProtocolError, WireFormatError
from securefl.transport import wire
from securefl.validators import is_number

__all__ = [
    "AggregateInput",
    "ClientLike",
    "ClientProtection",
    "Exchange",
    "GlobalMessage",
    "Plaintext",
    "ServerProtection",
    "message_for",
]

#: the round's GLOBAL_MODEL: one message for every client (synchronous rounds), or one
#: per client id (asynchronous buffers, where each client trained from its own version)
GlobalMessage = bytes | Mapping[str, bytes]


def message_for(global_message: GlobalMessage, client_id: str) -> bytes:
    """The GLOBAL_MODEL message meant for ``client_id``."""
    if isinstance(global_message, bytes):
        return global_message
    return global_message[client_id]


class ClientLike(Protocol):
    """What the server needs of a client: a name and two byte-in, byte-out calls."""

    client_id: str

    def fit(self, message: bytes) -> bytes:
        """Answer a GLOBAL_MODEL message with this client's sealed update."""

    def handle(self, message: bytes) -> bytes:
        """Answer any other protocol message (key exchange, unmasking, decryption)."""


@dataclass
class AggregateInput:
    """What the server learns from one round of client messages."""

    total: torch.Tensor  #: sum of the weighted updates
    aux: dict[str, float]  #: sums of the auxiliary counters (always includes "weight")
    count: int  #: number of contributing clients
    individual: list[tuple[torch.Tensor, float]] | None = None  #: (update, weight), plaintext only
    headers: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  #: protection-specific metrics (e.g. saturation)


class Exchange:
    """One round's traffic between the server and its clients.

    Every message goes through :meth:`send`, which counts bytes both ways, turns a
    client's refusal (:class:`BudgetExhaustedError`) or disappearance
    (:class:`ClientDropout`) into a ``None`` reply, and remembers who is gone: a
    client that dropped or refused is never asked again this round.

    ``drop_at`` simulates dropouts: ``{client_id: k}`` makes that client vanish
    instead of answering its ``k``-th message of the round (1-based).
    """

    def __init__(self, round_: int, drop_at: dict[str, int] | None = None) -> None:
        self.round = round_
        self.bytes_up = 0
        self.bytes_down = 0
        self.refused: list[str] = []
        self.dropped: list[str] = []
        self._drop_at = dict(drop_at or {})
        self._asked: dict[str, int] = {}

    def gone(self, client_id: str) -> bool:
        return client_id in self.refused or client_id in self.dropped

    def send(self, client: ClientLike, message: bytes, *, method: str = "handle") -> bytes | None:
        """Deliver ``message`` to ``client`` (``method`` is ``"fit"`` or ``"handle"``)."""
        if not self.admit(client.client_id, message):
            return None
        try:
            reply = getattr(client, method)(message)
        except (BudgetExhaustedError, ClientDropout) as exc:
            return self.settle(client.client_id, exc)
        return self.settle(client.client_id, reply)

    def send_many(
        self, requests: Sequence[tuple[ClientLike, bytes]], *, method: str = "handle"
    ) -> list[bytes | None]:
        """Deliver one stage's messages, a reply (or None) for each request in order.

        This is the transport seam: in process the messages go one after another
        through :meth:`send`; a networked exchange (:mod:`securefl.transport.flower`)
        delivers them concurrently, through :meth:`admit` and :meth:`settle` so that
        counting, refusals and dropouts follow the same rules."""
        return [self.send(client, message, method=method) for client, message in requests]

    def admit(self, client_id: str, message: bytes) -> bool:
        """Count ``message`` as sent to ``client_id``; False if the client is gone or
        (simulated dropout) vanishes instead of answering it."""
        if self.gone(client_id):
            return False
        self._asked[client_id] = self._asked.get(client_id, 0) + 1
        self.bytes_down += len(message)
        if self._drop_at.get(client_id) == self._asked[client_id]:
            self.dropped.append(client_id)
            return False
        return True

    def settle(self, client_id: str, outcome: bytes | Exception) -> bytes | None:
        """Record an admitted message's outcome: the reply (counted), or a refusal
        (:class:`BudgetExhaustedError`) or disappearance (:class:`ClientDropout`)
        as None; any other exception is raised."""
        if isinstance(outcome, BudgetExhaustedError):
            self.refused.append(client_id)
            return None
        if isinstance(outcome, ClientDropout):
            self.dropped.append(client_id)
            return None
        if isinstance(outcome, BaseException):
            raise outcome
        self.bytes_up += len(outcome)
        return outcome


class ClientProtection(ABC):
    """The client half: holds the client's secrets; never serialized to the server."""

    name: str = ""
    #: whether the server sees this client's update anyway (then nothing more is
    #: lost by telling it the local training loss)
    reveals_update: bool = False

    @abstractmethod
    def seal(self, weighted_update: torch.Tensor, aux: dict[str, float], header: dict[str, Any]) -> bytes:
        """The bytes sent to the server for this round's update."""

    def begin(self, header: dict[str, Any]) -> None:
        """See the round's GLOBAL_MODEL header before training (a protocol's round
        parameters, e.g. secure aggregation's masking set); nothing by default."""

    def handle(self, message: bytes) -> bytes:
        """Answer a protocol message; protections without extra stages have none."""
        msg = wire.decode(message)
        raise ProtocolError(f"protection {self.name!r} expects no {msg.kind.name} message")


class ServerProtection(ABC):
    """The server half: runs the protocol and learns only what it is meant to."""

    name: str = ""
    #: whether the server sees individual updates (robust aggregators need this)
    sees_individual_updates: bool = False
    #: the clients add the DP-FedAvg noise in shares (the server must add none)
    distributed_noise: bool = False
    #: messages each client answers per round (dropouts are drawn among them)
    stages: int = 1

    def setup(self, clients: Sequence[ClientLike], exchange: Exchange) -> None:
        """One-off set-up before the first round (e.g. key distribution)."""

    @abstractmethod
    def aggregate(
        self, clients: Sequence[ClientLike], global_message: GlobalMessage, dim: int, exchange: Exchange
    ) -> AggregateInput | None:
        """Run one round with ``clients`` (this round's sample); ``None`` if nobody
        contributed. Raise :class:`~securefl.exceptions.AggregationError` (or a
        subclass) to abort the round."""


class Plaintext(ClientProtection, ServerProtection):
    """No protection: float32 updates in the clear (the baseline). Both halves in one
    class since there is no secret to keep."""

    name = "none"
    sees_individual_updates = True
    reveals_update = True

    def seal(self, weighted_update: torch.Tensor, aux: dict[str, float], header: dict[str, Any]) -> bytes:
        return wire.encode(
            wire.Kind.CLIENT_UPDATE,
            {**header, "protect": self.name, "aux": {k: float(v) for k, v in aux.items()}},
            wire.vector_to_bytes(weighted_update),
        )

    def aggregate(
        self, clients: Sequence[ClientLike], global_message: GlobalMessage, dim: int, exchange: Exchange
    ) -> AggregateInput | None:
        replies = exchange.send_many([(c, message_for(global_message, c.client_id)) for c in clients], method="fit")
        replies = [r for r in replies if r is not None]
        return self.open(replies, dim) if replies else None

    def open(self, messages: list[bytes], dim: int) -> AggregateInput:
        """Sum a round's plaintext updates, keeping each for robust aggregators."""
        total = torch.zeros(dim, dtype=torch.float64)
        aux: dict[str, float] = {}
        individual: list[tuple[torch.Tensor, float]] = []
        headers = []
        for raw in messages:
            msg = wire.decode(raw, expect=wire.Kind.CLIENT_UPDATE, max_size=wire.size_limit(dim, per_coordinate=4))
            if msg.header.get("protect") != self.name:
                raise WireFormatError(f"update sealed with {msg.header.get('protect')!r}, expected {self.name!r}")
            vec = wire.bytes_to_vector(msg.payload, dim)
            sums = _aux_counters(msg.header.get("aux", {}))
            weight = sums.get("weight", 0.0)
            if not weight > 0:
                raise WireFormatError(f"update weight must be positive, got {weight!r}")
            total += vec.double()
            for k, v in sums.items():
                aux[k] = aux.get(k, 0.0) + v
            individual.append((vec / weight, weight))
            headers.append(msg.header)
        aux.setdefault("weight", 0.0)
        return AggregateInput(total.float(), aux, len(individual), individual, headers)


#: at most this many auxiliary counters in a plaintext update
MAX_AUX = 16


def _aux_counters(sums: Any) -> dict[str, float]:
    """A plaintext update's counters: at most :data:`MAX_AUX` names, each a finite number."""
    if not isinstance(sums, dict) or len(sums) > MAX_AUX:
        raise WireFormatError(f"update counters must be an object of at most {MAX_AUX} numbers")
    out: dict[str, float] = {}
    for k, v in sums.items():
        if not is_number(v):
            raise WireFormatError(f"update counter {k!r} is not a number")
        try:
            out[k] = float(v)
        except OverflowError:
            raise WireFormatError(f"update counter {k!r} is out of range") from None
        if not math.isfinite(out[k]):
            raise WireFormatError(f"update counter {k!r} is not finite")
    return out
