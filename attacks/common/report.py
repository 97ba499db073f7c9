"""Writers for benchmark results: seed averaging, CSV, JSON, Markdown tables, heatmaps.

Suites produce a flat list of result rows (dicts, one per run); these helpers turn
them into the files a bench writes. They know nothing about any particular attack.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from securefl._io import atomic_write_bytes, atomic_write_json


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and math.isfinite(v)


def mean_over_seeds(rows: Iterable[dict[str, Any]], keys: Sequence[str], values: Sequence[str]) -> list[dict[str, Any]]:
    """Group ``rows`` by ``keys``; for each value column give ``NAME`` (the mean over
    the group's finite numbers, None if none), ``NAME_std`` (sample std, 0 for one
    run) and ``runs`` (group size). Groups keep their first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(keys, key))
        row["runs"] = len(members)
        for v in values:
            xs = [m[v] for m in members if _is_num(m.get(v))]
            if not xs:
                row[v], row[f"{v}_std"] = None, None
                continue
            mu = sum(xs) / len(xs)
            row[v] = mu
            row[f"{v}_std"] = math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        out.append(row)
    return out


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Rows as CSV (columns: ``columns`` or the union of keys in first-seen order;
    nested values are skipped)."""
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k, v in r.items() if k not in columns and not isinstance(v, (dict, list)))
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    atomic_write_bytes(path, buf.getvalue().encode())


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_json(path, obj)


def pivot(
    rows: Sequence[dict[str, Any]], row_key: str, col_key: str, value: str,
    row_order: Sequence[Any] | None = None, col_order: Sequence[Any] | None = None,
) -> tuple[list[Any], list[Any], list[list[float | None]]]:
    """A ``row_key x col_key`` matrix of ``value`` (None where no row matches)."""
    rlabels = list(row_order) if row_order is not None else list(dict.fromkeys(r[row_key] for r in rows))
    clabels = list(col_order) if col_order is not None else list(dict.fromkeys(r[col_key] for r in rows))
    cell = {(r[row_key], r[col_key]): r.get(value) for r in rows}
    return rlabels, clabels, [[cell.get((a, b)) for b in clabels] for a in rlabels]


def markdown_table(
    row_labels: Sequence[Any], col_labels: Sequence[Any], matrix: Sequence[Sequence[float | None]],
    *, corner: str = "", fmt: Callable[[float | None], str] | str = "{:.2f}",
) -> str:
    """A Markdown table; ``fmt`` is a format string or a function of the cell value."""
    f = fmt if callable(fmt) else (lambda v: "–" if v is None else fmt.format(v))  # type: ignore[union-attr]
    lines = ["| " + " | ".join([corner, *map(str, col_labels)]) + " |", "|" + "---|" * (len(col_labels) + 1)]
    for label, row in zip(row_labels, matrix):
        lines.append("| " + " | ".join([f"**{label}**", *(f(v) for v in row)]) + " |")
    return "\n".join(lines)


def heatmap(
    path: str | Path, row_labels: Sequence[Any], col_labels: Sequence[Any], matrix: Sequence[Sequence[float | None]],
    *, title: str = "", cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
    fmt: str = "{:.2f}", xlabel: str = "", ylabel: str = "",
) -> None:
    """A PNG heatmap with each cell's value written in it (blank where None)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(col_labels), 1.0 + 0.5 * len(row_labels)), dpi=110)
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels], rotation=35, ha="right")
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
    lo = np.nanmin(data) if vmin is None and np.isfinite(data).any() else (vmin or 0.0)
    hi = np.nanmax(data) if vmax is None and np.isfinite(data).any() else (vmax or 1.0)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                light = (data[i, j] - lo) / (hi - lo + 1e-12) < 0.5
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if light else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
