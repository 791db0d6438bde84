"""Training and evaluation envs whose position can be checkpointed.

- :func:`env_rng_state` / :func:`set_env_rng_state` — the RNG states that decide an env's next episodes.
- :class:`ResumableEnv` — a training env whose position is the task's RNG state at the start of the current
  episode and the actions taken since. Resuming replays those actions (MuJoCo is deterministic), so a run
  resumed mid-episode continues exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

__all__ = ["ResumableEnv", "env_rng_state", "set_env_rng_state"]


def env_rng_state(env: gym.Env) -> dict[str, Any]:
    """The RNG states that decide an env's next episodes (a DMC task's RNG, gymnasium's np_random)."""
    state: dict[str, Any] = {}
    if hasattr(env.unwrapped, "random_state"):  # plasticrl.envs.DMCEnv
        state["task"] = env.unwrapped.random_state()
    generator = getattr(env.unwrapped, "_np_random", None)
    if generator is not None:
        state["np_random"] = generator.bit_generator.state
    return state


def set_env_rng_state(env: gym.Env, state: Mapping[str, Any]) -> None:
    """Restore :func:`env_rng_state`."""
    if "task" in state:
        if not hasattr(env.unwrapped, "set_random_state"):
            raise ValueError("checkpoint holds a DMC task RNG state but this env is not a plasticrl DMC env")
        env.unwrapped.set_random_state(state["task"])
    if "np_random" in state:
        generator = env.unwrapped.np_random
        generator.bit_generator.state = state["np_random"]


class ResumableEnv:
    """A training env whose position can be saved: episode-start RNG state plus the actions since.

    :meth:`load_state_dict` restores the RNG, resets and replays the actions, which reproduces the
    episode exactly (MuJoCo and the suite are deterministic), so resuming mid-episode is exact.
    """

    def __init__(self, env: gym.Env):
        self.env = env
        self.obs: np.ndarray | None = None
        self.episodes = 0
        self._start_state: dict[str, Any] | None = None
        self._actions: list[np.ndarray] = []

    def reset(self) -> np.ndarray:
        """Start the next episode; returns its first observation."""
        self._start_state = env_rng_state(self.env)
        self._actions = []
        self.obs, _ = self.env.reset()
        return self.obs

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Step the env; the action is recorded for replay. Does not reset at the end of an episode."""
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        self._actions.append(np.array(action, copy=True))
        self.obs = next_obs
        return next_obs, float(reward), bool(terminated), bool(truncated), info

    def state_dict(self) -> dict[str, Any]:
        """Episode start RNG state, the actions of the current episode (a tensor), the episode count."""
        actions = np.stack(self._actions) if self._actions else np.zeros((0,), dtype=np.float32)
        return {"start": self._start_state, "actions": torch.from_numpy(actions), "episodes": self.episodes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the RNG, reset and replay the saved actions."""
        set_env_rng_state(self.env, state["start"])
        self.reset()
        actions = state["actions"]
        for action in actions.numpy() if isinstance(actions, torch.Tensor) else actions:
            _, _, terminated, truncated, _ = self.step(action)
            if terminated or truncated:
                raise RuntimeError(
                    "replaying the checkpointed episode ended it early: the env is not the same"
                )
        self.episodes = int(state["episodes"])

