"""Exact replay-ratio accounting: how many gradient updates to run after each agent step.

The replay ratio is gradient updates per agent step (D'Oro et al. 2023; BBF's gin files count
replayed *samples* instead, ``updates = replay_ratio_samples / batch_size``, so their 64 is our 2).
After ``N`` agent steps — counted over all parallel environments together, after frame skip /
action repeat — the number of updates run is exactly

    updates(N) = max(0, floor((N - learning_starts) * replay_ratio)).

The ratio is held as an exact fraction, so fractional ratios accumulate without drift and without
off-by-one errors: 0.25 gives one update every fourth step, 32 gives 32 per step, 0.1 gives exactly
one per ten steps. A float is read as the shortest decimal that prints it (``0.1`` -> 1/10, not the
binary float 0.1000000000000000055...); NumPy floats likewise by their own shortest repr, so
``np.float32(0.1)`` is 1/10 too (not 13421773/134217728). Pass a :class:`fractions.Fraction` or a
string such as ``"1/3"`` for ratios that are not short decimals.

Under next-step autoreset (gymnasium 1.x vector envs, ``ale_py.AtariVectorEnv``) the step after an
env's done only resets it: it is not an agent step and must not earn updates. Pass the number of real
agent steps of each call, ``schedule.step(int((~skip).sum()))`` with ``skip`` the envs that were done
on the previous call; ``step()`` without an argument counts ``num_envs``.
"""

from __future__ import annotations

from fractions import Fraction
from numbers import Integral, Rational

import numpy as np


def exact_ratio(replay_ratio: float | int | str | Fraction) -> Fraction:
    """``replay_ratio`` as an exact positive Fraction (floats via their shortest decimal repr)."""
    if isinstance(replay_ratio, bool):
        raise TypeError(f"replay_ratio must be a number, got bool {replay_ratio!r}")
    try:
        if isinstance(replay_ratio, Rational):
            ratio = Fraction(replay_ratio)
        elif isinstance(replay_ratio, float):  # Python floats and np.float64
            ratio = Fraction(repr(float(replay_ratio)))
        elif isinstance(replay_ratio, np.floating):  # np.float32(0.1) -> "0.1", its shortest repr
            ratio = Fraction(np.format_float_positional(replay_ratio, unique=True, trim="-"))
        elif isinstance(replay_ratio, str):
            ratio = Fraction(replay_ratio.strip())
        else:
            ratio = Fraction(repr(float(replay_ratio)))
    except (ValueError, TypeError, OverflowError, ZeroDivisionError) as error:
        raise ValueError(
            f"replay_ratio must be a finite number > 0 (e.g. 0.25, 1, 8, '1/3'), got {replay_ratio!r}"
        ) from error
    if ratio <= 0:
        raise ValueError(f"replay_ratio must be > 0 (updates per agent step), got {replay_ratio!r}")
    return ratio


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


class ReplayRatioSchedule:
    """Tells an agent how many gradient updates to run after each (vectorised) environment step.

    Usage, once per call to ``env.step``::

        for _ in range(schedule.step()):   # advances by num_envs agent steps
            update()

    With next-step autoreset, count only the envs that really stepped (not the reset steps)::

        for _ in range(schedule.step(int((~skip).sum()))):
            update()

    Args:
        replay_ratio: gradient updates per agent step (> 0): 0.25, 1, 2, 8, 32, ...
        learning_starts: agent steps (all envs together) before the first update.
        num_envs: agent steps per ``step()`` call by default (one per parallel env).
    """

    def __init__(
        self,
        replay_ratio: float | int | str | Fraction,
        learning_starts: int = 0,
        num_envs: int = 1,
    ) -> None:
        self.ratio = exact_ratio(replay_ratio)
        if not _is_int(learning_starts) or learning_starts < 0:
            raise ValueError(f"learning_starts must be an int >= 0 (agent steps), got {learning_starts!r}")
        if not _is_int(num_envs) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        self.replay_ratio = replay_ratio
        self.learning_starts = int(learning_starts)
        self.num_envs = int(num_envs)
        self._numerator = self.ratio.numerator
        self._denominator = self.ratio.denominator
        self.agent_steps = 0
        self.updates_done = 0

    def updates_after(self, agent_steps: int) -> int:
        """Total updates due after ``agent_steps`` agent steps: max(0, floor((N - start) * ratio))."""
        if agent_steps < 0:
            raise ValueError(f"agent_steps must be >= 0, got {agent_steps}")
        trained_steps = agent_steps - self.learning_starts
        if trained_steps <= 0:
            return 0
        return trained_steps * self._numerator // self._denominator

    def step(self, num_steps: int | None = None) -> int:
        """Record ``num_steps`` new agent steps (default ``num_envs``); return the updates to run now.

        ``num_steps`` is the number of real agent steps since the last call (0 to ``num_envs`` for one
        vector-env step; e.g. ``int((~skip).sum())`` under next-step autoreset, whose reset steps are
        not agent steps). After any sequence of calls, :attr:`updates_done` is exactly
        ``max(0, floor((agent_steps - learning_starts) * ratio))``. The returned count is added to
        :attr:`updates_done`: the caller is expected to run them.
        """
        if num_steps is None:
            num_steps = self.num_envs
        if not _is_int(num_steps) or num_steps < 0:
            raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
        self.agent_steps += int(num_steps)
        due = self.updates_after(self.agent_steps) - self.updates_done
        self.updates_done += due
        return due

    def state_dict(self) -> dict:
        """Counters and settings, for checkpoints."""
        return {
            "ratio": str(self.ratio),
            "learning_starts": self.learning_starts,
            "num_envs": self.num_envs,
            "agent_steps": self.agent_steps,
            "updates_done": self.updates_done,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore counters saved by :meth:`state_dict`; the settings must match."""
        if Fraction(state["ratio"]) != self.ratio or state["learning_starts"] != self.learning_starts:
            raise ValueError(
                f"schedule settings differ from the checkpoint: ratio {self.ratio} vs {state['ratio']}, "
                f"learning_starts {self.learning_starts} vs {state['learning_starts']}"
            )
        self.agent_steps = int(state["agent_steps"])
        self.updates_done = int(state["updates_done"])

    def __repr__(self) -> str:
        return (
            f"ReplayRatioSchedule(ratio={self.ratio}, learning_starts={self.learning_starts}, "
            f"num_envs={self.num_envs}, agent_steps={self.agent_steps}, updates_done={self.updates_done})"
        )
