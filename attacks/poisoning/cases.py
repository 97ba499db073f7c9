"""Poisoning cases: who is malicious, what they see, and how they join a federation.

Threat model (the *case*, separate from the attack's maths in :mod:`attacks.poisoning.attacks`):

* ``m = round(malicious_fraction * clients)`` clients are malicious and collude as one
  :class:`Coalition`. They run arbitrary code on their side of the protocol: they
  choose the bytes they send, ignore client-side clipping and DP noise, but speak the
  same wire format as :class:`securefl.client.SecureClient` (``client_id``,
  ``fit(message) -> bytes``, ``handle(message) -> bytes``) and report their true
  example counts. They cannot touch the server, the honest clients or the channel.
* Every malicious client sees the broadcast global model and its own data, and the
  coalition pools the malicious clients' benign updates (each member trains honestly
  first, on poisoned data if the attack poisons data).
* ``knowledge="omniscient"`` (full knowledge, as in Baruch et al. 2019, Xie et al. 2019
  and Shejwalkar & Houmansadr 2021) also gives the coalition the honest clients'
  updates of the current round before it submits. In this simulation an
  :class:`HonestObserver` records each honest client's update as it is computed,
  standing in for an attacker that knows the honest data; the malicious clients are
  the last ``m`` in the client list, so the server asks them after the honest ones.
  ``knowledge="own"`` (partial knowledge) gives only the coalition's own updates.

:func:`install` swaps the malicious clients into a :class:`securefl.simulation.Simulation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from attacks.common.federation import with_data
from securefl.client import LocalResult, SecureClient
from securefl.config import DPConfig
from securefl.exceptions import ConfigValueError
from securefl.privacy.noise import SecureRNG
from securefl.transport import wire

if TYPE_CHECKING:  # pragma: no cover
    from attacks.poisoning.attacks import PoisonAttack

KNOWLEDGE = ("omniscient", "own")


@dataclass(frozen=True)
class RoundView:
    """What the malicious coalition knows when it crafts one round's updates.

    Attributes:
        round: the round number.
        global_weights: the global model the server broadcast (every client sees it).
        benign: ``[m, d]`` the updates the m malicious clients computed by training
            honestly on their own (possibly poisoned) data.
        honest: ``[h, d]`` the honest clients' updates of this round, or None when the
            case does not grant full knowledge.
        num_participants: clients aggregated this round, malicious included (n).
    """

    round: int
    global_weights: torch.Tensor
    benign: torch.Tensor
    honest: torch.Tensor | None
    num_participants: int

    @property
    def num_malicious(self) -> int:
        return int(self.benign.shape[0])

    @property
    def known(self) -> torch.Tensor:
        """The benign updates the attacker can compute statistics from: the honest
        ones under full knowledge, its own benign ones otherwise."""
        return self.honest if self.honest is not None and len(self.honest) else self.benign


@dataclass(frozen=True)
class PoisonCase:
    """Who is malicious and what the coalition knows.

    Args:
        malicious_fraction: fraction of all clients that are malicious (0 <= F < 1).
        knowledge: ``"omniscient"`` (sees honest updates of the round) or ``"own"``.
    """

    malicious_fraction: float = 0.2
    knowledge: str = "omniscient"

    def __post_init__(self) -> None:
        f = self.malicious_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f < 1.0:
            raise ConfigValueError("malicious_fraction", f, "must be a number in [0, 1)")
        if self.knowledge not in KNOWLEDGE:
            raise ConfigValueError("knowledge", self.knowledge, f"must be one of {', '.join(KNOWLEDGE)}")

    def num_malicious(self, clients: int) -> int:
        return int(round(self.malicious_fraction * clients))


class Coalition:
    """The malicious clients' shared brain: once per round it trains every member
    honestly, assembles the :class:`RoundView` the case allows, and asks the attack
    for the members' updates.

    Args:
        attack: the poisoning attack.
        members: the malicious clients' honest-training engines (plain SecureClients).
        knowledge: see :class:`PoisonCase`.
        rng: the attack's randomness (seeded: attack noise is not a secret).
    """

    def __init__(
        self, attack: PoisonAttack, members: list[SecureClient], *, knowledge: str, rng: SecureRNG
    ) -> None:
        self.attack = attack
        self.members = {m.client_id: m for m in members}
        self.knowledge = knowledge
        self.rng = rng
        self._observed: dict[int, list[torch.Tensor]] = {}
        self._round: int | None = None
        self._crafted: dict[str, torch.Tensor] = {}
        self._losses: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []

    def observe(self, round_: int, update: torch.Tensor) -> None:
        """Record an honest client's update of ``round_`` (omniscient knowledge only)."""
        if self.knowledge == "omniscient":
            self._observed.setdefault(round_, []).append(update.detach().clone())

    def _prepare(self, weights: torch.Tensor, round_: int, participants: int) -> None:
        results: list[LocalResult] = [m.train(weights, round_) for m in self.members.values()]
        benign = torch.stack([r.update for r in results])
        honest = None
        if self.knowledge == "omniscient":
            seen = self._observed.pop(round_, [])
            if not seen:
                raise ConfigValueError(
                    "knowledge",
                    "omniscient",
                    f"round {round_}: no honest update was observed before the coalition had to answer; "
                    "the malicious clients must come after the honest ones in the client list",
                )
            honest = torch.stack(seen)
        self._observed = {r: v for r, v in self._observed.items() if r > round_}
        view = RoundView(round_, weights, benign, honest, participants)
        crafted = self.attack.craft(view, self.rng)
        if crafted.shape != benign.shape:
            raise ConfigValueError("attack", self.attack.name, f"crafted {tuple(crafted.shape)}, expected {tuple(benign.shape)}")
        self._crafted = dict(zip(self.members, crafted))
        self._losses = {cid: r.loss for cid, r in zip(self.members, results)}
        self._round = round_
        self.history.append(
            {
                "round": round_,
                "benign_norm": float(benign.double().norm(dim=1).mean()),
                "malicious_norm": float(crafted.double().norm(dim=1).mean()),
                "honest_seen": 0 if honest is None else int(honest.shape[0]),
            }
        )

    def update_for(self, client_id: str, weights: torch.Tensor, round_: int, participants: int) -> tuple[torch.Tensor, float]:
        """The crafted update (and the benign training loss) of member ``client_id``."""
        if self._round != round_:
            self._prepare(weights, round_, participants)
        return self._crafted[client_id], self._losses[client_id]


class MaliciousClient:
    """A client that speaks SecureClient's bytes interface but submits the coalition's
    crafted update. Under client-level DP it does *not* clip (the server must)."""

    def __init__(
        self,
        engine: SecureClient,
        coalition: Coalition,
        *,
        participants: int,
        reported_samples: int,
        dp: DPConfig = DPConfig(),
    ) -> None:
        self.client_id = engine.client_id
        self.engine = engine
        self.coalition = coalition
        self.participants = participants
        self.num_samples = reported_samples  #: the true size of its own data, as an honest client reports
        self.dp = dp  #: the run's privacy settings: it sends the same fields an honest client does

    def __getattr__(self, name: str) -> Any:  # noise_multiplier, sample_rate, ... of the engine
        return getattr(self.__dict__["engine"], name)

    def fit(self, message: bytes) -> bytes:
        msg = wire.decode(message, expect=wire.Kind.GLOBAL_MODEL)
        dim, round_ = int(msg.header["dim"]), int(msg.header["round"])
        weights = wire.bytes_to_vector(msg.payload, dim)
        begin = getattr(self.engine.protection, "begin", None)
        if begin is not None:  # the protection's round parameters (e.g. secagg's masking set)
            begin(msg.header)
        update, loss = self.coalition.update_for(self.client_id, weights, round_, self.participants)
        header: dict[str, Any] = {"round": round_, "client": self.client_id, "dim": dim}
        if self.dp.dp == "client":
            # claims to be within the clip and sends its update unclipped
            aux = {"weight": 1.0, "unclipped": 1.0} if self.dp.adaptive_clip else {"weight": 1.0}
            return self.engine.protection.seal(update, aux, header)
        if self.dp.dp == "sample":
            return self.engine.protection.seal(update, {"weight": 1.0}, header)  # uniform FedAvg, as honest clients
        if self.engine.protection.reveals_update:
            header.update(loss=loss, steps=self.engine.local_steps)
        n = float(self.num_samples)
        return self.engine.protection.seal(update * n, {"weight": n}, header)

    def handle(self, message: bytes) -> bytes:
        return self.engine.protection.handle(message)


class HonestObserver:
    """Wraps an honest client unchanged, and shows its update of each round to the
    coalition (full-knowledge threat model only)."""

    def __init__(self, client: SecureClient, coalition: Coalition) -> None:
        self.client = client
        self.client_id = client.client_id
        self.coalition = coalition
        train = client.train

        def observed_train(weights: torch.Tensor, round_: int) -> LocalResult:
            result = train(weights, round_)
            coalition.observe(round_, result.update)
            return result

        client.train = observed_train  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:  # everything else is the honest client's
        return getattr(self.__dict__["client"], name)

    def fit(self, message: bytes) -> bytes:
        return self.client.fit(message)

    def handle(self, message: bytes) -> bytes:
        return self.client.handle(message)


@dataclass
class Installed:
    """What :func:`install` did to a simulation."""

    coalition: Coalition
    malicious_ids: list[str] = field(default_factory=list)
    poisoned_examples: int = 0


def install(sim: Any, attack: PoisonAttack, case: PoisonCase, *, seed: int = 0) -> Installed:
    """Replace the last ``m`` clients of ``sim`` (a Simulation) with malicious ones.

    Each malicious client keeps its data (poisoned by the attack), its model
    architecture, local training settings and protection half, but trains without
    DP (an attacker does not add noise to itself)."""
    clients = sim.clients
    m = case.num_malicious(len(clients))
    if m == 0:
        return Installed(Coalition(attack, [], knowledge=case.knowledge, rng=SecureRNG.from_seed(seed, "attack")))
    if m >= len(clients):
        raise ConfigValueError("malicious_fraction", case.malicious_fraction, f"leaves no honest client among {len(clients)}")
    num_classes = sim.data.num_classes
    data_rng = SecureRNG.from_seed(seed, "attack-data")
    engines: list[SecureClient] = []
    sizes: list[int] = []
    poisoned = 0
    for orig in clients[-m:]:
        sizes.append(orig.num_samples)
        x, y = attack.poison_data(orig.x, orig.y, num_classes=num_classes, rng=data_rng)
        poisoned += int(len(x))
        engines.append(with_data(orig, x, y, dp=DPConfig()))
    coalition = Coalition(attack, engines, knowledge=case.knowledge, rng=SecureRNG.from_seed(seed, "attack"))
    participants = max(1, round(sim.config.server.fraction * len(clients)))
    honest = [HonestObserver(c, coalition) if case.knowledge == "omniscient" else c for c in clients[:-m]]
    sim.clients = honest + [
        MaliciousClient(e, coalition, participants=participants, reported_samples=n, dp=sim.config.dp)
        for e, n in zip(engines, sizes)
    ]
    return Installed(coalition, [e.client_id for e in engines], poisoned)
