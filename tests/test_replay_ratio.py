"""ReplayRatioSchedule: updates after N agent steps == floor((N - learning_starts) * ratio), exactly."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from plasticrl.buffers import ReplayRatioSchedule

RATIOS = {0.25: (1, 4), 0.5: (1, 2), 1: (1, 1), 2: (2, 1), 8: (8, 1), 32: (32, 1)}


def expected_updates(agent_steps: int, learning_starts: int, numerator: int, denominator: int) -> int:
    """Integer-only reference: floor((N - start) * p / q), 0 before learning starts."""
    return max(0, (agent_steps - learning_starts) * numerator // denominator)


@pytest.mark.parametrize("ratio", list(RATIOS))
@pytest.mark.parametrize("num_envs, learning_starts", [(1, 0), (1, 1600), (2, 2001), (3, 1000), (8, 5)])
def test_cumulative_updates_are_exact_over_a_long_horizon(ratio, num_envs, learning_starts):
    numerator, denominator = RATIOS[ratio]
    schedule = ReplayRatioSchedule(ratio, learning_starts=learning_starts, num_envs=num_envs)
    updates_run = 0
    for call in range(1, 12_001):
        due = schedule.step()
        assert due >= 0
        updates_run += due
        agent_steps = call * num_envs
        assert updates_run == expected_updates(agent_steps, learning_starts, numerator, denominator)
    assert schedule.agent_steps == 12_000 * num_envs
    assert schedule.updates_done == updates_run
    # Spot values a reader can check by hand.
    if (ratio, num_envs, learning_starts) == (0.25, 1, 0):
        assert updates_run == 3000
    if (ratio, num_envs, learning_starts) == (32, 2, 2001):
        assert updates_run == (24_000 - 2001) * 32


def test_fractional_ratios_spread_updates_evenly():
    schedule = ReplayRatioSchedule(0.25, learning_starts=0)
    assert [schedule.step() for _ in range(8)] == [0, 0, 0, 1, 0, 0, 0, 1]
    schedule = ReplayRatioSchedule(0.5, learning_starts=3, num_envs=3)
    # N = 3, 6, 9, 12 -> floor((N - 3) / 2) = 0, 1, 3, 4
    assert [schedule.step() for _ in range(4)] == [0, 1, 2, 1]
    schedule = ReplayRatioSchedule(8, learning_starts=2)
    assert [schedule.step() for _ in range(4)] == [0, 0, 8, 8]


@pytest.mark.parametrize(
    "ratio, exact",
    [(0.1, Fraction(1, 10)), (0.3, Fraction(3, 10)), (1.5, Fraction(3, 2)), ("1/3", Fraction(1, 3)),
     (Fraction(2, 3), Fraction(2, 3)), (np.float64(0.2), Fraction(1, 5)), (np.int64(4), Fraction(4)),
     (np.float32(0.1), Fraction(1, 10)), (np.float32(0.3), Fraction(3, 10)),
     (np.float32(0.25), Fraction(1, 4)), (np.float16(0.1), Fraction(1, 10)), (np.float32(32), Fraction(32))],
)  # fmt: skip
def test_decimal_ratios_have_no_float_drift(ratio, exact):
    """0.3 * 10 steps is 3 updates (the binary float 0.3 would give floor(2.9999...) = 2)."""
    schedule = ReplayRatioSchedule(ratio, learning_starts=7, num_envs=2)
    assert schedule.ratio == exact
    total = 0
    for call in range(1, 3001):
        total += schedule.step()
        steps = 2 * call
        assert total == expected_updates(steps, 7, exact.numerator, exact.denominator)


@pytest.mark.parametrize(
    "ratio, exact", [(0.25, Fraction(1, 4)), (2, Fraction(2)), (np.float32(0.1), Fraction(1, 10))]
)
def test_next_step_autoreset_counts_only_real_agent_steps(ratio, exact):
    """Under next-step autoreset the step after each env's done is a reset, not an agent step:
    step(int((~skip).sum())) keeps updates == floor((real steps - learning_starts) * ratio) exactly."""
    rng = np.random.default_rng(3)
    num_envs, learning_starts = 4, 50
    assert ReplayRatioSchedule(ratio).ratio == exact
    schedule = ReplayRatioSchedule(ratio, learning_starts=learning_starts, num_envs=num_envs)
    skip = np.zeros(num_envs, dtype=bool)
    real_steps = updates = 0
    for _ in range(5000):
        real = int((~skip).sum())
        real_steps += real
        updates += schedule.step(real)
        assert (
            updates
            == schedule.updates_done
            == expected_updates(real_steps, learning_starts, exact.numerator, exact.denominator)
        )
        done = ~skip & (rng.random(num_envs) < 0.1)  # episodes end at random, different times
        skip = done  # the next call is those envs' reset step
    assert schedule.agent_steps == real_steps < 5000 * num_envs
    with_default = ReplayRatioSchedule(ratio, learning_starts=learning_starts, num_envs=num_envs)
    for _ in range(5000):
        with_default.step()
    assert with_default.agent_steps == 5000 * num_envs  # without the argument every env counts
    assert schedule.step(np.int64(0)) == 0  # NumPy ints (e.g. (~skip).sum()) are accepted


def test_million_step_horizon_with_uneven_step_sizes():
    rng = np.random.default_rng(0)
    schedule = ReplayRatioSchedule(0.3, learning_starts=1600)
    steps, total = 0, 0
    while steps < 1_000_000:
        chunk = int(rng.integers(0, 5000))
        steps += chunk
        total += schedule.step(chunk)
    assert total == (steps - 1600) * 3 // 10 == schedule.updates_after(steps)


def test_state_dict_round_trip_continues_the_same_counts():
    schedule = ReplayRatioSchedule(0.25, learning_starts=10, num_envs=2)
    for _ in range(13):
        schedule.step()
    state = schedule.state_dict()
    restored = ReplayRatioSchedule(0.25, learning_starts=10, num_envs=2)
    restored.load_state_dict(state)
    assert [schedule.step() for _ in range(50)] == [restored.step() for _ in range(50)]
    assert restored.updates_done == schedule.updates_done == (126 - 10) // 4
    with pytest.raises(ValueError, match="settings differ"):
        ReplayRatioSchedule(0.5, learning_starts=10).load_state_dict(state)


@pytest.mark.parametrize("bad", [0, -1, 0.0, -0.25, float("nan"), float("inf"), "fast", True])
def test_bad_ratio_raises(bad):
    with pytest.raises((ValueError, TypeError), match="replay_ratio"):
        ReplayRatioSchedule(bad)


def test_bad_counts_raise():
    with pytest.raises(ValueError, match="learning_starts"):
        ReplayRatioSchedule(1, learning_starts=-1)
    with pytest.raises(ValueError, match="num_envs"):
        ReplayRatioSchedule(1, num_envs=0)
    with pytest.raises(ValueError, match="num_steps"):
        ReplayRatioSchedule(1).step(-3)
    with pytest.raises(ValueError, match="num_steps"):
        ReplayRatioSchedule(1).step(1.5)
    with pytest.raises(ValueError, match="num_steps"):
        ReplayRatioSchedule(1).step(True)
