"""Markdown tables of the supervised studies (accuracies in %, ± the Student-t 95% half-width over seeds)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["arms_table", "table1"]

_OPTIMIZER_NAMES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}


def _pm(mean: float, half_width: float, scale: float = 100.0, digits: int = 1) -> str:
    if half_width is None or math.isnan(half_width):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {half_width * scale:.{digits}f}"


def arms_table(summary: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """One row per arm: test accuracy, the paired gap fresh − arm (percentage points) and the share of the
    warm-start gap the arm closes; ``summary`` comes from :func:`~plasticrl.supervised.summarize_arms`."""
    labels = labels or {}
    lines = [
        "| arm | run tag | test accuracy (%) | fresh − arm (pp) | gap closed |",
        "|---|---|---|---|---|",
    ]
    tags = summary.get("tags", {})
    for name, entry in summary["arms"].items():
        gap = _pm(entry["gap"], entry["gap_ci95"]) if "gap" in entry else "–"
        closed = f"{entry['gap_closed'] * 100:.0f}%" if "gap_closed" in entry else "–"
        lines.append(
            f"| {labels.get(name, name)} | `{tags.get(name, '')}` | {_pm(entry['mean'], entry['ci95'])} "
            f"| {gap} | {closed} |"
        )
    n = max(e["n"] for e in summary["arms"].values())
    lines.append("")
    lines.append(
        f"n = {n} seeds; ± is the 95% Student-t half-width; gaps are paired per seed (same initial weights)."
    )
    return "\n".join(lines)


def table1(results: Mapping[tuple[str, str, str], Mapping[str, Any]], baseline: str = "warm") -> str:
    """Ash & Adams 2020 Table 1 layout: rows are datasets, columns network–optimizer pairs, cells
    ``fresh / warm`` test accuracy (%) followed by the paired gap and its 95% interval.

    ``results`` maps (dataset, network, optimizer) to a :func:`summarize_arms` summary."""
    datasets = sorted({k[0] for k in results})
    columns = sorted({(k[1], k[2]) for k in results})
    header = "| | " + " | ".join(f"{net} {_OPTIMIZER_NAMES.get(opt, opt)}" for net, opt in columns) + " |"
    lines = [header, "|---|" + "---|" * len(columns)]
    for dataset in datasets:
        cells = []
        for net, opt in columns:
            summary = results.get((dataset, net, opt))
            if summary is None:
                cells.append("–")
                continue
            fresh, warm = summary["arms"]["fresh"], summary["arms"][baseline]
            cells.append(
                f"{fresh['mean'] * 100:.1f} / {warm['mean'] * 100:.1f} "
                f"(gap {_pm(warm['gap'], warm['gap_ci95'])})"
            )
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Cells: fresh init / warm start test accuracy (%), gap = fresh − warm ± 95% CI over seeds (pp)."
    )
    return "\n".join(lines)
