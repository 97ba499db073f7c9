"""``securefl audit empirical``: a canary-based lower bound on the epsilon of a run;
``securefl audit mechanism``: the classic two-hypothesis audit of one DP-FedAvg release.

Trains one federated run with canaries (see :mod:`attacks.audit.run`), prints the
audit JSON and writes it to ``OUT/audit.json`` with the run's ``ledger.json`` and
a histogram of canary scores (``audit_scores.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_AUDIT_FLAGS = ("canaries", "canary_kind", "canary_data", "score", "confidence", "k_pos", "k_neg", "canary_norm")


def run(ns: argparse.Namespace) -> int:
    from attacks.audit.cases import EmpiricalAuditConfig
    from attacks.audit.run import run_empirical_audit
    from securefl.cli import _progress, config_from_args

    if ns.out == Path("runs/latest"):
        ns.out = Path("runs/audit")
    config = config_from_args(ns, extra_skip=_AUDIT_FLAGS)
    audit = EmpiricalAuditConfig(
        canaries=ns.canaries,
        kind=ns.canary_kind,
        score=ns.score,
        confidence=ns.confidence,
        k_pos=ns.k_pos,
        k_neg=ns.k_neg,
        canary_norm=ns.canary_norm,
        canary_data=ns.canary_data,
    ).resolved(config.dp.dp)
    bar = _progress(config.server.rounds, ns.no_progress)
    try:
        report = run_empirical_audit(config, audit, out_dir=ns.out, on_round=lambda r: bar.update(1))
    finally:
        bar.close()
    shown = {k: v for k, v in report.items() if k != "config"}
    print(json.dumps(shown, indent=2))
    upper = report["epsilon_upper_bound"]
    claim = f"{upper:.3f} ({report['accountant']})" if upper is not None else "none (DP off)"
    sys.stderr.write(
        f"epsilon >= {report['epsilon_lower_bound']:.3f} at {report['confidence']:.0%} confidence "
        f"({report['correct']}/{report['guesses']} guesses right, {report['canaries']} {report['canary_kind']} canaries); "
        f"accountant's epsilon <= {claim} at delta {report['delta']:g}; wrote {ns.out}/audit.json\n"
    )
    if not report["sound"]:
        sys.stderr.write("AUDIT FAILURE: the lower bound exceeds the accountant's upper bound\n")
        return 1
    return 0


def run_mechanism(ns: argparse.Namespace) -> int:
    """Two-hypothesis audit of one DP-FedAvg release (``noisy_average``)."""
    from attacks.audit.run import audit_dp_fedavg_round
    from securefl.exceptions import ConfigValueError
    from securefl.privacy import accounting

    if not ns.noise_multiplier > 0:
        raise ConfigValueError("noise_multiplier", ns.noise_multiplier, "must be > 0")
    if ns.trials < 4:
        raise ConfigValueError("trials", ns.trials, "must be >= 4")
    res = audit_dp_fedavg_round(
        noise_multiplier=ns.noise_multiplier, trials=ns.trials, delta=ns.delta, confidence=ns.confidence
    )
    upper = accounting.epsilon_under("prv", ((ns.noise_multiplier, 1.0, 1),), ns.delta)
    report = {**res.as_dict(), "epsilon_upper_bound": upper, "accountant": "prv", "mechanism": "dp-fedavg round",
              "noise_multiplier": ns.noise_multiplier, "sound": res.epsilon_lower_bound <= upper}
    print(json.dumps(report, indent=2))
    sys.stderr.write(
        f"epsilon >= {res.epsilon_lower_bound:.3f} at {ns.confidence:.0%} confidence from {res.trials} runs "
        f"(FPR <= {res.fpr_upper:.4f}, FNR <= {res.fnr_upper:.4f}); accountant's epsilon <= {upper:.3f}\n"
    )
    return 0 if report["sound"] else 1


def register(subparsers) -> None:
    m = subparsers.add_parser(
        "mechanism",
        help="two-hypothesis audit of one DP-FedAvg release with Clopper-Pearson bounds",
        description="Run the library's DP-FedAvg release many times with and without one canary update and "
        "bound epsilon from below with exact Clopper-Pearson intervals on the test's error rates.",
    )
    m.add_argument("--noise-multiplier", type=float, required=True, help="z of the release")
    m.add_argument("--trials", type=int, default=2000, help="runs per hypothesis (2000)")
    m.add_argument("--delta", type=float, default=1e-5)
    m.add_argument("--confidence", type=float, default=0.95)
    m.set_defaults(handler=run_mechanism)

    from securefl.cli import add_train_flags

    p = subparsers.add_parser(
        "empirical",
        help="canary-based lower bound on epsilon (one-run audit, Steinke et al. 2023)",
        description="Train one run with canaries and turn the attacker's guesses into a lower bound on "
        "epsilon (Steinke, Nasr, Jagielski 2023); client canaries follow Andrew et al. (ICLR 2024).",
    )
    g = p.add_argument_group("audit")
    g.add_argument("--canaries", type=int, default=1000, help="canaries m, each included with probability 1/2 (1000)")
    g.add_argument("--canary-kind", default=None, help="example | client (example under --dp sample, else client)")
    g.add_argument("--canary-data", default="noise", help="example canaries: noise | mislabelled (noise)")
    g.add_argument("--score", default=None, help="example: loss | gradient; client: cosine")
    g.add_argument("--confidence", type=float, default=0.95, help="confidence of the lower bound (0.95)")
    g.add_argument("--k-pos", type=int, default=None, help="fixed guess: 'in' for the k highest scores")
    g.add_argument("--k-neg", type=int, default=0, help="with --k-pos: 'out' for the k lowest scores (0)")
    g.add_argument("--canary-norm", type=float, default=None, help="client canaries without client DP: update norm (--clip)")
    add_train_flags(p)
    p.set_defaults(handler=run)
