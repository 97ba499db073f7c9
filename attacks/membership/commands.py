"""``securefl attack membership``: loss-threshold and calibrated membership inference.

Writes ``DIR/membership.json`` (``auc``, ``tpr_at_fpr`` of the strongest attack,
and per attack) and ``DIR/roc.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from securefl._io import atomic_write_json


def run(ns: argparse.Namespace) -> int:
    from attacks.membership.cases import MembershipConfig
    from attacks.membership.run import plot_roc, run as run_attack
    from securefl.data import load_dataset
    from securefl.exceptions import ConfigValueError

    cfg = MembershipConfig(
        members=ns.members,
        epochs=ns.epochs,
        batch_size=ns.batch_size,
        lr=ns.lr,
        model=ns.model,
        hidden=ns.hidden,
        dp=ns.dp,
        noise_multiplier=ns.noise_multiplier,
        clip=ns.clip,
        delta=ns.delta,
        references=ns.references,
        seed=ns.seed,
    )
    data = load_dataset(ns.dataset, seed=0)
    if data.task != "classification":
        raise ConfigValueError("dataset", ns.dataset, "membership inference scores a classifier's loss; the data has no class labels")
    result = run_attack(data, cfg)
    out: Path = ns.out
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    atomic_write_json(out / "membership.json", summary)
    title = "no DP" if cfg.dp == "none" else f"DP-SGD sigma={cfg.noise_multiplier:g}, eps={result.epsilon:.2f}"
    plot_roc(out / "roc.png", result.attacks, title=f"membership inference, {title}")
    tpr = summary["tpr_at_fpr"]
    print(
        f"AUC {summary['auc']:.3f} ({summary['best_attack']}), TPR {tpr['0.01']:.3f} at 1% FPR, "
        f"{tpr['0.001']:.3f} at 0.1% FPR; train/test accuracy {result.train_accuracy:.3f}/{result.test_accuracy:.3f}; "
        f"wrote {out}/membership.json, {out}/roc.png"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("membership", help="membership inference (loss threshold, reference-calibrated)")
    p.add_argument("--members", type=int, default=100, help="target training-set size; as many non-members (100)")
    p.add_argument("--epochs", type=int, default=100, help="training epochs of target and references (100)")
    p.add_argument("--batch-size", type=int, default=20, help="(expected) batch size (20)")
    p.add_argument("--lr", type=float, default=0.2, help="SGD learning rate (0.2)")
    p.add_argument("--dataset", default="digits", help="digits | breast_cancer | synthetic, or MODULE:CALLABLE (digits)")
    p.add_argument("--model", default="mlp", help="logreg | mlp | cnn, or your own factory as MODULE:CALLABLE (mlp)")
    p.add_argument("--hidden", type=int, default=128, help="hidden units of the MLP (128)")
    p.add_argument("--dp", default="none", help="none | sample (DP-SGD) (none)")
    p.add_argument("--noise-multiplier", type=float, default=1.0, help="DP-SGD noise multiplier (1.0)")
    p.add_argument("--clip", type=float, default=1.0, help="DP-SGD per-example clip (1.0)")
    p.add_argument("--delta", type=float, default=1e-5, help="delta for the reported epsilon (1e-5)")
    p.add_argument("--references", type=int, default=4, help="reference models for the calibrated attack (4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/membership"), help="output folder (runs/membership)")
    p.add_argument("--no-progress", action="store_true", help="(no progress bar is shown)")
    p.set_defaults(handler=run)
