"""The flags of ``securefl train``, grouped; the attack and audit commands reuse them."""

from __future__ import annotations

import argparse
from pathlib import Path


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``securefl train``; attack and audit commands reuse them."""
    S = argparse.SUPPRESS
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default=S, help="digits | breast_cancer | synthetic | linreg, or your own: MODULE:CALLABLE returning (X, y), a Dataset, or (train, test)")
    g.add_argument("--clients", type=int, default=S, help="number of clients (10)")
    g.add_argument("--partition", default=S, help="iid | dirichlet | shards (dirichlet)")
    g.add_argument("--alpha", type=float, default=S, help="Dirichlet concentration (1.0)")
    g.add_argument("--shards-per-client", type=int, default=S)
    g.add_argument("--model", default=S, help="logreg | linreg | mlp | cnn, or your own factory: MODULE:CALLABLE returning an nn.Module")
    g.add_argument("--hidden", type=int, default=S, help="hidden units of mlp/cnn (64)")
    g.add_argument("--test-fraction", type=float, default=S)
    g = p.add_argument_group("rounds and aggregation")
    g.add_argument("--rounds", type=int, default=S, help="federated rounds (30)")
    g.add_argument("--fraction", type=float, default=S, help="fraction of clients per round (1.0)")
    g.add_argument("--sampling", default=S, help="fixed | poisson client sampling (fixed)")
    g.add_argument("--algorithm", default=S, help="fedavg | fedsgd (fedavg)")
    g.add_argument(
        "--aggregator",
        default=S,
        help="mean | median | trimmed_mean | krum | multikrum | bulyan | centered_clipping | norm_bound | fltrust",
    )
    g.add_argument("--byzantine", type=int, default=S, help="Byzantine clients f the robust aggregator assumes (0)")
    g.add_argument("--trim-fraction", type=float, default=S, help="trimmed_mean: fraction trimmed per side (0.2)")
    g.add_argument("--krum-m", type=int, default=S, help="multikrum: updates averaged (n - f)")
    g.add_argument("--clip-radius", type=float, default=S, help="norm_bound/centered_clipping radius (median norm)")
    g.add_argument("--cc-iterations", type=int, default=S, help="centered_clipping iterations (3)")
    g.add_argument("--root-size", type=int, default=S, help="fltrust: examples in the server root dataset (100)")
    g.add_argument("--server-opt", default=S, help="fedavg | fedavgm | fedadam (fedavg)")
    g.add_argument("--server-lr", type=float, default=S, help="server learning rate (1.0)")
    g.add_argument("--server-momentum", type=float, default=S)
    g.add_argument("--protect", default=S, help="update protection: none | ckks (CKKS-encrypted sum) | secagg")
    g.add_argument("--ema", type=float, default=S, help="release a moving average of the global weights (0: off)")
    g.add_argument("--dropout", type=float, default=S, help="probability a chosen client vanishes mid-round (0)")
    g.add_argument("--min-clients", type=int, default=S, help="smallest cohort whose sum a client helps release under ckks or secagg; at least 2 (3)")
    g = p.add_argument_group("CKKS encryption (--protect ckks)")
    g.add_argument("--ckks-preset", default=S, help="small-model | standard | large-model | hardened (small-model)")
    g.add_argument("--ckks-encryption", default=S, help="seeded | symmetric | public-key (seeded: symmetric ciphertexts sent as c0 + a 64-byte seed, ~half the bytes) (seeded)")
    g.add_argument("--ckks-max-clients", type=int, default=S, help="most updates summed per round (all clients)")
    g.add_argument("--ckks-max-error", type=float, default=S, help="bound on the released error of a summed slot (1e-3)")
    g.add_argument("--ckks-clip", type=float, default=S, help="L2 bound on an update; larger ones are clipped and counted (4.0)")
    g.add_argument("--ckks-max-weight", type=float, default=S, help="bound on a client's sample count n_k (1000)")
    g = p.add_argument_group("secure aggregation (--protect secagg)")
    g.add_argument("--secagg-clip", type=float, default=S, help="bound on each update coordinate; larger ones are clipped and counted (1.0)")
    g.add_argument("--secagg-max-weight", type=float, default=S, help="bound on a client's sample count n_k (4096)")
    g.add_argument("--secagg-bits", type=int, default=S, help="ring Z_(2^bits): 32 | 64 (32)")
    g.add_argument("--secagg-threshold", type=float, default=S, help="fraction of share holders needed to unmask (0.6)")
    g.add_argument("--secagg-neighbors", type=int, default=S, help="0 = all clients; even k = SecAgg+ graph degree; -1 = SecAgg+ with k about 2 log2 n (0)")
    g.add_argument("--secagg-malicious", action="store_const", const=True, default=S, help="signed keys + consistency check")
    g.add_argument("--secagg-distributed-dp", action="store_const", const=True, default=S,
                   help="with --dp client: clients add the DP noise in shares, so nobody sees an un-noised sum")
    g = p.add_argument_group("update compression (securefl.config.compression)")
    g.add_argument("--compress", default=S,
                   help="none | randk:FRACTION (same public coordinates for every client each round) | quant:BITS "
                   "(secagg: stochastic rounding to 2^BITS steps, narrower ring) | randk:F+quant:B (none)")
    g.add_argument("--no-error-feedback", dest="error_feedback", action="store_const", const=False, default=S,
                   help="randk: drop the unsent coordinates instead of adding them to the next update")
    g = p.add_argument_group("asynchronous aggregation and simulated client speeds")
    g.add_argument("--mode", default=S, help="sync | async: FedBuff buffers; --rounds then counts server updates (sync)")
    g.add_argument("--buffer", type=int, default=S, help="async: updates aggregated per server step, one secagg/CKKS cohort (5)")
    g.add_argument("--concurrency", type=int, default=S, help="async: clients training at once (2 x buffer)")
    g.add_argument("--staleness-weight", default=S, help="async: sqrt (1/sqrt(1+s)) | inverse (1/(1+s)) | constant (sqrt)")
    g.add_argument("--max-staleness", type=int, default=S, help="async: older updates are refused and counted (8)")
    g.add_argument("--max-updates", type=int, default=S, help="async with --dp sample: updates each client's budget covers (rounds)")
    g.add_argument("--latency-spread", type=float, default=S, help="simulated: slowest client's mean task time over the fastest's (1)")
    g.add_argument("--latency-jitter", type=float, default=S, help="simulated: log-normal sigma of one task's time (0)")
    g = p.add_argument_group("local training")
    g.add_argument("--local-epochs", type=float, default=S)
    g.add_argument("--batch-size", type=int, default=S)
    g.add_argument("--sample-rate", type=float, default=S, help="DP-SGD Poisson rate (batch-size/n_k)")
    g.add_argument("--lr", type=float, default=S)
    g.add_argument("--optimizer", default=S, help="sgd | adam")
    g.add_argument("--momentum", type=float, default=S, help="SGD momentum within a round, reset every round (0)")
    g.add_argument("--local-steps", type=int, default=S, help="a round is this many minibatch steps (instead of --local-epochs)")
    g.add_argument("--client-momentum", type=float, default=S,
                   help="worker momentum beta kept across rounds (Karimireddy et al. 2021); 0 = off (0)")
    g = p.add_argument_group("differential privacy")
    g.add_argument("--dp", default=S, help="none | sample (DP-SGD per client) | client (DP-FedAvg)")
    g.add_argument("--epsilon", type=float, default=S, help="budget: per client (sample) or federation (client)")
    g.add_argument("--delta", type=float, default=S, help="(1e-5)")
    g.add_argument("--noise-multiplier", type=float, default=S, help="set instead of solving from --epsilon")
    g.add_argument("--clip", type=float, default=S, help="per-example (sample) or per-update (client) L2 clip")
    g.add_argument("--accountant", default=S, help="prv | rdp: the one that enforces the budget (prv)")
    g.add_argument("--adaptive-clip", action="store_const", const=True, default=S)
    g.add_argument("--target-quantile", type=float, default=S)
    g.add_argument("--clip-lr", type=float, default=S)
    g.add_argument("--clip-count-stddev", type=float, default=S)
    g.add_argument(
        "--reproducible-noise",
        action="store_const",
        const=True,
        default=S,
        help="derive DP noise from --seed (anyone knowing the seed can remove it)",
    )
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=S)
    g.add_argument("--workers", type=int, default=S,
                   help="clients trained and answered in parallel threads; same results as 1, torch threads are split among them (1)")
    g.add_argument("--config", type=Path, default=None, help="TOML file of settings (flags override it)")
    g.add_argument("--out", type=Path, default=Path("runs/latest"), help="output folder (runs/latest)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--overwrite", action="store_true", help="replace the outputs of a previous run in --out")
