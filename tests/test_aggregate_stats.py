"""Aggregate statistics (benchmarks/stats.py) against hand-worked values and rliable's own outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from plasticrl.benchmarks import stats
from plasticrl.envs import atari_human_normalized_score, load_atari_scores

SCORES = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_scores"

# A 3-run × 3-task table worked by hand:
#   pooled, sorted: 0 .2 .4 .6 1.6 2 2 2 3; int(0.25 · 9) = 2 cut from each end
#     -> IQM = (.4 + .6 + 1.6 + 2 + 2) / 5 = 1.32
#   task means: A 0.6, B 4/3, C 2 -> mean 3.9333/3 = 1.311111, median 1.333333
#   min(x, 1): 0 .2 1 | .4 .6 1 | 1 1 1 -> 6.2/9 -> optimality gap 1 − 0.688889 = 0.311111
HAND_TABLE = {"A": [0.0, 0.2, 1.6], "B": [0.4, 0.6, 3.0], "C": [2.0, 2.0, 2.0]}
HAND_VALUES = {"IQM": 1.32, "Mean": (0.6 + 4 / 3 + 2) / 3, "Median": 4 / 3, "Optimality Gap": 1 - 6.2 / 9}


@pytest.mark.parametrize("name", list(HAND_VALUES))
def test_aggregates_match_the_hand_worked_table(name):
    assert stats.point_estimate(HAND_TABLE, stats.AGGREGATES[name]) == pytest.approx(
        HAND_VALUES[name], abs=1e-9
    )


def test_iqm_is_scipys_trimmed_mean_for_every_size():
    rng = np.random.default_rng(0)
    for n in range(1, 30):
        x = rng.normal(size=n)
        assert stats.iqm_of(x[None])[0] == pytest.approx(scipy.stats.trim_mean(x, 0.25), abs=1e-12)


def test_uneven_runs_pool_for_iqm_and_average_task_means():
    table = {"a": [0.0, 1.0], "b": [2.0, 4.0, 6.0, 8.0]}  # pooled 0 1 2 4 6 8 -> cut 1 -> (1+2+4+6)/4
    assert stats.point_estimate(table, stats.iqm) == pytest.approx(3.25)
    assert stats.point_estimate(table, stats.mean) == pytest.approx((0.5 + 5.0) / 2)
    assert stats.point_estimate(table, stats.optimality_gap) == pytest.approx(1 - (0 + 1 + 1 + 1 + 1 + 1) / 6)


@pytest.mark.parametrize("counts", [(5, 5, 5), (2, 7, 4)])
def test_bootstrap_resamples_stay_within_each_task(counts):
    # Task m's runs lie in [100·m, 100·m + 1): a resample that mixed tasks would show up in the ranges.
    rng = np.random.default_rng(1)
    arrays = [100.0 * m + rng.random(n) for m, n in enumerate(counts)]
    total = 0
    for pooled, task_means in stats.stratified_resamples(arrays, 500, np.random.RandomState(0), chunk=64):
        for m, n in enumerate(counts):
            in_task = (pooled >= 100 * m) & (pooled < 100 * m + 1)
            assert (in_task.sum(axis=1) == n).all()  # exactly n_m draws per resample come from task m
            members = pooled[in_task].reshape(-1, n)
            assert np.isin(members, arrays[m]).all()  # and they are task m's own runs
            assert np.allclose(task_means[:, m], members.mean(axis=1))
        total += pooled.shape[0]
    assert total == 500


def test_resamples_do_not_depend_on_the_chunk_size():
    arrays = [np.arange(3.0), np.arange(5.0) + 10, np.arange(4.0) + 20]
    a = stats.interval_estimates(arrays, stats.AGGREGATES, reps=300, seed=4, chunk_elements=12)
    b = stats.interval_estimates(arrays, stats.AGGREGATES, reps=300, seed=4)
    for name in stats.AGGREGATES:
        assert a[name].low == b[name].low and a[name].high == b[name].high


def test_constant_tasks_have_zero_width_intervals():
    intervals = stats.aggregate_intervals({"a": [0.5] * 4, "b": [2.0] * 4}, reps=200)
    for interval in intervals.values():
        assert interval.low == pytest.approx(interval.point) and interval.high == pytest.approx(
            interval.point
        )


def test_curves_keep_their_trailing_axis_and_share_resamples():
    arrays = [np.array([[0.0, 1.0], [0.0, 3.0]]), np.array([[0.0, 5.0], [0.0, 7.0]])]
    out = stats.interval_estimates(arrays, {"mean": stats.mean}, reps=100)["mean"]
    assert out.point.shape == (2,) and out.point[1] == pytest.approx(4.0) and out.high[0] == 0.0


def _bbf_matrix(name: str, cut: int | None = None) -> list[np.ndarray]:
    """Per-game human-normalised scores of a BBF file, games in sorted order, runs in file order."""
    games = {key: entry.game for key, entry in load_atari_scores().items()}
    per_game: dict[str, list[float]] = {}
    with (SCORES / name).open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["game"] in games:
                per_game.setdefault(games[row["game"]], []).append(float(row["GameScoreAverage"]))
    return [atari_human_normalized_score(g, np.array(per_game[g][:cut])) for g in sorted(per_game)]


# rliable 1.2.0 (numpy 2.4.6, scipy 1.17.1, pandas 2.3.3) in a throwaway venv, computed once:
#   np.random.seed(0); rly.get_interval_estimates({"x": X}, lambda x: np.array([metrics.aggregate_iqm(x),
#       metrics.aggregate_median(x), metrics.aggregate_mean(x),
#       metrics.aggregate_optimality_gap(x)]), reps=2000)
# with X the runs × 26 games matrix of human-normalised GameScoreAverage (games sorted by name, runs in file
# order; RR8 cut to each game's first 52 runs, as rliable needs equal runs per game).
RLIABLE_2000_SEED0 = {
    ("RR2_BBF.csv", None): (
        [0.9403017414585668, 0.7545030739853797, 2.1751580797203904, 0.3767871561891917],
        [0.8746010698826043, 0.6964300344489855, 2.039050011948082, 0.36201528009665324],
        [1.007763793665103, 0.8239066775533865, 2.3124097585071044, 0.3916678743936057],
    ),
    ("RR2_BBF-SPR.csv", None): (
        [0.8260310928232686, 0.7113591513351789, 1.7371599083829414, 0.3967364118628155],
        [0.7645274535911847, 0.645284788518194, 1.6253786988710124, 0.3803262979914803],
        [0.8906882225594537, 0.7703011935949469, 1.8505261989613857, 0.4127658511839798],
    ),
    ("RR8_BBF.csv", 52): (
        [1.0332119878862687, 0.8787287419305863, 2.236300486086331, 0.3402993998276065],
        [0.9983187536139505, 0.8213145955009966, 2.1876046059378744, 0.3322311647167003],
        [1.071102441101296, 0.9313022454979188, 2.2824154122303737, 0.34843448130552096],
    ),
}
ORDER = ("IQM", "Median", "Mean", "Optimality Gap")


@pytest.mark.parametrize("name,cut", list(RLIABLE_2000_SEED0))
def test_bbf_intervals_equal_rliables(name, cut):
    point, low, high = RLIABLE_2000_SEED0[(name, cut)]
    ours = stats.aggregate_intervals(_bbf_matrix(name, cut), reps=2000, seed=0)
    for i, metric in enumerate(ORDER):
        assert ours[metric].point == pytest.approx(point[i], abs=1e-12)
        assert ours[metric].low == pytest.approx(low[i], abs=1e-12)
        assert ours[metric].high == pytest.approx(high[i], abs=1e-12)


def test_bbf_iqms_as_published():
    # evaluation.md / issue 15: 0.940 (RR 2), 0.826 (RR 2 without SPR), 1.023 (RR 8, all runs pooled),
    # 1.033 (RR 8 cut to 52 runs per game)
    assert stats.point_estimate(_bbf_matrix("RR2_BBF.csv"), stats.iqm) == pytest.approx(0.940, abs=5e-4)
    assert stats.point_estimate(_bbf_matrix("RR2_BBF-SPR.csv"), stats.iqm) == pytest.approx(0.826, abs=5e-4)
    assert stats.point_estimate(_bbf_matrix("RR8_BBF.csv"), stats.iqm) == pytest.approx(1.023, abs=5e-4)
    assert stats.point_estimate(_bbf_matrix("RR8_BBF.csv", 52), stats.iqm) == pytest.approx(1.033, abs=5e-4)


# rliable create_performance_profile({"x": X}, np.linspace(0, 2, 5), reps=200) after np.random.seed(0).
RLIABLE_PROFILE_RR2 = (
    [0.978021978021978, 0.5879120879120879, 0.4175824175824176, 0.3269230769230769, 0.29945054945054944],
    [0.9697802197802198, 0.5686126373626373, 0.3873626373626374, 0.31037087912087913, 0.2856456043956044],
    [0.989010989010989, 0.6126373626373627, 0.43962912087912087, 0.340728021978022, 0.31600274725274724],
)


def test_performance_profile_equals_rliables():
    profile = stats.performance_profile(
        _bbf_matrix("RR2_BBF.csv"), np.linspace(0.0, 2.0, 5), reps=200, seed=0
    )
    for ours, theirs in zip((profile.point, profile.low, profile.high), RLIABLE_PROFILE_RR2):
        np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="at least one run"):
        stats.aggregate_intervals({"a": []}, reps=10)
    with pytest.raises(ValueError, match="no tasks"):
        stats.aggregate_intervals({}, reps=10)
    with pytest.raises(ValueError, match="reps"):
        stats.aggregate_intervals({"a": [1.0]}, reps=0)
