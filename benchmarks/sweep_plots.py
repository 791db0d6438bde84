"""Matplotlib figures of an aggregate report (``benchmarks/aggregate.py``): aggregate intervals per metric
(variants × metrics, as in rliable's figures), performance profiles, sample-efficiency curves and
plasticity diagnostics over training. Every figure names the suite and the number of runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from plasticrl.benchmarks.stats import AGGREGATES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def _colors(variants: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cycle = plt.get_cmap("tab10")
    return {v: cycle(i % 10) for i, v in enumerate(variants)}


def _runs(report: dict[str, Any]) -> int:
    return sum(entry["runs"] for entry in report["variants"].values())


def _save(fig, path: Path) -> Path:
    from plasticrl.common.files import atomic_open

    with atomic_open(path) as handle:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_intervals(report: dict[str, Any], path: Path, title: str) -> Path:
    """One panel per metric; a bar per variant from the CI's low to high end, a tick at the estimate."""
    plt = _pyplot()
    variants = list(report["variants"])
    colors = _colors(variants)
    metrics = list(AGGREGATES)
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.2 * len(metrics), 0.55 * len(variants) + 1.6), sharey=True
    )
    for ax, metric in zip(axes, metrics):
        for row, variant in enumerate(variants):
            values = report["variants"][variant]["aggregates"][metric]
            ax.barh(row, values["high"] - values["low"], left=values["low"], height=0.6,
                    color=colors[variant], alpha=0.75)  # fmt: skip
            ax.vlines(values["point"], row - 0.3, row + 0.3, color="black", linewidth=1.5)
        lows = [report["variants"][v]["aggregates"][metric]["low"] for v in variants]
        highs = [report["variants"][v]["aggregates"][metric]["high"] for v in variants]
        pad = 0.12 * (max(highs) - min(lows)) or 0.05  # bars have sticky edges: margins() would not pad them
        ax.set_xlim(min(lows) - pad, max(highs) + pad)
        ax.set_title(metric)
        ax.set_xlabel(report["score"])
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(variants)), variants)
    axes[0].invert_yaxis()
    fig.suptitle(f"{title}: aggregates with 95% stratified-bootstrap CIs ({_runs(report)} runs)", y=1.03)
    return _save(fig, path)


def plot_profiles(report: dict[str, Any], path: Path, title: str) -> Path:
    """Fraction of runs scoring above τ, with bootstrap bands."""
    plt = _pyplot()
    variants = list(report["variants"])
    colors = _colors(variants)
    taus = np.array(report["taus"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for variant in variants:
        profile = report["variants"][variant]["profile"]
        ax.plot(taus, profile["point"], color=colors[variant], label=variant)
        ax.fill_between(taus, profile["low"], profile["high"], color=colors[variant], alpha=0.2)
    ax.set_xlabel(f"{report['score']} τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{title}: performance profiles ({_runs(report)} runs)")
    return _save(fig, path)


def plot_sample_efficiency(report: dict[str, Any], path: Path, title: str) -> Path | None:
    """IQM of the evaluation score over agent steps, 95% CI bands."""
    curves = {v: e["sample_efficiency"] for v, e in report["variants"].items() if e.get("sample_efficiency")}
    if not curves:
        return None
    plt = _pyplot()
    colors = _colors(list(report["variants"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for variant, curve in curves.items():
        ax.plot(
            curve["steps"], curve["point"], marker="o", markersize=3, color=colors[variant], label=variant
        )
        ax.fill_between(curve["steps"], curve["low"], curve["high"], color=colors[variant], alpha=0.2)
    ax.set_xlabel("agent steps")
    ax.set_ylabel(f"IQM {report['score']}")
    ax.grid(alpha=0.3)
    ax.legend()
    runs = sum(report["variants"][v]["runs"] for v in curves)
    ax.set_title(f"{title}: sample efficiency ({runs} runs)")
    return _save(fig, path)


def plot_plasticity(report: dict[str, Any], path: Path, title: str) -> Path | None:
    """Rows: dormant ratio, srank, weight norm; columns: networks; mean over runs with 95% CI bands and
    dashed lines where interventions fired."""
    found = {v: e["plasticity"] for v, e in report["variants"].items() if e.get("plasticity")}
    if not found:
        return None
    plt = _pyplot()
    colors = _colors(list(report["variants"]))
    keys = sorted({k for p in found.values() for k in p["curves"]})
    metrics = [
        m for m in ("dormant_ratio", "srank", "weight_norm") if any(k.startswith(m + "/") for k in keys)
    ]
    networks = sorted({k.split("/", 1)[1] for k in keys})
    fig, axes = plt.subplots(len(metrics), len(networks), figsize=(4.2 * len(networks), 2.8 * len(metrics)),
                             squeeze=False, sharex=True)  # fmt: skip
    for i, metric in enumerate(metrics):
        for j, network in enumerate(networks):
            ax = axes[i][j]
            for variant, plasticity in found.items():
                curve = plasticity["curves"].get(f"{metric}/{network}")
                if curve is None:
                    continue
                ax.plot(curve["steps"], curve["point"], color=colors[variant], label=variant)
                ax.fill_between(curve["steps"], curve["low"], curve["high"], color=colors[variant], alpha=0.2)
                for steps in plasticity["events"].values():
                    for step in steps:
                        ax.axvline(step, color=colors[variant], linestyle="--", linewidth=0.8, alpha=0.6)
            ax.set_title(f"{metric} / {network}")
            ax.grid(alpha=0.3)
            if i == len(metrics) - 1:
                ax.set_xlabel("agent steps")
    labelled = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labelled.setdefault(label, handle)
    fig.legend(labelled.values(), labelled.keys(), loc="lower center", ncol=len(labelled), fontsize="small",
               bbox_to_anchor=(0.5, -0.02))  # fmt: skip
    runs = sum(p["runs"] for p in found.values())
    fig.suptitle(
        f"{title}: plasticity diagnostics, mean over runs, 95% CI ({runs} runs; dashed: interventions)"
    )
    fig.tight_layout()
    return _save(fig, path)


def write_plots(report: dict[str, Any], directory: Path, title: str | None = None) -> list[Path]:
    """Every figure the report supports, as PNGs in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    title = title or report["suite"]
    written = [
        plot_intervals(report, directory / "aggregates.png", title),
        plot_profiles(report, directory / "performance_profiles.png", title),
        plot_sample_efficiency(report, directory / "sample_efficiency.png", title),
        plot_plasticity(report, directory / "plasticity.png", title),
    ]
    return [p for p in written if p is not None]
