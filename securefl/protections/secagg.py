"""``--protect secagg``: secure aggregation plugged into the protection seam.

The client half answers the stage messages (:meth:`SecAggClientProtection.handle`)
and masks its weighted update in :meth:`~SecAggClientProtection.seal`, called by
:meth:`securefl.client.SecureClient.fit` after local training. The server half
drives the stages over the round's :class:`~securefl.protections.base.Exchange` and
returns only the unmasked sum: ``sum n_k * Delta_k`` and ``sum n_k`` (weighted
FedAvg), plus the summed count of clipped coordinates. The protocol itself (who
sends what, and the checks) is the state machines of :mod:`securefl.crypto.secagg`.

Who is who: with ``malicious`` settings both halves need the federation's
:class:`~securefl.crypto.identity.Roster` (verification keys pinned out of band) and
each client its own :class:`~securefl.crypto.identity.Identity`; the server relays
no keys of its own. The ``rng`` the client half receives is for the distributed-DP
noise share only; everything else is drawn from the OS CSPRNG.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from securefl.crypto.identity import Identity, Roster
from securefl.crypto.replay import RoundGuard
from securefl.crypto.secagg.client import SecAggClient
from securefl.crypto.secagg.common import SecAggSettings, distributed_noise_stddev
from securefl.crypto.secagg.server import SecAggResult, SecAggServer
from securefl.exceptions import ConfigTypeError, ConfigValueError
from securefl.protections.base import (
    AggregateInput,
    ClientLike,
    ClientProtection,
    Exchange,
    GlobalMessage,
    ServerProtection,
    message_for,
)
from securefl.transport import wire

__all__ = ["SecAggClientProtection", "SecAggServerProtection"]


class SecAggClientProtection(ClientProtection):
    """The client half: holds the round keys, seeds and received shares (see
    :class:`~securefl.crypto.secagg.client.SecAggClient` for the arguments)."""

    name = "secagg"

    def __init__(
        self,
        *,
        client_id: str,
        settings: SecAggSettings,
        rng: Any,
        identity: Identity | None = None,
        roster: Roster | None = None,
        guard: RoundGuard | None = None,
    ) -> None:
        self.core = SecAggClient(client_id, settings=settings, rng=rng, identity=identity, roster=roster, guard=guard)

    def begin(self, header: dict[str, Any]) -> None:
        self.core.receive(header)

    def handle(self, message: bytes) -> bytes:
        return self.core.handle(message)

    def seal(self, weighted_update: torch.Tensor, aux: dict[str, float], header: dict[str, Any]) -> bytes:
        weight = float(aux.get("weight", 0.0))
        values = weighted_update.detach().to(torch.float64).numpy()
        return self.core.masked_input(values, weight, aux, header)


class SecAggServerProtection(ServerProtection):
    """The server half: runs the stages, unmasks the survivors' sum, reports stats.

    ``stages`` is 4 (advertise, share keys, masked input, unmask) or 5 with the
    malicious-server option (a consistency check before unmasking).
    """

    name = "secagg"
    sees_individual_updates = False

    def __init__(self, *, settings: SecAggSettings, roster: Roster | None = None) -> None:
        if roster is not None and not isinstance(roster, Roster):
            raise ConfigTypeError("roster", type(roster).__name__, "must be a securefl.crypto.identity.Roster")
        if settings.malicious and roster is None:
            raise ConfigValueError("roster", None, "secagg_malicious needs a roster of verification keys pinned out of band")
        self.settings = settings
        self.roster = roster
        self.stages = 5 if settings.malicious else 4
        self.distributed_noise = settings.noise_multiplier > 0
        #: the pinned verification keys (the server verifies what it relays; clients check again)
        self.directory: dict[str, bytes] = dict(roster.members) if roster is not None else {}
        self.last_result: SecAggResult | None = None  #: the last round's unmasked sum

    def aggregate(
        self, clients: Sequence[ClientLike], global_message: GlobalMessage, dim: int, exchange: Exchange
    ) -> AggregateInput | None:
        by_id = {c.client_id: c for c in clients}
        # clients outside the pinned roster would refuse the whole cohort: leave them out
        roster = [cid for cid in by_id if self.roster is None or cid in self.roster]
        if not roster:
            return None
        server = SecAggServer(exchange.round, roster, settings=self.settings, directory=self.directory)

        def ask(ids: Sequence[str], make: Callable[[str], bytes], method: str = "handle") -> dict[str, bytes | None]:
            ids = list(ids)
            replies = exchange.send_many([(by_id[u], make(u)) for u in ids], method=method)
            return dict(zip(ids, replies))

        u1 = server.collect_keys(ask(server.roster, server.advertise_request))
        u2 = server.collect_shares(ask(u1, server.share_request))
        u3 = server.collect_masked(ask(u2, lambda u: server.masking_message(u, message_for(global_message, u)), "fit"), dim)
        unmaskers = u3
        if self.settings.malicious:
            unmaskers = server.collect_signatures(ask(u3, server.consistency_request))
        result = server.collect_unmask(ask(unmaskers, server.unmask_request))
        self.last_result = result

        n = len(server.roster)
        float32 = 4 * dim
        masked = server.stage_bytes.get(wire.Kind.SECAGG_MASKED_INPUT.name, 0) / max(1, len(u3))
        key_bytes = sum(v for k, v in server.stage_bytes.items() if k != wire.Kind.SECAGG_MASKED_INPUT.name) / n
        stats = {
            "dropouts": len([c for c in exchange.dropped if c in by_id]),
            "saturated": result.saturated,
            "survivors": len(result.survivors),
            # left out by the protocol: too few live neighbours to share or mask safely
            "excluded": len(set(server.roster) - set(result.survivors) - set(exchange.dropped) - set(exchange.refused)),
            "threshold": server.threshold,
            # distributed DP: the per-coordinate noise std in the released sum
            "noise_stddev": distributed_noise_stddev(
                self.settings, dim=dim, threshold=server.threshold, resolution=server.codec.resolution
            ) * len(result.survivors) ** 0.5,
            "neighbors": len(server.graph[server.roster[0]]),
            "bits": server.codec.bits,
            "frac_bits": server.codec.frac_bits,
            "float32_bytes": float32,
            "masked_input_bytes": round(masked, 1),
            "masked_input_ratio": round(masked / float32, 5),
            "key_bytes_per_client": round(key_bytes, 1),
            "bytes_up_per_client": round(exchange.bytes_up / n, 1),
        }
        return AggregateInput(
            total=torch.from_numpy(result.total).to(torch.float32),
            aux=result.aux,
            count=len(result.survivors),
            individual=None,
            headers=server.headers,
            stats=stats,
        )
