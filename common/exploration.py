"""ε-greedy exploration for the discrete-action agents (DrQ(ε), BBF)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["epsilon_greedy", "linearly_decaying_epsilon"]


def linearly_decaying_epsilon(step: int, warmup_steps: int, decay_period: int, final_epsilon: float) -> float:
    """Dopamine's ``dqn_agent.linearly_decaying_epsilon``: ε is 1 until agent step ``warmup_steps``, then
    falls linearly to ``final_epsilon``, which it reaches at ``warmup_steps + decay_period`` and keeps.

    ``step`` is the number of agent steps taken before the action (Dopamine's ``training_steps``). DrQ(ε):
    warm-up 1,600, decay 5,000, final 0.01 (1 until step 1,600, 0.01 from step 6,600); BBF: 2,000, 2,001, 0.
    """
    steps_left = decay_period + warmup_steps - step
    bonus = (1.0 - final_epsilon) * steps_left / decay_period
    return float(final_epsilon + np.clip(bonus, 0.0, 1.0 - final_epsilon))


def epsilon_greedy(
    greedy: Callable[[], np.ndarray], epsilon: float, num_actions: int, rng: np.random.Generator, size: int
) -> np.ndarray:
    """``size`` actions: uniform among ``num_actions`` with probability ε each, else ``greedy()`` (called
    only when at least one action is greedy). Draws the same random numbers whatever ε is, so a run's
    random stream does not depend on the schedule."""
    explore = rng.random(size) < epsilon
    random_actions = rng.integers(num_actions, size=size)
    if explore.all():
        return random_actions
    return np.where(explore, random_actions, np.asarray(greedy()).reshape(size))
