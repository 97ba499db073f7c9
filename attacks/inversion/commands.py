"""``securefl attack invert``: reconstruct a client's images from what the server reads.

Writes ``DIR/inversion.json`` (``psnr``, ``ssim``, ``mse``, ``label_accuracy``,
``baseline_psnr`` and per-image values) and ``DIR/reconstructions.png``
(originals above reconstructions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from securefl._io import atomic_write_json


def run(ns: argparse.Namespace) -> int:
    from tqdm import tqdm

    from attacks.inversion.cases import CaseConfig
    from attacks.inversion.attacks import AttackConfig, METHODS
    from attacks.inversion.run import evaluate, plot_grid
    from securefl.data import load_dataset
    from securefl.exceptions import ConfigValueError

    if ns.method not in METHODS:
        raise ConfigValueError("method", ns.method, f"must be one of {', '.join(METHODS)}")
    case = CaseConfig(
        batch_size=ns.batch_size,
        local_steps=ns.local_steps,
        local_lr=ns.local_lr,
        dp=ns.dp,
        noise_multiplier=ns.noise_multiplier,
        clip=ns.clip,
        protect=ns.protect,
        clients=ns.clients,
        model=ns.model,
        hidden=ns.hidden,
    )
    attack = AttackConfig(iterations=ns.iterations, restarts=ns.restarts, seed=ns.seed)
    if ns.images < 1:
        raise ConfigValueError("images", ns.images, "must be >= 1")
    data = load_dataset(ns.dataset, seed=0)
    if data.task != "classification" or data.x_train.dim() != 4:
        raise ConfigValueError(
            "dataset", ns.dataset, f"attack invert reconstructs labelled images (C, H, W); got inputs {data.input_shape} ({data.task})"
        )
    trials = -(-ns.images // case.batch_size)
    bar = tqdm(total=trials, unit="round", disable=ns.no_progress, file=sys.stderr, dynamic_ncols=True)
    try:
        result = evaluate(case, ns.method, images=ns.images, seed=ns.seed, attack=attack, data=data, on_trial=lambda t: bar.update(1))
    finally:
        bar.close()
    out: Path = ns.out
    out.mkdir(parents=True, exist_ok=True)
    originals = result.pop("_originals")
    recons = result.pop("_reconstructions")
    atomic_write_json(out / "inversion.json", result)
    title = f"{ns.method}, protect={ns.protect}, dp={ns.dp}"
    if ns.dp in ("sample", "client"):
        title += f" (sigma={ns.noise_multiplier:g}, C={ns.clip:g})"
    plot_grid(out / "reconstructions.png", originals, recons, title=title)
    lab = result["label_accuracy"]
    print(
        f"{ns.method}: median PSNR {result['psnr']:.2f} dB (mean-image baseline {result['baseline_psnr']:.2f} dB), "
        f"SSIM {result['ssim']:.3f}, MSE {result['mse']:.4g}, label accuracy "
        f"{'-' if lab is None else f'{lab:.2f}'} over {result['images']} images; "
        f"wrote {out}/inversion.json, {out}/reconstructions.png"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("invert", help="gradient inversion (DLG, iDLG, Inverting Gradients, analytic)")
    p.add_argument("--method", default="dlg", help="dlg | idlg | ig | analytic (dlg)")
    p.add_argument("--batch-size", type=int, default=1, help="images per client update (1)")
    p.add_argument("--local-steps", type=int, default=1, help="local SGD steps per update; >1 is a FedAvg update (1)")
    p.add_argument("--local-lr", type=float, default=0.1, help="local learning rate, known to the server (0.1)")
    p.add_argument("--dp", default="none", help="none | sample (DP-SGD: per-example clipping + noise) | client (DP-FedAvg: the update clipped; noise shares under secagg) (none)")
    p.add_argument("--noise-multiplier", type=float, default=0.0, help="DP-SGD noise multiplier; 0 = clipping only (0)")
    p.add_argument("--clip", type=float, default=1.0, help="per-example L2 clip with --dp sample (1.0)")
    p.add_argument("--protect", default="none", help="none | ckks | secagg: what the server reads (none)")
    p.add_argument("--clients", type=int, default=10, help="clients in the round aggregated under ckks/secagg (10)")
    p.add_argument("--dataset", default="digits", help="digits, or your own as MODULE:CALLABLE returning image tensors (X, y) (digits)")
    p.add_argument("--model", default="mlp", help="mlp | cnn | logreg, or your own factory as MODULE:CALLABLE (mlp)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units of the MLP (64)")
    p.add_argument("--images", type=int, default=20, help="target images to attack (20)")
    p.add_argument("--iterations", type=int, default=0, help="optimiser iterations; 0 = the method's default")
    p.add_argument("--restarts", type=int, default=2, help="random restarts, best matching loss kept (2)")
    p.add_argument("--seed", type=int, default=0, help="which images and initial weights (not the DP noise)")
    p.add_argument("--out", type=Path, default=Path("runs/invert"), help="output folder (runs/invert)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)
