"""The sub-configs of a run: DP, local training, server and protection settings."""

from __future__ import annotations

from dataclasses import dataclass

from securefl.config.compression import CompressionSpec
from securefl.exceptions import ConfigTypeError, ConfigValueError
from securefl.validators import check_bool as _bool
from securefl.validators import check_choice as _choice
from securefl.validators import check_float as _float
from securefl.validators import check_int as _int

from securefl.config.vocab import (
    ACCOUNTANTS,
    AGGREGATOR_NAMES,
    ALGORITHMS,
    CLIENT_OPTIMIZERS,
    DP_MODES,
    SAMPLINGS,
    SERVER_OPT_NAMES,
    DPMode,
)

#: the largest learning rate any setting accepts; float32 training overflows long before
MAX_LR = 1e6


@dataclass(frozen=True)
class DPConfig:
    """Differential privacy settings.

    ``dp='sample'`` is record-level DP-SGD on every client (Abadi et al. 2016) through
    Opacus; ``epsilon`` is then each client's budget over the whole run.
    ``dp='client'`` is DP-FedAvg (McMahan et al. 2018): each update is clipped to
    ``clip`` and Gaussian noise ``noise_multiplier * clip`` is added to the sum;
    ``epsilon`` is the federation's client-level budget. With ``adaptive_clip`` the
    clip norm tracks the ``target_quantile`` of update norms (Andrew et al. 2021).

    When ``noise_multiplier`` is None it is solved from ``epsilon`` over the planned
    rounds; when both are given, ``epsilon`` is a hard budget checked each round.
    """

    dp: str = "none"
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip: float = 1.0
    accountant: str = "prv"
    adaptive_clip: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clip_count_stddev: float | None = None
    reproducible_noise: bool = False

    def __post_init__(self) -> None:
        _choice("dp", self.dp, DP_MODES)
        if self.epsilon is not None:
            _float("epsilon", self.epsilon, 0.0, lo_open=True)
        _float("delta", self.delta, 0.0, 1.0, lo_open=True, hi_open=True)
        if self.noise_multiplier is not None:
            _float("noise_multiplier", self.noise_multiplier, 0.0)
        _float("clip", self.clip, 0.0, lo_open=True)
        _choice("accountant", self.accountant, ACCOUNTANTS)
        _bool("adaptive_clip", self.adaptive_clip)
        _float("target_quantile", self.target_quantile, 0.0, 1.0)
        _float("clip_lr", self.clip_lr, 0.0, MAX_LR, lo_open=True)
        if self.clip_count_stddev is not None:
            _float("clip_count_stddev", self.clip_count_stddev, 0.0, lo_open=True)
        _bool("reproducible_noise", self.reproducible_noise)
        if self.dp != DPMode.NONE and self.epsilon is None and self.noise_multiplier is None:
            raise ConfigValueError(
                "epsilon", None, f"dp={self.dp!r} needs --epsilon or --noise-multiplier"
            )
        if self.adaptive_clip and self.dp != DPMode.CLIENT:
            raise ConfigValueError(
                "adaptive_clip", True, "adaptive clipping applies to dp='client' only"
            )

    @property
    def mode(self) -> DPMode:
        """``dp`` as a :class:`DPMode`."""
        return DPMode(self.dp)

    @property
    def enabled(self) -> bool:
        return self.mode is not DPMode.NONE


@dataclass(frozen=True)
class ClientConfig:
    """Local training on each client.

    ``sample_rate`` is the Poisson sampling rate of DP-SGD; when None it is
    ``batch_size / n_k``. One shared rate makes every client's accountant history
    identical in shape, which keeps accounting cheap. Under DP-SGD ``batch_size`` is
    also the public lot size the noisy gradient sum is divided by, so that the
    update's scale does not reveal n_k: with an explicit ``sample_rate`` set it near
    ``sample_rate`` times a typical client's size.

    ``local_steps`` makes a round exactly that many minibatch steps (``local_epochs``
    is then not used). ``momentum`` is SGD momentum within a round (reset every
    round); ``client_momentum`` is worker momentum kept across rounds (Karimireddy,
    He, Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021):
    ``m <- beta m + (1 - beta) g`` on every local step, the buffer living on the client.
    """

    local_epochs: float = 2.0
    batch_size: int = 32
    sample_rate: float | None = None
    lr: float = 0.3
    optimizer: str = "sgd"
    momentum: float = 0.0
    local_steps: int | None = None
    client_momentum: float = 0.0

    def __post_init__(self) -> None:
        _float("local_epochs", self.local_epochs, 0.0, 1000.0, lo_open=True)
        _int("batch_size", self.batch_size, 1)
        if self.sample_rate is not None:
            _float("sample_rate", self.sample_rate, 0.0, 1.0, lo_open=True)
        _float("lr", self.lr, 0.0, MAX_LR, lo_open=True)
        _choice("optimizer", self.optimizer, CLIENT_OPTIMIZERS)
        _float("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        if self.local_steps is not None:
            _int("local_steps", self.local_steps, 1, 1_000_000)
        _float("client_momentum", self.client_momentum, 0.0, 1.0, hi_open=True)
        if self.client_momentum > 0 and (self.optimizer != "sgd" or self.momentum > 0):
            why = f"worker momentum is SGD's own buffer; it needs optimizer 'sgd' and momentum 0 (got {self.optimizer!r}, {self.momentum!r})"
            raise ConfigValueError("client_momentum", self.client_momentum, why)


@dataclass(frozen=True)
class ServerConfig:
    """Rounds, client sampling, aggregation and the server optimizer."""

    rounds: int = 30
    fraction: float = 1.0
    sampling: str = "fixed"
    algorithm: str = "fedavg"
    server_opt: str = "fedavg"
    server_lr: float = 1.0
    server_momentum: float = 0.9
    aggregator: str = "mean"
    dropout: float = 0.0
    #: exponential moving average of the global weights, released and evaluated in
    #: place of the last iterate (0 = off); post-processing, so free under DP
    ema: float = 0.0
    #: robust aggregation (securefl.aggregation.robust): assumed Byzantine clients f,
    #: trimmed-mean fraction, Multi-Krum's m (None: n - f), the clipping radius of
    #: norm bounding / centered clipping (None: the round's median norm), centered
    #: clipping's iterations, and the size of FLTrust's server root dataset
    byzantine: int = 0
    trim_fraction: float = 0.2
    krum_m: int | None = None
    clip_radius: float | None = None
    cc_iterations: int = 3
    root_size: int = 100
    #: client threads per protocol stage in the simulation (1: one client after the
    #: other); the results are the serial run's (securefl.protections.threaded)
    workers: int = 1

    def __post_init__(self) -> None:
        _int("rounds", self.rounds, 1, 100_000)
        _float("fraction", self.fraction, 0.0, 1.0, lo_open=True)
        _choice("sampling", self.sampling, SAMPLINGS)
        _choice("algorithm", self.algorithm, ALGORITHMS)
        _choice("server_opt", self.server_opt, sorted(SERVER_OPT_NAMES))
        _float("server_lr", self.server_lr, 0.0, MAX_LR, lo_open=True)
        _float("server_momentum", self.server_momentum, 0.0, 1.0, hi_open=True)
        _choice("aggregator", self.aggregator, sorted(AGGREGATOR_NAMES))
        _float("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        _float("ema", self.ema, 0.0, 1.0, hi_open=True)
        _int("byzantine", self.byzantine, 0)
        _float("trim_fraction", self.trim_fraction, 0.0, 0.5, hi_open=True)
        if self.krum_m is not None:
            _int("krum_m", self.krum_m, 1)
        if self.clip_radius is not None:
            _float("clip_radius", self.clip_radius, 0.0, lo_open=True)
        _int("cc_iterations", self.cc_iterations, 1, 1000)
        _int("root_size", self.root_size, 1)
        _int("workers", self.workers, 1, 1024)


@dataclass(frozen=True)
class ProtectConfig:
    """Settings of the update protections (``--protect``); each protection reads its
    own section. Field names stay unique across all sub-configs (flat routing).

    Here every field's type is checked, and the ranges that are facts about one
    field; what depends on the protection's maths (a CKKS preset that meets
    128-bit security for the federation, a secure-aggregation ring the sum fits)
    is checked when :mod:`securefl.build` turns these fields into the protection's
    own settings (:func:`securefl.build.check` runs it up front)."""

    #: smallest cohort whose sum a client helps release (CKKS decryption, secure
    #: aggregation unmasking); each client enforces its own value, whatever the server says
    min_clients: int = 3

    # --- ckks (securefl.protections.ckks)
    ckks_preset: str = "small-model"  #: ring preset named by use (securefl.crypto.hazmat.ckks.PRESETS)
    ckks_encryption: str = "seeded"  #: "seeded" (secret-key, ~half the bytes of "symmetric"), "symmetric" or "public-key"
    ckks_max_clients: int | None = None  #: most ciphertexts summed in a round; None = the federation size
    ckks_max_error: float = 1e-3  #: bound on the released error of one summed slot (values in [-1, 1])
    ckks_clip: float = 4.0  #: L2 bound on an (unweighted) update; larger ones are clipped and counted
    ckks_max_weight: float | None = None  #: bound on n_k; None = 1000 (1 under DP, where weights are 1)

    # --- secagg (securefl.protections.secagg; ranges in securefl.crypto.secagg.common.SecAggSettings)
    secagg_clip: float = 1.0  #: bound on each coordinate of an (unweighted) update
    secagg_max_weight: float = 4096.0  #: bound on a client's weight n_k
    secagg_bits: int = 32  #: ring Z_(2^bits): 32 or 64
    secagg_threshold: float = 0.6  #: fraction of share holders needed to unmask, in (0.5, 1]
    secagg_neighbors: int = 0  #: 0 = complete graph; even k = SecAgg+ with k neighbours; -1 = k ~ 2 log2 n
    secagg_malicious: bool = False  #: signed keys + consistency check (malicious server)
    secagg_distributed_dp: bool = False  #: dp='client': clients add the noise in shares (no central noise)

    # --- update compression (securefl.config.compression, securefl.protections.compressed)
    compress: str = "none"  #: none | randk:FRACTION | quant:BITS | randk:FRACTION+quant:BITS
    error_feedback: bool = True  #: randk: add the unsent coordinates to the next update

    def __post_init__(self) -> None:
        _int("min_clients", self.min_clients, 2, 1_000_000)
        for name in ("ckks_preset", "ckks_encryption"):
            if not isinstance(getattr(self, name), str):
                raise ConfigTypeError(name, getattr(self, name), "must be a string")
        if self.ckks_max_clients is not None:
            _int("ckks_max_clients", self.ckks_max_clients, 1, 100_000)
        _float("ckks_max_error", self.ckks_max_error, 0.0, 1.0, lo_open=True)
        _float("ckks_clip", self.ckks_clip, 0.0, lo_open=True)
        if self.ckks_max_weight is not None:
            _float("ckks_max_weight", self.ckks_max_weight, 0.0, lo_open=True)
        for name in ("secagg_clip", "secagg_max_weight", "secagg_threshold"):
            _float(name, getattr(self, name))
        _int("secagg_bits", self.secagg_bits)
        _int("secagg_neighbors", self.secagg_neighbors)
        _bool("secagg_malicious", self.secagg_malicious)
        _bool("secagg_distributed_dp", self.secagg_distributed_dp)
        CompressionSpec.parse(self.compress)
        _bool("error_feedback", self.error_feedback)

    @property
    def compression(self) -> CompressionSpec:
        """``compress`` parsed."""
        return CompressionSpec.parse(self.compress)


