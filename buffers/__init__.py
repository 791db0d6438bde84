"""Replay storage and sampling shared by every agent, and exact replay-ratio accounting.

- :class:`ReplayBuffer` — single-frame storage for stacked image observations (plain arrays for state
  vectors), per-env rings for vector envs, n-step returns that stop at terminations and bootstrap from
  the final observation at truncations, SPR sequences with episode masks, proportional prioritized
  replay on a vectorised :class:`SumTree`, and exact ``state_dict`` checkpoints.
- :class:`ReplayRatioSchedule` — how many gradient updates to run after each agent step so that after
  N agent steps exactly floor((N - learning_starts) · replay_ratio) updates have run.
"""

from .replay import ReplayBatch, ReplayBuffer
from .replay_ratio import ReplayRatioSchedule, exact_ratio
from .sum_tree import SumTree

__all__ = ["ReplayBatch", "ReplayBuffer", "ReplayRatioSchedule", "SumTree", "exact_ratio"]
