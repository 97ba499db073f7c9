"""Names the configuration accepts: DP modes and the vocabularies of components."""

from __future__ import annotations

import enum


class DPMode(str, enum.Enum):
    """What differential privacy protects (``--dp``): nothing, each record
    (DP-SGD on every client) or each client's whole contribution (DP-FedAvg)."""

    NONE = "none"
    SAMPLE = "sample"
    CLIENT = "client"

    def __str__(self) -> str:
        return self.value


DP_MODES = tuple(m.value for m in DPMode)
ACCOUNTANTS = ("prv", "rdp")
SAMPLINGS = ("fixed", "poisson")
ALGORITHMS = ("fedavg", "fedsgd")
CLIENT_OPTIMIZERS = ("sgd", "adam")

# The names of the built-in components, as plain data: config validates names
# without importing the components, and each component's registry is keyed by
# exactly these (tests/test_config.py checks both sides agree).
DATASET_NAMES = ("digits", "breast_cancer", "synthetic", "linreg")
PARTITION_NAMES = ("iid", "dirichlet", "shards")
MODEL_NAMES = ("logreg", "linreg", "mlp", "cnn")
AGGREGATOR_NAMES = (
    "mean", "median", "trimmed_mean", "krum", "multikrum", "bulyan", "centered_clipping", "norm_bound", "fltrust",
)
SERVER_OPT_NAMES = ("fedavg", "fedavgm", "fedadam")
#: protections ``--protect`` accepts; :func:`securefl.protections.register` adds a name
PROTECT_NAMES: list[str] = ["none", "ckks", "secagg"]


