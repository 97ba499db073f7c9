"""One empirical audit: train the audited federation with its canaries
(:mod:`attacks.audit.cases`), score the canaries (:mod:`attacks.audit.attacks`) and
turn the guesses into a lower bound (:mod:`attacks.audit.metrics`) next to the
accountant's upper bound; and the two-hypothesis audit of one DP-FedAvg release."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from attacks.audit.cases import AuditedRun, EmpiricalAuditConfig, build_federation
from attacks.audit.metrics import OneRunResult, TwoHypothesisResult, one_run_audit, one_shot_estimate, two_hypothesis_audit
from securefl.privacy.noise import SecureRNG
from securefl.server import FEDERATION


def _train(audited: AuditedRun, on_round: Callable[[int], None] | None) -> tuple[np.ndarray, float | None]:
    """Run the federation, letting the scorer watch every round; return the canary
    scores and the last round's accuracy."""
    sim, scorer = audited.sim, audited.scorer
    rounds = sim.config.server.rounds
    scorer.before_round(sim.server.weights)

    def watch(res: Any) -> None:
        scorer.after_round(sim.server.weights)
        if res.round < rounds:
            scorer.before_round(sim.server.weights)
        if on_round is not None:
            on_round(res.round)

    result = sim.run(on_round=watch)
    return scorer.final(sim.server.weights), result.results[-1].accuracy if result.results else None


def _upper_bound(run: Any, audited: AuditedRun) -> float | None:
    """The accountant's epsilon: the largest client's under sample-level DP, the
    federation's under client-level DP, None without DP."""
    ledger = audited.sim.ledger
    if run.dp.dp == "sample":
        return max(ledger.spent(c.client_id).get(run.dp.accountant) for c in audited.sim.clients[: run.clients])
    if run.dp.dp == "client":
        return ledger.spent(FEDERATION).get(run.dp.accountant)
    return None


def run_empirical_audit(
    run: Any,
    audit: EmpiricalAuditConfig,
    *,
    out_dir: str | Path | None = None,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one federated run of ``run`` (a :class:`~securefl.config.RunConfig`)
    with canaries, score them and return the audit JSON (also written to
    ``out_dir/audit.json`` next to the run's ``ledger.json`` and ``metrics.json``)."""
    t0 = time.perf_counter()
    audit = audit.resolved(run.dp.dp)
    included = SecureRNG.from_seed(run.seed, "audit-inclusion").bernoulli(0.5, audit.canaries)
    audited = build_federation(run, audit, included, out_dir=out_dir)
    scores, accuracy = _train(audited, on_round)
    result = one_run_audit(scores, included, delta=run.dp.delta, confidence=audit.confidence,
                           k_pos=audit.k_pos, k_neg=audit.k_neg)
    upper = _upper_bound(run, audited)
    report: dict[str, Any] = {
        **result.as_dict(),
        "epsilon_upper_bound": upper,
        "accountant": run.dp.accountant if run.dp.enabled else None,
        "dp": run.dp.dp,
        "canary_kind": audit.kind,
        "score": audit.score,
        "canary_data": audit.canary_data if audit.kind == "example" else None,
        "included": int(included.sum()),
        "accuracy": accuracy,
        "sound": upper is None or result.epsilon_lower_bound <= upper,
        "seconds": round(time.perf_counter() - t0, 2),
        "config": run.to_flat(),
    }
    if audit.kind == "client":
        report.update(one_shot_estimate(scores[included], scores[~included], run.dp.delta))
    if out_dir is not None:
        from securefl._io import atomic_write_json

        atomic_write_json(Path(out_dir) / "audit.json", report)
        plot_scores(scores, included, result, Path(out_dir) / "audit_scores.png")
    return report


def audit_dp_fedavg_round(
    *, noise_multiplier: float, trials: int, dim: int = 16, clip: float = 1.0, delta: float = 1e-5,
    confidence: float = 0.95, rng: SecureRNG | None = None,
) -> TwoHypothesisResult:
    """Two-hypothesis audit of the library's DP-FedAvg release for one round
    (:func:`securefl.privacy.client_dp.noisy_average`): the sum of updates is
    empty or holds one canary update of norm ``clip``; the score is the
    projection of the noisy average on the canary direction. The true epsilon is
    ``gaussian_epsilon(1 / noise_multiplier, delta)``."""
    from securefl.privacy.client_dp import noisy_average

    rng = rng or SecureRNG()
    direction = torch.zeros(dim, dtype=torch.float64)
    direction[0] = 1.0
    scores = {False: [], True: []}
    for with_canary in (False, True):
        total = direction * clip if with_canary else torch.zeros(dim, dtype=torch.float64)
        for _ in range(trials):
            out = noisy_average(total, noise_multiplier=noise_multiplier, clip=clip, denominator=1.0, rng=rng)
            scores[with_canary].append(float(out @ direction))
    return two_hypothesis_audit(np.array(scores[False]), np.array(scores[True]), delta=delta, confidence=confidence)


def plot_scores(scores: np.ndarray, included: np.ndarray, result: OneRunResult, path: Path) -> None:
    """Histogram of canary scores, included vs excluded."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    bins = np.histogram_bin_edges(scores, bins=50)
    ax.hist(scores[included], bins=bins, alpha=0.6, label=f"included ({int(included.sum())})")
    ax.hist(scores[~included], bins=bins, alpha=0.6, label=f"excluded ({int((~included).sum())})")
    ax.set_xlabel("canary score")
    ax.set_ylabel("canaries")
    ax.set_title(f"eps >= {result.epsilon_lower_bound:.2f} ({result.correct}/{result.guesses} guesses right)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
