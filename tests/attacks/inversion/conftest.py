"""Fixtures of the inversion tests: playing one round of a case, scoring a
reconstruction, and pushing fixed updates through the library's real protocols."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.inversion.cases import build_case_model, run_round, trial_batches
from attacks.inversion.metrics import score
from securefl.privacy.noise import SecureRNG
from securefl.transport import wire


@pytest.fixture
def play_round(digits):
    """``play(case, trial=0, seed=0, rng=None) -> (view, truth)`` on the digits."""

    def play(case, trial=0, seed=0, rng=None):
        idx = trial_batches(digits.y_train, case, trial, seed)
        model = build_case_model(case, digits.input_shape, digits.num_classes, seed=trial)
        return run_round(case, model, [(digits.x_train[i], digits.y_train[i]) for i in idx], rng or SecureRNG())

    return play


@pytest.fixture
def scored(digits):
    """``scored(truth, rec)``: the reconstruction's scores against the round's images."""

    def scores(truth, rec):
        return score(truth.all_images, truth.all_labels, rec.images, rec.labels, digits.x_train.mean(0))

    return scores


def global_model(round_: int, dim: int) -> bytes:
    return wire.encode(wire.Kind.GLOBAL_MODEL, {"round": round_, "dim": dim}, wire.vector_to_bytes(torch.zeros(dim)))


class _FixedUpdate:
    """A client whose 'training' returns a fixed update (weight 1), sealed by a
    protection half of the library."""

    def __init__(self, cid: str, protection, update: np.ndarray) -> None:
        self.client_id = cid
        self.protection = protection
        self.update = np.asarray(update, dtype=np.float64)

    def fit(self, message: bytes) -> bytes:
        msg = wire.decode(message, expect=wire.Kind.GLOBAL_MODEL)
        begin = getattr(self.protection, "begin", None)
        if begin is not None:
            begin(msg.header)
        header = {"round": msg.header["round"], "client": self.client_id, "dim": msg.header["dim"]}
        return self.protection.seal(torch.from_numpy(self.update), {"weight": 1.0}, header)

    def handle(self, message: bytes) -> bytes:
        return self.protection.handle(message)


@pytest.fixture
def secagg_aggregate():
    """``aggregate(settings, updates) -> AggregateInput``: the updates through the real
    secure-aggregation protocol (complete graph, no roster)."""
    from securefl.protections import Exchange
    from securefl.protections.secagg import SecAggClientProtection, SecAggServerProtection

    def aggregate(settings, updates):
        clients = [
            _FixedUpdate(f"c{i:02d}", SecAggClientProtection(client_id=f"c{i:02d}", settings=settings, rng=SecureRNG()), u)
            for i, u in enumerate(updates)
        ]
        server = SecAggServerProtection(settings=settings)
        dim = len(updates[0])
        return server.aggregate(clients, global_model(1, dim), dim, Exchange(1))

    return aggregate


@pytest.fixture
def ckks_aggregate():
    """``aggregate(updates, clip) -> AggregateInput``: the updates through real CKKS
    (small-model preset, the clients holding the key, the server a public context)."""
    from securefl.config import ServerConfig
    from securefl.crypto.hazmat import ckks as hz
    from securefl.protections import Exchange
    from securefl.protections.ckks import CKKSSettings
    from securefl.protections.ckks_client import CKKSClient
    from securefl.protections.ckks_server import CKKSServer
    from securefl.server import SecureServer

    def aggregate(updates, clip):
        n, dim = len(updates), len(updates[0])
        params = hz.derive_params("small-model", max_summands=n, max_error=1e-3)
        settings = CKKSSettings(params, clip, 1.0, min(3, n))
        half = CKKSServer(settings=settings)
        server = SecureServer(torch.nn.Linear(dim, 1, bias=False), config=ServerConfig(rounds=1), num_clients=n, protection=half)
        clients = [_FixedUpdate(f"c{i}", CKKSClient(client_id=f"c{i}", settings=settings), u) for i, u in enumerate(updates)]
        half.setup(clients, Exchange(0))
        return half.aggregate(clients, server.global_message(1), dim, Exchange(1))

    return aggregate
