"""DMC protocol: spaces, action repeat against a raw dm_control env, time limit, pixels, bad input."""

from __future__ import annotations

import ctypes.util
import math
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from plasticrl.envs import PLANET_ACTION_REPEAT, default_action_repeat, dmc_tasks, make_dmc


def _raw_env(domain: str, task: str, seed: int):
    from dm_control import suite

    env = suite.load(domain, task, task_kwargs={"random": seed})
    return env, env.reset()


def _flat(observation) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in observation.values()]).astype(
        np.float32
    )


def test_state_spaces_and_dtypes():
    env = make_dmc("cheetah-run", seed=0)
    assert env.observation_space == gym.spaces.Box(-np.inf, np.inf, (17,), np.float32)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
    obs, _ = env.reset()
    assert obs.shape == (17,) and obs.dtype == np.float32
    obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert obs.dtype == np.float32 and isinstance(reward, float) and not terminated and not truncated


@pytest.mark.parametrize(("task", "repeat"), [("cheetah-run", 4), ("walker-walk", 1), ("quadruped-walk", 2)])
def test_action_repeat_sums_rewards_of_the_raw_env(task, repeat):
    seed = 3
    env = make_dmc(task, seed=seed, action_repeat=repeat)
    obs, _ = env.reset()
    domain, task_name = task.split("-")
    raw, time_step = _raw_env(domain, task_name, seed)
    np.testing.assert_array_equal(obs, _flat(time_step.observation))  # same seed, same initial state
    spec = raw.action_spec()
    rng = np.random.default_rng(0)
    for _ in range(20):
        action = rng.uniform(-1.0, 1.0, size=env.action_space.shape).astype(np.float32)
        obs, reward, *_ = env.step(action)
        # [-1, 1] mapped linearly onto the task's bounds (quadruped's are not symmetric).
        scaled = spec.minimum + (action.astype(np.float64) + 1.0) / 2.0 * (spec.maximum - spec.minimum)
        expected = 0.0
        for _ in range(repeat):
            time_step = raw.step(scaled)
            expected += time_step.reward
        assert reward == pytest.approx(expected, rel=0, abs=1e-12)
        np.testing.assert_array_equal(obs, _flat(time_step.observation))


@pytest.mark.parametrize(("repeat", "steps"), [(8, 125), (3, 334)])
def test_time_limit_is_truncation_not_termination(repeat, steps):
    env = make_dmc("cartpole-swingup", seed=0, action_repeat=repeat)
    env.reset()
    for step in range(1, steps + 1):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated
        assert truncated == (step == steps)
    assert info["episode"]["l"] == steps == math.ceil(1000 / repeat)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(env.action_space.sample())


def test_task_names_are_domain_dash_task():
    tasks = dmc_tasks()
    assert {"cheetah-run", "ball_in_cup-catch", "quadruped-run", "walker-walk"} <= set(tasks)
    assert not any(t.startswith("lqr-") for t in tasks)  # no time limit, unbounded actions


def test_default_action_repeat_depends_on_pixels():
    assert PLANET_ACTION_REPEAT == {
        "cartpole-swingup": 8,
        "reacher-easy": 4,
        "cheetah-run": 4,
        "finger-spin": 2,
        "ball_in_cup-catch": 4,
        "walker-walk": 2,
    }
    assert default_action_repeat("cartpole-swingup", pixels=True) == 8
    assert default_action_repeat("cheetah-run", pixels=True) == 4
    assert default_action_repeat("walker-run", pixels=True) == 2
    assert default_action_repeat("cheetah-run", pixels=False) == 1
    assert make_dmc("cheetah-run", seed=0).unwrapped.action_repeat == 1
    assert make_dmc("ball_in_cup-catch", seed=0, pixels=True).unwrapped.action_repeat == 4


def test_pixel_observations_are_stacked_channels_first_oldest_first():
    env = make_dmc("cartpole-swingup", seed=0, pixels=True)
    assert env.observation_space == gym.spaces.Box(0, 255, (9, 84, 84), np.uint8)
    obs, _ = env.reset()
    assert obs.shape == (9, 84, 84) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs[0:3], obs[6:9])  # the first frame fills the stack (DrQ)
    np.testing.assert_array_equal(obs[3:6], obs[6:9])
    physics = env.unwrapped.physics
    for _ in range(3):
        previous = obs
        obs, *_ = env.step(env.action_space.sample())
        np.testing.assert_array_equal(obs[0:6], previous[3:9])
        newest = physics.render(height=84, width=84, camera_id=0).transpose(2, 0, 1)
        np.testing.assert_array_equal(obs[6:9], newest)
    assert not np.array_equal(obs[6:9], previous[6:9])


def test_pixel_options_camera_size_and_stack():
    env = make_dmc("quadruped-walk", seed=0, pixels=True, frame_stack=2, image_size=64)
    obs, _ = env.reset()
    assert obs.shape == (6, 64, 64)
    physics = env.unwrapped.physics
    np.testing.assert_array_equal(
        obs[3:6], physics.render(height=64, width=64, camera_id=2).transpose(2, 0, 1)
    )
    assert not np.array_equal(obs[3:6], physics.render(height=64, width=64, camera_id=0).transpose(2, 0, 1))


def test_fast_render_settings_and_the_papers_look():
    fast = make_dmc("walker-walk", seed=0, pixels=True, frame_stack=1)
    default = make_dmc("walker-walk", seed=0, pixels=True, frame_stack=1, fast_render=False)
    fast_model, default_model = fast.unwrapped.physics.model, default.unwrapped.physics.model
    assert fast_model.vis.quality.shadowsize == 0 and fast_model.vis.quality.offsamples == 0
    assert fast_model.vis.global_.offwidth == fast_model.vis.global_.offheight == 84
    assert default_model.vis.quality.shadowsize > 0 and default_model.vis.quality.offsamples > 0
    fast_obs, _ = fast.reset()
    default_obs, _ = default.reset()
    np.testing.assert_array_equal(fast.unwrapped.physics.data.qpos, default.unwrapped.physics.data.qpos)
    difference = np.abs(fast_obs.astype(int) - default_obs.astype(int))
    assert difference.max() > 0, "shadows / anti-aliasing off must change the frame"
    assert difference.mean() < 20, "but only slightly"


def test_seeding_is_reproducible():
    env = make_dmc("walker-walk", seed=5)
    first, _ = env.reset()
    env.step(env.action_space.sample())
    np.testing.assert_array_equal(env.reset(seed=5)[0], first)
    np.testing.assert_array_equal(make_dmc("walker-walk", seed=5).reset(seed=5)[0], first)
    assert not np.array_equal(env.reset(seed=6)[0], first)


@pytest.mark.parametrize("pixels", [False, True])
def test_check_env_accepts_both_kinds(pixels):
    check_env(make_dmc("ball_in_cup-catch", seed=0, pixels=pixels), skip_render_check=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task": "cheetah_run"}, ValueError, "Unknown DMC task 'cheetah_run'.*cheetah-run"),
        ({"task": "walker-wlk"}, ValueError, "walker-walk"),
        ({"task": "lqr-lqr_2_1"}, ValueError, "Unknown DMC task"),
        ({"action_repeat": 0}, ValueError, "action_repeat must be >= 1, got 0"),
        ({"frame_stack": 0}, ValueError, "frame_stack must be >= 1, got 0"),
        ({"image_size": 0, "pixels": True}, ValueError, "image_size must be >= 1, got 0"),
        ({"image_size": 84.0}, TypeError, "image_size must be an int"),
        ({"camera_id": 7, "pixels": True}, ValueError, "camera_id 7 does not exist"),
        ({"render_backend": "vulkan"}, ValueError, "render_backend must be one of"),
        ({"pixels": "yes"}, TypeError, "pixels must be a bool"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, error, match):
    args = {"task": "cheetah-run", "seed": 0} | kwargs
    with pytest.raises(error, match=match):
        make_dmc(**args)


def test_bad_action_shape_is_a_clear_error():
    env = make_dmc("cheetah-run", seed=0)
    env.reset()
    with pytest.raises(ValueError, match=r"action must have shape \(6,\), got \(5,\)"):
        env.step(np.zeros(5, dtype=np.float32))


def test_switching_backend_after_dm_control_is_imported_is_a_clear_error():
    make_dmc("cheetah-run", seed=0)  # dm_control is imported with the process's backend (egl in tests)
    from dm_control import _render

    other = "osmesa" if _render.BACKEND != "osmesa" else "egl"
    with pytest.raises(
        RuntimeError, match=f"already chose the MuJoCo rendering backend.*render_backend={other!r}"
    ):
        make_dmc("cheetah-run", seed=0, pixels=True, render_backend=other)


@pytest.mark.skipif(ctypes.util.find_library("OSMesa") is not None, reason="OSMesa is installed here")
def test_missing_render_backend_names_the_fix():
    code = (
        "from plasticrl.envs import make_dmc\n"
        "make_dmc('cartpole-swingup', 0, pixels=True, render_backend='osmesa')\n"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("RuntimeError:") and "apt-get install libosmesa6" in last_line


def test_random_state_round_trip_replays_the_same_episode_start():
    env = make_dmc("cartpole-swingup", seed=3)
    env.reset()
    state = env.unwrapped.random_state()
    first, _ = env.reset()
    second, _ = env.reset()
    assert not np.array_equal(first, second)  # each episode draws a new initial state
    env.unwrapped.set_random_state(state)
    again, _ = env.reset()
    np.testing.assert_array_equal(again, first)


def test_state_only_env_needs_no_gl_library_when_mujoco_gl_is_unset():
    # A machine without libEGL (simulated by hiding it from ctypes): state-only envs switch rendering off
    # instead of importing EGL, and a later pixel env says how to turn rendering on.
    code = (
        "import ctypes.util, os\n"
        "find = ctypes.util.find_library\n"
        "ctypes.util.find_library = lambda name: None if name == 'EGL' else find(name)\n"
        "from plasticrl.envs import make_dmc\n"
        "env = make_dmc('cheetah-run', 0)\n"
        "env.reset(seed=0)\n"
        "env.step(env.action_space.sample())\n"
        "print('MUJOCO_GL=' + os.environ['MUJOCO_GL'])\n"
        "make_dmc('cheetah-run', 0, pixels=True)\n"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120
    )
    assert "MUJOCO_GL=disable" in result.stdout, result.stderr
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("RuntimeError:") and "Set MUJOCO_GL=egl" in last_line
