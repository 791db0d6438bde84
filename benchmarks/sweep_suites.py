"""Benchmark suites: which tasks a sweep runs, and how a run's score is normalised for aggregation.

- ``atari100k`` — the 26 Atari-100k games (Kaiser et al. 2020; the list and the random / human scores are
  ``plasticrl.envs``' ``atari100k_scores.csv``), human-normalised: (return − random) / (human − random).
- ``atari`` — any Atari game in the data, human-normalised; a game without a human score is an error.
- ``dmc-primacy`` — the ten DMC tasks of the primacy-bias study (Nikishin et al. 2022), return / 1000.
- ``dmc-planet`` — the six PlaNet tasks (Hafner et al. 2019; DrQ, Kostrikov et al. 2020), return / 1000.
- ``dmc`` — any DMC task in the data, return / 1000 (episodes of 1,000 steps with rewards in [0, 1]).
- ``warmstart`` — a sweep launches the supervised warm-start presets of ``benchmarks/warmstart.py``
  (passed as ``--preset``); runs are aggregated per dataset, the score is test accuracy in [0, 1].
- ``raw`` — any task, scores as recorded.

Aggregating data that hold tasks outside a suite with a fixed task list keeps the suite's tasks and states
how many rows were dropped (the BBF score files hold 55 games; ``atari100k`` takes its 26).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from plasticrl.benchmarks.sweep_cli import InputError

# Nikishin et al. 2022 (and ../shared/reference/agents.md): the ten DMC tasks of the SAC experiments.
DMC_PRIMACY_TASKS = (
    "acrobot-swingup",
    "cheetah-run",
    "finger-turn_hard",
    "fish-swim",
    "hopper-hop",
    "humanoid-run",
    "humanoid-stand",
    "quadruped-run",
    "swimmer-swimmer15",
    "walker-run",
)
# The PlaNet benchmark (envs/dmc.py PLANET_ACTION_REPEAT holds the same six with their action repeats).
DMC_PLANET_TASKS = (
    "ball_in_cup-catch",
    "cartpole-swingup",
    "cheetah-run",
    "finger-spin",
    "reacher-easy",
    "walker-walk",
)
WARMSTART_PRESETS = ("ash-adams", "hare-tortoise", "berariu")
DMC_MAX_RETURN = 1000.0  # 1,000-step episodes, per-step rewards in [0, 1]
_DMC_NAME = re.compile(r"^[a-z][a-z0-9_]*-[a-z][a-z0-9_]*$")  # dm-control 'domain-task' names


@dataclass(frozen=True)
class Suite:
    """A named benchmark: its tasks (None: whatever the data hold) and its score normalisation."""

    name: str
    tasks: tuple[str, ...] | None
    score: str  # 'human' (Atari human-normalised), 'dmc' (return / 1000), 'raw'
    env_flag: str = "--env-id"
    """the flag that passes a task to the agent script"""
    score_label: str = "score"
    launch: tuple[str, ...] | None = None
    """what a sweep over this suite launches, when not its tasks (warm-start: the presets)"""

    @property
    def envs(self) -> tuple[str, ...] | None:
        """The values a sweep passes with ``env_flag`` (None: the sweep file must list them)."""
        return self.launch if self.launch is not None else self.tasks

    def key(self, task: str) -> str:
        return task_key(task, self.score)

    def canonical(self, task: str) -> str | None:
        """The suite's own spelling of ``task``, or None when the suite's fixed list lacks it."""
        if self.tasks is None:
            if self.score == "human":
                return atari_display_name(task)
            if self.score == "dmc" and not _DMC_NAME.match(task):
                return None  # not a 'domain-task' name: an Atari game or a dataset in a DMC aggregate
            return task
        keys = {self.key(t): t for t in self.tasks}
        return keys.get(self.key(task))

    def normalize(self, task: str, raw: np.ndarray | float) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        if self.score == "human":
            from plasticrl.envs import atari_human_normalized_score

            return np.asarray(atari_human_normalized_score(atari_display_name(task), raw), dtype=np.float64)
        if self.score == "dmc":
            return raw / DMC_MAX_RETURN
        return raw


def _atari_games() -> tuple[str, ...]:
    from plasticrl.envs import ATARI_100K_GAMES

    return tuple(ATARI_100K_GAMES)


def task_key(task: str, score: str = "raw") -> str:
    """Case- and punctuation-insensitive key for Atari names ('ALE/MsPacman-v5', 'ms_pacman' -> 'mspacman');
    other tasks compare as written."""
    if score != "human":
        return task
    name = re.sub(r"^ALE/|-v\d+$", "", task)
    return re.sub(r"[^a-z0-9]", "", name.lower())


def atari_display_name(task: str) -> str:
    """The Atari-100k spelling of a game ('mspacman' -> 'MsPacman'); other games unchanged."""
    by_key = {task_key(g, "human"): g for g in _atari_games()}
    return by_key.get(task_key(task, "human"), task)


def get_suite(name: str) -> Suite:
    """The suite called ``name``; an unknown name is an InputError listing the suites."""
    suites = {
        "atari100k": lambda: Suite(
            "atari100k", _atari_games(), "human", score_label="human-normalised score"
        ),
        "atari": lambda: Suite("atari", None, "human", score_label="human-normalised score"),
        "dmc-primacy": lambda: Suite("dmc-primacy", DMC_PRIMACY_TASKS, "dmc", score_label="return / 1000"),
        "dmc-planet": lambda: Suite("dmc-planet", DMC_PLANET_TASKS, "dmc", score_label="return / 1000"),
        "dmc": lambda: Suite("dmc", None, "dmc", score_label="return / 1000"),
        # Runs of a warm-start sweep are tasks by dataset; the sweep launches one study per preset.
        "warmstart": lambda: Suite(
            "warmstart",
            None,
            "raw",
            env_flag="--preset",
            score_label="test accuracy",
            launch=WARMSTART_PRESETS,
        ),
        "raw": lambda: Suite("raw", None, "raw"),
    }
    if name not in suites:
        raise InputError(f"unknown suite {name!r}; choose one of {', '.join(suites)}")
    return suites[name]()


SUITE_NAMES = ("atari100k", "atari", "dmc-primacy", "dmc-planet", "dmc", "warmstart", "raw")
