"""The benchmark scripts run end to end and print their figures (tiny settings; the figures themselves
are not asserted: speed targets are checked by reading the scripts' output, not by timed tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, timeout: float = 300) -> str:
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_env_throughput_prints_every_measurement():
    out = run_script(
        "env_throughput.py",
        "--steps-atari", "20", "--steps-dmc-states", "20", "--steps-dmc-pixels", "2",
        "--dmc-state-tasks", "cartpole-swingup",
    )  # fmt: skip
    for row in ("atari single", "atari vector", "dmc states cartpole-swingup", "dmc pixels"):
        assert row in out


def test_agent_throughput_measures_ours_against_the_baseline():
    out = run_script(
        "agent_throughput.py",
        "--part", "all", "--threads", "1", "--rounds", "1", "--sac-updates", "2", "--sac-batch", "8",
        "--drq-batch", "2", "--drq-updates", "1",
        "--atari-parts", "update", "--atari-batch", "2", "--atari-rounds", "1", "--atari-updates", "1",
    )  # fmt: skip
    assert "ratio ours/cleanrl" in out and "DrQ update" in out and "DrQ(eps) update" in out


def test_agent_throughput_drq_atari_part_times_updates_runs_and_evaluations():
    out = run_script(
        "agent_throughput.py",
        "--part", "drq_atari", "--threads", "1", "--atari-batch", "2", "--atari-rounds", "2",
        "--atari-updates", "1", "--atari-run-steps", "120", "--atari-run-learning-starts", "64",
        "--atari-run-ratios", "1", "--atari-run-envs", "2", "--atari-run-log-every", "20",
        "--atari-run-max-frames", "200", "--eval-games", "2", "--eval-max-frames", "200",
    )  # fmt: skip
    expected = (
        "ratio ours/plain-ddqn", "ratio ours-valid/cleanrl", "FLOPs per update", "compute-bound ceilings",
        "replay ratio 1, --num-envs 2", "agent steps/s after learning starts", "max_batch   2",
        "max_batch   1", "scores identical batched and sequential: True",
    )  # fmt: skip
    for line in expected:
        assert line in out


def test_agent_throughput_bbf_part_times_the_update_and_counts_its_flops():
    out = run_script(
        "agent_throughput.py", "--part", "bbf", "--threads", "1", "--atari-batch", "2",
        "--bbf-sizes", "quick", "--bbf-quick-updates", "1",
    )  # fmt: skip
    assert "quick (width 1, hidden 256):" in out and "GFLOP per update" in out


def test_intervention_benchmark_times_every_intervention():
    args = ("--repeats", "1", "--probe-batch", "2", "--update-batch", "2")
    out = run_script("intervention_benchmark.py", *args)
    for row in ("diagnostics pass", "reset head", "shrink & perturb", "hare & tortoise", "L2-init", "ReDo",
                "continual backprop", "plasticity injection"):  # fmt: skip
        assert row in out


@pytest.mark.slow
def test_buffer_benchmark_speed_part():
    out = run_script("buffer_benchmark.py", "--part", "speed", "--threads", "1", timeout=900)
    assert "uniform" in out and "prioritized" in out
