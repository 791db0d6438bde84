"""Aggregate statistics over runs × tasks with stratified-bootstrap confidence intervals.

The definitions are rliable's (Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the
Statistical Precipice"; google-research/rliable ``metrics.py`` and ``library.py``), written with numpy so the
toolkit does not depend on rliable (which imports only with pandas < 3):

- **IQM**: the 25% trimmed mean of all run scores pooled over tasks (``scipy.stats.trim_mean(x, 0.25)``:
  ``int(0.25·n)`` scores cut from each end).
- **Median** and **mean**: of the per-task mean scores.
- **Optimality gap**: γ − mean(min(score, γ)) over all runs pooled, γ = 1.
- **Performance profile**: the fraction of all runs whose score is above τ, for each τ.
- **Confidence intervals**: percentile bootstrap (95%: the 2.5th and 97.5th percentiles of the statistic
  over the resamples, ``np.percentile``'s linear interpolation as ``arch`` uses); each resample draws every
  task's runs with replacement from that task's own runs (stratified by task), never across tasks.

Tasks may hold different numbers of runs (the BBF RR 8 file has 52–60 per game), which rliable's
runs × tasks matrix cannot hold: the resample then draws n_m runs for task m, pooled statistics (IQM,
optimality gap, profiles) weight each run equally, so a task with more runs weighs more, and per-task means
weight tasks equally. When every task has the same number of runs, the draws are rliable's exactly:
one ``randint(0, N, size=(N, M))`` per replication (what ``np.random.choice(N, (N, M))`` draws), from a
``np.random.RandomState(seed)``, so ``np.random.seed(seed)`` before rliable's ``get_interval_estimates``
gives the same intervals to the last bit (tasks in the same order: the aggregate sorts them by name).

A task's scores may carry extra trailing axes (e.g. evaluation points of a learning curve): the statistics
reduce over runs and tasks and keep those axes, and every point of a curve uses the same resamples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# rliable get_interval_estimates(reps=50000) and create_performance_profile(reps=2000).
DEFAULT_REPS = 50_000
PROFILE_REPS = 2_000
CONFIDENCE = 0.95
IQM_CUT = 0.25  # rliable aggregate_iqm: scipy.stats.trim_mean(scores, proportiontocut=0.25)
OPTIMALITY_GAMMA = 1.0  # rliable aggregate_optimality_gap(scores, gamma=1)

# A statistic sees a batch of B resamples: ``pooled`` (B, total_runs, *extra), all runs of all tasks side
# by side, and ``task_means`` (B, num_tasks, *extra); it returns (B, *extra) or (B, *extra, K).
Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


def iqm_of(pooled: np.ndarray) -> np.ndarray:
    """Interquartile mean along axis 1: the mean of the sorted values ``[k, n − k)``, k = int(0.25·n)."""
    n = pooled.shape[1]
    cut = int(IQM_CUT * n)
    if cut == 0:
        return pooled.mean(axis=1)
    # A partition at both ends of the kept range puts exactly the middle values between them.
    middle = np.partition(pooled, (cut, n - cut - 1), axis=1)[:, cut : n - cut]
    return middle.mean(axis=1)


def iqm(pooled: np.ndarray, task_means: np.ndarray) -> np.ndarray:
    return iqm_of(pooled)


def mean(pooled: np.ndarray, task_means: np.ndarray) -> np.ndarray:
    return task_means.mean(axis=1)


def median(pooled: np.ndarray, task_means: np.ndarray) -> np.ndarray:
    return np.median(task_means, axis=1)


def optimality_gap(pooled: np.ndarray, task_means: np.ndarray) -> np.ndarray:
    return OPTIMALITY_GAMMA - np.minimum(pooled, OPTIMALITY_GAMMA).mean(axis=1)


AGGREGATES: dict[str, Statistic] = {
    "IQM": iqm,
    "Median": median,
    "Mean": mean,
    "Optimality Gap": optimality_gap,
}


def profile_statistic(taus: np.ndarray) -> Statistic:
    """Fraction of runs with score > τ for each τ (rliable ``score_distributions``)."""
    taus = np.asarray(taus, dtype=np.float64)

    def fraction_above(pooled: np.ndarray, task_means: np.ndarray) -> np.ndarray:
        return (pooled[..., None] > taus).mean(axis=1)

    return fraction_above


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap confidence interval (arrays for curves and profiles)."""

    point: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def as_dict(self) -> dict:
        return {"point": _plain(self.point), "low": _plain(self.low), "high": _plain(self.high)}


def _plain(value: np.ndarray) -> float | list:
    value = np.asarray(value, dtype=np.float64)
    return float(value) if value.ndim == 0 else value.tolist()


def as_task_arrays(task_scores: Mapping[str, Sequence[float]] | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-task arrays of shape (runs, *extra), float64, checked for emptiness and consistent extra axes."""
    arrays = list(task_scores.values()) if isinstance(task_scores, Mapping) else list(task_scores)
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    if not arrays:
        raise ValueError("no tasks to aggregate")
    extra = arrays[0].shape[1:]
    for a in arrays:
        if a.ndim == 0 or a.shape[0] == 0:
            raise ValueError("every task needs at least one run")
        if a.shape[1:] != extra:
            raise ValueError(f"tasks disagree in their trailing shape: {a.shape[1:]} vs {extra}")
    return arrays


def _evaluate(stat: Statistic, pooled: np.ndarray, task_means: np.ndarray) -> np.ndarray:
    return np.asarray(stat(pooled, task_means), dtype=np.float64)


def point_estimate(task_scores, stat: Statistic) -> np.ndarray:
    """The statistic on the data itself."""
    arrays = as_task_arrays(task_scores)
    pooled = np.concatenate(arrays, axis=0)[None]
    task_means = np.stack([a.mean(axis=0) for a in arrays])[None]
    return _evaluate(stat, pooled, task_means)[0]


def resample_layout(counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The order in which one replication draws its run indices: position (n, m) for n = 0, 1, ... and every
    task m that has more than n runs, row by row. Returns each position's task and its task's run count.

    With N runs in every task this is rliable's N × M matrix in C order, so the draws are rliable's.
    """
    counts = np.asarray(counts)
    _, tasks = np.nonzero(np.arange(counts.max())[:, None] < counts[None, :])
    return tasks, counts[tasks]


def stratified_resamples(arrays: Sequence[np.ndarray], reps: int, rng: np.random.RandomState, chunk: int):
    """Yield (pooled, task_means) for successive chunks of ``reps`` stratified resamples.

    Every resample draws task m's n_m runs, with replacement, from task m's own runs only. The draws of
    one replication come in :func:`resample_layout` order (``randint`` with per-position upper bounds draws
    the same stream as scalar bounds), so the resamples do not depend on the chunk size.
    """
    counts = [a.shape[0] for a in arrays]
    tasks, highs = resample_layout(counts)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])[tasks]
    values = np.concatenate(arrays, axis=0)  # (total runs, *extra)
    by_task = np.argsort(tasks, kind="stable")  # positions grouped by task, for the per-task means
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    done = 0
    while done < reps:
        size = min(chunk, reps - done)
        runs = rng.randint(0, np.broadcast_to(highs, (size, highs.size)))
        pooled = values[offsets + runs]  # (size, total runs, *extra)
        task_means = np.add.reduceat(pooled[:, by_task], starts, axis=1) / np.asarray(counts).reshape(
            (1, -1) + (1,) * (pooled.ndim - 2)
        )
        yield pooled, task_means
        done += size


def interval_estimates(
    task_scores,
    stats: Mapping[str, Statistic],
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    chunk_elements: int = 20_000_000,
) -> dict[str, Interval]:
    """Point estimates and percentile stratified-bootstrap intervals of several statistics at once.

    All statistics share the same ``reps`` resamples (drawn from ``RandomState(seed)``), as rliable's
    ``get_interval_estimates`` does for a function returning several metrics.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arrays = as_task_arrays(task_scores)
    per_rep = sum(a.size for a in arrays)
    chunk = max(1, chunk_elements // max(per_rep, 1))
    rng = np.random.RandomState(seed)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in stats}
    for pooled, task_means in stratified_resamples(arrays, reps, rng, chunk):
        for name, stat in stats.items():
            samples[name].append(_evaluate(stat, pooled, task_means))
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for name, stat in stats.items():
        values = np.concatenate(samples[name], axis=0)
        low, high = np.percentile(values, [100.0 * alpha, 100.0 * (1.0 - alpha)], axis=0)
        out[name] = Interval(point_estimate(arrays, stat), low, high)
    return out


def aggregate_intervals(task_scores, *, reps: int = DEFAULT_REPS, seed: int = 0) -> dict[str, Interval]:
    """IQM, median, mean and optimality gap with 95% percentile stratified-bootstrap intervals."""
    return interval_estimates(task_scores, AGGREGATES, reps=reps, seed=seed)


def performance_profile(
    task_scores, taus: np.ndarray, *, reps: int = PROFILE_REPS, seed: int = 0
) -> Interval:
    """Run-score distribution (fraction of runs above each τ) with bootstrap bands."""
    return interval_estimates(task_scores, {"profile": profile_statistic(taus)}, reps=reps, seed=seed)[
        "profile"
    ]
