"""The whole run's config and its flat (CLI flag / TOML key) form."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from securefl.exceptions import ConfigTypeError, ConfigValueError
from securefl.validators import check_choice as _choice
from securefl.validators import check_float as _float
from securefl.validators import check_int as _int

from securefl.config.parts import ClientConfig, DPConfig, ProtectConfig, ServerConfig
from securefl.config.schedule import ScheduleConfig
from securefl.config.vocab import DATASET_NAMES, MODEL_NAMES, PARTITION_NAMES, PROTECT_NAMES, DPMode
from securefl.userspec import SPEC_FORM, check_spec, is_user_spec


def _name_or_spec(name: str, value: object, names: tuple[str, ...]) -> None:
    """A built-in name, or user code as a ``MODULE:CALLABLE`` string (its shape only:
    the component resolves it when the run is built)."""
    if is_user_spec(value):
        check_spec(name, value)  # type: ignore[arg-type]
    elif not isinstance(value, str) or value not in names:
        _choice(name, value, [*sorted(names), SPEC_FORM])


@dataclass(frozen=True)
class RunConfig:
    """A whole federated run: data, partition, model, protection and the sub-configs."""

    dataset: str = "digits"
    clients: int = 10
    partition: str = "dirichlet"
    alpha: float = 1.0
    shards_per_client: int = 2
    model: str = "mlp"
    hidden: int = 64
    protect: str = "none"
    seed: int = 0
    test_fraction: float = 0.2
    dp: DPConfig = field(default_factory=DPConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    protection: ProtectConfig = field(default_factory=ProtectConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        _name_or_spec("dataset", self.dataset, DATASET_NAMES)
        _int("clients", self.clients, 1, 100_000)
        if self.clients < 2:
            raise ConfigValueError("clients", self.clients, "a federation needs at least 2 clients")
        _choice("partition", self.partition, sorted(PARTITION_NAMES))
        _float("alpha", self.alpha, 0.0, lo_open=True)
        _int("shards_per_client", self.shards_per_client, 1)
        _name_or_spec("model", self.model, MODEL_NAMES)
        _int("hidden", self.hidden, 1)
        _choice("protect", self.protect, sorted(PROTECT_NAMES))
        _int("seed", self.seed, 0, 2**63 - 1)
        _float("test_fraction", self.test_fraction, 0.0, 0.9, lo_open=True)
        for name, cls in _SUBCONFIGS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigTypeError(name, getattr(self, name), f"must be a {cls.__name__}")
        self._check_client_dp()
        self._check_cohort()
        self._check_compression()
        self._check_schedule()

    @property
    def expected_cohort(self) -> int:
        """Clients in a round under fixed sampling (at least one)."""
        return max(1, round(self.server.fraction * self.clients))

    @property
    def planned_updates(self) -> int:
        """Updates each client's sample-level budget is solved for: one per round, or
        under asynchronous aggregation ``max_updates`` (default ``rounds``: a client
        is in at most one buffer per server update)."""
        s = self.schedule
        return s.max_updates if s.asynchronous and s.max_updates is not None else self.server.rounds

    def _check_client_dp(self) -> None:
        """Rules that client-level DP and its distributed form put on the rest of the run."""
        client_dp = self.dp.mode is DPMode.CLIENT
        if client_dp and not self.schedule.asynchronous and self.server.sampling == "fixed" and self.server.fraction < 1.0:
            raise ConfigValueError(
                "sampling",
                "fixed",
                "client-level DP accounting assumes Poisson client sampling; "
                "use --sampling poisson or --fraction 1",
            )
        if self.protection.secagg_distributed_dp and (self.protect != "secagg" or not client_dp or self.dp.adaptive_clip):
            raise ConfigValueError(
                "secagg_distributed_dp",
                True,
                "distributed DP noise needs --protect secagg and --dp client with a fixed clip "
                f"(got protect={self.protect!r}, dp={self.dp.dp!r}, adaptive_clip={self.dp.adaptive_clip})",
            )
        if client_dp and self.client.client_momentum > 0 and (self.server.sampling != "fixed" or self.server.fraction < 1.0):
            # the buffer would carry which earlier rounds sampled the client, a secret that
            # the amplification-by-sampling analysis of DP-FedAvg needs to stay hidden
            raise ConfigValueError(
                "client_momentum",
                self.client.client_momentum,
                "worker momentum under --dp client needs every client in every round "
                "(--sampling fixed --fraction 1): with client sampling the buffer would depend on the hidden sampling",
            )
        if client_dp and self.server.aggregator != "mean":
            raise ConfigValueError(
                "aggregator",
                self.server.aggregator,
                "DP-FedAvg calibrates its noise to the sum of clipped updates; use aggregator 'mean' with dp='client'",
            )

    def _check_compression(self) -> None:
        """``--compress``: quantization shrinks secure aggregation's ring only, and
        error feedback is refused where DP could not account for it
        (:mod:`securefl.config.compression`)."""
        p = self.protection
        spec = p.compression
        if spec.bits is not None and self.protect != "secagg":
            why = {
                "ckks": "CKKS encodes one value per slot at the ring's fixed scale; packing several quantized "
                "values per slot is not implemented (use randk:F, which sends fewer ciphertexts)",
                "none": "plaintext updates travel as float32; quantization shrinks secure aggregation's ring (--protect secagg)",
            }.get(self.protect, "quantization is implemented for --protect secagg only")
            raise ConfigValueError("compress", p.compress, why)
        if spec.bits is not None and self.dp.adaptive_clip:
            why = "not with --adaptive-clip: the rounding margin is taken off a fixed clip S (securefl.crypto.secagg.common.clip_input)"
            raise ConfigValueError("compress", p.compress, why)
        if spec.bits is not None and p.secagg_distributed_dp:
            why = "not with --secagg-distributed-dp: the noise share is calibrated to a fine grid (S + sqrt(d) * step)"
            raise ConfigValueError("compress", p.compress, why)
        sampled = self.server.sampling != "fixed" or self.server.fraction < 1.0
        if spec.fraction is not None and p.error_feedback and self.dp.mode is DPMode.CLIENT and sampled:
            raise ConfigValueError(
                "error_feedback",
                True,
                "error feedback under --dp client needs every client in every round (--sampling fixed --fraction 1): "
                "with client sampling the residual would depend on the hidden sampling; use --no-error-feedback",
            )

    def _check_cohort(self) -> None:
        """Multi-Krum averages at most the clients of a round; FedSGD is one step per
        round, so it takes no ``local_steps``. (Whether a round holds
        enough clients for a robust rule's Byzantine bound is the rule's own maths:
        :func:`securefl.build.check`.)"""
        expected = self.expected_cohort
        fixed, p = self.server.sampling == "fixed", self.protection
        if self.protect in ("ckks", "secagg") and fixed and expected < p.min_clients <= self.clients:
            why = f"--protect {self.protect}: a round samples {expected} clients, fewer than this; no round could aggregate"
            raise ConfigValueError("min_clients", p.min_clients, why)
        if self.protect == "ckks" and p.ckks_max_clients is not None:
            sampled = expected if fixed else self.clients
            if p.ckks_max_clients < sampled:
                raise ConfigValueError("ckks_max_clients", p.ckks_max_clients, f"must be >= the {sampled} clients a round can sample")
        if self.server.algorithm == "fedsgd" and self.client.local_steps is not None:
            raise ConfigValueError("local_steps", self.client.local_steps, "FedSGD takes one full-batch step per round; use --algorithm fedavg")
        if self.server.aggregator == "multikrum" and self.server.krum_m is not None and self.server.krum_m > expected:
            raise ConfigValueError("krum_m", self.server.krum_m, f"must be <= the {expected} clients of a round")

    def _check_schedule(self) -> None:
        """Asynchronous buffers: each one is a cohort (the protections' minimum applies),
        fed by clients in flight; the mean is the one rule a staleness weight fits."""
        s = self.schedule
        if not s.asynchronous:
            return
        if s.buffer > self.clients:
            raise ConfigValueError("buffer", s.buffer, f"must be <= the {self.clients} clients")
        if self.protect in ("ckks", "secagg") and s.buffer < self.protection.min_clients:
            why = f"--protect {self.protect}: a buffer is one aggregation and needs at least min_clients={self.protection.min_clients}"
            raise ConfigValueError("buffer", s.buffer, why)
        if self.server.aggregator != "mean":
            raise ConfigValueError("aggregator", self.server.aggregator, "--mode async aggregates each buffer by the (staleness-weighted) mean")
        if self.server.sampling != "fixed" or self.server.fraction != 1.0:
            why = "--mode async dispatches clients as they become idle; leave --sampling fixed and --fraction 1"
            raise ConfigValueError("fraction" if self.server.fraction != 1.0 else "sampling", self.server.fraction if self.server.fraction != 1.0 else self.server.sampling, why)

    # ------------------------------------------------------------------ flat I/O
    @classmethod
    def field_owner(cls) -> dict[str, str]:
        """Map every flat field name to the sub-config that owns it ('' = top level)."""
        owner: dict[str, str] = {}
        for f in dataclasses.fields(cls):
            if f.name in _SUBCONFIGS:
                continue
            owner[f.name] = ""
        for sub, sub_cls in _SUBCONFIGS.items():
            for f in dataclasses.fields(sub_cls):
                owner[f.name] = sub
        return owner

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> "RunConfig":
        """Build a config from flat ``name -> value`` pairs (CLI flags, TOML keys)."""
        owner = cls.field_owner()
        if values.get("local_steps") is not None and values.get("local_epochs") is not None:
            raise ConfigValueError("local_steps", values["local_steps"], "give either local_steps or local_epochs, not both")
        top: dict[str, Any] = {}
        subs: dict[str, dict[str, Any]] = {name: {} for name in _SUBCONFIGS}
        for key, value in values.items():
            if key not in owner:
                raise ConfigValueError(key, value, "unknown setting")
            (subs[owner[key]] if owner[key] else top)[key] = value
        return cls(**{name: sub_cls(**subs[name]) for name, sub_cls in _SUBCONFIGS.items()}, **top)

    @classmethod
    def flatten_sections(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """Flatten a TOML document: keys outside tables and the tables of :data:`TOML_SECTIONS`.
        An unknown table or a key in another's table is a ConfigValueError (field ``config``)."""
        owner, flat = cls.field_owner(), {}
        for key, value in data.items():
            if key not in TOML_SECTIONS and isinstance(value, dict):
                raise ConfigValueError("config", f"[{key}]", f"unknown section [{key}] (sections: {', '.join(TOML_SECTIONS)})")
            for k, v in value.items() if isinstance(value, dict) else [(key, value)]:
                name = k.replace("-", "_")
                home = next((t for t, o in TOML_SECTIONS.items() if o == owner.get(name)), key)
                if isinstance(value, dict) and (isinstance(v, dict) or home != key and (key, name) != ("protection", "protect")):
                    why = f"unknown section [{key}.{k}]" if isinstance(v, dict) else f"{k} belongs in section [{home}], not [{key}]"
                    raise ConfigValueError("config", f"[{key}] {k}", why)
                flat[name] = v
        return flat

    def to_flat(self) -> dict[str, Any]:
        """The inverse of :meth:`from_flat`: every setting under its flat name."""
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                flat.update(dataclasses.asdict(value))
            else:
                flat[f.name] = value
        return flat


#: the tables of a TOML run file, each with the sub-config whose fields it takes ('' =
#: the top-level ones, and [protection] takes ``protect`` too); keys may stand outside any table
TOML_SECTIONS = {
    "data": "", "dp": "dp", "client": "client", "server": "server", "protection": "protection", "schedule": "schedule",
}

#: the sub-configs of :class:`RunConfig`, by field name
_SUBCONFIGS: dict[str, type] = {
    "dp": DPConfig,
    "client": ClientConfig,
    "server": ServerConfig,
    "protection": ProtectConfig,
    "schedule": ScheduleConfig,
}
