"""The composition root: a :class:`~securefl.config.RunConfig` becomes a federation.

:func:`build` is the one place that knows how the parts fit: it loads and splits
the data, opens the ledger, hands every client its identity, roster and round
memory, solves the privacy budget into noise multipliers (:class:`NoisePlan`,
once per mechanism, through :func:`securefl.privacy.calibration.noise_multiplier_for`),
derives the protection's own settings from the run's fields, and builds the
clients, the server and both halves of the protection. The in-process
:class:`~securefl.simulation.Simulation` runs what it returns; attack cases,
audits and deployment adapters build through it too, so none of them copies it.

:func:`check` is the validation a config cannot do by itself (it imports no
component): CKKS parameters that meet 128-bit security for the federation, a
secure-aggregation ring the sum fits, a robust rule's Byzantine bound. :func:`build`
runs it first; call it alone to validate without building.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from securefl.aggregation.robust import BYZANTINE_BOUNDS, min_clients
from securefl.aggregation.root import RootReference
from securefl.aggregation.staleness import StalenessPolicy
from securefl.client import SecureClient, local_schedule
from securefl.config import DPMode, ProtectConfig, RunConfig
from securefl.crypto.hazmat import ckks as hz
from securefl.crypto.identity import Identity, Roster
from securefl.crypto.replay import RoundGuard
from securefl.crypto.secagg.common import SecAggSettings
from securefl.data import FederatedData, as_federated, load_dataset, partition
from securefl.exceptions import ConfigError, ConfigValueError
from securefl.models import build_model, check_model, num_parameters, resolve_factory
from securefl.privacy.calibration import noise_multiplier_for
from securefl.privacy.ledger import PrivacyLedger
from securefl.privacy.noise import SecureRNG
from securefl.protections import PROTECTIONS
from securefl.protections.compressed import compressed_client, compressed_server
from securefl.protections.threaded import exchange_factory
from securefl.protections.ckks import DEFAULT_MAX_WEIGHT, CKKSSettings, max_update_bytes
from securefl.runtime import apply_thread_policy
from securefl.server import SecureServer
from securefl.transport.wire import MAX_MESSAGE
from securefl.userspec import describe, is_user_spec
from securefl.validators import check_choice

__all__ = [
    "Federation",
    "NoisePlan",
    "build",
    "check",
    "ckks_params",
    "ckks_settings",
    "noise_plan",
    "protection_settings",
    "register_settings",
    "root_reference",
    "secagg_settings",
]


# ------------------------------------------------------------------ the privacy budget
@dataclass(frozen=True)
class NoisePlan:
    """The noise multipliers of a run, each solved once from its budget.

    ``client_level`` is DP-FedAvg's z (added by the server, or in shares by the
    clients under distributed DP); ``sample_level`` maps each client to its DP-SGD
    noise multiplier (clients differ only when their sampling rates do)."""

    client_level: float | None = None
    sample_level: dict[str, float] = field(default_factory=dict)


def noise_plan(config: RunConfig, sizes: dict[str, int] | None = None) -> NoisePlan:
    """Solve ``config.dp`` into noise multipliers; ``sizes`` (client id -> n_k) is
    needed for sample-level DP, whose sampling rate may depend on n_k."""
    dp, mode = config.dp, config.dp.mode
    if mode is DPMode.CLIENT:
        z = noise_multiplier_for(dp, sample_rate=config.server.fraction, steps=config.server.rounds)
        return NoisePlan(client_level=z)
    if mode is DPMode.SAMPLE:
        solved: dict[tuple[float, int], float] = {}  # clients on one schedule share one solve
        plan = {}
        for cid, n in (sizes or {}).items():
            q, steps = local_schedule(config.client, n, config.server.algorithm)
            key = (q, config.planned_updates * steps)
            if key not in solved:
                solved[key] = noise_multiplier_for(dp, sample_rate=q, steps=key[1])
            plan[cid] = solved[key]
        return NoisePlan(sample_level=plan)
    return NoisePlan()


# ------------------------------------------------------------------ protection settings
def ckks_params(config: RunConfig) -> hz.CKKSParams:
    """The CKKS parameters of a run: the preset's ring, with scale and first prime
    derived for ``ckks_max_clients`` (default: every client of the federation)."""
    p = config.protection
    return hz.derive_params(
        p.ckks_preset,
        max_summands=p.ckks_max_clients or config.clients,
        max_error=p.ckks_max_error,
        encryption=p.ckks_encryption,
    )


def ckks_settings(config: RunConfig, noise: NoisePlan | None = None) -> CKKSSettings:
    """The CKKS settings of a run. Under DP every weight is 1 (``max_weight`` 1).
    Under client-level DP each update is already clipped to the DP clip S, so the
    CKKS clip is S itself (with adaptive clipping the larger of S and ``ckks_clip``)
    and the encrypted clipped bit, which is released without noise, is always 0."""
    p, dp = config.protection, config.dp
    _check_ckks_fields(p)
    weight = p.ckks_max_weight
    if weight is None:
        weight = 1.0 if dp.enabled else DEFAULT_MAX_WEIGHT
    clip = float(p.ckks_clip)
    if dp.mode is DPMode.CLIENT:
        clip = max(float(dp.clip), clip) if dp.adaptive_clip else float(dp.clip)
    if p.min_clients > config.clients:
        raise ConfigValueError("min_clients", p.min_clients, f"exceeds the federation's {config.clients} clients")
    return CKKSSettings(ckks_params(config), clip, float(weight), p.min_clients)


def secagg_settings(config: RunConfig, noise: NoisePlan | None = None) -> SecAggSettings:
    """The ``secagg_*`` fields of a run. Under client-level DP each update has L2
    norm at most ``clip`` and weight 1, so that clip bounds every coordinate exactly
    (with adaptive clipping the clip moves: the larger of it and ``secagg_clip``).
    With distributed DP the clients add DP-FedAvg's noise ``noise.client_level`` in
    shares (solved here if ``noise`` is not given). ``min_clients`` above the
    federation size could never be met: refused here."""
    p, dp = config.protection, config.dp
    client_dp = dp.mode is DPMode.CLIENT
    clip = p.secagg_clip
    if client_dp:
        clip = max(float(dp.clip), p.secagg_clip) if dp.adaptive_clip else float(dp.clip)
    z = 0.0
    if p.secagg_distributed_dp:
        z = (noise if noise is not None and noise.client_level is not None else noise_plan(config)).client_level
    max_weight = 1.0 if client_dp else p.secagg_max_weight
    settings = _secagg_fields(p, clip=clip, max_weight=max_weight, noise_multiplier=z, l2_clip=client_dp)
    if p.min_clients > config.clients:
        raise ConfigValueError(
            "min_clients", p.min_clients, f"exceeds the federation's {config.clients} clients; no round could release a sum"
        )
    settings.codec(config.clients)  # the largest round must fit the ring (ConfigValueError otherwise)
    return settings


def _secagg_fields(p: ProtectConfig, **overrides: Any) -> SecAggSettings:
    fields = dict(
        clip=p.secagg_clip, max_weight=p.secagg_max_weight, bits=p.secagg_bits, threshold=p.secagg_threshold,
        neighbors=p.secagg_neighbors, malicious=p.secagg_malicious, min_clients=p.min_clients,
        quant_bits=p.compression.bits or 0,
    )
    return SecAggSettings(**{**fields, **overrides})


def _check_ckks_fields(p: ProtectConfig) -> None:
    check_choice("ckks_preset", p.ckks_preset, list(hz.PRESETS))
    check_choice("ckks_encryption", p.ckks_encryption, hz.ENCRYPTIONS)
    if p.ckks_max_clients is not None:
        hz.derive_params(
            p.ckks_preset, max_summands=p.ckks_max_clients, max_error=p.ckks_max_error, encryption=p.ckks_encryption
        )


#: protection name -> ``(config, noise plan) -> settings`` (what its factories take)
SETTINGS: dict[str, Callable[[RunConfig, NoisePlan | None], Any]] = {
    "none": lambda config, noise=None: None,
    "ckks": ckks_settings,
    "secagg": secagg_settings,
}


def register_settings(name: str, settings: Callable[[RunConfig, NoisePlan | None], Any]) -> None:
    """How to derive the settings of a protection added with
    :func:`securefl.protections.register` from a run configuration."""
    SETTINGS[name] = settings


def protection_settings(config: RunConfig, noise: NoisePlan | None = None) -> Any:
    """The settings object ``config.protect``'s factories take (None for a protection
    registered without a settings function, like plaintext)."""
    derive = SETTINGS.get(config.protect)
    return None if derive is None else derive(config, noise)


# ------------------------------------------------------------------ validation
def check(config: RunConfig) -> None:
    """Validate what ``config`` cannot check without the components: every
    protection's own fields, the chosen protection's settings for this federation,
    and the robust aggregator's Byzantine bound. Raises a
    :class:`~securefl.exceptions.ConfigError` naming the field."""
    _check_fields(config)
    protection_settings(config)
    if is_user_spec(config.model) or is_user_spec(config.dataset):
        check_model_fits(config, resolve_data(config))


# ------------------------------------------------------------------ the user's model and data
def resolve_data(config: RunConfig, data: Any = None) -> FederatedData:
    """The run's data: ``data`` when given (a :class:`FederatedData`, or anything
    :func:`securefl.data.as_federated` takes, split with the run's seed), else
    ``config.dataset`` (a built-in name or a ``MODULE:CALLABLE`` spec)."""
    if data is None:
        return load_dataset(config.dataset, test_fraction=config.test_fraction, seed=config.seed)
    return as_federated(data, name=describe(data), test_fraction=config.test_fraction, seed=config.seed)


def check_model_fits(config: RunConfig, data: FederatedData, model: Callable[..., nn.Module] | None = None) -> int:
    """Build the run's model once (``model``, a factory, or ``config.model``) and check it
    against the data, the DP mode (:func:`securefl.models.check_model`) and, under
    ``--protect ckks``, the preset (:func:`check_ckks_size`); returns its dimension."""
    source = model if model is not None else config.model
    label = resolve_factory(source)[1]
    net = build_model(source, data.input_shape, data.num_classes, hidden=config.hidden, seed=config.seed)
    check_model(net, label, input_shape=data.input_shape, num_classes=data.num_classes, dp=config.dp.dp)
    dim = num_parameters(net)
    if config.protect == "ckks":
        check_ckks_size(config, dim)
    return dim


def check_ckks_size(config: RunConfig, dim: int) -> None:
    """An encrypted update of a ``dim``-parameter model must fit one message
    (:data:`securefl.transport.wire.MAX_MESSAGE`) under the run's CKKS preset;
    otherwise the error names the first preset that fits (for a large model a
    larger ring has less overhead per parameter), or secagg."""
    if max_update_bytes(ckks_params(config), dim, config.clients) <= MAX_MESSAGE:
        return
    fits = []
    for name in hz.PRESETS:
        try:
            params = ckks_params(replace(config, protection=replace(config.protection, ckks_preset=name)))
        except ConfigError:
            continue
        if max_update_bytes(params, dim, config.clients) <= MAX_MESSAGE:
            fits.append(name)
    hint = f"use --ckks-preset {fits[0]}" if fits else "no CKKS preset fits a model this large; use --protect secagg"
    raise ConfigValueError(
        "ckks_preset", config.protection.ckks_preset,
        f"an encrypted update of this {dim:,}-parameter model would exceed the {MAX_MESSAGE:,}-byte message limit; {hint}",
    )


def _check_fields(config: RunConfig) -> None:
    """The checks of :func:`check` that need no noise multiplier."""
    if not isinstance(config, RunConfig):
        raise ConfigValueError("config", type(config).__name__, "must be a RunConfig")
    _check_ckks_fields(config.protection)
    _secagg_fields(config.protection)
    agg, f = config.server.aggregator, config.server.byzantine
    expected = config.expected_cohort
    if agg in BYZANTINE_BOUNDS and config.server.sampling == "fixed" and expected < min_clients(agg, f):
        raise ConfigValueError(
            "byzantine",
            f,
            f"aggregator {agg!r} needs {BYZANTINE_BOUNDS[agg][0]}, but a round has n={expected} clients "
            f"(need n >= {min_clients(agg, f)})",
        )


# ------------------------------------------------------------------ the federation
@dataclass
class Federation:
    """Everything :func:`build` made for one run."""

    config: RunConfig
    data: FederatedData
    parts: list[np.ndarray]
    ledger: PrivacyLedger
    identities: list[Identity]
    roster: Roster
    guards: list[RoundGuard]
    noise: NoisePlan
    settings: Any  #: the protection's settings object
    clients: list[SecureClient]
    server: SecureServer
    #: what ran in place of ``config.model`` / ``config.dataset`` when code was passed directly
    sources: dict[str, str] = field(default_factory=dict)


def root_reference(
    config: RunConfig, x_train: torch.Tensor, y_train: torch.Tensor, model_fn: Callable[[], nn.Module], task: str
) -> RootReference | None:
    """The root-data reference a run's aggregator needs, or None if it needs none.

    The root set is ``config.server.root_size`` examples drawn (seeded) from the
    training pool, standing in for the clean data a real server would collect."""
    from securefl.aggregation import AGGREGATOR_CONTEXT

    if "reference" not in AGGREGATOR_CONTEXT.get(config.server.aggregator, frozenset()):
        return None
    size = config.server.root_size
    if size > len(x_train):
        raise ConfigValueError("root_size", size, f"must be <= the {len(x_train)} training examples")
    idx = np.sort(np.random.default_rng([config.seed, 7]).permutation(len(x_train))[:size])
    return RootReference(
        x_train[idx], y_train[idx], model_fn=model_fn, config=config.client,
        algorithm=config.server.algorithm, task=task, seed=config.seed,
    )


def noise_rng(config: RunConfig, context: str) -> SecureRNG:
    """The DP noise generator of one party: fresh from the OS, or derived from the
    seed under ``reproducible_noise`` (anyone who knows the seed can remove the noise)."""
    return SecureRNG.from_seed(config.seed, context) if config.dp.reproducible_noise else SecureRNG()


def _ledger(config: RunConfig, out_dir: Path | None, resume: bool = False, durability: str = "record") -> PrivacyLedger:
    """A new run's ledger (on disk as ``out_dir/ledger.json`` when there is one); a
    resumed run keeps its ledger, whose hash chain binds delta, budget and accountant."""
    path = out_dir / "ledger.json" if out_dir is not None else None
    if path is not None and path.exists() and not resume:
        path.unlink()  # a new run starts a new ledger
    dp = config.dp
    ledger = PrivacyLedger(path, delta=dp.delta, budget=dp.epsilon, accountant=dp.accountant, durability=durability)
    ledger.save()
    return ledger


def _guard(client_id: str, out_dir: Path | None, resume: bool = False) -> RoundGuard:
    """The client's round memory: on disk under ``out_dir/state`` when there is one.
    A new run is a new federation (fresh identities, a new ledger), so it starts
    with fresh round memories, as it starts with a fresh ledger; a resumed run keeps
    them, so that no client answers a round number twice."""
    if out_dir is None:
        return RoundGuard()
    path = out_dir / "state" / f"{client_id}.rounds.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not resume:
        path.unlink()
    return RoundGuard(path)


def build(
    config: RunConfig, *, data: Any = None, model: Callable[..., nn.Module] | None = None,
    out_dir: str | Path | None = None, resume: bool = False, ledger_durability: str = "record",
) -> Federation:
    """Turn ``config`` into a federation ready to run (see the module docstring).

    ``data`` replaces the named dataset (see :func:`resolve_data`) and ``model``, a
    factory (see :func:`securefl.models.build_model`), the named model; both are
    checked (:func:`check_model_fits`) before anything is written. ``out_dir`` holds
    the ledger and the clients' round memories (in memory only when None); ``resume``
    keeps both as they are on disk instead of starting new ones (``ledger_durability``: a caller
    that syncs the ledger may pass ``"deferred"``, see :class:`PrivacyLedger`). Applies the thread policy."""
    _check_fields(config)
    apply_thread_policy()
    c = config
    out = Path(out_dir) if out_dir is not None else None
    sources = {k: describe(v) for k, v in (("dataset", data), ("model", model)) if v is not None and not isinstance(v, FederatedData)}
    data = resolve_data(c, data)
    check_model_fits(c, data, model)
    parts = partition(
        data.y_train, c.clients, method=c.partition, seed=c.seed, alpha=c.alpha, shards_per_client=c.shards_per_client
    )
    ids = [f"client-{k}" for k in range(len(parts))]
    noise = noise_plan(c, {cid: len(idx) for cid, idx in zip(ids, parts)})
    settings = protection_settings(c, noise)
    ledger = _ledger(c, out, resume, ledger_durability)
    identities = [Identity.generate(cid) for cid in ids]
    # the operator hands every client the roster out of band (never through the server)
    roster = Roster.of(identities)
    guards = [_guard(cid, out, resume) for cid in ids]

    def model_fn() -> nn.Module:
        return build_model(model if model is not None else c.model, data.input_shape, data.num_classes, hidden=c.hidden, seed=c.seed)

    spec = PROTECTIONS[c.protect]
    clients = [
        SecureClient(
            cid, data.x_train[idx], data.y_train[idx], model_fn=model_fn, task=data.task, config=c.client, dp=c.dp,
            planned_rounds=c.planned_updates, ledger=ledger, algorithm=c.server.algorithm, rng=noise_rng(c, cid),
            staleness=StalenessPolicy.of(c.schedule),
            seed=c.seed, guard=guard, noise_multiplier=noise.sample_level.get(cid),
            protection=compressed_client(
                c, spec.client(settings, cid, noise_rng(c, f"protect-{cid}"), identity=identity, roster=roster, guard=guard)
            ),
        )
        for cid, idx, identity, guard in zip(ids, parts, identities, guards)
    ]
    server = SecureServer(
        model_fn(), config=c.server, dp=c.dp, num_clients=c.clients, ledger=ledger, task=data.task,
        protection=compressed_server(c, spec.server(settings, noise_rng(c, "protect-server"), roster=roster)),
        eval_data=(data.x_test, data.y_test), rng=noise_rng(c, "server"), noise_multiplier=noise.client_level,
        reference=root_reference(c, data.x_train, data.y_train, model_fn, data.task),
        cohort=c.schedule.buffer if c.schedule.asynchronous else None,
    )
    if c.server.workers > 1:  # each protocol stage's clients on threads, same results
        server.exchange_type = exchange_factory(c.server.workers)
    return Federation(c, data, parts, ledger, identities, roster, guards, noise, settings, clients, server, sources)
