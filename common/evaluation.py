"""Evaluation of a policy on full episodes of separate envs.

- :func:`evaluate` — full episodes of a policy, one after another, on one env.
- :class:`EpisodeEvaluator` — :func:`evaluate` on a separate env whose RNG state is checkpointed (DMC).
- :class:`AtariEvaluator` — BBF's Atari-100k protocol, all games of an evaluation in one vector env.

An evaluator is called as ``evaluator(step, episodes, should_stop)`` and returns the episodes' returns, or
None when ``should_stop()`` said yes (a signal: the run checkpoints and redoes the evaluation on resume).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from .env_state import env_rng_state, set_env_rng_state

__all__ = ["AtariEvaluator", "EpisodeEvaluator", "evaluate"]


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



class EpisodeEvaluator:
    """:func:`evaluate` on one separate env whose RNG state is checkpointed (the DMC agents).

    A signal during an evaluation (``should_stop``) abandons it and puts the env's RNG back where it was,
    so the resumed run plays the very same episodes.
    """

    def __init__(self, policy: Callable[[np.ndarray], np.ndarray], env: gym.Env):
        self.policy = policy
        self.env = env

    def __call__(self, step: int, episodes: int, should_stop: Callable[[], bool] | None = None):
        start = env_rng_state(self.env)
        returns = evaluate(self.policy, self.env, episodes, should_stop)
        if returns is None:
            set_env_rng_state(self.env, start)
        return returns

    def state_dict(self) -> dict[str, Any]:
        return env_rng_state(self.env)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        set_env_rng_state(self.env, state)


class AtariEvaluator:
    """BBF's Atari-100k evaluation: whole games of an ε-greedy policy (ε 0.001), at most 27,000 agent steps
    (the env's 108k-frame cap), unclipped scores; the games of one evaluation are played side by side in
    one vector env, so each step is one batched forward for every game still running.

    Game ``i`` of the evaluation at agent step ``s`` starts from the seed drawn from ``(seed, s, i)`` and
    draws its ε coin flips and random actions from its own generator, also from ``(seed, s, i)``. So the
    scores do not depend on how many games run at once (``max_batch``; 1 plays them one after another), and
    a resumed run evaluates exactly as an uninterrupted one; nothing needs checkpointing.

    Args:
        game: the Atari game.
        seed: the run's seed (the evaluation's streams are derived from it, apart from training's).
        q_values: ``obs (B, 4, 84, 84) uint8 → (B, actions)`` Q-values (or any scores to argmax).
        epsilon: the evaluation ε (0.001: Dopamine's ``epsilon_eval`` for DrQ(ε) and BBF).
        max_batch: at most this many games at once.
        protocol: the training env's :func:`plasticrl.envs.make_atari_vector` options (sticky actions, ...).
    """

    def __init__(
        self,
        game: str,
        seed: int,
        q_values: Callable[[np.ndarray], np.ndarray],
        *,
        epsilon: float = 0.001,
        max_batch: int = 100,
        **protocol: Any,
    ):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"the evaluation epsilon must be in [0, 1], got {epsilon}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        self.game = game
        self.seed = int(seed)
        self.q_values = q_values
        self.epsilon = float(epsilon)
        self.max_batch = max_batch
        self.protocol = protocol
        self._envs: dict[int, Any] = {}

    def __call__(self, step: int, episodes: int, should_stop: Callable[[], bool] | None = None):
        """Scores of games 0 … ``episodes`` − 1 of the evaluation at agent step ``step`` (None if stopped)."""
        returns: list[float] = []
        for first in range(0, episodes, self.max_batch):
            indices = list(range(first, min(first + self.max_batch, episodes)))
            scores = self._play(step, indices, should_stop)
            if scores is None:
                return None
            returns.extend(scores)
        return returns

    def _env(self, size: int):
        from plasticrl.envs import make_atari_vector  # deferred: ale-py is only needed for Atari runs

        if size not in self._envs:
            self._envs[size] = make_atari_vector(self.game, size, self.seed, **self.protocol)
        return self._envs[size]

    def _streams(self, step: int, game: int) -> list[np.random.SeedSequence]:
        return np.random.SeedSequence([self.seed, step, game]).spawn(2)

    def game_seed(self, step: int, game: int) -> int:
        """The emulator seed of game ``game`` of the evaluation at agent step ``step``."""
        return int(self._streams(step, game)[0].generate_state(1)[0] % 2**31)

    def _play(self, step: int, indices: list[int], should_stop: Callable[[], bool] | None):
        env = self._env(len(indices))
        seeds = np.array([self.game_seed(step, i) for i in indices], dtype=np.int64)
        rngs = [np.random.default_rng(self._streams(step, i)[1]) for i in indices]
        obs, _ = env.reset(seed=seeds)
        num_actions = int(env.single_action_space.n)
        running = np.ones(len(indices), dtype=bool)
        scores = np.zeros(len(indices))
        while running.any():
            if should_stop is not None and should_stop():
                return None
            playing = np.flatnonzero(running)
            actions = np.zeros(len(indices), dtype=np.int64)
            actions[playing] = np.asarray(self.q_values(obs[playing])).argmax(axis=1)
            for j in playing:
                if rngs[j].random() < self.epsilon:
                    actions[j] = rngs[j].integers(num_actions)
            obs, reward, terminated, truncated, _ = env.step(actions)
            scores[playing] += reward[playing]
            running &= ~(terminated | truncated)
        return scores.tolist()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"the Atari evaluation keeps no state, the checkpoint has {sorted(state)}")
