"""One replay buffer for every agent: single-frame storage, n-step returns, SPR sequences, priorities.

Storage
-------
Each parallel environment has its own ring of ``capacity // num_envs`` transitions and its own ring of
single frames. A *frame* is the newest slice of a stacked observation along its first axis:
``obs[-C/k:]`` for an observation with ``C`` leading channels and frame stack ``k`` (Atari (4, 84, 84):
one 84×84 frame; DMC pixels (9, 84, 84), k=3: one 3×84×84 RGB frame; flat state vectors, k=1: the
whole vector). Within an episode the frames are written contiguously, so the stacked observation of
every step is the window of ``k`` frames ending at a stored pointer, and its next observation is the
window one frame later:

- at an episode start, the ``k`` frames of the first observation exactly as the env returned them
  (zero padding, repeated reset frames, whatever it is) — unless they equal the previous transition's
  next observation (life loss passed as ``terminated`` while the env plays on), which is then shared;
- after every step, the newest frame of ``next_obs``; for the step that ends an episode this is the
  frame of the true final observation, which truncated n-step windows bootstrap from.

So 100k Atari steps hold ~100k frames (705.6 MB) instead of 2×100k stacks of four. The frame ring has
``ceil(start_frame_reserve · capacity_per_env) + k`` slots more than the transition ring to hold the
extra ``k`` frames of each episode start; if episodes are so short that even this fills up, the oldest
transitions whose frames were overwritten are dropped (``len()`` reports what is really kept) and a
warning, once per buffer, names the ``start_frame_reserve`` that would keep the full capacity.

What ``add`` expects
--------------------
``add(obs, action, reward, next_obs, terminated, truncated)`` takes the arrays the env returned, with
a leading env axis when ``num_envs > 1`` (optional when ``num_envs == 1``). ``next_obs`` must be the
observation that *follows* ``obs``; for the step that ends an episode it is the true final observation.
The first ``add`` after a done (per env) starts a new episode, and its ``obs`` is that episode's first
observation. Gymnasium's two autoreset modes (``ale_py.AtariVectorEnv`` behaves the same way; checked
on ale-py 0.12.1):

- same-step (``autoreset_mode="SameStep"``): the step that ends an episode returns the *reset*
  observation and puts the final one in ``info["final_obs"]``: pass ``next_obs`` with the done envs'
  rows replaced by ``info["final_obs"]``, then continue from the returned (reset) observation;
- next-step (the default of gymnasium 1.x vector envs and of ``AtariVectorEnv``): the done step returns
  the final observation itself; the *following* step returns the reset observation with reward 0 and
  no done flag, and is not a transition. Either build the buffer with ``autoreset_mode="next_step"``
  and pass every step exactly as the env returned it (the buffer drops each env's step after its done
  by itself), or pass ``skip=`` the envs that were done on the previous step (``terminated | truncated``
  as the env reported them); nothing is stored for skipped envs.

``autoreset_mode`` (constructor): ``None`` (default) stores every step not in ``skip``;
``"next_step"`` also skips, per env, the step after a done (the done flags must be the env's own: a
life loss passed as ``terminated`` would make it drop a real step) and checks that its ``obs`` is that
done's final observation; ``"same_step"`` declares that the step after a done is always a real
transition (same-step or manual resets, or a life loss passed as ``terminated``), which turns off the
``k = 1`` guard below. Gymnasium's spellings (``"NextStep"``, ``"SameStep"``, ``"Disabled"`` — the last
meaning same-step — and ``gymnasium.vector.AutoresetMode`` members) are accepted.

Three checks catch a wrong loop early: within an episode ``obs`` must equal the previous ``next_obs``
of that env; with ``k > 1`` the older ``k-1`` frames of ``next_obs`` must equal the newer ``k-1``
frames of ``obs`` (a reset observation passed as ``next_obs`` fails it); and with ``k = 1``,
``autoreset_mode=None`` and no ``skip=``, an add that follows a done and whose ``obs`` equals that
done's ``next_obs`` raises (it is next-step autoreset's reset step, which would otherwise be stored as
a bogus final→reset transition with reward 0). If such a step is genuine (a life loss passed as
``terminated`` on a single-frame env), build the buffer with ``autoreset_mode="same_step"``.

Sampling
--------
``sample(batch_size, n_step, gamma, sequence_length)`` draws transitions ``t`` (uniformly, or in
proportion to priority^α) among those whose whole window is stored. With ``d`` the number of steps from
``t`` to its episode's end (inclusive; infinite while the episode goes on) and ``k = min(n_step, d)``:
``reward = Σ_{j<k} γ^j r_{t+j}``, ``discount = γ^k`` or 0 if the window ended in a termination,
``next_obs`` = the observation after step ``t+k-1`` (the final observation after a truncation). A step
that is both terminated and truncated counts as terminated. Sequence fields for SPR, ``j = 0..K-1``:
``future_action[:, j] = a_{t+j}``, ``future_reward[:, j] = r_{t+j}``, ``future_obs[:, j] = o_{t+j+1}``
(the observation after action ``a_{t+j}``), ``future_mask[:, j] = 1`` iff step ``t+j`` belongs to the
episode of ``t`` (no done among steps ``t..t+j-1``); masked entries are zero. So when step ``t+j`` is
the episode's done step its entry is kept (mask 1) with ``future_obs[:, j]`` the true final observation
``o_{t+j+1}``, which this buffer stores, and every later entry has mask 0. Dopamine-based SPR/BBF
code masks that last target as well, because its replay does not store final observations; their mask
is ours shifted by one step (sample ``sequence_length=K+1`` and use ``future_mask[:, 1:]`` to get it).
A transition is sampled only if every step its window needs (``min(max(n_step, K), d)`` steps) has
been added, so no window, stack or sequence mixes two episodes, reads past the newest step, or reads
overwritten data.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from numbers import Integral, Real

import numpy as np
import torch
from gymnasium import spaces

from .sum_tree import SumTree

# Dopamine's prioritized replay as used by BBF (google-research bigger_better_faster/bbf/agents/spr_agent.py,
# `_training_step_update`): priorities are set to sqrt(loss + 1e-10), i.e. our α = 0.5 applied to the loss
# the agent passes, and loss weights are 1/sqrt(P) normalised by the batch maximum, i.e. our β = 0.5 (the
# comment there reports that on five games a fixed 0.5 beat the 0.4 -> 1 schedule, except on Pong).
# Schaul et al. (2016) use α 0.6 and β annealed 0.4 -> 1 for proportional prioritization.
DEFAULT_PRIORITY_EXPONENT = 0.5
DEFAULT_IMPORTANCE_EXPONENT = 0.5
# Dopamine's sum tree starts its running maximum priority at 1.0 (`max_recorded_priority`).
INITIAL_MAX_PRIORITY = 1.0


@dataclass
class ReplayBatch:
    """A sampled batch. Arrays are NumPy, or torch tensors when ``sample`` got a device.

    Attributes (B = batch size, K = sequence length):
        obs: (B, *obs_shape) the stacked observation exactly as the env returned it (dtype of the space).
        action: (B, *action_shape) int64 for Discrete, the Box dtype (float32) for Box.
        reward: (B,) float32 discounted n-step return.
        discount: (B,) float32 γ^k for the k steps taken, 0 if the window ended in a termination.
        next_obs: (B, *obs_shape) the observation k steps later.
        n_steps: (B,) int64 the k steps actually taken (≤ n_step; shorter at an episode end).
        indices: (B,) int64 transition ids for :meth:`ReplayBuffer.update_priorities`.
        weights: (B,) float32 importance weights (ones for uniform sampling).
        future_obs: (B, K, *obs_shape) o_{t+1}..o_{t+K}, or None without a sequence.
        future_action: (B, K, *action_shape) a_t..a_{t+K-1}, or None.
        future_reward: (B, K) float32 r_t..r_{t+K-1}, or None.
        future_mask: (B, K) float32, 1 where step t+j is in the episode of t, or None. The entry of
            the episode's done step is 1 (its future_obs is the stored true final observation
            o_{t+j+1}); entries after it are 0 (and their future fields zero). Dopamine-based SPR/BBF
            code, which stores no final observations, masks that done-step target too: its mask is
            ``future_mask[:, 1:]`` of a batch sampled with ``sequence_length=K+1``.
    """

    obs: np.ndarray | torch.Tensor
    action: np.ndarray | torch.Tensor
    reward: np.ndarray | torch.Tensor
    discount: np.ndarray | torch.Tensor
    next_obs: np.ndarray | torch.Tensor
    n_steps: np.ndarray | torch.Tensor
    indices: np.ndarray | torch.Tensor
    weights: np.ndarray | torch.Tensor
    future_obs: np.ndarray | torch.Tensor | None = None
    future_action: np.ndarray | torch.Tensor | None = None
    future_reward: np.ndarray | torch.Tensor | None = None
    future_mask: np.ndarray | torch.Tensor | None = None

    def to(self, device: str | torch.device) -> ReplayBatch:
        """A copy with every array as a torch tensor on ``device`` (dtypes kept; uint8 stays uint8)."""
        device = torch.device(device)
        converted = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                value = torch.as_tensor(value).to(device, non_blocking=device.type == "cuda")
            converted[field.name] = value
        return ReplayBatch(**converted)


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


AUTORESET_MODES = ("next_step", "same_step")
_AUTORESET_SPELLINGS = {
    "next_step": "next_step",
    "nextstep": "next_step",
    "same_step": "same_step",
    "samestep": "same_step",
    "disabled": "same_step",  # manual resets: the step after a done starts the next episode
}


def _autoreset_mode(value) -> str | None:
    """``None``, ``"next_step"`` or ``"same_step"`` from our or gymnasium's spellings (AutoresetMode too)."""
    if value is None:
        return None
    name = getattr(value, "value", value)  # gymnasium.vector.AutoresetMode is an Enum of strings
    mode = _AUTORESET_SPELLINGS.get(name.lower()) if isinstance(name, str) else None
    if mode is None:
        raise ValueError(
            f"autoreset_mode must be None, 'next_step' or 'same_step' (or gymnasium's 'NextStep', "
            f"'SameStep', 'Disabled'), got {value!r}"
        )
    return mode


def _is_finite_nonnegative(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and 0 <= value < math.inf


class ReplayBuffer:
    """Replay storage and sampling shared by SAC, DrQ, DrQ(ε) and BBF (see the module docstring).

    Args:
        capacity: transitions kept over all envs; each env keeps ``capacity // num_envs``.
        observation_space: the *single* env's Box observation space (a stacked one with frame_stack > 1).
        action_space: the single env's Discrete or Box action space.
        frame_stack: frames stacked along the first observation axis by the env (k), oldest first.
        num_envs: parallel envs passed together to ``add``.
        prioritized: proportional prioritized replay (sum tree) instead of uniform sampling.
        priority_exponent: α, sampling probability ∝ priority^α.
        importance_exponent: β, importance weights (1 / (N·P(i)))^β normalised by the batch maximum.
            An attribute: agents that anneal β set it between calls.
        start_frame_reserve: extra frame slots, as a fraction of the per-env capacity, for the ``k``
            frames stored at each episode start (0.05 covers episodes averaging ≥ 20·k steps). If
            episodes are shorter, the oldest transitions are dropped (``len() < capacity``) and a
            warning, once, says which reserve would have been enough.
        autoreset_mode: how the env resets after a done (see "What ``add`` expects" in the module
            docstring). ``None`` (default): every step not passed in ``skip=`` is a transition; with
            ``frame_stack=1`` an add that follows a done with ``obs`` equal to that done's ``next_obs``
            and no ``skip=`` raises, as it is next-step autoreset's reset step. ``"next_step"``
            (gymnasium 1.x vector envs, ``ale_py.AtariVectorEnv``): pass every step exactly as the env
            returned it; the step of each env after its done is dropped by the buffer (``skip=`` still
            works and may be combined). ``"same_step"``: the step after a done is always a real
            transition (same-step or manual resets, life loss passed as ``terminated``); no guard.
        seed: seed of the buffer's own NumPy generator (all sampling draws from it).

    With ``num_envs > 1`` the capacity should be divisible by ``num_envs``; otherwise each env keeps
    ``capacity // num_envs`` transitions, :attr:`capacity` is that times ``num_envs``, and a warning says so.
    """

    def __init__(
        self,
        capacity: int,
        observation_space: spaces.Box,
        action_space: spaces.Discrete | spaces.Box,
        *,
        frame_stack: int = 1,
        num_envs: int = 1,
        prioritized: bool = False,
        priority_exponent: float = DEFAULT_PRIORITY_EXPONENT,
        importance_exponent: float = DEFAULT_IMPORTANCE_EXPONENT,
        start_frame_reserve: float = 0.05,
        autoreset_mode: str | None = None,
        seed: int = 0,
    ) -> None:
        if not _is_int(frame_stack) or frame_stack < 1:
            raise ValueError(f"frame_stack must be an int >= 1, got {frame_stack!r}")
        if not _is_int(num_envs) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        if not _is_int(capacity):
            raise ValueError(f"capacity must be an int, got {capacity!r}")
        if capacity // num_envs < frame_stack + 1:
            raise ValueError(
                f"capacity {capacity} with {num_envs} envs keeps {capacity // num_envs} transitions per env; "
                f"it must be at least frame_stack + 1 = {frame_stack + 1} (sampling with n_step or "
                f"sequence_length L > 1 needs frame_stack + L per env)"
            )
        if capacity % num_envs:
            warnings.warn(
                f"ReplayBuffer capacity {capacity} is not divisible by num_envs={num_envs}: each env keeps "
                f"{capacity // num_envs} transitions, {capacity // num_envs * num_envs} in all. Pass a "
                f"multiple of num_envs (e.g. {capacity // num_envs * num_envs} or "
                f"{(capacity // num_envs + 1) * num_envs}) to silence this.",
                UserWarning,
                stacklevel=2,
            )
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) < 1:
            raise TypeError(
                f"observation_space must be a gymnasium Box with at least one axis, got {observation_space!r}"
            )
        obs_shape = tuple(int(d) for d in observation_space.shape)
        if obs_shape[0] % frame_stack:
            raise ValueError(
                f"observation first axis {obs_shape[0]} is not divisible by frame_stack={frame_stack}: "
                "frames must be stacked along the first axis (e.g. Atari (4, 84, 84), DMC pixels (9, 84, 84))"
            )
        if isinstance(action_space, spaces.Discrete):
            self.action_shape: tuple[int, ...] = ()
            self.action_dtype = np.dtype(np.int64)
            self._action_low = int(action_space.start)
            self._action_high = int(action_space.start + action_space.n)
        elif isinstance(action_space, spaces.Box):
            self.action_shape = tuple(int(d) for d in action_space.shape)
            self.action_dtype = np.dtype(action_space.dtype)
            if self.action_dtype.kind != "f":
                raise TypeError(f"Box action space must have a float dtype, got {action_space.dtype}")
        else:
            raise TypeError(f"action_space must be gymnasium Discrete or Box, got {action_space!r}")
        if not isinstance(prioritized, bool):
            raise TypeError(f"prioritized must be a bool, got {prioritized!r}")
        if not _is_finite_nonnegative(priority_exponent):
            raise ValueError(
                f"priority_exponent (alpha) must be a finite float >= 0, got {priority_exponent}"
            )
        if not isinstance(start_frame_reserve, Real) or not 0 <= start_frame_reserve <= 100:
            raise ValueError(f"start_frame_reserve must be a float in [0, 100], got {start_frame_reserve!r}")

        self.observation_shape = obs_shape
        self.observation_dtype = np.dtype(observation_space.dtype)
        self.frame_stack = int(frame_stack)
        self.num_envs = int(num_envs)
        self.capacity_per_env = int(capacity) // self.num_envs
        self.capacity = self.capacity_per_env * self.num_envs
        self.frame_shape = (obs_shape[0] // self.frame_stack, *obs_shape[1:])
        self.frame_capacity_per_env = (
            self.capacity_per_env + math.ceil(start_frame_reserve * self.capacity_per_env) + self.frame_stack
        )
        self.prioritized = prioritized
        self.priority_exponent = float(priority_exponent)
        self.importance_exponent = importance_exponent
        self._validate_importance_exponent()
        self.start_frame_reserve = float(start_frame_reserve)
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        self.seed = seed
        self._warned_frame_reserve = False

        envs, length, frames = self.num_envs, self.capacity_per_env, self.frame_capacity_per_env
        # Flat layouts: env e's transition slot s is row e*length + s, its frame slot f is row e*frames + f.
        # np.zeros leaves untouched pages unallocated, so memory grows as the buffer fills.
        self._frames = np.zeros((envs * frames, *self.frame_shape), dtype=self.observation_dtype)
        # Absolute index of the newest frame of each transition's obs; its next_obs ends one frame later.
        self._obs_pointer = np.zeros(envs * length, dtype=np.int64)
        self._action = np.zeros((envs * length, *self.action_shape), dtype=self.action_dtype)
        self._reward = np.zeros(envs * length, dtype=np.float32)
        self._terminated = np.zeros(envs * length, dtype=bool)
        self._truncated = np.zeros(envs * length, dtype=bool)
        # Per-env counters, all absolute (never wrapped).
        self._added = np.zeros(envs, dtype=np.int64)  # transitions written
        self._oldest = np.zeros(envs, dtype=np.int64)  # first transition still fully stored
        self._last_done = np.full(envs, -1, dtype=np.int64)  # last transition that ended an episode
        self._frames_written = np.zeros(envs, dtype=np.int64)
        self._next_pointer = np.full(envs, -1, dtype=np.int64)  # newest frame of the last next_obs
        self._episode_over = np.ones(envs, dtype=bool)  # the next add starts an episode
        self._after_done = np.zeros(envs, dtype=bool)  # the env's previous add stored a done step

        self._tree = SumTree(envs * length) if prioritized else None
        self.max_priority = INITIAL_MAX_PRIORITY
        self._rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ adding

    def __len__(self) -> int:
        """Transitions currently stored (all envs)."""
        return int((self._added - self._oldest).sum())

    @property
    def steps_added(self) -> int:
        """Transitions ever added (all envs; skipped env steps not counted)."""
        return int(self._added.sum())

    @property
    def frames_written(self) -> int:
        """Frames ever written (all envs): one per step plus the first observation of each episode."""
        return int(self._frames_written.sum())

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray | int | float,
        reward: np.ndarray | float,
        next_obs: np.ndarray,
        terminated: np.ndarray | bool,
        truncated: np.ndarray | bool,
        *,
        skip: np.ndarray | bool | None = None,
    ) -> None:
        """Store one step of every env (see the module docstring for what each argument must be).

        Args:
            obs: (num_envs, *obs_shape) observations the actions were taken in (env axis optional for 1 env).
            action: (num_envs, *action_shape).
            reward: (num_envs,).
            next_obs: (num_envs, *obs_shape) the observations that followed; the final one at a done.
            terminated: (num_envs,) bool, the episode ended in a terminal state (no bootstrap).
            truncated: (num_envs,) bool, the episode was cut (time limit): bootstrap from next_obs.
            skip: (num_envs,) bool, envs whose step is not a transition (next-step autoreset); optional.
                With ``autoreset_mode="next_step"`` the step after each env's done is skipped as well.
        """
        obs = self._check_observation(obs, "obs")
        next_obs = self._check_observation(next_obs, "next_obs")
        action = self._check_action(action)
        reward = self._check_per_env(reward, "reward", numeric=True)
        terminated = self._check_per_env(terminated, "terminated")
        truncated = self._check_per_env(truncated, "truncated")
        skip_given = skip is not None
        skip = np.zeros(self.num_envs, dtype=bool) if skip is None else self._check_per_env(skip, "skip")
        if self.autoreset_mode == "next_step":
            for env in np.flatnonzero(self._after_done & ~skip).tolist():
                self._check_reset_step(env, obs[env])
            skip = skip | self._after_done
        active = np.flatnonzero(~skip).tolist()
        for env in active:
            self._check_stacking(env, obs[env], next_obs[env])
            if not self._episode_over[env]:
                self._check_continuity(env, obs[env])
            elif (
                self.frame_stack == 1
                and self.autoreset_mode is None
                and not skip_given
                and self._after_done[env]
                and self._continues_last_next_obs(env, obs[env])
            ):
                self._raise_unskipped_reset_step(env)
        self._after_done[skip] = False

        length = self.capacity_per_env
        new_leaves = []
        dropped_leaves = []
        for env in active:
            if self._episode_over[env] and not self._continues_last_next_obs(env, obs[env]):
                self._write_frames(env, obs[env].reshape(self.frame_stack, *self.frame_shape))
            obs_pointer = self._frames_written[env] - 1
            self._write_frames(env, next_obs[env][-self.frame_shape[0] :][None])
            self._next_pointer[env] = obs_pointer + 1

            position = int(self._added[env])
            row = env * length + position % length
            self._obs_pointer[row] = obs_pointer
            self._action[row] = action[env]
            self._reward[row] = reward[env]
            self._terminated[row] = terminated[env]
            self._truncated[row] = truncated[env]
            self._added[env] = position + 1
            done = bool(terminated[env] or truncated[env])
            self._episode_over[env] = done
            self._after_done[env] = done
            if done:
                self._last_done[env] = position
            new_leaves.append(row)
            dropped_leaves.extend(self._drop_overwritten(env))
        if self._tree is not None and (new_leaves or dropped_leaves):
            leaves = np.array(dropped_leaves + new_leaves, dtype=np.int64)
            values = np.zeros(len(leaves))
            values[len(dropped_leaves) :] = self.max_priority**self.priority_exponent
            self._tree.set(leaves, values)

    def _write_frames(self, env: int, frames: np.ndarray) -> None:
        start = int(self._frames_written[env])
        count = len(frames)
        cap = self.frame_capacity_per_env
        rows = env * cap + (start + np.arange(count)) % cap
        self._frames[rows] = frames
        self._frames_written[env] = start + count

    def _frame_window(self, env: int, pointer: int) -> np.ndarray:
        """The stacked observation whose newest frame is absolute frame ``pointer`` of ``env``."""
        cap = self.frame_capacity_per_env
        rows = env * cap + (pointer - self.frame_stack + 1 + np.arange(self.frame_stack)) % cap
        return self._frames[rows].reshape(self.observation_shape)

    def _continues_last_next_obs(self, env: int, obs: np.ndarray) -> bool:
        """An episode start whose obs equals the last next_obs (life loss as a terminal) shares its frames."""
        pointer = int(self._next_pointer[env])
        return pointer >= 0 and self._equal(self._frame_window(env, pointer), obs)

    def _drop_overwritten(self, env: int) -> list[int]:
        """Advance env's oldest transition past slots reused by the ring or frames overwritten; their rows."""
        length = self.capacity_per_env
        oldest = max(int(self._oldest[env]), int(self._added[env]) - length)
        first_kept_frame = int(self._frames_written[env]) - self.frame_capacity_per_env
        dropped = []
        while oldest < self._added[env]:
            row = env * length + oldest % length
            if self._obs_pointer[row] - self.frame_stack + 1 >= first_kept_frame:
                break
            dropped.append(row)
            oldest += 1
        self._oldest[env] = oldest
        if dropped and not self._warned_frame_reserve:
            self._warn_frame_reserve(env)
        return dropped

    def _warn_frame_reserve(self, env: int) -> None:
        self._warned_frame_reserve = True
        added = int(self._added[env])
        # Frames beyond one per step are the k frames of episode starts: that share is the reserve needed.
        needed = (int(self._frames_written[env]) - added) / max(added, 1)
        suggestion = math.ceil(needed * 1.25 * 100) / 100
        reserve_slots = self.frame_capacity_per_env - self.capacity_per_env - self.frame_stack
        warnings.warn(
            f"ReplayBuffer env {env}: its frame ring of {self.frame_capacity_per_env} slots "
            f"({self.capacity_per_env} transitions + {reserve_slots} reserve slots from "
            f"start_frame_reserve={self.start_frame_reserve:g} + frame_stack={self.frame_stack}) is full, "
            f"so the oldest transitions are dropped and len() stays below capacity ({len(self)} < "
            f"{self.capacity}). Episodes are short: each episode start stores frame_stack={self.frame_stack} "
            f"frame(s), {needed:.3f} extra frames per step so far. Build the buffer with "
            f"start_frame_reserve >= {suggestion:g} to keep the full capacity (warned once per buffer).",
            UserWarning,
            stacklevel=4,
        )

    def _equal(self, a: np.ndarray, b: np.ndarray) -> bool:
        return np.array_equal(a, b, equal_nan=self.observation_dtype.kind == "f")

    def _check_stacking(self, env: int, obs: np.ndarray, next_obs: np.ndarray) -> None:
        if self.frame_stack == 1:
            return
        channels = self.frame_shape[0]
        if not self._equal(next_obs[:-channels], obs[channels:]):
            raise ValueError(
                f"env {env}: next_obs[:-{channels}] != obs[{channels}:], but with "
                f"frame_stack={self.frame_stack} next_obs must be obs shifted by one frame. "
                "Either frame_stack does not match the env, or "
                "next_obs is not the observation that follows obs: at a done pass the true final observation "
                "(info['final_obs'] with same-step autoreset), and with next-step autoreset build the buffer "
                "with autoreset_mode='next_step' or pass skip=<envs done at the previous step> for the "
                "reset step."
            )

    def _check_reset_step(self, env: int, obs: np.ndarray) -> None:
        """With next-step autoreset the step after a done starts from that done's final observation."""
        if not self._continues_last_next_obs(env, obs):
            raise ValueError(
                f"env {env}: autoreset_mode='next_step', so this step (the one after a done) should be the "
                "env's reset step, whose obs is the previous step's final next_obs; but obs differs from it. "
                "If the env resets in the same step (autoreset_mode='SameStep', or manual env.reset()), "
                "build the buffer with autoreset_mode='same_step' (or None)."
            )

    def _raise_unskipped_reset_step(self, env: int) -> None:
        raise ValueError(
            f"env {env}: the previous add ended an episode and this obs equals that step's next_obs (the "
            "final observation): with next-step autoreset (the default of gymnasium 1.x vector envs and of "
            "ale_py.AtariVectorEnv) this is the reset step, not a transition, and would be stored as a bogus "
            "final -> reset transition. Build the buffer with autoreset_mode='next_step' (it then skips "
            "that step), or pass skip=<envs done at the previous step>. If the episode really continues "
            "from that observation (a life loss passed as terminated), build it with "
            "autoreset_mode='same_step'."
        )

    def _check_continuity(self, env: int, obs: np.ndarray) -> None:
        if not self._equal(self._frame_window(env, int(self._next_pointer[env])), obs):
            raise ValueError(
                f"env {env}: obs differs from the next_obs of its previous transition, which did not end the "
                "episode (terminated and truncated were False). Pass the done flags of every step; with "
                "next-step autoreset (gymnasium 1.x vector envs, ale_py.AtariVectorEnv) build the buffer "
                "with autoreset_mode='next_step' or pass skip=<envs done at the previous step>."
            )

    # ------------------------------------------------------------------ input checks

    def _with_env_axis(self, value: np.ndarray, name: str, item_shape: tuple[int, ...]) -> np.ndarray:
        expected = (self.num_envs, *item_shape)
        if value.shape == expected:
            return value
        if self.num_envs == 1 and value.shape == item_shape:
            return value.reshape(expected)
        allowed = f"{expected}" + (f" or {item_shape}" if self.num_envs == 1 else "")
        raise ValueError(f"{name} has shape {value.shape}; expected {allowed}")

    def _check_observation(self, value, name: str) -> np.ndarray:
        value = np.asarray(value)
        if value.dtype != self.observation_dtype:
            raise TypeError(
                f"{name} has dtype {value.dtype}; the observation space has dtype {self.observation_dtype}"
            )
        return self._with_env_axis(value, name, self.observation_shape)

    def _check_action(self, value) -> np.ndarray:
        value = np.asarray(value)
        if self.action_dtype.kind == "i":
            if value.dtype.kind not in "iu":
                raise TypeError(f"action has dtype {value.dtype}; a Discrete action must be an integer")
            value = self._with_env_axis(value, "action", ())
            if value.size and (value.min() < self._action_low or value.max() >= self._action_high):
                raise ValueError(
                    f"action {value.tolist()} outside the Discrete range "
                    f"[{self._action_low}, {self._action_high})"
                )
            return value.astype(np.int64, copy=False)
        if value.dtype.kind != "f":
            raise TypeError(f"action has dtype {value.dtype}; a Box action must be a float array")
        value = self._with_env_axis(value, "action", self.action_shape)
        if not np.all(np.isfinite(value)):
            raise ValueError(f"action contains non-finite values: {value.tolist()}")
        return value

    def _check_per_env(self, value, name: str, numeric: bool = False) -> np.ndarray:
        value = np.asarray(value)
        value = self._with_env_axis(value, name, ())
        if numeric:
            if value.dtype.kind not in "iuf":
                raise TypeError(f"{name} has dtype {value.dtype}; expected a number per env")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{name} contains non-finite values: {value.tolist()}")
            return value
        if value.dtype == bool:
            return value
        if value.dtype.kind in "iu" and np.all((value == 0) | (value == 1)):
            return value.astype(bool)
        raise TypeError(f"{name} must be bool per env, got {value.dtype} {value.tolist()}")

    # ------------------------------------------------------------------ sampling

    def _valid_ranges(self, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Per env, the transitions [first, end) whose ``horizon``-step window is stored."""
        end = np.maximum(self._added - horizon + 1, self._last_done + 1)
        end = np.maximum(end, self._oldest)
        return self._oldest.copy(), end

    def num_valid(self, n_step: int = 1, sequence_length: int = 0) -> int:
        """Transitions that ``sample`` with these settings can return."""
        first, end = self._valid_ranges(max(n_step, sequence_length))
        return int((end - first).sum())

    def sample(
        self,
        batch_size: int,
        n_step: int = 1,
        gamma: float = 0.99,
        sequence_length: int = 0,
        *,
        device: str | torch.device | None = None,
    ) -> ReplayBatch:
        """Sample a batch (with replacement); see :class:`ReplayBatch` and the module docstring.

        Args:
            batch_size: transitions in the batch (at most the number of valid transitions).
            n_step: return horizon n >= 1 (may change between calls).
            gamma: discount in [0, 1] (may change between calls).
            sequence_length: K >= 0 future steps for SPR (0: no sequence fields).
            device: None for NumPy arrays, else torch tensors on this device.
        """
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not _is_int(n_step) or n_step < 1:
            raise ValueError(f"n_step must be an int >= 1, got {n_step!r}")
        if not _is_int(sequence_length) or sequence_length < 0:
            raise ValueError(f"sequence_length must be an int >= 0, got {sequence_length!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, Real) or not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be a float in [0, 1], got {gamma!r}")
        self._validate_importance_exponent()
        horizon = max(int(n_step), int(sequence_length))
        if self.capacity_per_env < self.frame_stack + horizon:
            raise ValueError(
                f"capacity per env {self.capacity_per_env} is smaller than frame_stack + max(n_step, "
                f"sequence_length) = {self.frame_stack} + {horizon}"
            )
        first, end = self._valid_ranges(horizon)
        sizes = end - first
        num_valid = int(sizes.sum())
        if num_valid == 0:
            raise ValueError(
                f"cannot sample: the buffer holds {len(self)} transitions and none has a complete "
                f"{horizon}-step window yet (empty buffer, or episodes still in progress)"
            )
        if batch_size > num_valid:
            raise ValueError(
                f"batch_size {batch_size} is more than the {num_valid} transitions that can be sampled "
                f"with n_step={n_step}, sequence_length={sequence_length} ({len(self)} stored)"
            )
        if self._tree is None:
            draws = self._rng.integers(0, num_valid, size=batch_size)
            cumulative = np.cumsum(sizes)
            env = np.searchsorted(cumulative, draws, side="right")
            position = first[env] + draws - (cumulative[env] - sizes[env])
            weights = np.ones(batch_size, dtype=np.float32)
        else:
            env, position, probability = self._sample_prioritized(batch_size, end)
            weights = (num_valid * probability) ** (-self.importance_exponent)
            weights = (weights / weights.max()).astype(np.float32)
        batch = self._gather(env, position, int(n_step), float(gamma), int(sequence_length), weights)
        return batch if device is None else batch.to(device)

    def _sample_prioritized(
        self, batch_size: int, end: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stratified proportional sampling (as dopamine's sum tree) among the valid transitions.

        Stored transitions whose window is not complete yet (the newest steps of unfinished episodes)
        get mass 0 for this draw only, so probabilities are exact over the valid set.
        """
        length = self.capacity_per_env
        pending = [
            env * length + np.arange(end[env], self._added[env]) % length
            for env in range(self.num_envs)
            if end[env] < self._added[env]
        ]
        pending_rows = np.concatenate(pending) if pending else np.zeros(0, dtype=np.int64)
        saved = self._tree.get(pending_rows)
        self._tree.set(pending_rows, 0.0)
        try:
            total = self._tree.total
            if total <= 0:
                raise ValueError("cannot sample: every valid transition has priority 0")
            targets = (np.arange(batch_size) + self._rng.random(batch_size)) * (total / batch_size)
            rows = self._tree.find(targets)
            probability = self._tree.get(rows) / total
        finally:
            self._tree.set(pending_rows, saved)
        env = rows // length
        slot = rows % length
        newest = self._added[env] - 1
        position = newest - (newest - slot) % length
        return env, position, probability

    def _gather(
        self,
        env: np.ndarray,
        position: np.ndarray,
        n_step: int,
        gamma: float,
        sequence_length: int,
        weights: np.ndarray,
    ) -> ReplayBatch:
        batch_size = len(env)
        length = self.capacity_per_env
        horizon = max(n_step, sequence_length)
        offsets = np.arange(horizon)
        rows = env[:, None] * length + (position[:, None] + offsets) % length  # (B, horizon)
        done = self._terminated[rows] | self._truncated[rows]
        alive = np.ones((batch_size, horizon), dtype=bool)  # step t+j is in the episode of t
        alive[:, 1:] = np.cumprod(~done[:, :-1], axis=1, dtype=bool)

        in_window = alive[:, :n_step]
        steps = in_window.sum(axis=1)
        powers = np.power(float(gamma), np.arange(n_step + 1, dtype=np.float64))
        rewards = self._reward[rows[:, :n_step]].astype(np.float64)
        n_step_return = (np.where(in_window, rewards, 0.0) * powers[:n_step]).sum(axis=1)
        last_row = rows[np.arange(batch_size), steps - 1]
        discount = np.where(self._terminated[last_row], 0.0, powers[steps])

        first_pointer = self._obs_pointer[rows[:, 0]]
        batch = ReplayBatch(
            obs=self._stacks(env, first_pointer),
            action=self._action[rows[:, 0]],
            reward=n_step_return.astype(np.float32),
            discount=discount.astype(np.float32),
            next_obs=self._stacks(env, self._obs_pointer[last_row] + 1),
            n_steps=steps.astype(np.int64),
            indices=position * self.num_envs + env,
            weights=weights,
        )
        if sequence_length:
            mask = alive[:, :sequence_length]
            sequence_rows = rows[:, :sequence_length]
            future_obs = self._stacks(
                np.repeat(env, sequence_length), self._obs_pointer[sequence_rows].reshape(-1) + 1
            ).reshape(batch_size, sequence_length, *self.observation_shape)
            future_obs[~mask] = 0
            future_action = self._action[sequence_rows]
            future_action[~mask] = 0
            batch.future_obs = future_obs
            batch.future_action = future_action
            batch.future_reward = np.where(mask, self._reward[sequence_rows], 0.0).astype(np.float32)
            batch.future_mask = mask.astype(np.float32)
        return batch

    def _stacks(self, env: np.ndarray, pointer: np.ndarray) -> np.ndarray:
        """Stacked observations whose newest frames are the absolute frame ``pointer`` of each ``env``."""
        cap = self.frame_capacity_per_env
        frame_rows = env[:, None] * cap + (pointer[:, None] + np.arange(1 - self.frame_stack, 1)) % cap
        frames = np.take(self._frames, frame_rows.reshape(-1), axis=0)
        return frames.reshape(len(env), *self.observation_shape)

    # ------------------------------------------------------------------ priorities

    def update_priorities(
        self, indices: np.ndarray | torch.Tensor, priorities: np.ndarray | torch.Tensor
    ) -> int:
        """Set the priorities of sampled transitions (``batch.indices``); returns how many were updated.

        Priorities are raw (e.g. the loss; α is applied here) and must be finite and >= 0; a priority of 0
        is never sampled. Ids whose transition has left the buffer since it was sampled are ignored. With
        repeated ids the last priority wins. The running maximum (initial 1.0) is what new transitions get.
        """
        if self._tree is None:
            raise RuntimeError("update_priorities needs a buffer built with prioritized=True")
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        if isinstance(priorities, torch.Tensor):
            priorities = priorities.detach().cpu().numpy()
        indices = np.asarray(indices).reshape(-1)
        priorities = np.asarray(priorities, dtype=np.float64).reshape(-1)
        if indices.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers (batch.indices), got dtype {indices.dtype}")
        if indices.shape != priorities.shape:
            raise ValueError(f"{indices.size} indices but {priorities.size} priorities")
        if not np.all(np.isfinite(priorities)) or np.any(priorities < 0):
            raise ValueError("priorities must be finite and >= 0")
        indices = indices.astype(np.int64)
        env = indices % self.num_envs
        position = indices // self.num_envs
        stored = (indices >= 0) & (position >= self._oldest[env]) & (position < self._added[env])
        if not stored.any():
            return 0
        rows = env[stored] * self.capacity_per_env + position[stored] % self.capacity_per_env
        kept = priorities[stored]
        self._tree.set(rows, kept**self.priority_exponent)
        self.max_priority = max(self.max_priority, float(kept.max()))
        return int(stored.sum())

    def _validate_importance_exponent(self) -> None:
        beta = self.importance_exponent
        if not _is_finite_nonnegative(beta):
            raise ValueError(f"importance_exponent (beta) must be a finite float >= 0, got {beta!r}")

    # ------------------------------------------------------------------ checkpoints

    _ARRAYS = (
        "_frames",
        "_obs_pointer",
        "_action",
        "_reward",
        "_terminated",
        "_truncated",
        "_added",
        "_oldest",
        "_last_done",
        "_frames_written",
        "_next_pointer",
        "_episode_over",
        "_after_done",
    )

    def _config(self) -> dict:
        return {
            "capacity_per_env": self.capacity_per_env,
            "num_envs": self.num_envs,
            "frame_stack": self.frame_stack,
            "frame_capacity_per_env": self.frame_capacity_per_env,
            "observation_shape": self.observation_shape,
            "observation_dtype": str(self.observation_dtype),
            "action_shape": self.action_shape,
            "action_dtype": str(self.action_dtype),
            "prioritized": self.prioritized,
            "priority_exponent": self.priority_exponent,
        }

    # Per-env ring arrays and the per-env length of their rows (the rest are small per-env counters).
    _FRAME_RINGS = ("_frames",)
    _TRANSITION_RINGS = ("_obs_pointer", "_action", "_reward", "_terminated", "_truncated")

    def _ring_rows(self, name: str) -> tuple[int, int]:
        """(rows per env, rows written so far in the fullest env's ring) of a per-env ring array."""
        if name in self._FRAME_RINGS:
            per_env, written = self.frame_capacity_per_env, self._frames_written
        else:
            per_env, written = self.capacity_per_env, self._added
        return per_env, int(min(per_env, written.max(initial=0)))

    def state_dict(self) -> dict:
        """Everything needed to restore the buffer exactly: storage, counters, priorities, RNG state.

        Ring arrays are saved up to the fullest env's written part only, so an early checkpoint of a
        large buffer is small. Arrays are torch tensors sharing memory with the buffer where possible
        (no copy: an Atari-100k buffer is ~0.75 GB), so ``torch.save`` it before adding again. Loads with
        ``torch.load(weights_only=True)``.
        """
        state = {"config": self._config()}
        for name in self._ARRAYS:
            array = getattr(self, name)
            if name in self._FRAME_RINGS or name in self._TRANSITION_RINGS:
                per_env, written = self._ring_rows(name)
                array = array.reshape(self.num_envs, per_env, *array.shape[1:])[:, :written]
                if self.num_envs > 1:
                    array = np.ascontiguousarray(array)
            state[name.lstrip("_")] = torch.from_numpy(array)
        state["tree"] = None if self._tree is None else torch.from_numpy(self._tree.nodes)
        state["max_priority"] = self.max_priority
        state["importance_exponent"] = float(self.importance_exponent)
        state["rng"] = self._rng.bit_generator.state
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` into a buffer built with the same arguments."""
        saved = dict(state["config"])
        saved["observation_shape"] = tuple(saved["observation_shape"])
        saved["action_shape"] = tuple(saved["action_shape"])
        mine = self._config()
        if saved != mine:
            differing = {key: (saved.get(key), mine[key]) for key in mine if saved.get(key) != mine[key]}
            raise ValueError(f"checkpointed buffer differs from this one (saved, this): {differing}")
        for name in self._ARRAYS:
            target = getattr(self, name)
            if name == "_after_done" and "after_done" not in state:  # checkpoints from before it existed
                target[:] = self._episode_over & (self._added > 0) & (self._last_done == self._added - 1)
                continue
            value = state[name.lstrip("_")]
            value = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if name in self._FRAME_RINGS or name in self._TRANSITION_RINGS:
                per_env = self._ring_rows(name)[0]
                rings = target.reshape(self.num_envs, per_env, *target.shape[1:])
                fits = value.shape[0] == self.num_envs and value.shape[1] <= per_env
                if not fits or value.shape[2:] != rings.shape[2:]:
                    raise ValueError(
                        f"checkpoint array {name} has shape {value.shape}, expected "
                        f"({self.num_envs}, <= {per_env}, {', '.join(map(str, rings.shape[2:]))})"
                    )
                rings[:, : value.shape[1]] = value
                rings[:, value.shape[1] :] = 0
                continue
            if value.shape != target.shape:
                raise ValueError(f"checkpoint array {name} has shape {value.shape}, expected {target.shape}")
            np.copyto(target, value)
        if self._tree is not None:
            self._tree.load_state_dict({"size": self._tree.size, "nodes": state["tree"].numpy()})
        self.max_priority = float(state["max_priority"])
        self.importance_exponent = float(state["importance_exponent"])
        self._rng.bit_generator.state = state["rng"]
