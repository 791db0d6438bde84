"""Atari-100k environments with the published protocol, and human-normalised scores.

The protocol (Kaiser et al. 2020 for Atari-100k; the preprocessing of Mnih et al. 2015 as packaged by
Dopamine's ``atari_lib.AtariPreprocessing``, which BBF and DrQ(ε) use) and what implements each part:

* Frame skip 4, max-pool of the last two raw frames of the skip, ALE grayscale, 84×84 area resize
  (``cv2.INTER_AREA``): gymnasium's ``AtariPreprocessing`` (single env) or ale-py's C++
  ``AtariVectorEnv`` (vector); both do exactly what Dopamine does (tests compare them frame by frame
  with a reference computed from the raw ALE, and with each other).
* 4-frame stack, ``uint8 (4, 84, 84)``, oldest frame first, zero frames before the episode start
  (Dopamine's agent state and BBF's replay pad with zeros): gymnasium's ``FrameStackObservation``
  (``padding_type="zero"``) or the C++ stack.
* Up to 30 no-op frames at the start of each episode (see "Deviations").
* Minimal action set (``full_action_space=False``); sticky actions off
  (``repeat_action_probability=0``), ``sticky_actions=True`` gives Machado et al.'s 0.25.
* Episode cap 108,000 emulator frames (27,000 agent steps): ALE's ``max_num_frames_per_episode``;
  reaching it is ``truncated=True``.
* Life loss in ``info["life_loss"]`` on every step; the episode goes on.

Life loss and rewards. The env never ends an episode on a lost life and never clips rewards:
``info["life_loss"]`` is True when the step lost a life *or* ended the game — exactly Dopamine's
``terminal_on_life_loss=True`` terminal signal — so an agent that treats life loss as terminal for
its learning signal (DrQ(ε), BBF) uses ``terminated or info["life_loss"]`` (equivalently just
``info["life_loss"]``) as its bootstrap mask, clips the reward itself, and still plays and logs
whole games. Episode returns in ``info["episode"]["r"]`` (gymnasium ``RecordEpisodeStatistics``)
are therefore the unclipped game score over the full game, as the Atari-100k tables report.

Deviations from Dopamine / the papers' code (all small; listed so results can be compared):

* No-op starts: Dopamine's ``AtariPreprocessing`` has none; here they follow Mnih et al. (2015) and
  the Atari-100k evaluation protocol this project reproduces ("up to 30"). The single env
  (gymnasium) draws 1..30 single-frame no-ops; ale-py's vector env draws 0..29. Both are within
  "up to 30" but are not the same distribution, so single and vector runs are not bit-identical
  unless ``noop_max=0``.
* Episode cap: counted in emulator frames *including* the no-op frames (ALE's own counter), so an
  episode has ``ceil((108000 - no-ops) / 4)`` agent steps, at most 7 fewer than 27,000. Dopamine caps at
  27,000 agent steps.
* A game that ends in the middle of a frame skip returns the last pooled frame computed (gymnasium
  and Dopamine both stop skipping at game over); that observation is terminal and never bootstrapped
  from.
"""

from __future__ import annotations

import csv
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
from ale_py import roms
from ale_py.registration import rom_id_to_name
from ale_py.vector_env import AtariVectorEnv
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, RecordEpisodeStatistics

gym.register_envs(ale_py)

__all__ = [
    "ATARI_100K_GAMES",
    "AtariGameScores",
    "atari_human_normalized_score",
    "load_atari_scores",
    "make_atari",
    "make_atari_vector",
    "resolve_atari_game",
]

# Kaiser et al. (2020), Table 1 / Dopamine labs/atari_100k: the 26 Atari-100k games, spelled as
# the ALE v5 ids without prefix and version (so each is also a valid `make_atari` name).
ATARI_100K_GAMES: tuple[str, ...] = (
    "Alien",
    "Amidar",
    "Assault",
    "Asterix",
    "BankHeist",
    "BattleZone",
    "Boxing",
    "Breakout",
    "ChopperCommand",
    "CrazyClimber",
    "DemonAttack",
    "Freeway",
    "Frostbite",
    "Gopher",
    "Hero",
    "Jamesbond",
    "Kangaroo",
    "Krull",
    "KungFuMaster",
    "MsPacman",
    "Pong",
    "PrivateEye",
    "Qbert",
    "RoadRunner",
    "Seaquest",
    "UpNDown",
)

# Frame skip 4 (Mnih et al. 2015), 84×84 grayscale, 4-frame stack, ≤30 no-ops, 108k-frame cap
# (Machado et al. 2018: 30 minutes of play); Dopamine atari_lib / BBF's Atari-100k evaluation.
DEFAULT_FRAME_SKIP = 4
DEFAULT_SCREEN_SIZE = 84
DEFAULT_FRAME_STACK = 4
DEFAULT_NOOP_MAX = 30
DEFAULT_MAX_EPISODE_FRAMES = 108_000
STICKY_ACTION_PROBABILITY = 0.25  # Machado et al. (2018), used only with sticky_actions=True.

# ROMs that ale-py registers no single-player v5 env for (multi-player only).
_MULTIPLAYER_ROMS = frozenset({"combat", "joust", "maze_craze", "warlords"})

_SCORES_CSV = Path(__file__).with_name("atari100k_scores.csv")


# ----------------------------------------------------------------------------------------------
# Game names
# ----------------------------------------------------------------------------------------------


def _name_key(name: str) -> str:
    """Case-, underscore- and punctuation-insensitive key: 'MsPacman', 'ms_pacman' -> 'mspacman'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _rom_table() -> dict[str, str]:
    """Name key -> ALE ROM id (snake_case) for every single-player game ale-py ships."""
    return {_name_key(rom): rom for rom in roms.get_all_rom_ids() if rom not in _MULTIPLAYER_ROMS}


def _strip_env_id(game: str) -> str:
    """'ALE/Pong-v5' -> 'Pong'; a bare name is returned unchanged; other versions are rejected."""
    if not isinstance(game, str):
        raise TypeError(f"game must be a str such as 'Pong' or 'ALE/Pong-v5', got {type(game).__name__}")
    name = game.strip().removeprefix("ALE/")
    match = re.search(r"-v(\d+)$", name)
    if match is not None:
        if match.group(1) != "5":
            raise ValueError(
                f"Atari game {game!r}: only ALE v5 ids ('ALE/Pong-v5') or bare names ('Pong') are accepted; "
                f"make_atari sets the protocol (sticky actions, frame skip, cap) itself."
            )
        name = name[: match.start()]
    return name


def resolve_atari_game(game: str) -> str:
    """The ALE ROM id (e.g. ``'ms_pacman'``) of ``game``.

    Accepts ``'MsPacman'``, ``'mspacman'``, ``'ms_pacman'`` or ``'ALE/MsPacman-v5'``. An unknown name
    raises ValueError naming it and the closest known games.
    """
    name = _strip_env_id(game)
    table = _rom_table()
    key = _name_key(name)
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=5, cutoff=0.6)
    hint = (
        f" Did you mean: {', '.join(rom_id_to_name(table[k]) for k in close)}?"
        if close
        else f" Atari-100k games: {', '.join(ATARI_100K_GAMES)}."
    )
    raise ValueError(f"Unknown Atari game {game!r}.{hint}")


# ----------------------------------------------------------------------------------------------
# Scores and normalisation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AtariGameScores:
    """Reference scores of one Atari-100k game (random and human, as used by the papers' tables)."""

    game: str
    ale_id: str
    random: float
    human: float


def load_atari_scores() -> dict[str, AtariGameScores]:
    """The 26 Atari-100k games' random and human scores, keyed by name key (``'mspacman'``).

    Read from ``envs/atari100k_scores.csv`` (shipped as package data).
    """
    scores: dict[str, AtariGameScores] = {}
    with _SCORES_CSV.open(newline="") as handle:
        for row in csv.DictReader(handle):
            entry = AtariGameScores(
                game=row["game"], ale_id=row["ale_id"], random=float(row["random"]), human=float(row["human"])
            )
            scores[_name_key(entry.game)] = entry
    return scores


def atari_human_normalized_score(game: str, score: float | np.ndarray) -> float | np.ndarray:
    """Human-normalised score ``(score - random) / (human - random)`` of an Atari-100k game.

    ``game`` may be ``'pong'``, ``'Pong'`` or ``'ALE/Pong-v5'``; ``score`` a number or an array (the
    result has the same shape). A game outside the 26 raises ValueError.
    """
    key = _name_key(_strip_env_id(game))
    scores = load_atari_scores()
    if key not in scores:
        close = difflib.get_close_matches(key, list(scores), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(scores[k].game for k in close)}?" if close else ""
        raise ValueError(
            f"No human/random reference score for Atari game {game!r}; normalised scores are defined for "
            f"the 26 Atari-100k games: {', '.join(ATARI_100K_GAMES)}.{hint}"
        )
    ref = scores[key]
    normalized = (np.asarray(score, dtype=np.float64) - ref.random) / (ref.human - ref.random)
    return float(normalized) if normalized.ndim == 0 else normalized


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_protocol_args(
    sticky_actions: bool,
    frame_skip: int,
    frame_stack: int,
    noop_max: int,
    screen_size: int,
    max_episode_frames: int,
) -> None:
    if not isinstance(sticky_actions, bool):
        raise TypeError(f"sticky_actions must be a bool, got {sticky_actions!r}")
    _check_int("frame_skip", frame_skip, 1)
    _check_int("frame_stack", frame_stack, 1)
    _check_int("noop_max", noop_max, 0)
    _check_int("screen_size", screen_size, 1)
    _check_int("max_episode_frames", max_episode_frames, 1)


# ----------------------------------------------------------------------------------------------
# Single environment
# ----------------------------------------------------------------------------------------------


class AtariLifeLossInfo(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Adds ``info["life_loss"]``: the step lost a life or ended the game (Dopamine's life-loss terminal).

    The episode itself continues until game over or the frame cap; only the flag is added. Put it
    directly over ``AtariPreprocessing`` (it reads the ALE's life counter).
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        self._lives = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._lives = self.env.unwrapped.ale.lives()
        info["life_loss"] = False
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()
        info["life_loss"] = bool(terminated or lives < self._lives)
        self._lives = lives
        return obs, reward, terminated, truncated, info


def make_atari(
    game: str,
    seed: int,
    *,
    sticky_actions: bool = False,
    noop_max: int = DEFAULT_NOOP_MAX,
    frame_skip: int = DEFAULT_FRAME_SKIP,
    frame_stack: int = DEFAULT_FRAME_STACK,
    screen_size: int = DEFAULT_SCREEN_SIZE,
    max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES,
) -> gym.Env:
    """One Atari env with the Atari-100k protocol (see the module docstring).

    Args:
        game: ``'Pong'``, ``'pong'``, ``'ms_pacman'`` or ``'ALE/Pong-v5'``.
        seed: seeds the emulator, the no-op draw and the action space; the first ``reset()`` without a
            seed is the same as ``reset(seed=seed)``.
        sticky_actions: repeat the previous action with probability 0.25 (Machado et al. 2018); off in
            the Atari-100k protocol.
        noop_max: at most this many no-op frames at the start of each episode (0 turns them off).
        frame_skip: emulator frames per agent step (the reward is summed over them).
        frame_stack: frames per observation, oldest first, zeros before the episode start.
        screen_size: side of the square grayscale frame.
        max_episode_frames: emulator frames after which the episode is truncated (108,000 = 27,000 agent
            steps; smaller values are for tests).

    Returns:
        A gymnasium env: observation ``uint8 (frame_stack, screen_size, screen_size)``, action
        ``Discrete(minimal action set)``, reward the raw game score of the step, ``info["life_loss"]``
        on every step, ``info["episode"]`` (unclipped return and length) at the end of each episode.
    """
    _check_protocol_args(sticky_actions, frame_skip, frame_stack, noop_max, screen_size, max_episode_frames)
    seed = _check_int("seed", seed, 0)
    rom = resolve_atari_game(game)
    env = gym.make(
        f"ALE/{rom_id_to_name(rom)}-v5",
        frameskip=1,  # AtariPreprocessing does the skipping and pooling.
        repeat_action_probability=STICKY_ACTION_PROBABILITY if sticky_actions else 0.0,
        full_action_space=False,
        max_num_frames_per_episode=max_episode_frames,
    )
    # Seed the emulator and the no-op generator now, exactly as reset(seed=seed) would.
    env.unwrapped.seed_game(seed)
    env.unwrapped.load_game()
    env = AtariPreprocessing(
        env,
        noop_max=noop_max,
        frame_skip=frame_skip,
        screen_size=screen_size,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        grayscale_newaxis=False,
        scale_obs=False,
    )
    env = AtariLifeLossInfo(env)
    env = FrameStackObservation(env, frame_stack, padding_type="zero")
    env = RecordEpisodeStatistics(env)
    env.action_space.seed(seed)
    return env


# ----------------------------------------------------------------------------------------------
# Vector environment
# ----------------------------------------------------------------------------------------------


class AtariVectorLifeLoss(VectorWrapper):
    """Adds ``info["life_loss"]`` (bool per env) to ale-py's vector env, float64 rewards, and a default seed.

    ``life_loss`` has the same meaning as in :class:`AtariLifeLossInfo`: the step lost a life or ended
    the game. Under ``NEXT_STEP`` autoreset the reset step after an episode end reports False. Under
    ``SAME_STEP`` autoreset ale-py reports the *new* episode's lives on the step that ends an episode,
    so there the flag equals ``terminated`` (a life lost on the very step the frame cap truncates the
    episode is not flagged). The first ``reset()`` without a seed uses ``seed`` (sub-env i gets
    ``seed + i``).
    """

    def __init__(self, env: VectorEnv, seed: int):
        super().__init__(env)
        self._default_seed: int | None = seed
        self._autoreset_mode = AutoresetMode(env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP))
        self._lives = np.zeros(self.num_envs, dtype=np.int64)
        self._prev_done = np.zeros(self.num_envs, dtype=bool)

    def reset(self, *, seed: int | np.ndarray | None = None, options: dict[str, Any] | None = None):
        if seed is None and self._default_seed is not None:
            seed = self._default_seed
        self._default_seed = None
        obs, info = self.env.reset(seed=seed, options=options)
        self._lives = np.asarray(info["lives"], dtype=np.int64).copy()
        if options is not None and "reset_mask" in options:
            self._prev_done[options["reset_mask"]] = False
        else:
            self._prev_done[:] = False
        info["life_loss"] = np.zeros(self.num_envs, dtype=bool)
        return obs, info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(actions, dtype=np.int64))
        lives = np.asarray(info["lives"], dtype=np.int64)
        done = np.logical_or(terminated, truncated)
        lost = lives < self._lives
        if self._autoreset_mode == AutoresetMode.NEXT_STEP:
            lost &= ~self._prev_done  # those sub-envs were just reset; their lives are a new episode's
        else:
            lost &= ~done  # ale-py already reports the next episode's lives for them
        info["life_loss"] = lost | terminated
        self._lives = lives.copy()
        self._prev_done = done
        return obs, np.asarray(reward, dtype=np.float64), terminated, truncated, info


_AUTORESET_MODES = {"nextstep": AutoresetMode.NEXT_STEP, "samestep": AutoresetMode.SAME_STEP}


def _parse_autoreset_mode(mode: str | AutoresetMode) -> AutoresetMode:
    """AutoresetMode from an enum or a name ('NextStep', 'next_step', 'SAME_STEP', ...)."""
    key = _name_key(mode.value if isinstance(mode, AutoresetMode) else str(mode))
    if key not in _AUTORESET_MODES:
        raise ValueError(
            f"autoreset_mode must be 'next_step' or 'same_step' (gymnasium AutoresetMode), got {mode!r}"
        )
    return _AUTORESET_MODES[key]


def make_atari_vector(
    game: str,
    num_envs: int,
    seed: int,
    *,
    sticky_actions: bool = False,
    noop_max: int = DEFAULT_NOOP_MAX,
    frame_skip: int = DEFAULT_FRAME_SKIP,
    frame_stack: int = DEFAULT_FRAME_STACK,
    screen_size: int = DEFAULT_SCREEN_SIZE,
    max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES,
    autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
    num_threads: int = 0,
) -> VectorEnv:
    """``num_envs`` Atari envs stepped in C++ threads (ale-py ``AtariVectorEnv``) with the protocol.

    The preprocessing is the same as :func:`make_atari` (with ``noop_max=0`` the two give identical
    observations, rewards and flags; no-op counts are drawn from 0..noop_max-1 here, see the module
    docstring). Rewards are unclipped float64, fire-on-reset is off, and life loss does not end
    episodes. ``autoreset_mode`` is gymnasium's (``NEXT_STEP`` default: the step after an episode end
    returns the reset observation and ignores its action). Observations: ``uint8 (num_envs,
    frame_stack, screen_size, screen_size)``. ``info["episode"]`` / ``info["_episode"]`` carry the
    unclipped returns of the episodes that ended.
    """
    _check_protocol_args(sticky_actions, frame_skip, frame_stack, noop_max, screen_size, max_episode_frames)
    num_envs = _check_int("num_envs", num_envs, 1)
    seed = _check_int("seed", seed, 0)
    num_threads = _check_int("num_threads", num_threads, 0)
    mode = _parse_autoreset_mode(autoreset_mode)
    rom = resolve_atari_game(game)
    env = AtariVectorEnv(
        rom,
        num_envs,
        num_threads=num_threads,
        max_num_frames_per_episode=max_episode_frames,
        repeat_action_probability=STICKY_ACTION_PROBABILITY if sticky_actions else 0.0,
        full_action_space=False,
        autoreset_mode=mode,
        img_height=screen_size,
        img_width=screen_size,
        grayscale=True,
        stack_num=frame_stack,
        frameskip=frame_skip,
        maxpool=True,
        noop_max=noop_max,
        episodic_life=False,
        life_loss_info=False,
        reward_clipping=False,  # the agent clips its training reward; logged returns stay unclipped
        use_fire_reset=False,  # not part of the Dopamine / Atari-100k preprocessing
    )
    env = AtariVectorLifeLoss(env, seed)
    env = gym.wrappers.vector.RecordEpisodeStatistics(env)
    env.action_space.seed(seed)
    return env
