"""Markdown tables of the supervised studies (accuracies in %, ± the Student-t 95% half-width over seeds)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["arms_table", "table1", "table1_order"]

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


# Ash & Adams 2020, Table 1: rows ResNet SGD, ResNet Adam, MLP SGD, MLP Adam (then logistic regression),
# columns CIFAR-10, SVHN, CIFAR-100. Names not listed follow, in alphabetical order.
_NETWORK_ORDER = ("resnet18", "mlp", "linear")
_NETWORK_LABELS = {"resnet18": "ResNet", "mlp": "MLP", "linear": "LR"}
_OPTIMIZER_ORDER = ("sgd", "adam", "adamw")
_DATASET_ORDER = ("cifar10", "svhn", "cifar100", "mnist", "fashion_mnist", "mnist_sample", "digits")
_DATASET_LABELS = {
    "cifar10": "CIFAR-10",
    "svhn": "SVHN",
    "cifar100": "CIFAR-100",
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
}


def _ranked(order: tuple[str, ...]):
    return lambda name: (order.index(name), "") if name in order else (len(order), name)


def table1_order(
    keys: Iterable[tuple[str, str, str]],
) -> tuple[list[tuple[str, str]], list[str]]:
    """Rows ((network, optimizer) pairs) and columns (datasets) of :func:`table1` in Ash & Adams' order:
    ResNet before MLP before logistic regression, SGD before Adam before AdamW; CIFAR-10, SVHN, CIFAR-100,
    then the other datasets; names the paper does not have follow alphabetically."""
    keys = list(keys)
    net, opt = _ranked(_NETWORK_ORDER), _ranked(_OPTIMIZER_ORDER)
    rows = sorted({(k[1], k[2]) for k in keys}, key=lambda r: (net(r[0]), opt(r[1])))
    columns = sorted({k[0] for k in keys}, key=_ranked(_DATASET_ORDER))
    return rows, columns


def table1(results: Mapping[tuple[str, str, str], Mapping[str, Any]], baseline: str = "warm") -> str:
    """Ash & Adams 2020 Table 1 layout: rows are network–optimizer pairs (ResNet SGD, ResNet Adam, MLP SGD,
    MLP Adam, then others), columns datasets (CIFAR-10, SVHN, CIFAR-100, then others); cells
    ``fresh / warm`` test accuracy (%) each ± its 95% interval, followed by the paired gap ± its interval.

    ``results`` maps (dataset, network, optimizer) to a :func:`summarize_arms` summary."""
    rows, datasets = table1_order(results)
    names = [_DATASET_LABELS.get(dataset, dataset) for dataset in datasets]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(datasets)]
    for net, opt in rows:
        cells = []
        for dataset in datasets:
            summary = results.get((dataset, net, opt))
            if summary is None:
                cells.append("–")
                continue
            fresh, warm = summary["arms"]["fresh"], summary["arms"][baseline]
            cells.append(
                f"{_pm(fresh['mean'], fresh['ci95'])} / {_pm(warm['mean'], warm['ci95'])} "
                f"(gap {_pm(warm['gap'], warm['gap_ci95'])})"
            )
        label = f"{_NETWORK_LABELS.get(net, net)} {_OPTIMIZER_NAMES.get(opt, opt)}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Cells: fresh init / warm start test accuracy (%) ± 95% CI over seeds, gap = fresh − warm ± 95% CI "
        "of the paired per-seed differences (pp)."
        + (" LR: logistic regression (--network linear)." if any(n == "linear" for n, _ in rows) else "")
    )
    return "\n".join(lines)
