"""Fuzz target: SecureClient.fit, the client's parser of the server's GLOBAL_MODEL
message (round, dim, client_clip, payload), plaintext and under client-level DP."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from securefl.client import SecureClient
from securefl.config import ClientConfig, DPConfig
from securefl.transport import wire
from tests.fuzz.harness import contained, fuzz_settings, mutate_message

DIM = 2 * 3 + 2  # Linear(3, 2)


def _client(dp: DPConfig) -> SecureClient:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)
    return SecureClient(
        "c0", x, y, model_fn=lambda: torch.nn.Linear(3, 2), config=ClientConfig(local_epochs=1.0, batch_size=8), dp=dp
    )


@pytest.fixture(scope="module", params=["none", "client"])
def client(request):
    return _client(DPConfig(dp=request.param, clip=1.0, noise_multiplier=1.0) if request.param == "client" else DPConfig())


@fuzz_settings(300)
@given(st.data())
def test_fit_mutated_global_model(client, data):
    header = {"round": data.draw(st.integers(1, 10**6)), "dim": DIM}
    if client.dp.dp == "client":
        header["client_clip"] = 1.0
    raw = wire.encode(wire.Kind.GLOBAL_MODEL, header, wire.vector_to_bytes(torch.zeros(DIM)))
    mutated = mutate_message(data, raw, ["round", "dim", "client_clip", "secagg"])
    contained("client: fit", lambda: client.fit(mutated))
