"""In-memory clients and a recording exchange for secure-aggregation tests."""

from __future__ import annotations

import numpy as np
import torch

from securefl.crypto.secagg.common import SecAggSettings
from securefl.crypto.secagg.protection import SecAggClientProtection, SecAggServerProtection
from securefl.privacy.noise import SecureRNG
from securefl.protect import Exchange
from securefl.transport import wire


class FakeClient:
    """A client whose 'training' returns a fixed weighted update."""

    def __init__(self, cid: str, settings: SecAggSettings, values: np.ndarray, weight: float = 1.0) -> None:
        self.client_id = cid
        self.protection = SecAggClientProtection(client_id=cid, settings=settings, rng=SecureRNG())
        self.values = np.asarray(values, dtype=np.float64)
        self.weight = weight
        self.answered: list[wire.Kind] = []

    def fit(self, message: bytes) -> bytes:
        msg = wire.decode(message, expect=wire.Kind.GLOBAL_MODEL)
        self.protection.begin(msg.header)
        out = self.protection.seal(
            torch.from_numpy(self.values * self.weight), {"weight": self.weight}, {"round": msg.header["round"]}
        )
        self.answered.append(msg.kind)
        return out

    def handle(self, message: bytes) -> bytes:
        out = self.protection.handle(message)
        self.answered.append(wire.decode(message).kind)
        return out


class RecordingExchange(Exchange):
    """An exchange that keeps every byte the server receives."""

    def __init__(self, round_: int, drop_at=None) -> None:
        super().__init__(round_, drop_at)
        self.received: list[tuple[str, bytes]] = []

    def send(self, client, message, *, method="handle"):
        reply = super().send(client, message, method=method)
        if reply is not None:
            self.received.append((client.client_id, reply))
        return reply


def global_model(round_: int, dim: int) -> bytes:
    return wire.encode(wire.Kind.GLOBAL_MODEL, {"round": round_, "dim": dim}, wire.vector_to_bytes(torch.zeros(dim)))


def federation(settings: SecAggSettings, inputs: list[np.ndarray], weights: list[float] | None = None):
    clients = [
        FakeClient(f"c{i:02d}", settings, x, 1.0 if weights is None else weights[i]) for i, x in enumerate(inputs)
    ]
    server = SecAggServerProtection(settings=settings, rng=SecureRNG())
    server.setup(clients, Exchange(0))
    return clients, server
