"""Cost of floating-point-safe DP noise against the old Box-Muller sampler.

Reports (1) draws per second of ``SecureRNG.normal`` (Box-Muller in float64 from
the ChaCha20 keystream, the sampler DP used before) and of the exact discrete
Gaussian on a grid (``SecureRNG.secure_gaussian`` / ``noisy_on_grid``), for
``--draws`` draws; (2) the time of one DP-SGD step (Poisson batch, per-sample
gradients, clipping, noise) on the digits logistic regression with each sampler.
Times are CPU seconds (``time.process_time``), wall seconds beside them.

    python benchmarks/bench_noise.py [out.json] --draws 1000000 --steps 200
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from securefl.data import load_digits
from securefl.models import build_model
from securefl.privacy.dpsgd import SecureDPOptimizer, dp_sgd_train
from securefl.privacy.noise import SecureRNG, noisy_on_grid
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed


class BoxMullerDPOptimizer(SecureDPOptimizer):
    """The previous ``add_noise``: continuous Box-Muller noise added in float32."""

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = self.rng.normal(tuple(p.summed_grad.shape), std, dtype=p.summed_grad.dtype)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


def _timed(fn, repeats: int) -> tuple[float, float]:
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall)


def bench_draws(n: int, repeats: int) -> dict:
    rng = SecureRNG.from_seed(0, "bench")
    zeros = torch.zeros(n, dtype=torch.float64)
    cases = {
        "box_muller": lambda: rng.normal((n,), 1.0, dtype=torch.float64),
        "discrete_gaussian": lambda: rng.secure_gaussian((n,), 1.0),
        "noisy_on_grid": lambda: noisy_on_grid(zeros, noise_multiplier=1.0, clip=1.0, rng=rng),
    }
    out = {}
    for name, fn in cases.items():
        cpu, wall = _timed(fn, repeats)
        out[name] = {"cpu_s": cpu, "wall_s": wall, "draws_per_s": n / wall}
    out["slowdown"] = out["discrete_gaussian"]["wall_s"] / out["box_muller"]["wall_s"]
    return out


def bench_dpsgd(steps: int, repeats: int) -> dict:
    data = load_digits()
    x, y = data.x_train, data.y_train
    out = {"dim": None}
    import securefl.privacy.dpsgd as dpsgd

    for name, cls in (("box_muller", BoxMullerDPOptimizer), ("discrete_gaussian", SecureDPOptimizer)):
        model = build_model("logreg", data.input_shape, data.num_classes, seed=0)
        out["dim"] = sum(p.numel() for p in model.parameters())
        dpsgd.SecureDPOptimizer, original = cls, dpsgd.SecureDPOptimizer
        try:
            run = lambda: dp_sgd_train(  # noqa: E731
                model, x, y, loss_fn=F.cross_entropy, optimizer_fn=lambda ps: torch.optim.SGD(ps, lr=0.1),
                noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.05, steps=steps, rng=SecureRNG(),
                grad_sample_mode="hooks",  # the mode whose optimizer class is swapped above
            )
            cpu, wall = _timed(run, repeats)
        finally:
            dpsgd.SecureDPOptimizer = original
        out[name] = {"step_cpu_ms": 1e3 * cpu / steps, "step_wall_ms": 1e3 * wall / steps}
    out["slowdown"] = out["discrete_gaussian"]["step_wall_ms"] / out["box_muller"]["step_wall_ms"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path)
    ap.add_argument("--draws", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    res = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__},
        "draws": {"n": args.draws, **bench_draws(args.draws, args.repeats)},
        "dpsgd_digits_logreg": {"steps": args.steps, **bench_dpsgd(args.steps, args.repeats)},
    }
    d = res["draws"]
    print(f"{args.draws} draws: Box-Muller {d['box_muller']['draws_per_s']:.3g}/s, "
          f"discrete Gaussian {d['discrete_gaussian']['draws_per_s']:.3g}/s "
          f"(x{d['slowdown']:.1f} slower); noisy_on_grid {d['noisy_on_grid']['draws_per_s']:.3g}/s")
    s = res["dpsgd_digits_logreg"]
    print(f"DP-SGD step, digits logreg (d={s['dim']}): Box-Muller {s['box_muller']['step_wall_ms']:.2f} ms, "
          f"discrete Gaussian {s['discrete_gaussian']['step_wall_ms']:.2f} ms (x{s['slowdown']:.2f})")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
