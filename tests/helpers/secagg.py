"""In-memory clients and a recording exchange for secure-aggregation tests."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from securefl.crypto.identity import Identity, Roster
from securefl.crypto.replay import RoundGuard
from securefl.crypto.secagg.common import SecAggSettings
from securefl.protections.secagg import SecAggClientProtection, SecAggServerProtection
from securefl.privacy.noise import SecureRNG
from securefl.protections import Exchange
from securefl.transport import wire


class FakeClient:
    """A client whose 'training' returns a fixed weighted update."""

    def __init__(
        self,
        cid: str,
        settings: SecAggSettings,
        values: np.ndarray,
        weight: float = 1.0,
        *,
        identity: Identity | None = None,
        roster: Roster | None = None,
        guard: RoundGuard | None = None,
        rng: SecureRNG | None = None,
        protection: SecAggClientProtection | None = None,
    ) -> None:
        self.client_id = cid
        self.identity = identity
        self.protection = protection or SecAggClientProtection(
            client_id=cid, settings=settings, rng=rng or SecureRNG(), identity=identity, roster=roster, guard=guard
        )
        self.values = np.asarray(values, dtype=np.float64)
        self.weight = weight
        self.answered: list[wire.Kind] = []
        self.sent: list[bytes] = []  #: every reply this client produced

    @property
    def core(self):
        return self.protection.core

    def fit(self, message: bytes) -> bytes:
        msg = wire.decode(message, expect=wire.Kind.GLOBAL_MODEL)
        self.protection.begin(msg.header)
        out = self.protection.seal(
            torch.from_numpy(self.values * self.weight), {"weight": self.weight}, {"round": msg.header["round"]}
        )
        self.answered.append(msg.kind)
        self.sent.append(out)
        return out

    def handle(self, message: bytes) -> bytes:
        out = self.protection.handle(message)
        self.answered.append(wire.decode(message).kind)
        self.sent.append(out)
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


def federation(
    settings: SecAggSettings,
    inputs: list[np.ndarray],
    weights: list[float] | None = None,
    *,
    pin: bool = True,
    noise_rng: Callable[[str], SecureRNG] | None = None,
    guards: dict[str, RoundGuard] | None = None,
    server_settings: SecAggSettings | None = None,
):
    """Clients ``c00, c01, ...`` with fresh identities, and the server half. With
    ``pin`` (required by the malicious option) every party gets the roster of those
    identities, as an operator would distribute it out of band."""
    ids = [f"c{i:02d}" for i in range(len(inputs))]
    identities = {cid: Identity.generate(cid) for cid in ids}
    roster = Roster.of(identities.values()) if pin else None
    clients = [
        FakeClient(
            cid,
            settings,
            x,
            1.0 if weights is None else weights[i],
            identity=identities[cid],
            roster=roster,
            guard=(guards or {}).get(cid),
            rng=noise_rng(cid) if noise_rng is not None else None,
        )
        for i, (cid, x) in enumerate(zip(ids, inputs))
    ]
    server = SecAggServerProtection(settings=server_settings or settings, roster=roster)
    return clients, server
