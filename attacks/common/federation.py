"""Changing one party of a federation that the library built.

Attack and audit cases start from a :class:`securefl.simulation.Simulation` (the
library's own set-up: data split, clients, protection halves, ledger, server) and
change only what their threat model changes: a client's data, or the size of the
population the server samples from. These helpers rebuild that one party from the
parts the library already made, so nothing else about it can drift.
"""

from __future__ import annotations

import copy

import torch

from securefl.client import SecureClient
from securefl.config import ClientConfig, DPConfig
from securefl.server import SecureServer


def with_data(
    client: SecureClient,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    config: ClientConfig | None = None,
    dp: DPConfig | None = None,
    planned_rounds: int = 1,
) -> SecureClient:
    """``client`` holding ``(x, y)`` instead of its own data: same id, model
    architecture, task, protection half, ledger, noise generator, round memory,
    algorithm and seed; ``config``/``dp`` replace its settings when given
    (``planned_rounds`` is what a sample-level noise multiplier is solved for)."""
    model = client.model
    return SecureClient(
        client.client_id,
        x,
        y,
        model_fn=lambda: copy.deepcopy(model),
        task=client.task,
        config=client.config if config is None else config,
        dp=client.dp if dp is None else dp,
        planned_rounds=planned_rounds,
        ledger=client.ledger,
        protection=client.protection,
        algorithm=client.algorithm,
        rng=client.rng,
        seed=client.seed,
        guard=client.guard,
    )


def with_population(server: SecureServer, num_clients: int) -> SecureServer:
    """``server`` (same model, settings, protection half, ledger, evaluation data,
    generator and root reference) sampling from a population of ``num_clients``."""
    return SecureServer(
        server.model,
        config=server.config,
        dp=server.dp,
        num_clients=num_clients,
        protection=server.protection,
        ledger=server.ledger,
        eval_data=server.eval_data,
        task=server.task,
        rng=server.rng,
        reference=server.reference,
    )
