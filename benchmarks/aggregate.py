"""Aggregate a sweep: IQM, median, mean and optimality gap with 95% stratified-bootstrap intervals, per-task
tables, performance profiles, sample-efficiency and plasticity curves, and a Markdown table in the shape
of the seed talk's Atari-100k table (one row per variant, with its compute).

    python benchmarks/aggregate.py runs/sweeps/sac-primacy --suite dmc-primacy --plots out --json out/a.json
    python benchmarks/aggregate.py benchmarks/reference_scores/RR2_BBF.csv \\
        benchmarks/reference_scores/RR2_BBF-SPR.csv benchmarks/reference_scores/RR8_BBF.csv --suite atari100k

Inputs are run or sweep directories (every finished run below them: ``result.json`` for the final score,
``eval.csv`` for curves, TensorBoard ``plasticity/`` tags for the diagnostics, the sweep's
``sweep_entry.json`` for the variant and the compute) and CSVs of per-run raw scores (``game, seed, score``;
the BBF paper's files load as they are). Scores are normalised per suite (``benchmarks/sweep_suites.py``):
human-normalised for Atari, return / 1000 for DMC. Statistics: ``benchmarks/stats.py`` (rliable's
definitions; tasks with uneven numbers of runs are pooled, which the table states). Bad input is one
``error:`` line and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plasticrl.benchmarks import stats
from plasticrl.benchmarks.sweep_cli import InputError, Parser, run_main
from plasticrl.benchmarks.sweep_results import (
    Loaded,
    RunScore,
    load_inputs,
    read_plasticity,
)
from plasticrl.benchmarks.sweep_suites import SUITE_NAMES, Suite, get_suite

CURVE_REPS = 2_000
METRIC_ARROWS = {"IQM": "↑", "Median": "↑", "Mean": "↑", "Optimality Gap": "↓"}
METRIC_SHORT = {"IQM": "IQM", "Median": "Median", "Mean": "Mean", "Optimality Gap": "OG"}


# ----------------------------------------------------------------------------- grouping


def by_variant(runs: list[RunScore]) -> dict[str, list[RunScore]]:
    """Runs per variant, variants in order of first appearance."""
    groups: dict[str, list[RunScore]] = {}
    for run in runs:
        groups.setdefault(run.variant, []).append(run)
    return groups


def by_task(runs: list[RunScore]) -> dict[str, list[RunScore]]:
    """Runs per task, tasks sorted by name (rliable's matrices are built in a fixed task order; sorted
    names make the bootstrap reproducible whatever order the files list them in)."""
    groups: dict[str, list[RunScore]] = {}
    for run in runs:
        groups.setdefault(run.task, []).append(run)
    return {task: groups[task] for task in sorted(groups)}


def task_scores(runs: list[RunScore]) -> dict[str, np.ndarray]:
    return {task: np.array([r.score for r in members]) for task, members in by_task(runs).items()}


# ----------------------------------------------------------------------------- pieces of the report


def cost_summary(runs: list[RunScore]) -> dict[str, Any]:
    """Wall-hours and GPU-hours, per run and in total (None where no run recorded them)."""
    walls = [r.wall_s for r in runs if r.wall_s is not None]
    gpus = [r.gpu_s for r in runs if r.gpu_s is not None]
    devices = sorted({r.device for r in runs if r.device is not None})
    return {
        "runs_with_wall_time": len(walls),
        "wall_hours_total": sum(walls) / 3600 if walls else None,
        "wall_hours_per_run": float(np.mean(walls)) / 3600 if walls else None,
        "gpu_hours_total": sum(gpus) / 3600 if gpus else None,
        "gpu_hours_per_run": float(np.mean(gpus)) / 3600 if gpus else None,
        "devices": devices,
    }


def per_task_table(runs: list[RunScore]) -> dict[str, dict[str, float]]:
    return {
        task: {
            "runs": len(members),
            "mean_score": float(np.mean([r.score for r in members])),
            "mean_raw": float(np.mean([r.raw for r in members])),
            "min_score": float(np.min([r.score for r in members])),
            "max_score": float(np.max([r.score for r in members])),
        }
        for task, members in by_task(runs).items()
    }


def sample_efficiency(runs: list[RunScore], reps: int, seed: int) -> dict[str, Any] | None:
    """IQM of the normalised evaluation score at the evaluation steps every run has, with 95% CIs."""
    curves = [r for r in runs if r.curve is not None]
    if not curves or len(curves) < len(runs):
        return None
    common = set(curves[0].curve[0].tolist())
    for run in curves[1:]:
        common &= set(run.curve[0].tolist())
    if not common:
        return None
    steps = np.array(sorted(common))
    arrays = []
    for members in by_task(curves).values():
        rows = []
        for run in members:
            index = {int(s): i for i, s in enumerate(run.curve[0])}
            rows.append(run.curve[1][[index[int(s)] for s in steps]])
        arrays.append(np.stack(rows))  # (runs, steps)
    interval = stats.interval_estimates(arrays, {"IQM": stats.iqm}, reps=reps, seed=seed)["IQM"]
    return {"steps": steps.tolist(), **interval.as_dict()}


def pooled_mean(pooled: np.ndarray, task_means: np.ndarray) -> np.ndarray:
    return pooled.mean(axis=1)


def plasticity_curves(runs: list[RunScore], reps: int, seed: int) -> dict[str, Any] | None:
    """Per (metric, network): mean over runs at the logged steps every run has, with a 95% stratified
    bootstrap interval; and the steps at which interventions fired."""
    readings = [(r, read_plasticity(r.run_dir)) for r in runs if r.run_dir is not None]
    readings = [(r, p) for r, p in readings if p["curves"]]
    if not readings:
        return None
    keys = set(readings[0][1]["curves"])
    for _, reading in readings[1:]:
        keys &= set(reading["curves"])
    out: dict[str, Any] = {"runs": len(readings), "curves": {}, "events": {}}
    for metric, network in sorted(keys):
        common = set(readings[0][1]["curves"][(metric, network)][0].tolist())
        for _, reading in readings[1:]:
            common &= set(reading["curves"][(metric, network)][0].tolist())
        if not common:
            continue
        steps = np.array(sorted(common))
        per_task: dict[str, list[np.ndarray]] = {}
        for run, reading in readings:
            run_steps, values = reading["curves"][(metric, network)]
            index = {int(s): i for i, s in enumerate(run_steps)}
            per_task.setdefault(run.task, []).append(values[[index[int(s)] for s in steps]])
        arrays = [np.stack(per_task[t]) for t in sorted(per_task)]
        interval = stats.interval_estimates(arrays, {"mean": pooled_mean}, reps=reps, seed=seed)["mean"]
        out["curves"][f"{metric}/{network}"] = {"steps": steps.tolist(), **interval.as_dict()}
    for _, reading in readings:
        for name, steps in reading["events"].items():
            out["events"].setdefault(name, set()).update(steps)
    out["events"] = {name: sorted(steps) for name, steps in out["events"].items()}
    return out if out["curves"] else None


def profile_taus(runs: list[RunScore], suite: Suite) -> np.ndarray:
    """Thresholds from 0 to the 95th percentile of all scores (at least 1: human level / maximum return)."""
    upper = max(1.0, float(np.percentile([r.score for r in runs], 95)))
    return np.linspace(0.0, upper, 81)


def aggregate(
    loaded: Loaded,
    suite: Suite,
    *,
    reps: int = stats.DEFAULT_REPS,
    seed: int = 0,
    curve_reps: int = CURVE_REPS,
    plasticity: bool = True,
) -> dict[str, Any]:
    """The whole report as plain data (JSON-ready)."""
    groups = by_variant(loaded.runs)
    taus = profile_taus(loaded.runs, suite)
    report: dict[str, Any] = {
        "suite": suite.name,
        "score": suite.score_label,
        "reps": reps,
        "seed": seed,
        "confidence": stats.CONFIDENCE,
        "notes": list(loaded.notes),
        "taus": taus.tolist(),
        "variants": {},
    }
    for variant, runs in groups.items():
        scores = task_scores(runs)
        counts = [len(v) for v in scores.values()]
        intervals = stats.aggregate_intervals(scores, reps=reps, seed=seed)
        entry = {
            "runs": len(runs),
            "tasks": len(scores),
            "runs_per_task": {"min": min(counts), "max": max(counts)},
            "aggregates": {name: interval.as_dict() for name, interval in intervals.items()},
            "cost": cost_summary(runs),
            "per_task": per_task_table(runs),
            "profile": stats.performance_profile(
                scores, taus, reps=min(reps, stats.PROFILE_REPS), seed=seed
            ).as_dict(),
            "sample_efficiency": sample_efficiency(runs, curve_reps, seed),
            "plasticity": plasticity_curves(runs, curve_reps, seed) if plasticity else None,
        }
        if min(counts) != max(counts):
            report["notes"].append(
                f"{variant}: {min(counts)}–{max(counts)} runs per task; IQM, optimality gap and profiles "
                "pool "
                "all runs (a task with more runs weighs more), median and mean average per-task means "
                "(--runs-per-task N cuts every task to its first N runs)"
            )
        report["variants"][variant] = entry
    return report


# ----------------------------------------------------------------------------- Markdown


def _interval_cell(values: dict[str, float]) -> str:
    return f"{values['point']:.3f} [{values['low']:.3f}, {values['high']:.3f}]"


def _hours(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def markdown_table(report: dict[str, Any]) -> str:
    """One row per variant: runs, compute, then IQM / median / mean / OG with 95% CIs."""
    metrics = list(stats.AGGREGATES)
    header = (
        "| variant | runs | tasks | runs/task | wall-h per run | GPU-h per run | wall-h total | "
        + " | ".join(f"{METRIC_SHORT[m]} {METRIC_ARROWS[m]}" for m in metrics)
        + " |"
    )
    lines = [header, "|" + "---|" * (7 + len(metrics))]
    for variant, entry in report["variants"].items():
        cost = entry["cost"]
        rpt = entry["runs_per_task"]
        per_task = str(rpt["min"]) if rpt["min"] == rpt["max"] else f"{rpt['min']}–{rpt['max']}"
        cells = [
            variant,
            str(entry["runs"]),
            str(entry["tasks"]),
            per_task,
            _hours(cost["wall_hours_per_run"]),
            _hours(cost["gpu_hours_per_run"]),
            _hours(cost["wall_hours_total"]),
            *(_interval_cell(entry["aggregates"][m]) for m in metrics),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    footer = (
        f"\n{report['suite']}, {report['score']}; point estimate [95% percentile stratified-bootstrap CI, "
        f"{report['reps']:,} resamples, seed {report['seed']}]. IQM: 25% trimmed mean over all runs; median "
        "and mean of per-task means; OG: optimality gap, γ = 1 (rliable's definitions). Compute: wall time "
        "summed "
        "over a run's attempts; GPU-hours count runs on CUDA × their share of a GPU; – where not recorded."
    )
    notes = "".join(f"\n- {note}" for note in report["notes"])
    return "\n".join(lines) + "\n" + footer + ("\n" + notes if notes else "") + "\n"


def markdown_per_task(report: dict[str, Any]) -> str:
    """Per-task mean normalised score (and raw return) for each variant."""
    variants = list(report["variants"])
    tasks = sorted({t for entry in report["variants"].values() for t in entry["per_task"]})
    lines = ["| task | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for task in tasks:
        cells = []
        for variant in variants:
            row = report["variants"][variant]["per_task"].get(task)
            cells.append(
                "–" if row is None else f"{row['mean_score']:.3f} ({row['mean_raw']:.4g}, n={row['runs']})"
            )
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return (
        "\n".join(lines) + f"\n\nCells: mean {report['score']} over runs (mean raw score, number of runs).\n"
    )


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> Any:
    parser = Parser(prog="aggregate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run / sweep directories and per-run score CSVs")
    parser.add_argument(
        "--suite", required=True, choices=SUITE_NAMES, help="task list and score normalisation"
    )
    parser.add_argument(
        "--labels", nargs="+", help="variant names for the inputs, in order (default: file stem)"
    )
    parser.add_argument("--runs-per-task", type=int, help="keep each task's first N runs (default: all)")
    parser.add_argument(
        "--reps", type=int, default=stats.DEFAULT_REPS, help="bootstrap resamples (rliable: 50000)"
    )
    parser.add_argument("--curve-reps", type=int, default=CURVE_REPS, help="bootstrap resamples for curves")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--json", dest="json_out", help="write the full report as JSON here")
    parser.add_argument("--markdown", help="write the Markdown tables here")
    parser.add_argument("--plots", help="write PNG plots into this directory")
    parser.add_argument("--title", help="title prefix of the plots (default: the suite)")
    parser.add_argument("--no-plasticity", action="store_true", help="skip reading TensorBoard diagnostics")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.curve_reps < 1:
        parser.error("--reps and --curve-reps must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from plasticrl.common import atomic_write_json, atomic_write_text

    args = parse_args(argv)
    suite = get_suite(args.suite)
    loaded = load_inputs(args.paths, suite, args.labels, args.runs_per_task)
    for path in (args.json_out, args.markdown):
        if path and Path(path).is_dir():
            raise InputError(f"{path} is a directory; give a file name")
    report = aggregate(
        loaded,
        suite,
        reps=args.reps,
        seed=args.seed,
        curve_reps=args.curve_reps,
        plasticity=not args.no_plasticity,
    )
    text = (
        f"## Aggregate ({suite.name})\n\n{markdown_table(report)}\n## Per task\n\n{markdown_per_task(report)}"
    )
    print(text)
    if args.plots:
        from plasticrl.benchmarks.sweep_plots import write_plots

        report["plots"] = [str(p) for p in write_plots(report, Path(args.plots), title=args.title)]
        print("plots: " + ", ".join(report["plots"]))
    if args.markdown:
        atomic_write_text(args.markdown, text)
    if args.json_out:
        atomic_write_json(args.json_out, report)
    return report


if __name__ == "__main__":
    sys.exit(run_main(main))
