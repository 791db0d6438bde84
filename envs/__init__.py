"""plasticrl.envs: environment factories with the published protocols.

- :func:`make_atari` / :func:`make_atari_vector`: Atari-100k (frame skip 4 + max-pool, 84×84 gray,
  4-frame stack, ≤30 no-ops, 108k-frame cap, minimal actions, life loss in ``info["life_loss"]``).
- :func:`make_dmc`: DeepMind Control Suite tasks by ``domain-task`` name, states or stacked pixels.
- :func:`atari_human_normalized_score`, :data:`ATARI_100K_GAMES`, :func:`load_atari_scores`.

dm_control is imported only when :func:`make_dmc` is first called, after it has set the rendering
backend (``MUJOCO_GL``), so importing this package does not fix the backend.
"""

from plasticrl.envs.atari import (
    ATARI_100K_GAMES,
    AtariGameScores,
    atari_human_normalized_score,
    load_atari_scores,
    make_atari,
    make_atari_vector,
    resolve_atari_game,
)
from plasticrl.envs.dmc import PLANET_ACTION_REPEAT, default_action_repeat, dmc_tasks, make_dmc

__all__ = [
    "ATARI_100K_GAMES",
    "PLANET_ACTION_REPEAT",
    "AtariGameScores",
    "atari_human_normalized_score",
    "default_action_repeat",
    "dmc_tasks",
    "load_atari_scores",
    "make_atari",
    "make_atari_vector",
    "make_dmc",
    "resolve_atari_game",
]
