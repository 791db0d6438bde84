"""What the off-policy loop steps: one env (DMC) or a batch of Atari envs, as transitions for the buffer.

Both kinds answer the same questions for :class:`~plasticrl.common.loop.OffPolicyLoop`: the current
observation(s), a uniformly random action, and :meth:`step`, which returns an :class:`EnvStep` — what to
store in the replay buffer, how many real agent steps were taken, and the episodes that ended (their
unclipped return and length, for ``charts/episodic_return``). Both checkpoint their position exactly:

- :class:`SingleEnv` (DMC) saves the task's RNG state at the start of the current episode and the actions
  taken since (:class:`~plasticrl.common.env_state.ResumableEnv`); resuming replays them.
- :class:`AtariEnvs` saves every action taken since the start of the run; resuming rebuilds the seeded
  vector env and replays them (the emulator, the no-op draws and the episode statistics are deterministic
  given the seed), then checks that the observation is the checkpointed one. That costs one env step per
  agent step taken (about a minute for 100k steps), and no emulator state needs to be serialised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from plasticrl.envs import make_atari_vector

from .env_state import ResumableEnv

__all__ = ["AtariEnvs", "EnvStep", "SingleEnv"]


@dataclass
class EnvStep:
    """One step of the training env(s), as the loop stores and counts it.

    ``obs`` … ``truncated`` are the buffer's ``add`` arguments (with an env axis for vector envs):
    ``reward`` is the reward the agent learns from (clipped when asked) and ``terminated`` the learning
    terminal (Atari: a lost life or the game's end). ``skip`` marks envs whose step is not a transition
    (the reset step of next-step autoreset), ``agent_steps`` counts the others, and ``episodes`` lists
    ``(return, length)`` of the games that ended, with the unclipped score.
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray | float
    next_obs: np.ndarray
    terminated: np.ndarray | bool
    truncated: np.ndarray | bool
    skip: np.ndarray | None = None
    agent_steps: int = 1
    episodes: list[tuple[float, float]] = field(default_factory=list)

    def keep_first(self, limit: int) -> None:
        """Count only the first ``limit`` real agent steps (the rest become skipped), so that a vector
        step cannot carry the run past ``--total-steps``."""
        if self.agent_steps <= limit:
            return
        skip = np.zeros(len(self.obs), dtype=bool) if self.skip is None else self.skip.copy()
        real = np.flatnonzero(~skip)
        skip[real[limit:]] = True
        self.skip = skip
        self.agent_steps = limit


class SingleEnv:
    """One gymnasium env (DMC) that resets itself at the end of each episode."""

    num_envs = 1

    def __init__(self, env: gym.Env):
        self.resumable = ResumableEnv(env)
        space = env.action_space
        self._low = np.asarray(space.low, dtype=np.float32)
        self._high = np.asarray(space.high, dtype=np.float32)

    @property
    def obs(self) -> np.ndarray:
        return self.resumable.obs

    @property
    def episodes(self) -> int:
        return self.resumable.episodes

    def reset(self) -> None:
        self.resumable.reset()

    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        """Uniform in the action box (all references warm up this way)."""
        return rng.uniform(self._low, self._high).astype(np.float32)

    def step(self, action: np.ndarray) -> EnvStep:
        obs = self.resumable.obs
        next_obs, reward, terminated, truncated, info = self.resumable.step(action)
        episodes = []
        if terminated or truncated:
            episode = info.get("episode", {})
            episodes.append(
                (float(np.asarray(episode.get("r", np.nan))), float(np.asarray(episode.get("l", np.nan))))
            )
            self.resumable.episodes += 1
            self.resumable.reset()
        return EnvStep(obs, action, reward, next_obs, terminated, truncated, None, 1, episodes)

    def state_dict(self) -> dict[str, Any]:
        return self.resumable.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.resumable.load_state_dict(state)


class AtariEnvs:
    """``num_envs`` Atari games with the Atari-100k protocol, stepped together (ale-py's vector env).

    Life loss is the learning terminal while the game goes on (Dopamine's ``terminal_on_life_loss``, which
    DrQ(ε) and BBF train with); rewards are clipped to [−1, 1] for learning when ``clip_rewards`` (Mnih et
    al. 2015; Dopamine's runner); episode returns stay the unclipped game score over whole games. The env
    autoresets on the step after a game ends: that step is marked ``skip`` (not a transition, not an agent
    step). Under that scheme the buffer gets ``skip=`` rather than ``autoreset_mode="next_step"``, whose
    check would take a life loss passed as ``terminated`` for a game's end and drop the next real step.

    Build it with :meth:`make` (``AtariEnvs.make("Pong", num_envs, seed)``); the constructor takes any vector
    env that reports ``info["life_loss"]`` and autoresets on the next step (tests pass scripted ones).

    Args:
        env: the vector env (:func:`plasticrl.envs.make_atari_vector`).
        seed: reset seed (game i gets ``seed + i``), again when a resume replays the run.
        clip_rewards: learn from rewards clipped to [−1, 1] (the logged returns are never clipped).
    """

    def __init__(self, env: Any, seed: int, *, clip_rewards: bool = True):
        self.env = env
        self.seed = int(seed)
        self.num_envs = int(env.num_envs)
        self.num_actions = int(env.single_action_space.n)
        self.clip_rewards = bool(clip_rewards)
        self.obs: np.ndarray | None = None
        self.episodes = 0
        self._actions: list[np.ndarray] = []
        self._done = np.zeros(self.num_envs, dtype=bool)

    @classmethod
    def make(
        cls, game: str, num_envs: int, seed: int, *, clip_rewards: bool = True, **protocol: Any
    ) -> AtariEnvs:
        """``num_envs`` games of ``game``; ``protocol``: further :func:`plasticrl.envs.make_atari_vector`
        options (``sticky_actions``, ``max_episode_frames``, ...)."""
        return cls(make_atari_vector(game, num_envs, seed, **protocol), seed, clip_rewards=clip_rewards)

    def reset(self) -> None:
        """Start every game from the seeded initial state (only at the start of a run)."""
        self.obs, _ = self.env.reset(seed=self.seed)
        self._done[:] = False
        self._actions = []
        self.episodes = 0

    def random_action(self, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.num_actions, size=self.num_envs)

    def step(self, action: np.ndarray) -> EnvStep:
        action = np.asarray(action).reshape(self.num_envs)
        obs = self.obs
        next_obs, reward, terminated, truncated, info = self.env.step(action.astype(np.int64))
        self._actions.append(action.astype(np.uint8))
        skip = self._done  # these envs were reset by this step: not a transition
        self._done = terminated | truncated
        episodes = []
        ended = info.get("_episode", np.zeros(self.num_envs, dtype=bool)) & ~skip
        for i in np.flatnonzero(ended):
            episodes.append((float(info["episode"]["r"][i]), float(info["episode"]["l"][i])))
        self.episodes += len(episodes)
        self.obs = next_obs
        learn_reward = np.clip(reward, -1.0, 1.0) if self.clip_rewards else reward
        return EnvStep(
            obs,
            action,
            learn_reward.astype(np.float32),
            next_obs,
            info["life_loss"] | terminated,
            truncated,
            skip,
            int((~skip).sum()),
            episodes,
        )

    def state_dict(self) -> dict[str, Any]:
        """Every action since the start (uint8 tensor, steps × envs), the episode count and the current
        observation (checked after the replay on resume)."""
        actions = np.stack(self._actions) if self._actions else np.zeros((0, self.num_envs), dtype=np.uint8)
        return {
            "actions": torch.from_numpy(actions),
            "episodes": self.episodes,
            "obs": torch.from_numpy(np.ascontiguousarray(self.obs)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Reset to the seeded start and replay the checkpointed actions."""
        self.reset()
        for action in state["actions"].numpy():
            self.step(action)
        if not np.array_equal(self.obs, state["obs"].numpy()):
            raise RuntimeError(
                "replaying the checkpointed actions did not reach the checkpointed observation: the Atari "
                "env is not the same (game, seed, protocol flags or ale-py version differ)"
            )
        self.episodes = int(state["episodes"])
