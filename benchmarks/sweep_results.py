"""Per-run scores for aggregation, read from run directories or from a CSV of per-run scores.

A **run directory** (DESIGN.md §5) holds ``config.json`` and, once finished, ``result.json``; its
``eval.csv`` gives the learning curve and its TensorBoard events the ``plasticity/`` diagnostics. A run
launched by ``benchmarks/sweep.py`` sits in a sweep entry directory whose ``sweep_entry.json`` names the
sweep's variant, the attempts (wall time of each, GPU slot) and the GPU share per run; without it a run's
variant is its agent and tag. Everything the aggregate needs is in these directories, so a sweep split
across machines aggregates the same way once its directories are copied together.

A **score CSV** has one row per run: a task column (``game``, ``task``, ``env`` or ``env_id``), an optional
``seed`` and ``variant``, and a raw score (``score``, ``return`` or ``GameScoreAverage`` as in the BBF
paper's files); a ``GameScoreNormalized`` / ``normalized_score`` column is checked against our normalisation.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plasticrl.benchmarks.sweep_cli import InputError
from plasticrl.benchmarks.sweep_suites import Suite

ENTRY_FILE = "sweep_entry.json"
STALE_DIR = ".stale"  # where the sweep moves run directories of attempts that left nothing to resume
CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"
EVAL_FILE = "eval.csv"

TASK_COLUMNS = ("game", "task", "env", "env_id")
SCORE_COLUMNS = ("score", "return", "raw_score", "GameScoreAverage")
NORMALIZED_COLUMNS = ("GameScoreNormalized", "normalized_score")
NORMALIZED_TOLERANCE = 1e-4  # the BBF files store float32 normalised scores (≈ 1e-6 from ours)


class DataError(InputError):
    """Input that cannot be aggregated (missing columns, empty or mixed directories, unknown games)."""


@dataclass
class RunScore:
    """One run's final score and what it cost."""

    variant: str
    task: str
    seed: int | None
    raw: float
    score: float
    source: str
    agent: str | None = None
    total_steps: int | None = None
    wall_s: float | None = None
    device: str | None = None
    gpu_share: float | None = None
    run_dir: Path | None = None
    curve: tuple[np.ndarray, np.ndarray] | None = None  # (agent steps, normalised score)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gpu_s(self) -> float | None:
        """GPU-seconds: wall time × this run's share of a GPU (0 on a CPU; None when unknown)."""
        if self.wall_s is None or self.device is None:
            return None
        if not self.device.startswith("cuda"):
            return 0.0
        return self.wall_s * (1.0 if self.gpu_share is None else self.gpu_share)


@dataclass
class Loaded:
    """Runs read for one aggregation and what was left out (stated in the report)."""

    runs: list[RunScore]
    notes: list[str]


# ----------------------------------------------------------------------------- score CSVs


def _column(header: list[str], choices: tuple[str, ...], path: Path, what: str, required: bool = True):
    lower = {h.lower(): h for h in header}
    for name in choices:
        if name.lower() in lower:
            return lower[name.lower()]
    if required:
        raise DataError(
            f"{path}: no {what} column (expected one of: {', '.join(choices)}; found: {', '.join(header)})"
        )
    return None


def _number(value: str, path: Path, line: int, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{path}, line {line}: {column} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{path}, line {line}: {column} is {value}")
    return number


def load_score_csv(
    path: str | Path, suite: Suite, label: str | None = None, runs_per_task: int | None = None
) -> Loaded:
    """Per-run scores from a CSV; rows of tasks outside a fixed-list suite are dropped and counted."""
    path = Path(path)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
        header = list(rows[0].keys()) if rows else []
    if not rows:
        raise DataError(f"{path}: no rows")
    task_col = _column(header, TASK_COLUMNS, path, "task")
    score_col = _column(header, SCORE_COLUMNS, path, "raw score")
    norm_col = _column(header, NORMALIZED_COLUMNS, path, "normalised score", required=False)
    seed_col = _column(header, ("seed",), path, "seed", required=False)
    variant_col = _column(header, ("variant",), path, "variant", required=False)
    default_variant = label or path.stem

    runs: list[RunScore] = []
    dropped: dict[str, int] = {}
    worst_mismatch = 0.0
    for line, row in enumerate(rows, start=2):
        task = suite.canonical(row[task_col])
        if task is None:
            dropped[row[task_col]] = dropped.get(row[task_col], 0) + 1
            continue
        raw = _number(row[score_col], path, line, score_col)
        try:
            score = float(suite.normalize(task, raw))
        except ValueError as error:  # an Atari game without a human score
            raise DataError(f"{path}, line {line}: {error}") from None
        if norm_col is not None and row[norm_col] != "":
            theirs = _number(row[norm_col], path, line, norm_col)
            worst_mismatch = max(worst_mismatch, abs(theirs - score))
            if abs(theirs - score) > NORMALIZED_TOLERANCE * max(1.0, abs(score)):
                raise DataError(
                    f"{path}, line {line}: the file's {norm_col} {theirs:.6g} disagrees with the "
                    f"{suite.name} "
                    f"normalisation of {score_col} {raw:g} on {task} ({score:.6g})"
                )
        seed = int(float(row[seed_col])) if seed_col and row[seed_col] != "" else None
        variant = (row[variant_col] if variant_col and row[variant_col] else None) or default_variant
        runs.append(RunScore(variant, task, seed, raw, score, f"{path}:{line}"))
    notes = []
    if dropped:
        notes.append(
            f"{path.name}: dropped {sum(dropped.values())} rows of {len(dropped)} tasks outside the "
            f"{suite.name} "
            f"suite ({', '.join(sorted(dropped))})"
        )
    if not runs:
        raise DataError(f"{path}: no rows of a {suite.name} task")
    if norm_col is not None:
        notes.append(
            f"{path.name}: its {norm_col} column agrees with our normalisation (largest difference "
            f"{worst_mismatch:.1e})"
        )
    if runs_per_task is not None:
        runs, note = first_runs_per_task(runs, runs_per_task)
        notes.append(f"{path.name}: {note}")
    return Loaded(runs, notes)


def first_runs_per_task(runs: list[RunScore], limit: int) -> tuple[list[RunScore], str]:
    """Keep the first ``limit`` runs of each (variant, task) in input order."""
    if limit < 1:
        raise DataError(f"--runs-per-task must be >= 1, got {limit}")
    kept, counts = [], {}
    for run in runs:
        key = (run.variant, run.task)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= limit:
            kept.append(run)
    cut = len(runs) - len(kept)
    return kept, f"cut to the first {limit} runs of each task ({cut} runs left out)"


# ----------------------------------------------------------------------------- run directories


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Every run directory (a directory holding config.json) at or below ``paths``, sorted.

    Hidden directories (the sweep's ``.stale`` attempts) are skipped; a run directory is not searched
    further.
    """
    found: list[Path] = []

    def walk(directory: Path) -> None:
        if (directory / CONFIG_FILE).is_file():
            found.append(directory)
            return
        for child in sorted(directory.iterdir()):
            if child.is_dir() and not child.name.startswith("."):
                walk(child)

    for path in paths:
        walk(path)
    return found


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot be read ({error})") from None


def entry_record(run_dir: Path) -> dict[str, Any] | None:
    """The sweep's record of the entry holding ``run_dir`` (None for a run launched by hand)."""
    path = run_dir.parent / ENTRY_FILE
    return read_json(path) if path.is_file() else None


def run_variant(config: dict[str, Any], record: dict[str, Any] | None) -> str:
    """The sweep variant; a study that writes several runs per entry (warm-start arms) adds the run's tag;
    runs launched by hand are named by agent and tag."""
    tag = config.get("tag") or "base"
    if record is None:
        return f"{config.get('agent', '?')}:{tag}"
    if record.get("runs_per_entry", "one") == "many":
        return tag if record.get("single_variant") else f"{record['variant']}:{tag}"
    return str(record["variant"])


def _wall_s(result: dict[str, Any], record: dict[str, Any] | None) -> float | None:
    """All attempts' wall time when the sweep recorded them (a resumed run's result.json covers only its
    last session), else the run's own wall_time_s."""
    if record is not None and record.get("runs_per_entry", "one") == "one":
        attempts = [a.get("wall_s") for a in record.get("attempts", []) if a.get("wall_s") is not None]
        if attempts:
            return float(sum(attempts))
    value = result.get("wall_time_s")
    return None if value is None else float(value)


def _device(result: dict[str, Any], config: dict[str, Any], record: dict[str, Any] | None) -> str | None:
    if result.get("device"):
        return str(result["device"])
    if record is not None:
        attempts = record.get("attempts", [])
        if attempts and attempts[-1].get("gpu") is not None:
            return "cuda"
    device = config.get("args", {}).get("device")
    return str(device) if device and device != "auto" else None


def read_curve(run_dir: Path, suite: Suite, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, normalised score) from eval.csv (the file's normalized_score column where filled)."""
    path = run_dir / EVAL_FILE
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    steps = np.array([int(float(r["step"])) for r in rows])
    scores = np.array(
        [
            float(r["normalized_score"])
            if r.get("normalized_score")
            else float(suite.normalize(task, float(r["mean_return"])))
            for r in rows
        ]
    )
    return steps, scores


def _final_score(result: dict[str, Any], suite: Suite, task: str, path: Path) -> tuple[float, float]:
    raw = result.get("final_eval_return", result.get("score"))
    if raw is None:
        raise DataError(f"{path / RESULT_FILE}: no final_eval_return (or score)")
    raw = float(raw)
    if suite.score == "human" and result.get("final_normalized_score") is not None:
        return raw, float(result["final_normalized_score"])
    try:
        return raw, float(suite.normalize(task, raw))
    except ValueError as error:
        raise DataError(f"{path}: {error}") from None


def load_run_dirs(paths: list[Path], suite: Suite, runs_per_task: int | None = None) -> Loaded:
    """Finished runs (with result.json) under ``paths``; unfinished ones are counted and stated."""
    for path in paths:
        if not path.is_dir():
            raise DataError(f"{path}: not a directory or CSV file")
    run_dirs = find_run_dirs(paths)
    if not run_dirs:
        raise DataError(f"no run directories (with {CONFIG_FILE}) under {', '.join(map(str, paths))}")
    runs, unfinished, outside = [], [], []
    for run_dir in run_dirs:
        config = read_json(run_dir / CONFIG_FILE)
        if not (run_dir / RESULT_FILE).is_file():
            unfinished.append(run_dir)
            continue
        env = str(config.get("env_id", ""))
        task = suite.canonical(env)
        if task is None:
            outside.append(f"{run_dir.name} ({env})")
            continue
        result = read_json(run_dir / RESULT_FILE)
        record = entry_record(run_dir)
        raw, score = _final_score(result, suite, task, run_dir)
        args = config.get("args", {})
        runs.append(
            RunScore(
                variant=run_variant(config, record),
                task=task,
                seed=config.get("seed"),
                raw=raw,
                score=score,
                source=str(run_dir),
                agent=config.get("agent"),
                total_steps=args.get("total_steps"),
                wall_s=_wall_s(result, record),
                device=_device(result, config, record),
                gpu_share=None if record is None else record.get("gpu_share"),
                run_dir=run_dir,
                curve=read_curve(run_dir, suite, task),
            )
        )
    if outside:
        raise DataError(
            f"mixed sweep directory: {len(outside)} finished runs are not {suite.name} tasks: "
            + ", ".join(outside[:5])
            + (" ..." if len(outside) > 5 else "")
        )
    if not runs:
        raise DataError(
            f"no finished runs (with {RESULT_FILE}) under {', '.join(map(str, paths))}: "
            f"{len(unfinished)} run directories have not finished"
        )
    check_consistent(runs)
    notes = []
    if unfinished:
        notes.append(
            f"{len(unfinished)} unfinished run directories (no {RESULT_FILE}) left out: "
            + ", ".join(d.name for d in unfinished[:5])
            + (" ..." if len(unfinished) > 5 else "")
        )
    if runs_per_task is not None:
        runs, note = first_runs_per_task(runs, runs_per_task)
        notes.append(note)
    return Loaded(runs, notes)


def check_consistent(runs: list[RunScore]) -> None:
    """One agent and one budget per variant, and no (variant, task, seed) twice."""
    by_variant: dict[str, list[RunScore]] = {}
    for run in runs:
        by_variant.setdefault(run.variant, []).append(run)
    for variant, members in by_variant.items():
        agents = {r.agent for r in members}
        if len(agents) > 1:
            raise DataError(
                f"mixed sweep directory: variant {variant!r} holds runs of agents {sorted(map(str, agents))}"
            )
        budgets = {r.total_steps for r in members}
        if len(budgets) > 1:
            raise DataError(
                f"mixed sweep directory: variant {variant!r} holds runs of different --total-steps "
                f"{sorted(b for b in budgets if b is not None)}"
            )
        seen: dict[tuple, str] = {}
        for run in members:
            key = (run.task, run.seed)
            if run.seed is not None and key in seen:
                raise DataError(
                    f"mixed sweep directory: two runs of variant {variant!r}, {run.task}, seed {run.seed}: "
                    f"{seen[key]} and {run.source}"
                )
            seen[key] = run.source


def load_inputs(
    paths: list[str], suite: Suite, labels: list[str] | None = None, runs_per_task: int | None = None
) -> Loaded:
    """CSV files and run / sweep directories together; ``labels`` name the CSVs' variants in order."""
    if labels is not None and len(labels) != len(paths):
        raise DataError(f"--labels gives {len(labels)} names for {len(paths)} inputs")
    runs, notes, directories = [], [], []
    for i, raw_path in enumerate(paths):
        path = Path(raw_path)
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        label = labels[i] if labels else None
        if path.is_file():
            if path.suffix.lower() != ".csv":
                raise DataError(f"{path}: expected a .csv of per-run scores or a run / sweep directory")
            loaded = load_score_csv(path, suite, label, runs_per_task)
            runs += loaded.runs
            notes += loaded.notes
        else:
            directories.append((path, label))
    for path, label in directories:
        loaded = load_run_dirs([path], suite, runs_per_task)
        if label:
            for run in loaded.runs:
                run.variant = label
        runs += loaded.runs
        notes += loaded.notes
    check_consistent(runs)
    return Loaded(runs, notes)


# ----------------------------------------------------------------------------- plasticity diagnostics

PLASTICITY_METRICS = ("dormant_ratio", "srank", "weight_norm")
_NETWORK_TAG = re.compile(r"^plasticity/(?P<metric>[^/]+)/(?P<network>[^/]+)$")


def read_plasticity(run_dir: Path, metrics: tuple[str, ...] = PLASTICITY_METRICS) -> dict[str, Any]:
    """Network-level ``plasticity/<metric>/<network>`` scalars and the steps at which each intervention
    fired (``interventions/<name>``), from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    curves: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    events: dict[str, list[int]] = {}
    for tag in accumulator.Tags().get("scalars", []):
        match = _NETWORK_TAG.match(tag)
        if match and match["metric"] in metrics:
            points = accumulator.Scalars(tag)
            curves[(match["metric"], match["network"])] = (
                np.array([p.step for p in points]),
                np.array([p.value for p in points], dtype=np.float64),
            )
        elif tag.startswith("interventions/") and tag.count("/") == 1:
            events[tag.split("/", 1)[1]] = [p.step for p in accumulator.Scalars(tag) if p.value > 0]
    return {"curves": curves, "events": events}
