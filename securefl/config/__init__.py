"""Frozen, validated configuration objects.

The CLI flags, TOML files and the Python API all build these. Validation happens
at construction: a value of the wrong type raises
:class:`~securefl.exceptions.ConfigTypeError`, an out-of-range value raises
:class:`~securefl.exceptions.ConfigValueError`; both name the field and value.
Field names are unique across the sub-configs so a flat mapping (CLI flags, a
TOML table) routes unambiguously with :meth:`RunConfig.from_flat`.

This module is plain validated data: it imports no component of securefl. Names
of components are checked against the vocabularies below; what depends on a
component's maths (CKKS parameters, a secure-aggregation ring, a robust rule's
Byzantine bound) is checked by :func:`securefl.build.check`, which every way of
running a config (:func:`securefl.build.build`, the simulation, the CLI) calls.
"""


from securefl.config.parts import ClientConfig, DPConfig, ProtectConfig, ServerConfig
from securefl.config.schedule import ScheduleConfig
from securefl.config.run import _SUBCONFIGS, TOML_SECTIONS, RunConfig
from securefl.config.vocab import (
    ACCOUNTANTS,
    AGGREGATOR_NAMES,
    ALGORITHMS,
    CLIENT_OPTIMIZERS,
    DATASET_NAMES,
    DP_MODES,
    MODEL_NAMES,
    PARTITION_NAMES,
    PROTECT_NAMES,
    SAMPLINGS,
    SERVER_OPT_NAMES,
    DPMode,
)

__all__ = [
    "ACCOUNTANTS", "AGGREGATOR_NAMES", "ALGORITHMS", "CLIENT_OPTIMIZERS", "DATASET_NAMES", "DP_MODES",
    "MODEL_NAMES", "PARTITION_NAMES", "PROTECT_NAMES", "SAMPLINGS", "SERVER_OPT_NAMES", "TOML_SECTIONS",
    "ClientConfig", "DPConfig", "DPMode", "ProtectConfig", "RunConfig", "ScheduleConfig", "ServerConfig", "_SUBCONFIGS",
]
