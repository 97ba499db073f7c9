"""``securefl attack bench --suite inversion``: what each protection hides from inversion.

Cells (8x8 digits, the reference MLP with 64 hidden units, a freshly initialised
network per round, single-image client updates unless noted):

* ``none``       — no defense: the server reads the target's gradient;
* ``clip``       — per-example clipping to ``CLIP`` with no noise;
* ``dp``         — DP-SGD, clipping plus noise multiplier ``sigma`` in ``SIGMAS``;
* ``aggregate``  — ``ckks`` / ``secagg``: only the sum over 10 clients; the attack
  reconstructs all 10 images (``sum n_k`` is public) and is scored on the
  target's, after matching. Both protections release exactly this sum, so it
  is computed once and reported under both names (``same_release_as``);
* ``aggregate_dp`` — the same aggregate when every client also runs DP-SGD
  (clip ``CLIP``, sigma 0.1);
* ``multistep``  — a FedAvg update of ``MULTI_STEPS`` local steps, no defense;
* ``batch`` / ``aggregate_batch`` — one client's update against the aggregate of
  10 clients when every client's update covers ``B`` images (``BATCHES``): how
  many images behind the sum it takes before the sum hides them;
* ``aggregate_multistep`` — the aggregate of 10 single-image FedAvg updates of
  ``MULTI_STEPS`` steps; DLG models the 10 clients' separate trajectories.
* ``aggregate_ddp`` — ``secagg`` with distributed DP (DP-FedAvg: each client
  clips its update to ``CLIENT_CLIP`` and adds its share of N(0, (z C)^2), z in
  ``DDP_SIGMAS``): the only noise-free-for-nobody sum securefl releases.

Every cell pools ``images`` target images over the seeds and reports medians
next to the mean-image baseline. A cell *beats the baseline* when its median
PSNR exceeds the baseline's by more than ``MARGIN_DB``. Writes
``inversion.json``, ``inversion.csv``, ``inversion.md``, ``psnr_vs_noise.png``
and one reconstruction grid per cell under ``grids/``.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from attacks.common.report import markdown_table, write_csv, write_json
from attacks.inversion.attacks import AttackConfig
from attacks.inversion.cases import CaseConfig, analytic_applies
from attacks.inversion.run import evaluate, plot_grid
from securefl.data import load_dataset

METHODS = ("dlg", "idlg", "ig", "analytic")
CLIP = 0.1  #: below every per-example gradient norm seen at initialisation, so the clip always binds
SIGMAS = (0.01, 0.03, 0.1, 0.3, 1.0)
QUICK_SIGMAS = (0.01, 0.1)
MULTI_STEPS = 5
BATCHES = (2, 4, 8)  #: images per client update in the batch sweep
QUICK_BATCHES = (8,)
CLIENT_CLIP = 0.01  #: DP-FedAvg clip of a whole update (local lr 0.1 x the per-example CLIP)
DDP_SIGMAS = (0.3, 1.0)
MARGIN_DB = 1.0
COLUMNS = [
    "cell", "method", "protect", "dp", "noise_multiplier", "clip", "local_steps", "batch_size", "images",
    "psnr", "ssim", "mse", "label_accuracy", "baseline_psnr", "psnr_over_baseline",
    "beats_baseline", "clipped_fraction", "seconds", "same_release_as",
]


def _cells(quick: bool) -> list[tuple[str, str, CaseConfig, int]]:
    """(cell, method, case, images) for the whole grid."""
    full, agg = (4, 2) if quick else (20, 5)  # agg: the costly unrolled multi-step attack
    cells = [("none", m, CaseConfig(), full) for m in METHODS]
    cells += [("clip", m, CaseConfig(dp="sample", clip=CLIP), full) for m in METHODS]
    for s in QUICK_SIGMAS if quick else SIGMAS:
        cells += [("dp", m, CaseConfig(dp="sample", clip=CLIP, noise_multiplier=s), full) for m in METHODS]
    # ckks and secagg release the same sum (see attacks.inversion.cases): computed once, reported
    # under both names; each round the attack reconstructs all 10 images.
    cells += [("aggregate", m, CaseConfig(protect="secagg", clients=10), full) for m in METHODS]
    agg_dp = CaseConfig(protect="secagg", clients=10, dp="sample", clip=CLIP, noise_multiplier=0.1)
    cells += [("aggregate_dp", m, agg_dp, full) for m in METHODS]
    cells += [("multistep", m, CaseConfig(local_steps=MULTI_STEPS), full if m == "analytic" else agg) for m in ("analytic", "ig")]
    for b in QUICK_BATCHES if quick else BATCHES:
        cells += [("batch", m, CaseConfig(batch_size=b), full) for m in METHODS]
        cells += [("aggregate_batch", m, CaseConfig(protect="secagg", clients=10, batch_size=b), full) for m in METHODS]
    for z in DDP_SIGMAS[-1:] if quick else DDP_SIGMAS:
        ddp = CaseConfig(protect="secagg", clients=10, dp="client", clip=CLIENT_CLIP, noise_multiplier=z)
        cells += [("aggregate_ddp", m, ddp, full) for m in METHODS]
    if not quick:
        # costly: 10 unrolled trajectories per matching step
        cells.append(("aggregate_multistep", "dlg", CaseConfig(protect="secagg", clients=10, local_steps=MULTI_STEPS), agg))
    return cells


def _row(cell: str, method: str, case: CaseConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    import statistics

    pooled = {k: [v for r in results for v in r["per_image"][k]] for k in ("psnr", "ssim", "mse", "baseline_psnr")}
    med = {k: float(statistics.median(v)) for k, v in pooled.items()}
    labels = [r["label_accuracy"] for r in results if r["label_accuracy"] is not None]
    row = {
        "cell": cell,
        "method": method,
        "protect": case.protect,
        "dp": case.dp,
        "noise_multiplier": case.noise_multiplier if case.dp in ("sample", "client") else None,
        "clip": case.clip if case.dp in ("sample", "client") else None,
        "local_steps": case.local_steps,
        "batch_size": case.batch_size,
        "images": len(pooled["psnr"]),
        **med,
        "label_accuracy": float(sum(l * r["images"] for l, r in zip(labels, results)) / sum(r["images"] for r in results)) if labels else None,
        "clipped_fraction": float(sum(r["clipped_fraction"] for r in results) / len(results)),
        "seconds": float(sum(r["seconds"] for r in results)),
    }
    row["psnr_over_baseline"] = row["psnr"] - row["baseline_psnr"]
    row["beats_baseline"] = bool(row["psnr_over_baseline"] > MARGIN_DB)
    return row


#: cell -> the row label of the tables (formatted with the row's fields)
LABELS: dict[str, str] = {
    "none": "no defense",
    "dp": "dp sigma={noise_multiplier:g}",
    "clip": "clip C={clip:g}, no noise",
    "aggregate": "{protect} (sum of 10)",
    "aggregate_dp": "{protect} (sum of 10) + dp sigma={noise_multiplier:g}",
    "multistep": "FedAvg {local_steps} steps",
    "batch": "no defense, batch {batch_size}",
    "aggregate_batch": "{protect} (sum of 10 x batch {batch_size})",
    "aggregate_ddp": "{protect} (sum of 10) + distributed DP-FedAvg z={noise_multiplier:g}",
    "aggregate_multistep": "{protect} (sum of 10, FedAvg {local_steps} steps)",
}


def _label(row: dict[str, Any]) -> str:
    return LABELS[row["cell"]].format(**row)


def _find(rows: list[dict[str, Any]], cell: str, method: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["cell"] == cell and r["method"] == method), None)


def _headline_verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """No defense, clipping alone, and DP-SGD noise from sigma 0.1 on."""
    none = {m: _find(rows, "none", m) for m in METHODS}
    ig = _find(rows, "clip", "ig")
    noisy = [r for r in rows if r["cell"] == "dp" and r["noise_multiplier"] >= 0.1]
    worst = max(noisy, key=lambda r: r["psnr_over_baseline"]) if noisy else None
    return {
        "no_defense": {
            "dlg_psnr": none["dlg"]["psnr"],
            "analytic_psnr": none["analytic"]["psnr"],
            "idlg_label_accuracy": none["idlg"]["label_accuracy"],
            "baseline_psnr": none["dlg"]["baseline_psnr"],
            "holds": none["dlg"]["psnr"] > 30 and none["analytic"]["psnr"] > 30 and none["idlg"]["label_accuracy"] == 1.0,
        },
        "clipping_only": {
            "ig_psnr": ig["psnr"],
            "baseline_psnr": ig["baseline_psnr"],
            "clipped_fraction": ig["clipped_fraction"],
            "by_method": {m: _find(rows, "clip", m)["psnr"] for m in METHODS},
            "holds": ig["psnr"] > ig["baseline_psnr"] + 10,
            "statement": (
                f"clipping alone is not a defense: Inverting Gradients (cosine) reaches {ig['psnr']:.1f} dB "
                f"against a {ig['baseline_psnr']:.1f} dB mean-image baseline with every gradient clipped"
            ),
        },
        "noise": {
            "sigma_threshold": 0.1,
            "max_psnr_over_baseline_db": worst["psnr_over_baseline"] if worst else None,
            "worst": {k: worst[k] for k in ("method", "noise_multiplier", "psnr", "baseline_psnr")} if worst else None,
            "max_label_accuracy": max((r["label_accuracy"] or 0.0) for r in noisy) if noisy else None,
            "holds": bool(worst is not None and not any(r["beats_baseline"] for r in noisy)),
            "margin_db": MARGIN_DB,
        },
    }


def _psnr_pair(r: dict[str, Any], *extra: str) -> dict[str, Any]:
    return {"psnr": r["psnr"], "baseline_psnr": r["baseline_psnr"], **{k: r[k] for k in extra}}


def _aggregate_verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The aggregate of 10 clients: plain, with DP-SGD, with distributed DP, multi-step."""
    out: dict[str, Any] = {}
    for cell in ("aggregate", "aggregate_dp"):
        agg = [r for r in rows if r["cell"] == cell]
        out[cell] = {
            "by_protect_method": {f"{r['protect']}/{r['method']}": _psnr_pair(r, "images") for r in agg},
            "beaten_by": [f"{r['protect']}/{r['method']}" for r in agg if r["beats_baseline"]],
            "holds": not any(r["beats_baseline"] for r in agg),
        }
    out["multistep"] = {r["method"]: _psnr_pair(r) for r in rows if r["cell"] == "multistep"}
    ddp = [r for r in rows if r["cell"] == "aggregate_ddp"]
    out["aggregate_ddp"] = {
        "by_sigma_method": {f"{r['noise_multiplier']:g}/{r['method']}": _psnr_pair(r) for r in ddp},
        "beaten_by": [f"z={r['noise_multiplier']:g}/{r['method']}" for r in ddp if r["beats_baseline"]],
        "holds": bool(ddp) and not any(r["beats_baseline"] for r in ddp),
    }
    out["aggregate_multistep"] = {
        r["method"]: _psnr_pair(r, "beats_baseline", "images") for r in rows if r["cell"] == "aggregate_multistep"
    }
    return out


def _batch_sweep(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One client's update against the aggregate of 10, per batch size (B = 1 comes
    from the none / aggregate cells; ckks rows are copies of secagg's and skipped)."""
    kinds = {"none": "one_client", "batch": "one_client", "aggregate": "aggregate", "aggregate_batch": "aggregate"}
    by_batch: dict[int, dict[str, Any]] = {}
    for r in rows:
        kind = kinds.get(r["cell"])
        if r["protect"] == "ckks" or kind is None:
            continue
        entry = by_batch.setdefault(r["batch_size"], {"one_client": {}, "aggregate": {}})
        entry[kind][r["method"]] = _psnr_pair(r, "beats_baseline")
    for entry in by_batch.values():
        entry["aggregate_beaten_by"] = [m for m, v in entry["aggregate"].items() if v["beats_baseline"]]
        entry["one_client_beaten_by"] = [m for m, v in entry["one_client"].items() if v["beats_baseline"]]
    hidden = [b for b in sorted(by_batch) if by_batch[b]["aggregate"] and all(
        not by_batch[c]["aggregate_beaten_by"] for c in sorted(by_batch) if c >= b)]
    return {
        "by_batch": {str(b): by_batch[b] for b in sorted(by_batch)},
        "aggregate_hides_from_batch": hidden[0] if hidden else None,
    }


def _verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The claims the README makes, checked against the grid's rows."""
    return {**_headline_verdicts(rows), **_aggregate_verdicts(rows), "batch_sweep": _batch_sweep(rows)}


def _plot_batch(path: Path, summary: dict[str, Any]) -> None:
    """Best attack's median PSNR against the images in each client's update: one
    client's update (no protection) against the aggregate of 10."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sweep = summary["batch_sweep"]["by_batch"]
    if not sweep:
        return
    fig, ax = plt.subplots(figsize=(5.6, 4.0), dpi=110)
    batches = sorted(int(b) for b in sweep)
    for kind, label in (("one_client", "one client's update (protect none)"), ("aggregate", "sum of 10 (ckks / secagg)")):
        pts = [(b, max(v["psnr"] for v in sweep[str(b)][kind].values())) for b in batches if sweep[str(b)][kind]]
        ax.plot([p[0] for p in pts], [min(p[1], 160) for p in pts], marker="o", label=label)
    base = [v["baseline_psnr"] for b in batches for v in sweep[str(b)]["aggregate"].values()]
    if base:
        ax.axhline(sum(base) / len(base), color="k", ls="--", lw=1, label="mean-image baseline")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("images in each client's update (batch size)")
    ax.set_ylabel("best attack's median PSNR (dB)")
    ax.set_title("Inversion of a client's images vs batch size (8x8 digits, MLP, FedSGD)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_curve(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0), dpi=110)
    dp = [r for r in rows if r["cell"] == "dp"]
    sigmas = sorted({r["noise_multiplier"] for r in dp})
    for m in METHODS:
        pts = sorted((r["noise_multiplier"], r["psnr"]) for r in dp if r["method"] == m)
        clip = [r for r in rows if r["cell"] == "clip" and r["method"] == m]
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)[0]
        if clip:
            ax.scatter([sigmas[0] / 3], [min(clip[0]["psnr"], 160)], marker="s", color=line.get_color())
    base = [r["baseline_psnr"] for r in dp]
    if base:
        ax.axhline(sum(base) / len(base), color="k", ls="--", lw=1, label="mean-image baseline")
    ax.set_xscale("log")
    ax.set_xlabel("noise multiplier sigma (squares: clipping only, sigma = 0)")
    ax.set_ylabel("median PSNR (dB)")
    ax.set_title(f"Inversion vs DP-SGD noise (8x8 digits, MLP, clip {CLIP:g}, batch 1)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _run_cell(cell: str, method: str, case: CaseConfig, images: int, *, seeds: int, attack: AttackConfig,
              data: Any, grids: Path) -> list[dict[str, Any]]:
    """One cell over ``seeds`` seeds (its images split across them): its row (and the
    ckks copy of an aggregate row) and a grid of up to ten reconstructions."""
    per_seed = math.ceil(images / seeds)
    results = [evaluate(case, method, images=per_seed, seed=s, attack=attack, data=data) for s in range(seeds)]
    row = _row(cell, method, case, results)
    rows = [row]
    if cell.startswith("aggregate") and cell != "aggregate_ddp":  # ckks has no distributed noise
        rows.append({**row, "protect": "ckks", "same_release_as": "secagg"})
    name = f"{cell}_{method}_{case.protect}_sigma{row['noise_multiplier']}".replace(".", "p")
    if cell in ("batch", "aggregate_batch"):
        name += f"_b{case.batch_size}"
    plot_grid(
        grids / f"{name}.png",
        torch.cat([r["_originals"] for r in results])[:10],
        torch.cat([r["_reconstructions"] for r in results])[:10],
        title=f"{method}, {_label(row)}",
    )
    return rows


def _beaten(names: list[str]) -> str:
    return ", ".join(names) or "no attack"


def _verdict_lines(summary: dict[str, Any]) -> list[str]:
    nd, noise = summary["no_defense"], summary["noise"]
    lines = [
        f"- No defense: DLG {nd['dlg_psnr']:.1f} dB, analytic {nd['analytic_psnr']:.1f} dB, "
        f"iDLG label accuracy {nd['idlg_label_accuracy']:.2f}.",
        f"- {summary['clipping_only']['statement']}.",
        f"- DP-SGD with sigma >= 0.1: best attack {noise['max_psnr_over_baseline_db']:+.1f} dB over the baseline "
        f"({'at or below it' if noise['holds'] else 'ABOVE it'}, margin {MARGIN_DB:g} dB); "
        f"labels still recovered up to {noise['max_label_accuracy']:.2f}.",
        f"- Aggregate of 10 (ckks/secagg): beaten by {_beaten(summary['aggregate']['beaten_by'])}.",
        f"- Aggregate of 10 with DP-SGD sigma=0.1 on every client: beaten by {_beaten(summary['aggregate_dp']['beaten_by'])}.",
        f"- Aggregate of 10 under secagg with distributed DP-FedAvg (z in {', '.join(f'{z:g}' for z in DDP_SIGMAS)}, "
        f"clip {CLIENT_CLIP:g}): beaten by {_beaten(summary['aggregate_ddp']['beaten_by'])}.",
    ]
    for b, entry in summary["batch_sweep"]["by_batch"].items():
        lines.append(
            f"- Batch {b} per client: one client's update beaten by {_beaten(entry['one_client_beaten_by'])}; "
            f"the aggregate of 10 beaten by {_beaten(entry['aggregate_beaten_by'])}."
        )
    hides = summary["batch_sweep"]["aggregate_hides_from_batch"]
    lines.append(f"- The aggregate of 10 stays at or below the baseline from batch {hides} per client on." if hides
                 else "- The aggregate of 10 beats the baseline at every batch size tried.")
    for m, v in summary["aggregate_multistep"].items():
        lines.append(f"- Aggregate of 10 single-image FedAvg updates ({MULTI_STEPS} steps): {m} {v['psnr']:.1f} dB "
                     f"(baseline {v['baseline_psnr']:.1f}, {v['images']} images).")
    return lines


def _markdown(rows: list[dict[str, Any]], summary: dict[str, Any], *, seeds: int, quick: bool) -> str:
    """inversion.md: PSNR and label-accuracy tables (defense x attack) and the verdicts."""
    labels = list(dict.fromkeys(_label(r) for r in rows))
    cell_of = {(_label(r), r["method"]): r for r in rows}

    def table(key: str, fmt: str) -> str:
        matrix = [[(cell_of[(l, m)][key] if (l, m) in cell_of else None) for m in METHODS] for l in labels]
        return markdown_table(labels, METHODS, matrix, corner="defense \\ attack", fmt=lambda v: "–" if v is None else fmt.format(v))

    base = {l: next(r["baseline_psnr"] for r in rows if _label(r) == l) for l in labels}
    md = [
        "# Gradient inversion vs protections (8x8 digits, MLP)",
        "",
        f"Median PSNR (dB) of the target client's images; {'quick grid; ' if quick else ''}seeds {seeds}. "
        f"Mean-image baseline (median) per row: "
        + ", ".join(f"{l}: {v:.1f}" for l, v in base.items()),
        "",
        table("psnr", "{:.1f}"),
        "",
        "Label accuracy (matched images):",
        "",
        table("label_accuracy", "{:.2f}"),
        "",
        "## Verdicts",
        "",
        *_verdict_lines(summary),
    ]
    return "\n".join(md) + "\n"


def run_suite(*, seeds: int, out: Path, progress: bool, quick: bool, model: str | None = None, dataset: str | None = None) -> dict[str, Any]:
    """Run the grid over ``seeds`` seeds (the images of a cell are split across them); ``model`` and
    ``dataset`` (names or ``MODULE:CALLABLE``) replace the MLP and digits (analytic cells if it applies)."""
    from tqdm import tqdm

    out = Path(out)
    (out / "grids").mkdir(parents=True, exist_ok=True)
    data = load_dataset(dataset or "digits", seed=0)
    keep = model is None or analytic_applies(model, data.input_shape, data.num_classes)
    cells = [(c, m, replace(case, model=model or case.model), n) for c, m, case, n in _cells(quick) if keep or m != "analytic"]
    attack = AttackConfig(iterations=(100 if quick else 0), restarts=1 if quick else 2)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(cells), unit="cell", disable=not progress, dynamic_ncols=True)
    try:
        for cell, method, case, images in cells:
            rows += _run_cell(cell, method, case, images, seeds=seeds, attack=attack, data=data, grids=out / "grids")
            bar.set_postfix({"cell": f"{cell}/{method}", "psnr": f"{rows[-1]['psnr']:.1f}"})
            bar.update(1)
    finally:
        bar.close()
    summary = _verdicts(rows)
    write_csv(out / "inversion.csv", rows, COLUMNS)
    (out / "inversion.md").write_text(_markdown(rows, summary, seeds=seeds, quick=quick))
    _plot_curve(out / "psnr_vs_noise.png", rows)
    _plot_batch(out / "psnr_vs_batch.png", summary)
    result = {"suite": "inversion", "seeds": seeds, "quick": quick, "seconds": time.perf_counter() - t0, "rows": rows, "summary": summary}
    write_json(out / "inversion.json", result)
    return result
