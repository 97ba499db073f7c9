"""``--protect secagg``: secure aggregation plugged into the protection seam.

The client half answers the stage messages (:meth:`SecAggClientProtection.handle`)
and masks its weighted update in :meth:`~SecAggClientProtection.seal`, called by
:meth:`securefl.client.SecureClient.fit` after local training. The server half
drives the stages over the round's :class:`~securefl.protect.Exchange` and returns
only the unmasked sum: ``sum n_k * Delta_k`` and ``sum n_k`` (weighted FedAvg),
plus the summed count of clipped coordinates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from securefl.crypto.secagg.client import SecAggClient
from securefl.crypto.secagg.common import SecAggSettings, distributed_noise_stddev, unb64
from securefl.crypto.secagg.server import SecAggResult, SecAggServer
from securefl.exceptions import ProtocolError
from securefl.privacy.client_dp import resolve_noise_multiplier
from securefl.protect import AggregateInput, ClientLike, ClientProtection, Exchange, ServerProtection
from securefl.transport import wire

if TYPE_CHECKING:  # pragma: no cover
    from securefl.config import RunConfig


def settings_from_config(config: "RunConfig") -> SecAggSettings:
    """The ``secagg_*`` fields of a run. Under client-level DP each update has L2
    norm at most ``clip`` and weight 1, so that clip bounds every coordinate exactly
    (with adaptive clipping the clip moves: the larger of it and ``secagg_clip``)."""
    p = config.protection
    client_dp = config.dp.dp == "client"
    clip = p.secagg_clip
    if client_dp:
        clip = max(float(config.dp.clip), p.secagg_clip) if config.dp.adaptive_clip else float(config.dp.clip)
    settings = SecAggSettings(
        clip=clip,
        max_weight=1.0 if client_dp else p.secagg_max_weight,
        bits=p.secagg_bits,
        threshold=p.secagg_threshold,
        neighbors=p.secagg_neighbors,
        malicious=p.secagg_malicious,
        noise_multiplier=(
            resolve_noise_multiplier(config.dp, sample_rate=config.server.fraction, rounds=config.server.rounds)
            if p.secagg_distributed_dp
            else 0.0
        ),
    )
    settings.codec(config.clients)  # the largest round must fit the ring (ConfigValueError otherwise)
    return settings


class SecAggClientProtection(ClientProtection):
    """The client half: holds the round keys, seeds and received shares."""

    name = "secagg"

    def __init__(self, *, client_id: str, settings: SecAggSettings, rng) -> None:
        self.core = SecAggClient(client_id, settings=settings, rng=rng)

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

    def __init__(self, *, settings: SecAggSettings, rng) -> None:
        self.settings = settings
        self.rng = rng
        self.stages = 5 if settings.malicious else 4
        self.distributed_noise = settings.noise_multiplier > 0
        self.directory: dict[str, bytes] = {}
        self.last_result: SecAggResult | None = None  #: the last round's unmasked sum

    def setup(self, clients: Sequence[ClientLike], exchange: Exchange) -> None:
        """Malicious option: collect each client's Ed25519 verification key once. The
        directory stands in for a PKI; clients pin it on first use (see SECURITY)."""
        if not self.settings.malicious:
            return
        request = wire.encode(wire.Kind.SECAGG_IDENTITY_REQUEST, {"round": 0})
        for c in clients:
            raw = exchange.send(c, request)
            if raw is None:
                continue
            msg = wire.decode(raw, expect=wire.Kind.SECAGG_IDENTITY)
            if msg.header.get("client") != c.client_id:
                raise ProtocolError(f"identity reply names {msg.header.get('client')!r}, expected {c.client_id!r}")
            self.directory[c.client_id] = unb64(msg.header.get("vk"), "vk")

    def aggregate(
        self, clients: Sequence[ClientLike], global_message: bytes, dim: int, exchange: Exchange
    ) -> AggregateInput | None:
        by_id = {c.client_id: c for c in clients}
        roster = [cid for cid in by_id if not self.settings.malicious or cid in self.directory]
        if not roster:
            return None
        server = SecAggServer(
            exchange.round, roster, settings=self.settings, rng=self.rng, directory=self.directory
        )

        def ask(ids: Sequence[str], make: Callable[[str], bytes], method: str = "handle") -> dict[str, bytes | None]:
            return {u: exchange.send(by_id[u], make(u), method=method) for u in ids}

        u1 = server.collect_keys(ask(server.roster, server.advertise_request))
        u2 = server.collect_shares(ask(u1, server.share_request))
        u3 = server.collect_masked(ask(u2, lambda u: server.masking_message(u, global_message), "fit"), dim)
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


def client_factory(config: "RunConfig", client_id: str, rng) -> SecAggClientProtection:
    return SecAggClientProtection(client_id=client_id, settings=settings_from_config(config), rng=rng)


def server_factory(config: "RunConfig", rng) -> SecAggServerProtection:
    return SecAggServerProtection(settings=settings_from_config(config), rng=rng)
