"""Evaluation of a policy on full episodes of a separate env."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

__all__ = ["evaluate"]


def evaluate(
    policy: Callable[[np.ndarray], np.ndarray],
    env: gym.Env,
    episodes: int,
    should_stop: Callable[[], bool] | None = None,
) -> list[float] | None:
    """Returns of ``episodes`` full episodes of ``policy`` (obs → action) on ``env``.

    ``should_stop`` is asked before every env step; when it says yes the evaluation is abandoned and
    None is returned (a stop signal should not wait for ten pixel episodes).
    """
    returns = []
    for _ in range(episodes):
        obs, _ = env.reset()
        total, done = 0.0, False
        while not done:
            if should_stop is not None and should_stop():
                return None
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = bool(terminated or truncated)
        returns.append(total)
    return returns

