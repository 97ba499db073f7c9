"""How ``securefl audit budget`` shows a report: a table, Markdown or JSON, and a
plot of epsilon over rounds (the report itself: :mod:`securefl.privacy.audit_budget`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from securefl.privacy.ledger import PrivacyLedger

__all__ = ["plot_budget", "render"]


_COLUMNS = [
    ("subject", "subject", "{}"),
    ("level", "level", "{}"),
    ("rounds", "rounds", "{}"),
    ("sigma", "noise_multiplier", "{:.3f}"),
    ("q", "sample_rate", "{:.4f}"),
    ("eps_prv", "prv", "{:.3f}"),
    ("prv_range", None, None),
    ("eps_rdp", "rdp", "{:.3f}"),
    ("eps_pld", "pld", "{:.3f}"),
    ("remaining", "remaining", "{:.3f}"),
    ("rounds_left", "rounds_left", "{}"),
]


def _cells(row: dict[str, Any], with_pld: bool) -> list[str]:
    out = []
    for name, key, fmt in _COLUMNS:
        if name == "eps_pld" and not with_pld:
            continue
        if key is None:
            out.append(f"[{row['prv_lower']:.3f}, {row['prv']:.3f}]")
        elif row[key] is None:
            out.append("-")
        elif key == "rounds_left" and row["rounds_left_at_least"]:
            out.append(f">={row[key]}")
        else:
            out.append(fmt.format(row[key]))
    return out


def render(report: dict[str, Any], fmt: str) -> str:
    """The report as ``json``, a plain-text ``table`` or a Markdown (``md``) table."""
    if fmt == "json":
        return json.dumps(report, indent=2)
    with_pld = any(r["pld"] is not None for r in report["subjects"])
    head = [n for n, _, _ in _COLUMNS if with_pld or n != "eps_pld"]
    body = [_cells(r, with_pld) for r in report["subjects"]]
    budget = "none" if report["budget"] is None else f"{report['budget']:g}"
    lines = [
        f"ledger {report['ledger']}: {report['entries']} entries, chain verified; delta {report['delta']:g}, "
        f"budget {budget} ({report['accountant']})",
    ]
    if fmt == "md":
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
    else:
        widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)] if body else [len(h) for h in head]
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    lines.append("")
    names = {"sample": "sample-level (any record; max over clients)", "client": "client-level (any client; federation)"}
    for level, o in report["overall"].items():
        n = f"{'>=' if o['rounds_left_at_least'] else ''}{o['rounds_left']}"
        left = "" if o["remaining"] is None else f", remaining {o['remaining']:.3f}, rounds left {n}"
        pld = "" if o["pld"] is None else f", PLD {o['pld']:.3f}"
        lines.append(
            f"overall {names[level]}: epsilon {o['epsilon']:.3f} ({report['accountant']}; PRV <= {o['prv']:.3f}, "
            f"RDP {o['rdp']:.3f}{pld}) at delta {report['delta']:g}{left}"
        )
    if not report["overall"]:
        lines.append("no DP mechanism recorded: no privacy spent")
    return "\n".join(lines)


def plot_budget(ledger: PrivacyLedger, path: str | os.PathLike) -> None:
    """Cumulative epsilon (the ledger's accountant) of every subject over rounds."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for subject in ledger.subjects():
        pts = [(e["round"], e["epsilon"][ledger.accountant]) for e in ledger.entries if e["subject"] == subject]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=2.5, lw=1, label=subject)
    if ledger.budget is not None:
        ax.axhline(ledger.budget, color="k", ls="--", lw=1, label="budget")
    ax.set_xlabel("round")
    ax.set_ylabel(f"epsilon ({ledger.accountant}, delta={ledger.delta:g})")
    ax.grid(alpha=0.3)
    if len(ledger.subjects()) <= 12:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
