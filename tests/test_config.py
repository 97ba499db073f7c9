"""Frozen, validated configs: types, ranges, choices, cross-field rules, flat I/O."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.config import ClientConfig, DPConfig, RunConfig, ServerConfig
from securefl.exceptions import ConfigError, ConfigTypeError, ConfigValueError

from securefl.config import _SUBCONFIGS as SUBCONFIGS

# (config class, field) for every field that holds a number
INT_FIELDS = [
    (ClientConfig, "batch_size"),
    (ServerConfig, "rounds"),
    (RunConfig, "clients"),
    (RunConfig, "shards_per_client"),
    (RunConfig, "hidden"),
    (RunConfig, "seed"),
]
FLOAT_FIELDS = [
    (DPConfig, "epsilon"),
    (DPConfig, "delta"),
    (DPConfig, "noise_multiplier"),
    (DPConfig, "clip"),
    (DPConfig, "target_quantile"),
    (DPConfig, "clip_lr"),
    (DPConfig, "clip_count_stddev"),
    (ClientConfig, "local_epochs"),
    (ClientConfig, "sample_rate"),
    (ClientConfig, "lr"),
    (ClientConfig, "momentum"),
    (ServerConfig, "fraction"),
    (ServerConfig, "server_lr"),
    (ServerConfig, "server_momentum"),
    (RunConfig, "alpha"),
    (RunConfig, "test_fraction"),
]
OPTIONAL_FLOATS = {"epsilon", "noise_multiplier", "clip_count_stddev", "sample_rate"}
BOOL_FIELDS = [(DPConfig, "adaptive_clip"), (DPConfig, "reproducible_noise")]
CHOICE_FIELDS = [
    (DPConfig, "dp"),
    (DPConfig, "accountant"),
    (ClientConfig, "optimizer"),
    (ServerConfig, "sampling"),
    (ServerConfig, "algorithm"),
    (ServerConfig, "server_opt"),
    (ServerConfig, "aggregator"),
    (RunConfig, "dataset"),
    (RunConfig, "partition"),
    (RunConfig, "model"),
    (RunConfig, "protect"),
]


def _id(param):
    if isinstance(param, type):
        return param.__name__
    return None


def _check_error(excinfo, field, value):
    err = excinfo.value
    assert isinstance(err, ConfigError)
    assert err.field == field
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(err.value, float) and math.isnan(err.value)
    else:
        assert err.value == value and type(err.value) is type(value)
    msg = str(err)
    assert field in msg
    assert repr(value) in msg


# ------------------------------------------------------------------ defaults
def test_defaults_construct():
    cfg = RunConfig()
    assert isinstance(cfg.dp, DPConfig) and isinstance(cfg.client, ClientConfig)
    assert isinstance(cfg.server, ServerConfig)
    assert cfg.dp.dp == "none" and not cfg.dp.enabled
    assert cfg.dataset == "digits" and cfg.model == "mlp" and cfg.partition == "dirichlet"
    assert cfg.client.batch_size == 32 and cfg.server.rounds == 30
    # each default instance owns its sub-configs but they compare equal
    assert RunConfig() == cfg
    for cls in (DPConfig, ClientConfig, ServerConfig):
        assert cls() == cls()


def test_exception_hierarchy():
    assert issubclass(ConfigTypeError, TypeError) and issubclass(ConfigTypeError, ConfigError)
    assert issubclass(ConfigValueError, ValueError) and issubclass(ConfigValueError, ConfigError)
    assert not issubclass(ConfigTypeError, ValueError)
    assert not issubclass(ConfigValueError, TypeError)


# ------------------------------------------------------------------ types
@pytest.mark.parametrize("cls,name", INT_FIELDS, ids=lambda p: _id(p))
@pytest.mark.parametrize("bad", [True, False, 2.0, "3", None, [3]], ids=repr)
def test_int_fields_reject_wrong_types_and_bools(cls, name, bad):
    with pytest.raises(ConfigTypeError) as excinfo:
        cls(**{name: bad})
    _check_error(excinfo, name, bad)
    assert not isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize("cls,name", FLOAT_FIELDS, ids=lambda p: _id(p))
@pytest.mark.parametrize("bad", [True, False, "0.5", [0.5], 0.5j, b"1"], ids=repr)
def test_float_fields_reject_wrong_types_and_bools(cls, name, bad):
    with pytest.raises(ConfigTypeError) as excinfo:
        cls(**{name: bad})
    _check_error(excinfo, name, bad)


@pytest.mark.parametrize("cls,name", FLOAT_FIELDS, ids=lambda p: _id(p))
def test_float_fields_none_only_where_optional(cls, name):
    if name in OPTIONAL_FLOATS:
        assert getattr(cls(**{name: None}), name) is None
    else:
        with pytest.raises(ConfigTypeError) as excinfo:
            cls(**{name: None})
        _check_error(excinfo, name, None)


_INT_FOR_FLOAT = {"momentum": 0, "server_momentum": 0, "target_quantile": 0, "noise_multiplier": 0}


@pytest.mark.parametrize(
    "cls,name",
    [(c, n) for c, n in FLOAT_FIELDS if n not in ("delta", "test_fraction")],  # no int in range
    ids=lambda p: _id(p),
)
def test_float_fields_accept_ints(cls, name):
    value = _INT_FOR_FLOAT.get(name, 1)
    cfg = cls(**{name: value})
    assert getattr(cfg, name) == value


@pytest.mark.parametrize("cls,name", BOOL_FIELDS, ids=lambda p: _id(p))
@pytest.mark.parametrize("bad", [1, 0, "true", None], ids=repr)
def test_bool_fields_reject_non_bools(cls, name, bad):
    kwargs = {name: bad}
    with pytest.raises(ConfigTypeError) as excinfo:
        cls(**kwargs)
    _check_error(excinfo, name, bad)


@pytest.mark.parametrize("cls,name", CHOICE_FIELDS, ids=lambda p: _id(p))
def test_choice_fields_reject_unknown_names(cls, name):
    with pytest.raises(ConfigValueError) as excinfo:
        cls(**{name: "no-such-choice"})
    _check_error(excinfo, name, "no-such-choice")
    # the message lists the allowed choices, including the default
    assert repr(getattr(cls(), name))[1:-1] in str(excinfo.value)


@pytest.mark.parametrize("cls,name", CHOICE_FIELDS, ids=lambda p: _id(p))
@pytest.mark.parametrize("bad", [1, None, b"none"], ids=repr)
def test_choice_fields_reject_non_strings(cls, name, bad):
    with pytest.raises(ConfigTypeError) as excinfo:
        cls(**{name: bad})
    _check_error(excinfo, name, bad)


def test_choice_fields_are_case_sensitive():
    with pytest.raises(ConfigValueError):
        DPConfig(dp="Client", epsilon=1.0)
    with pytest.raises(ConfigValueError):
        RunConfig(dataset="DIGITS")


def test_every_choice_value_accepted():
    for dp in ("none", "sample", "client"):
        assert DPConfig(dp=dp, epsilon=1.0).dp == dp
    for acc in ("prv", "rdp"):
        assert DPConfig(accountant=acc).accountant == acc
    for opt in ("sgd", "adam"):
        assert ClientConfig(optimizer=opt).optimizer == opt
    for s in ("fixed", "poisson"):
        assert ServerConfig(sampling=s).sampling == s
    for a in ("fedavg", "fedsgd"):
        assert ServerConfig(algorithm=a).algorithm == a
    for o in ("fedavg", "fedavgm", "fedadam"):
        assert ServerConfig(server_opt=o).server_opt == o
    for d in ("digits", "breast_cancer", "synthetic", "linreg"):
        assert RunConfig(dataset=d).dataset == d
    for p in ("iid", "dirichlet", "shards"):
        assert RunConfig(partition=p).partition == p
    for m in ("logreg", "linreg", "mlp", "cnn"):
        assert RunConfig(model=m).model == m


# ------------------------------------------------------------------ ranges
OUT_OF_RANGE = [
    (DPConfig, "epsilon", 0.0),
    (DPConfig, "epsilon", -1.0),
    (DPConfig, "epsilon", math.inf),
    (DPConfig, "epsilon", math.nan),
    (DPConfig, "delta", 0.0),
    (DPConfig, "delta", 1.0),
    (DPConfig, "delta", 1.5),
    (DPConfig, "delta", -1e-5),
    (DPConfig, "noise_multiplier", -0.1),
    (DPConfig, "noise_multiplier", math.inf),
    (DPConfig, "clip", 0.0),
    (DPConfig, "clip", -1.0),
    (DPConfig, "clip", -math.inf),
    (DPConfig, "target_quantile", -0.01),
    (DPConfig, "target_quantile", 1.01),
    (DPConfig, "clip_lr", 0.0),
    (DPConfig, "clip_count_stddev", 0.0),
    (DPConfig, "clip_count_stddev", -2.0),
    (ClientConfig, "local_epochs", 0.0),
    (ClientConfig, "local_epochs", 1000.5),
    (ClientConfig, "local_epochs", math.nan),
    (ClientConfig, "batch_size", 0),
    (ClientConfig, "batch_size", -5),
    (ClientConfig, "sample_rate", 0.0),
    (ClientConfig, "sample_rate", 1.01),
    (ClientConfig, "lr", 0.0),
    (ClientConfig, "lr", -0.1),
    (ClientConfig, "momentum", 1.0),
    (ClientConfig, "momentum", -0.1),
    (ServerConfig, "rounds", 0),
    (ServerConfig, "rounds", 100_001),
    (ServerConfig, "fraction", 0.0),
    (ServerConfig, "fraction", 1.1),
    (ServerConfig, "server_lr", 0.0),
    (ServerConfig, "server_momentum", 1.0),
    (ServerConfig, "server_momentum", -0.5),
    (RunConfig, "clients", 0),
    (RunConfig, "clients", 1),  # a federation of one cannot aggregate anything private
    (RunConfig, "clients", 100_001),
    (RunConfig, "alpha", 0.0),
    (RunConfig, "alpha", -1.0),
    (RunConfig, "shards_per_client", 0),
    (RunConfig, "hidden", 0),
    (RunConfig, "seed", -1),
    (RunConfig, "seed", 2**63),
    (RunConfig, "test_fraction", 0.0),
    (RunConfig, "test_fraction", 0.95),
]


@pytest.mark.parametrize("cls,name,value", OUT_OF_RANGE, ids=lambda p: _id(p))
def test_out_of_range_raises_config_value_error(cls, name, value):
    with pytest.raises(ConfigValueError) as excinfo:
        cls(**{name: value})
    _check_error(excinfo, name, value)
    assert not isinstance(excinfo.value, TypeError)


EDGES_ACCEPTED = [
    (DPConfig, "epsilon", 1e-3),
    (DPConfig, "delta", 0.999),
    (DPConfig, "noise_multiplier", 0.0),
    (DPConfig, "target_quantile", 0.0),
    (DPConfig, "target_quantile", 1.0),
    (ClientConfig, "local_epochs", 1000.0),
    (ClientConfig, "local_epochs", 0.01),
    (ClientConfig, "batch_size", 1),
    (ClientConfig, "sample_rate", 1.0),
    (ClientConfig, "momentum", 0.0),
    (ClientConfig, "momentum", 0.99),
    (ServerConfig, "rounds", 1),
    (ServerConfig, "rounds", 100_000),
    (ServerConfig, "fraction", 1.0),
    (ServerConfig, "fraction", 1e-6),
    (ServerConfig, "server_momentum", 0.0),
    (RunConfig, "clients", 2),
    (RunConfig, "clients", 100_000),
    (RunConfig, "seed", 0),
    (RunConfig, "seed", 2**63 - 1),
    (RunConfig, "test_fraction", 0.9),
]


@pytest.mark.parametrize("cls,name,value", EDGES_ACCEPTED, ids=lambda p: _id(p))
def test_range_edges_accepted(cls, name, value):
    assert getattr(cls(**{name: value}), name) == value


def test_huge_int_for_float_field_is_a_config_error():
    with pytest.raises(ConfigValueError) as excinfo:
        ClientConfig(lr=10**400)
    assert excinfo.value.field == "lr"


# ------------------------------------------------------------------ cross-field rules
@pytest.mark.parametrize("mode", ["sample", "client"])
def test_dp_needs_epsilon_or_noise_multiplier(mode):
    with pytest.raises(ConfigValueError) as excinfo:
        DPConfig(dp=mode)
    assert excinfo.value.field == "epsilon" and excinfo.value.value is None
    assert mode in str(excinfo.value)
    assert DPConfig(dp=mode, epsilon=2.0).enabled
    assert DPConfig(dp=mode, noise_multiplier=1.1).enabled
    assert DPConfig(dp=mode, epsilon=2.0, noise_multiplier=1.1).epsilon == 2.0


@pytest.mark.parametrize("mode", ["none", "sample"])
def test_adaptive_clip_only_with_client_dp(mode):
    with pytest.raises(ConfigValueError) as excinfo:
        DPConfig(dp=mode, epsilon=1.0, adaptive_clip=True)
    assert excinfo.value.field == "adaptive_clip" and excinfo.value.value is True
    assert DPConfig(dp="client", epsilon=1.0, adaptive_clip=True).adaptive_clip


def test_client_dp_with_fixed_partial_sampling_rejected():
    dp = DPConfig(dp="client", epsilon=1.0)
    with pytest.raises(ConfigValueError) as excinfo:
        RunConfig(dp=dp, server=ServerConfig(sampling="fixed", fraction=0.5))
    assert excinfo.value.field == "sampling" and excinfo.value.value == "fixed"
    assert "sampling" in str(excinfo.value)
    # every way out of the rule is accepted
    RunConfig(dp=dp, server=ServerConfig(sampling="poisson", fraction=0.5))
    RunConfig(dp=dp, server=ServerConfig(sampling="fixed", fraction=1.0))
    RunConfig(dp=DPConfig(dp="sample", epsilon=1.0), server=ServerConfig(fraction=0.5))
    RunConfig(server=ServerConfig(fraction=0.5))


@pytest.mark.parametrize("name", ["dp", "client", "server"])
@pytest.mark.parametrize("bad", [None, "client", {}], ids=repr)
def test_sub_configs_must_be_their_class(name, bad):
    with pytest.raises(ConfigTypeError) as excinfo:
        RunConfig(**{name: bad})
    assert excinfo.value.field == name
    # the wrong one of the three classes is rejected as well
    other = next(c for n, c in SUBCONFIGS.items() if n != name)
    with pytest.raises(ConfigTypeError):
        RunConfig(**{name: other()})


# ------------------------------------------------------------------ flat I/O
def test_field_owner_is_unique_and_complete():
    owner = RunConfig.field_owner()
    sub_total = sum(len(dataclasses.fields(c)) for c in SUBCONFIGS.values())
    top_total = len(dataclasses.fields(RunConfig)) - len(SUBCONFIGS)
    assert len(owner) == sub_total + top_total  # no name is shared
    for sub, cls in SUBCONFIGS.items():
        for f in dataclasses.fields(cls):
            assert owner[f.name] == sub
    assert owner["dataset"] == "" and owner["seed"] == ""
    assert "client" not in owner and "server" not in owner


def test_from_flat_routes_keys_into_sub_configs():
    cfg = RunConfig.from_flat(
        {
            "dp": "client",
            "epsilon": 3.0,
            "clip": 0.5,
            "adaptive_clip": True,
            "lr": 0.05,
            "batch_size": 16,
            "optimizer": "adam",
            "rounds": 7,
            "sampling": "poisson",
            "fraction": 0.3,
            "server_opt": "fedadam",
            "server_lr": 0.01,
            "clients": 5,
            "dataset": "breast_cancer",
            "model": "logreg",
            "seed": 11,
        }
    )
    assert cfg.dp == DPConfig(dp="client", epsilon=3.0, clip=0.5, adaptive_clip=True)
    assert cfg.client == ClientConfig(lr=0.05, batch_size=16, optimizer="adam")
    assert cfg.server == ServerConfig(
        rounds=7, sampling="poisson", fraction=0.3, server_opt="fedadam", server_lr=0.01
    )
    assert (cfg.clients, cfg.dataset, cfg.model, cfg.seed) == (5, "breast_cancer", "logreg", 11)


def test_from_flat_empty_is_default():
    assert RunConfig.from_flat({}) == RunConfig()


@pytest.mark.parametrize("key", ["no_such_key", "client", "server", "Rounds", "learning_rate"])
def test_from_flat_rejects_unknown_keys(key):
    with pytest.raises(ConfigValueError) as excinfo:
        RunConfig.from_flat({"rounds": 3, key: 1})
    assert excinfo.value.field == key and excinfo.value.value == 1
    assert key in str(excinfo.value)


def test_from_flat_propagates_validation_errors():
    with pytest.raises(ConfigTypeError) as excinfo:
        RunConfig.from_flat({"batch_size": 2.5})
    assert excinfo.value.field == "batch_size"
    with pytest.raises(ConfigValueError) as excinfo:
        RunConfig.from_flat({"server_momentum": 1.5})
    assert excinfo.value.field == "server_momentum"
    with pytest.raises(ConfigValueError) as excinfo:
        RunConfig.from_flat({"dp": "client", "epsilon": 1.0, "fraction": 0.5})
    assert excinfo.value.field == "sampling"


def test_to_flat_default_round_trip():
    cfg = RunConfig()
    flat = cfg.to_flat()
    assert set(flat) == set(RunConfig.field_owner())
    assert not any(isinstance(v, (DPConfig, ClientConfig, ServerConfig, dict)) for v in flat.values())
    assert flat["dp"] == "none" and flat["rounds"] == 30 and flat["batch_size"] == 32
    assert RunConfig.from_flat(flat) == cfg


_pos = st.floats(min_value=1e-3, max_value=50.0, allow_nan=False)
_unit_open = st.floats(min_value=1e-6, max_value=0.999, allow_nan=False)

flat_settings = st.fixed_dictionaries(
    {},
    optional={
        "dataset": st.sampled_from(["digits", "breast_cancer", "synthetic", "linreg"]),
        "clients": st.integers(2, 1000),
        "partition": st.sampled_from(["iid", "dirichlet", "shards"]),
        "alpha": _pos,
        "shards_per_client": st.integers(1, 10),
        "model": st.sampled_from(["logreg", "linreg", "mlp", "cnn"]),
        "hidden": st.integers(1, 512),
        "seed": st.integers(0, 2**63 - 1),
        "test_fraction": st.floats(min_value=0.01, max_value=0.9),
        "epsilon": _pos,
        "delta": _unit_open,
        "noise_multiplier": st.none() | st.floats(min_value=0.0, max_value=10.0),
        "clip": _pos,
        "accountant": st.sampled_from(["prv", "rdp"]),
        "target_quantile": st.floats(min_value=0.0, max_value=1.0),
        "clip_lr": _pos,
        "clip_count_stddev": st.none() | _pos,
        "reproducible_noise": st.booleans(),
        "local_epochs": st.floats(min_value=0.01, max_value=1000.0),
        "batch_size": st.integers(1, 4096),
        "sample_rate": st.none() | st.floats(min_value=1e-4, max_value=1.0),
        "lr": _pos,
        "optimizer": st.sampled_from(["sgd", "adam"]),
        "momentum": st.floats(min_value=0.0, max_value=0.99),
        "rounds": st.integers(1, 100_000),
        "fraction": st.floats(min_value=1e-3, max_value=1.0),
        "sampling": st.sampled_from(["fixed", "poisson"]),
        "algorithm": st.sampled_from(["fedavg", "fedsgd"]),
        "server_opt": st.sampled_from(["fedavg", "fedavgm", "fedadam"]),
        "server_lr": _pos,
        "server_momentum": st.floats(min_value=0.0, max_value=0.99),
    },
)


@settings(max_examples=150, deadline=None)
@given(flat=flat_settings, dp=st.sampled_from(["none", "sample", "client"]), adaptive=st.booleans())
def test_flat_round_trip(flat, dp, adaptive):
    flat = dict(flat, dp=dp)
    if dp != "none":
        flat.setdefault("epsilon", 1.0)
    if dp == "client":
        flat["adaptive_clip"] = adaptive
        if flat.get("sampling", "fixed") == "fixed":
            flat["fraction"] = 1.0
    cfg = RunConfig.from_flat(flat)
    out = cfg.to_flat()
    for key, value in flat.items():
        assert out[key] == value, key
    assert RunConfig.from_flat(out) == cfg
    assert RunConfig.from_flat(out).to_flat() == out


# ------------------------------------------------------------------ frozen
@pytest.mark.parametrize(
    "obj,name,value",
    [
        (DPConfig(), "epsilon", 1.0),
        (ClientConfig(), "lr", 0.5),
        (ServerConfig(), "rounds", 3),
        (RunConfig(), "clients", 3),
        (RunConfig(), "dp", DPConfig(dp="sample", epsilon=1.0)),
    ],
    ids=lambda p: type(p).__name__ if dataclasses.is_dataclass(p) else None,
)
def test_configs_are_frozen(obj, name, value):
    before = getattr(obj, name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, name, value)
    assert getattr(obj, name) == before


def test_nested_config_is_frozen_too():
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dp.dp = "client"  # type: ignore[misc]
    assert cfg.dp.dp == "none"


def test_replace_revalidates():
    cfg = RunConfig()
    assert dataclasses.replace(cfg, clients=3).clients == 3
    with pytest.raises(ConfigValueError):
        dataclasses.replace(cfg, clients=0)
    with pytest.raises(ConfigValueError):
        dataclasses.replace(cfg, dp=DPConfig(dp="client", epsilon=1.0), server=ServerConfig(fraction=0.2))


# ------------------------------------------------------------------ vocabularies
def test_config_vocabularies_match_the_component_registries():
    """config.py names the components without importing them; the registries are
    keyed by exactly those names."""
    from securefl import config as C
    from securefl.aggregation import AGGREGATORS
    from securefl.data import DATASETS, PARTITIONERS
    from securefl.models import MODELS
    from securefl.protections import PROTECTIONS
    from securefl.server_opt import SERVER_OPTIMIZERS

    assert set(C.DATASET_NAMES) == set(DATASETS)
    assert set(C.PARTITION_NAMES) == set(PARTITIONERS)
    assert set(C.MODEL_NAMES) == set(MODELS)
    assert set(C.AGGREGATOR_NAMES) == set(AGGREGATORS)
    assert set(C.SERVER_OPT_NAMES) == set(SERVER_OPTIMIZERS)
    assert set(C.PROTECT_NAMES) == set(PROTECTIONS)
    assert C.DP_MODES == ("none", "sample", "client")


def test_dp_mode_is_typed():
    from securefl.config import DPMode

    assert DPConfig().mode is DPMode.NONE and not DPConfig().enabled
    assert DPConfig(dp="client", epsilon=1.0).mode is DPMode.CLIENT
    assert DPConfig(dp=DPMode.SAMPLE, epsilon=1.0) == DPConfig(dp="sample", epsilon=1.0)
    assert str(DPMode.SAMPLE) == "sample"


# ------------------------------------------------------------------ cohort vs protection
@pytest.mark.parametrize("protect", ["ckks", "secagg"])
def test_protected_cohort_below_min_clients_rejected(protect):
    with pytest.raises(ConfigValueError) as excinfo:
        RunConfig.from_flat({"protect": protect, "clients": 4, "fraction": 0.5, "min_clients": 3})
    assert excinfo.value.field == "min_clients" and excinfo.value.value == 3
    assert "2 clients" in str(excinfo.value)
    # the same cohort is fine without a protection, at min_clients 2, or under Poisson sampling
    RunConfig.from_flat({"protect": "none", "clients": 4, "fraction": 0.5})
    RunConfig.from_flat({"protect": protect, "clients": 4, "fraction": 0.5, "min_clients": 2})
    RunConfig.from_flat({"protect": protect, "clients": 4, "fraction": 0.5, "sampling": "poisson"})


def test_ckks_max_clients_below_the_sampled_clients_rejected():
    with pytest.raises(ConfigValueError) as excinfo:
        RunConfig.from_flat({"protect": "ckks", "clients": 5, "ckks_max_clients": 4})
    assert excinfo.value.field == "ckks_max_clients" and "5 clients" in str(excinfo.value)
    RunConfig.from_flat({"protect": "ckks", "clients": 10, "fraction": 0.4, "ckks_max_clients": 4})
    with pytest.raises(ConfigValueError):  # Poisson sampling can pick every client
        RunConfig.from_flat({"protect": "ckks", "clients": 10, "fraction": 0.4, "sampling": "poisson", "ckks_max_clients": 4})


# ------------------------------------------------------------------ TOML sections
def test_flatten_sections_routes_known_tables():
    flat = RunConfig.flatten_sections(
        {"seed": 1, "data": {"dataset": "digits", "clients": 4}, "dp": {"dp": "sample", "epsilon": 2.0},
         "client": {"lr": 0.1}, "server": {"rounds": 3}, "protection": {"protect": "secagg", "min-clients": 2}}
    )  # fmt: skip
    assert flat == {"seed": 1, "dataset": "digits", "clients": 4, "dp": "sample", "epsilon": 2.0,
                    "lr": 0.1, "rounds": 3, "protect": "secagg", "min_clients": 2}  # fmt: skip
    RunConfig.from_flat(flat)


def test_flatten_sections_rejects_unknown_section_and_misplaced_key():
    with pytest.raises(ConfigValueError) as excinfo:
        RunConfig.flatten_sections({"sever": {"rounds": 3}})
    assert excinfo.value.field == "config" and "[sever]" in str(excinfo.value)
    with pytest.raises(ConfigValueError) as excinfo:
        RunConfig.flatten_sections({"server": {"epsilon": 3.0}})
    msg = str(excinfo.value)
    assert "epsilon" in msg and "[dp]" in msg and "[server]" in msg
    with pytest.raises(ConfigValueError):
        RunConfig.flatten_sections({"server": {"nested": {"rounds": 3}}})


# ---------------------------------------------------------------- stateful clients
@pytest.mark.parametrize(
    "flat, field",
    [
        ({"client_momentum": 0.9, "optimizer": "adam"}, "client_momentum"),
        ({"client_momentum": 0.9, "momentum": 0.5}, "client_momentum"),
        ({"client_momentum": 1.0}, "client_momentum"),
        ({"local_steps": 0}, "local_steps"),
        ({"local_steps": 3, "local_epochs": 1.0}, "local_steps"),
        ({"local_steps": 3, "algorithm": "fedsgd"}, "local_steps"),
        # worker momentum would carry DP-FedAvg's hidden client sampling from round to round
        ({"client_momentum": 0.9, "dp": "client", "epsilon": 3.0, "sampling": "poisson", "fraction": 0.5}, "client_momentum"),
    ],
)
def test_stateful_client_settings_refused_with_the_field(flat, field):
    with pytest.raises(ConfigValueError) as err:
        RunConfig.from_flat(flat)
    assert err.value.field == field


def test_stateful_client_settings_accepted_where_sound():
    c = RunConfig.from_flat({"client_momentum": 0.9, "local_steps": 1, "dp": "client", "epsilon": 3.0})
    assert (c.client.client_momentum, c.client.local_steps) == (0.9, 1)
    assert RunConfig.from_flat({"client_momentum": 0.9, "dp": "sample", "epsilon": 3.0}).client.client_momentum == 0.9
