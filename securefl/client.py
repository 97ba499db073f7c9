"""SecureClient: local training, plain or DP-SGD, returning a protected update.

A client receives the global model as bytes, trains on its own data, and
returns bytes. With sample-level DP it owns its privacy: it solves its noise
multiplier from its budget, records every round's spend in the ledger *before*
training (on disk before the update leaves the process: at once, or at the
simulation's per-round sync; so a crash can only over-count), and refuses a round
that would take it over budget (:class:`~securefl.exceptions.BudgetExhaustedError`).

What leaves the client (the CLIENT_UPDATE header and the sealed counters) is fixed
per privacy mode, never chosen by the server:

* ``dp="none"``: ``round``, ``client``, ``dim``; ``steps`` and the local ``loss``
  only under a protection that reveals the update (and ``n_k``) anyway; the
  update weighted by ``weight = n_k`` (sample-weighted FedAvg).
* ``dp="sample"``: ``round``, ``client``, ``dim``; the DP-SGD update with
  ``weight = 1`` (uniform FedAvg over clients: ``n_k`` counts private records).
* ``dp="client"``: ``round``, ``client``, ``dim``; the update clipped to the
  client's *own* clip with ``weight = 1``, plus the ``unclipped`` bit with adaptive
  clipping only (its sum is noised by the server and charged by the accountant).

A round is ``local_steps`` minibatch steps, or ``local_epochs`` passes. With
``client_momentum`` (worker momentum, Karimireddy, He, Jaggi, ICML 2021) the client
keeps its SGD momentum buffer across rounds (:meth:`SecureClient.state_dict`). That
state never leaves the client, and it is covered by the DP release it came from:
under ``dp="sample"`` it averages DP-SGD's already noised gradients (post-processing
of the client's DP-SGD releases); under ``dp="client"`` every round's update is
clipped to the client's clip whatever it was computed from, and the configuration
refuses worker momentum with client sampling, whose hidden coin flips the buffer
would otherwise carry from round to round.

Privacy parameters in the server's message are checked against the client's own
configuration (a mismatch raises :class:`~securefl.exceptions.ProtocolError`), and a
:class:`~securefl.crypto.replay.RoundGuard` refuses any round at or below the last
one answered (:class:`~securefl.exceptions.ReplayError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from securefl.config import ClientConfig, DPConfig, DPMode
from securefl.crypto.replay import RoundGuard
from securefl.data import minibatches
from securefl.exceptions import ConfigValueError, ProtocolError
from securefl.models import get_flat, set_flat
from securefl.privacy.calibration import noise_multiplier_for
from securefl.privacy.client_dp import clip_update
from securefl.privacy.dpsgd import WrapperCache, dp_sgd_train, steps_per_round
from securefl.privacy.events import Mechanism
from securefl.privacy.ledger import PrivacyLedger
from securefl.privacy.noise import SecureRNG
from securefl.protections.base import ClientProtection, Plaintext
from securefl.transport import wire
from securefl.validators import is_int, is_number


def _loss_fn(task: str) -> Callable[..., torch.Tensor]:
    return F.cross_entropy if task == "classification" else F.mse_loss


def local_schedule(config: ClientConfig, num_samples: int, algorithm: str = "fedavg") -> tuple[float, int]:
    """A client's DP-SGD sampling rate and local steps per round: the rate is
    ``config.sample_rate``, or ``batch_size / n_k`` (at most 1); the steps are
    ``config.local_steps`` when set, else enough for ``local_epochs`` passes in
    expectation; FedSGD takes one step."""
    sample_rate = min(1.0, config.sample_rate or config.batch_size / num_samples)
    if algorithm == "fedsgd":
        return sample_rate, 1
    steps = config.local_steps or steps_per_round(config.local_epochs, sample_rate)
    return sample_rate, steps


class StalenessRule(Protocol):
    """A client's rule for asynchronous work (:class:`securefl.aggregation.staleness.StalenessPolicy`)."""

    def factor(self, staleness: object) -> float:
        """The weight in (0, 1] of an update ``staleness`` server steps old, or
        :class:`~securefl.exceptions.ProtocolError` if the client refuses it."""


@dataclass(frozen=True)
class LocalResult:
    """What local training produced (kept on the client; only the sealed update leaves)."""

    update: torch.Tensor
    num_samples: int
    loss: float
    steps: int
    epsilon: float | None


class SecureClient:
    """One federated client.

    Args:
        client_id: a stable name; the ledger's subject for sample-level DP.
        x, y: the client's local data (never leaves the client).
        model_fn: builds a fresh model of the federation's architecture.
        task: ``"classification"`` or ``"regression"``.
        config: local training settings.
        dp: privacy settings; ``dp.mode is DPMode.SAMPLE`` turns on DP-SGD.
        planned_rounds: rounds the noise multiplier is solved for (sample-level DP);
            the client assumes it may take part in every one of them.
        ledger: where spend is recorded; defaults to an in-memory ledger.
        protection: the client half of the update protection; defaults to plaintext.
        algorithm: ``"fedavg"`` (local epochs) or ``"fedsgd"`` (one step).
        rng: secure randomness for noise and sampling; a fresh ``SecureRNG`` by default.
        seed: seeds the shuffling of non-private local training.
        guard: the client's memory of answered rounds (persist it with a path to survive
            restarts); an in-memory :class:`~securefl.crypto.replay.RoundGuard` by default.
        noise_multiplier: DP-SGD's noise multiplier when the caller solved it
            (:mod:`securefl.build` does); otherwise it is solved here for
            ``planned_rounds`` by the same function,
            :func:`securefl.privacy.calibration.noise_multiplier_for`.
    """

    def __init__(
        self,
        client_id: str,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        model_fn: Callable[[], nn.Module],
        task: str = "classification",
        config: ClientConfig = ClientConfig(),
        dp: DPConfig = DPConfig(),
        planned_rounds: int = 1,
        ledger: PrivacyLedger | None = None,
        protection: ClientProtection | None = None,
        algorithm: str = "fedavg",
        rng: SecureRNG | None = None,
        seed: int = 0,
        guard: RoundGuard | None = None,
        noise_multiplier: float | None = None,
        staleness: StalenessRule | None = None,
    ) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise ConfigValueError("x", len(x), f"client {client_id} needs matching, non-empty x and y (y has {len(y)})")
        self.client_id = str(client_id)
        self.x, self.y = x, y
        self.model = model_fn()
        self.dim = int(get_flat(self.model).numel())
        self.task = task
        self.config = config
        self.dp = dp
        self.algorithm = algorithm
        self.protection = protection or Plaintext()
        self.rng = rng or SecureRNG()
        self.seed = seed
        self.guard = guard if guard is not None else RoundGuard()
        #: asynchronous aggregation: this client's bound on, and weight for, stale work
        self.staleness = staleness
        self.ledger = ledger or PrivacyLedger(None, delta=dp.delta, budget=dp.epsilon, accountant=dp.accountant)
        self.sample_rate, self.local_steps = local_schedule(config, len(x), algorithm)
        self.noise_multiplier: float | None = None
        if dp.mode is DPMode.SAMPLE:
            if noise_multiplier is None:
                noise_multiplier = noise_multiplier_for(
                    dp, sample_rate=self.sample_rate, steps=planned_rounds * self.local_steps
                )
            self.noise_multiplier = float(noise_multiplier)
        #: worker momentum kept across rounds (``config.client_momentum > 0``), flat
        self.momentum_buffer: torch.Tensor | None = torch.zeros(self.dim) if config.client_momentum > 0 else None
        self._opt: torch.optim.Optimizer | None = None
        #: DP-SGD's grad-sample mode (``dpsgd.GRAD_SAMPLE_MODES``); the wrapped model is kept across rounds
        self.grad_sample_mode = "auto"
        self._dp_wrappers = WrapperCache()

    @property
    def num_samples(self) -> int:
        return len(self.x)

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr)
        if self.momentum_buffer is None:
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum)
        beta = c.client_momentum
        # dampening beta: buf <- beta buf + (1 - beta) g, as in Karimireddy et al. 2021
        opt = torch.optim.SGD(params, lr=c.lr, momentum=beta, dampening=beta)
        offset = 0
        for p in params:
            opt.state[p]["momentum_buffer"] = self.momentum_buffer[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self._opt = opt
        return opt

    def _keep_momentum(self) -> None:
        """Store the round's final worker-momentum buffer (it stays on the client)."""
        if self.momentum_buffer is None or self._opt is None:
            return
        bufs = [self._opt.state[p]["momentum_buffer"] for group in self._opt.param_groups for p in group["params"]]
        self.momentum_buffer = torch.cat([b.detach().reshape(-1) for b in bufs]).to(torch.float32).clone()
        self._opt = None

    # ------------------------------------------------------------ persistent state
    def state_dict(self) -> dict[str, Any]:
        """What this client carries from one round to the next, as plain values:
        ``{"momentum_buffer": tensor of dim floats or None}`` (worker momentum).

        Under ``dp="sample"`` the buffer is a running average of DP-SGD's already
        noised gradients, so it is post-processing of the client's DP releases and
        costs no budget; it depends on private data and must stay with the client
        (save it where the client keeps its own data, never hand it to the server).
        With ``--compress randk`` and error feedback it also holds ``"residual"``, the
        coordinates not sent yet (same rules: private, stays with the client)."""
        vectors = {"momentum_buffer": self.momentum_buffer}
        if hasattr(self.protection, "residual"):  # --compress randk with error feedback
            vectors["residual"] = self.protection.residual
        return {k: None if v is None else v.clone() for k, v in vectors.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (e.g. when resuming a run)."""
        keys = {"momentum_buffer", "residual"} if hasattr(self.protection, "residual") else {"momentum_buffer"}
        if not isinstance(state, dict) or not {"momentum_buffer"} <= set(state) <= keys:
            raise ConfigValueError("state", sorted(state) if isinstance(state, dict) else state, f"expected the keys {sorted(keys)}")
        buf = state["momentum_buffer"]
        if (buf is None) != (self.momentum_buffer is None):
            raise ConfigValueError("momentum_buffer", None if buf is None else "tensor", "does not match this client's client_momentum")
        # both checked before either is set: a refused state changes nothing
        buf, res = (None if state.get(k) is None else _vector(k, state[k], self.dim) for k in ("momentum_buffer", "residual"))
        self.momentum_buffer = buf  # None exactly when it was None (checked above)
        if res is not None:
            self.protection.residual = res  # type: ignore[attr-defined]

    # ------------------------------------------------------------ training
    def train(self, weights: torch.Tensor, round_: int) -> LocalResult:
        """Train from ``weights`` and return ``w_local - weights``."""
        set_flat(self.model, weights)
        self.model.train()
        loss_fn = _loss_fn(self.task)
        epsilon = None
        if self.dp.mode is DPMode.SAMPLE:
            assert self.noise_multiplier is not None
            # record the spend first: a crash after this can only over-count
            entry = self.ledger.record(
                subject=self.client_id,
                round=round_,
                mechanism=Mechanism.DP_SGD,
                noise_multiplier=self.noise_multiplier,
                sample_rate=self.sample_rate,
                steps=self.local_steps,
            )
            epsilon = float(entry["epsilon"][self.dp.accountant])
            loss = dp_sgd_train(
                self.model,
                self.x,
                self.y,
                loss_fn=loss_fn,
                optimizer_fn=self._optimizer,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.dp.clip,
                sample_rate=self.sample_rate,
                steps=self.local_steps,
                rng=self.rng,
                # public: the update's scale must not reveal n_k (batch_size = q * n_k when
                # the sampling rate is derived from it)
                expected_batch_size=float(self.config.batch_size),
                grad_sample_mode=self.grad_sample_mode,
                cache=self._dp_wrappers,
            )
            steps = self.local_steps
        else:
            loss, steps = self._plain_train(loss_fn, round_)
        self._keep_momentum()
        update = get_flat(self.model) - weights
        return LocalResult(update, self.num_samples, loss, steps, epsilon)

    def _plain_train(self, loss_fn, round_: int) -> tuple[float, int]:
        opt = self._optimizer(list(self.model.parameters()))
        n = self.num_samples
        if self.algorithm == "fedsgd":
            batches = [torch.arange(n)]
        else:
            c = self.config
            key = f"{self.seed}:{self.client_id}:{round_}"
            batches = minibatches(n, c.batch_size, epochs=c.local_epochs, steps=c.local_steps, key=key)
        losses = []
        for idx in batches:
            opt.zero_grad()
            loss = loss_fn(self.model(self.x[idx]), self.y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return float(sum(losses) / len(losses)), len(batches)

    # ------------------------------------------------------------ messages
    def fit(self, message: bytes) -> bytes:
        """Handle one GLOBAL_MODEL message; return the sealed CLIENT_UPDATE message.

        Raises :class:`~securefl.exceptions.ProtocolError` (before any training) if the
        message's privacy parameters disagree with this client's configuration,
        :class:`~securefl.exceptions.ReplayError` if its round is not after the last
        one answered, and :class:`~securefl.exceptions.BudgetExhaustedError` if this
        round would exceed the client's privacy budget.
        """
        msg = wire.decode(message, expect=wire.Kind.GLOBAL_MODEL, max_size=wire.size_limit(self.dim, per_coordinate=4))
        round_ = _header_int(msg.header, "round")
        dim = _header_int(msg.header, "dim")
        if dim != self.dim:
            raise ProtocolError(f"GLOBAL_MODEL dim={dim} differs from this client's model size {self.dim}")
        clip = self._client_clip(msg.header)
        factor = self._staleness_factor(msg.header)
        weights = wire.bytes_to_vector(msg.payload, dim)
        self.guard.advance("fit", round_)  # persisted before anything is computed
        self.protection.begin(msg.header)
        result = self.train(weights, round_)
        update, aux = self._release(result, clip)
        if factor != 1.0:
            update = update * factor  # w(s) <= 1: never beyond the clip
        return self.protection.seal(update, aux, self._header(round_, dim, result))

    def _staleness_factor(self, header: dict[str, Any]) -> float:
        """The weight of this (asynchronous) update, from this client's own rule:
        a staleness above its bound, or one sent to a synchronous client, is refused."""
        sent = header.get("staleness")
        if self.staleness is None:
            if sent is not None:
                raise ProtocolError(f"staleness={sent!r} sent to client {self.client_id}, which runs synchronous rounds")
            return 1.0
        if sent is None:
            raise ProtocolError(f"staleness missing; client {self.client_id} runs asynchronous aggregation")
        return self.staleness.factor(sent)

    def _client_clip(self, header: dict[str, Any]) -> float | None:
        """The client-level clip to apply: decided by this client's own ``dp`` config;
        the server's ``client_clip`` is only checked against it (fixed clipping) or,
        with adaptive clipping (central DP: the server noises), accepted if sane."""
        sent = header.get("client_clip")
        if self.dp.mode is not DPMode.CLIENT:
            if sent is not None:
                raise ProtocolError(
                    f"client_clip={sent!r} sent to client {self.client_id}, which is configured for dp={self.dp.dp!r}"
                )
            return None
        if sent is None:
            raise ProtocolError(f"client_clip missing; client {self.client_id} is configured for dp='client'")
        if not is_number(sent) or not (math.isfinite(sent) and sent > 0):
            raise ProtocolError(f"client_clip={sent!r} must be a positive finite number")
        if not self.dp.adaptive_clip and float(sent) != float(self.dp.clip):
            raise ProtocolError(
                f"client_clip={sent!r} differs from client {self.client_id}'s configured clip {self.dp.clip!r}"
            )
        return float(sent)

    def _release(self, result: LocalResult, clip: float | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The vector to seal and its counters (see the module docstring)."""
        if self.dp.mode is DPMode.CLIENT:
            assert clip is not None  # _client_clip returns one under dp="client"
            clipped, norm = clip_update(result.update, clip)
            aux = {"weight": 1.0}
            if self.dp.adaptive_clip:
                # the server noises this bit's sum and the accountant charges it
                aux["unclipped"] = float(norm <= clip)
            return clipped, aux
        if self.dp.mode is DPMode.SAMPLE:
            # uniform FedAvg over clients: n_k is a count of private records
            return result.update, {"weight": 1.0}
        n = float(result.num_samples)
        return result.update * n, {"weight": n}

    def _header(self, round_: int, dim: int, result: LocalResult) -> dict[str, Any]:
        """The CLIENT_UPDATE header: only the round's coordinates under DP (the loss,
        step count and epsilon are functions of the private data, outside the release)."""
        header: dict[str, Any] = {"round": round_, "client": self.client_id, "dim": dim}
        if not self.dp.enabled and self.protection.reveals_update:
            # no DP and the server sees the update and n_k anyway: nothing more is lost
            header["steps"] = result.steps
            header["loss"] = result.loss
        return header

    def handle(self, message: bytes) -> bytes:
        """Answer a protocol message of this client's protection (key exchange,
        unmasking, decryption of an aggregate)."""
        return self.protection.handle(message)


def _vector(name: str, value: Any, dim: int) -> torch.Tensor:
    """A restored state vector: ``dim`` finite floats, or ConfigValueError naming ``name``."""
    v = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if v.numel() != dim or not bool(torch.isfinite(v).all()):
        raise ConfigValueError(name, tuple(v.shape), f"must hold {dim} finite values")
    return v.clone()


def _header_int(header: dict[str, Any], name: str) -> int:
    value = header.get(name)
    # rounds are hashed as unsigned 64-bit integers; a round guard holding 2^64 would be stuck
    if not is_int(value) or not 1 <= value < 2**63:
        raise ProtocolError(f"GLOBAL_MODEL header {name}={value!r} must be a positive integer below 2^63")
    return value
