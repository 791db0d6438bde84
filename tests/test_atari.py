"""Atari-100k protocol: spaces, frame skip + max-pool against the raw ALE, no-ops, cap, life loss, scores."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from plasticrl.envs import (
    ATARI_100K_GAMES,
    atari_human_normalized_score,
    load_atari_scores,
    make_atari,
    make_atari_vector,
)
from plasticrl.envs.atari import DEFAULT_MAX_EPISODE_FRAMES, resolve_atari_game

SHARED_SCORES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "atari100k_scores.csv"


def _raw_env(game: str, seed: int) -> gym.Env:
    """The unprocessed ALE: one emulator frame per step, grayscale screen, no sticky actions."""
    env = gym.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=0.0, obs_type="grayscale")
    env.reset(seed=seed)
    return env


def _preprocess(last_two: list[np.ndarray]) -> np.ndarray:
    """Reference: max over the last two raw frames, area-resized to 84×84 (Dopamine/gymnasium)."""
    pooled = np.maximum(last_two[0], last_two[1])
    return cv2.resize(pooled, (84, 84), interpolation=cv2.INTER_AREA)


def test_spaces_dtypes_and_zero_padded_stack():
    env = make_atari("Pong", seed=0)
    assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert env.action_space == gym.spaces.Discrete(6)  # Pong's minimal action set
    obs, info = env.reset()
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert not obs[:3].any(), "frames before the episode start must be zeros"
    assert obs[3].any()
    assert info["life_loss"] is False
    obs, reward, terminated, truncated, info = env.step(0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert isinstance(reward, float) and not terminated and not truncated
    assert isinstance(info["life_loss"], bool)


def test_name_variants_and_seed_give_the_same_env():
    assert {resolve_atari_game(n) for n in ("Pong", "pong", "ALE/Pong-v5")} == {"pong"}
    assert resolve_atari_game("MsPacman") == resolve_atari_game("ms_pacman") == "ms_pacman"
    first = make_atari("ALE/Pong-v5", seed=7).reset()
    second = make_atari("pong", seed=7).reset(seed=7)  # the factory seed equals an explicit reset seed
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1]["episode_frame_number"] == second[1]["episode_frame_number"]


def test_frame_skip_and_max_pool_equal_reference_from_raw_ale():
    seed, game = 3, "Breakout"
    env = make_atari(game, seed=seed)
    obs, info = env.reset()
    noops = info["episode_frame_number"]

    raw = _raw_env(game, seed)
    frame = None
    for _ in range(noops):
        frame, *_ = raw.step(0)
    assert raw.unwrapped.ale.getEpisodeFrameNumber() == noops
    np.testing.assert_array_equal(obs[3], _preprocess([frame, np.zeros_like(frame)]))

    rng = np.random.default_rng(0)
    pooling_mattered = 0
    for _ in range(60):
        action = int(rng.integers(env.action_space.n))
        previous = obs
        obs, reward, terminated, truncated, _ = env.step(action)
        frames, raw_reward = [], 0.0
        for _ in range(4):  # frame skip 4
            frame, r, *_ = raw.step(action)
            frames.append(frame)
            raw_reward += r
        expected = _preprocess(frames[-2:])
        np.testing.assert_array_equal(obs[3], expected)
        np.testing.assert_array_equal(obs[:3], previous[1:])  # stack shifts by one, oldest first
        assert reward == raw_reward
        assert not terminated and not truncated
        last_only = cv2.resize(frames[-1], (84, 84), interpolation=cv2.INTER_AREA)
        pooling_mattered += int(not np.array_equal(expected, last_only))
    assert pooling_mattered > 0, "the reference must distinguish max-pooling from taking the last frame"


def test_noop_starts_are_at_most_30_and_random():
    env = make_atari("Pong", seed=0)
    counts = [env.reset()[1]["episode_frame_number"] for _ in range(40)]
    assert all(1 <= c <= 30 for c in counts)
    assert len(set(counts)) > 5
    assert make_atari("Pong", seed=0, noop_max=0).reset()[1]["episode_frame_number"] == 0

    vector = make_atari_vector("Pong", num_envs=8, seed=0)
    vector_counts = vector.reset()[1]["episode_frame_number"]
    assert np.all((vector_counts >= 0) & (vector_counts <= 30))
    assert len(set(vector_counts.tolist())) > 2


def test_truncation_at_the_frame_cap():
    cap = 400
    env = make_atari("Pong", seed=1, max_episode_frames=cap)
    _, info = env.reset()
    noops = info["episode_frame_number"]
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, info = env.step(0)
        steps += 1
        done = terminated or truncated
    assert truncated and not terminated
    assert steps == math.ceil((cap - noops) / 4)
    assert info["episode_frame_number"] == cap
    assert info["episode"]["l"] == steps


def test_default_cap_is_108k_frames_and_sticky_actions_off():
    assert DEFAULT_MAX_EPISODE_FRAMES == 108_000
    ale = make_atari("Pong", seed=0).unwrapped.ale
    assert ale.getInt("max_num_frames_per_episode") == 108_000
    assert ale.getFloat("repeat_action_probability") == 0.0
    sticky = make_atari("Pong", seed=0, sticky_actions=True).unwrapped.ale
    assert sticky.getFloat("repeat_action_probability") == pytest.approx(0.25)


def test_vector_truncation_at_the_frame_cap():
    env = make_atari_vector("Pong", num_envs=2, seed=0, max_episode_frames=400, noop_max=0)
    env.reset()
    for step in range(1, 101):
        _, _, terminated, truncated, info = env.step(np.zeros(2, dtype=np.int64))
        assert not terminated.any()
        assert truncated.all() == (step == 100)
    assert np.all(info["episode"]["l"] == 100)


def test_life_loss_is_flagged_without_ending_the_episode():
    env = make_atari("Breakout", seed=0, noop_max=0)
    _, info = env.reset()
    lives = [info["lives"]]
    flags, terminated, steps = [], False, 0
    while not terminated:
        _, _, terminated, truncated, info = env.step(1)  # FIRE: launches the ball, loses lives quickly
        flags.append(info["life_loss"])
        lives.append(info["lives"])
        steps += 1
        assert not truncated and steps < 2000
    assert lives[0] == 5 and lives[-1] == 0
    lost = [i for i in range(len(flags)) if lives[i + 1] < lives[i]]
    assert len(lost) == 5
    assert [i for i, f in enumerate(flags) if f] == lost  # flagged exactly where a life went
    assert flags[-1] and terminated  # the game-over step is flagged too


def test_game_over_is_flagged_in_a_game_without_lives():
    env = make_atari("Pong", seed=0, noop_max=0)
    env.reset()
    flags, terminated = [], False
    while not terminated:
        _, _, terminated, truncated, info = env.step(0)  # standing still: the opponent wins 21-0
        flags.append(info["life_loss"])
        assert not truncated
    assert info["lives"] == 0 and info["episode"]["r"] == -21.0
    assert flags[-1] and not any(flags[:-1])


def test_rewards_and_logged_returns_are_the_unclipped_score():
    env = make_atari("Alien", seed=0, max_episode_frames=1600)
    env.reset()
    rewards, done = [], False
    rng = np.random.default_rng(0)
    while not done:
        _, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        rewards.append(reward)
        done = terminated or truncated
    assert max(rewards) >= 10, "Alien's pellets are worth 10 points; a clipped reward would be 1"
    assert info["episode"]["r"] == pytest.approx(sum(rewards))


@pytest.mark.parametrize("autoreset_mode", ["next_step", "same_step"])
def test_vector_env_matches_single_env(autoreset_mode):
    """With no-ops off, ale-py's C++ vector env and the gymnasium pipeline are the same environment."""
    game, steps = "Breakout", 260
    vector = make_atari_vector(game, num_envs=2, seed=0, noop_max=0, autoreset_mode=autoreset_mode)
    single = make_atari(game, seed=0, noop_max=0)
    assert vector.single_observation_space == single.observation_space
    assert vector.single_action_space == single.action_space
    v_obs, _ = vector.reset()
    s_obs, _ = single.reset()
    np.testing.assert_array_equal(v_obs[0], s_obs)
    rng = np.random.default_rng(1)
    episodes_ended, pending_reset = 0, False
    for _ in range(steps):
        action = int(rng.choice([1, 1, 2, 3]))  # mostly FIRE: episodes end within the test
        v_obs, v_rew, v_term, v_trunc, v_info = vector.step(np.array([action, 0]))
        if pending_reset:  # NEXT_STEP: this vector step was the reset; the action was ignored
            s_obs, _ = single.reset()
            np.testing.assert_array_equal(v_obs[0], s_obs)
            assert v_rew[0] == 0.0 and not v_info["life_loss"][0]
            pending_reset = False
            continue
        s_obs, s_rew, s_term, s_trunc, s_info = single.step(action)
        assert v_rew[0] == s_rew and v_term[0] == s_term and v_trunc[0] == s_trunc
        assert v_info["life_loss"][0] == s_info["life_loss"]
        if s_term:
            episodes_ended += 1
            assert v_info["episode"]["r"][0] == s_info["episode"]["r"]
            assert v_info["episode"]["l"][0] == s_info["episode"]["l"]
            if autoreset_mode == "next_step":
                np.testing.assert_array_equal(v_obs[0], s_obs)
                pending_reset = True
            else:  # SAME_STEP: the returned observation already starts the next episode
                np.testing.assert_array_equal(v_info["final_obs"][0], s_obs)
                s_obs, _ = single.reset()
                np.testing.assert_array_equal(v_obs[0], s_obs)
        else:
            np.testing.assert_array_equal(v_obs[0], s_obs)
    assert episodes_ended >= 1
    assert v_rew.dtype == np.float64 and v_info["life_loss"].dtype == bool


def test_check_env_accepts_the_atari_env():
    check_env(make_atari("Pong", seed=0), skip_render_check=True)


def test_human_normalized_score():
    # Pong: random -20.7, human 14.6 (Atari-100k tables).
    assert atari_human_normalized_score("pong", 0.0) == pytest.approx(20.7 / 35.3)
    assert atari_human_normalized_score("Pong", 14.6) == pytest.approx(1.0)
    assert atari_human_normalized_score("ALE/Pong-v5", -20.7) == pytest.approx(0.0)
    np.testing.assert_allclose(
        atari_human_normalized_score("ms_pacman", np.array([307.3, 6951.6, 3629.45])), [0.0, 1.0, 0.5]
    )
    with pytest.raises(ValueError, match="SpaceInvaders.*26 Atari-100k games"):
        atari_human_normalized_score("SpaceInvaders", 100.0)


def test_the_26_games_and_their_scores_ship_with_the_package():
    scores = load_atari_scores()
    assert len(ATARI_100K_GAMES) == 26 == len(scores)
    # Published values (Badia et al. 2020 / Atari-100k papers), typed in by hand.
    assert (scores["pong"].random, scores["pong"].human) == (-20.7, 14.6)
    assert (scores["breakout"].random, scores["breakout"].human) == (1.7, 30.5)
    assert (scores["alien"].random, scores["alien"].human) == (227.8, 7127.7)
    if SHARED_SCORES.is_file():  # the team's reference copy, beside a developer's checkout (not in CI)
        with SHARED_SCORES.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [f"ALE/{g}-v5" for g in ATARI_100K_GAMES] == [row["ale_id"] for row in rows]
        for row in rows:
            entry = scores[row["game"]]
            assert (entry.random, entry.human) == (float(row["random"]), float(row["human"]))
    for game in ATARI_100K_GAMES:
        resolve_atari_game(game)  # every game has a ROM


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"game": "Pongg"}, ValueError, "Unknown Atari game 'Pongg'.*Pong"),
        ({"game": "space invader"}, ValueError, "SpaceInvaders"),
        ({"game": "ALE/Pong-v4"}, ValueError, "v5"),
        ({"game": 3}, TypeError, "game must be a str"),
        ({"frame_stack": 0}, ValueError, "frame_stack must be >= 1, got 0"),
        ({"frame_skip": 0}, ValueError, "frame_skip must be >= 1, got 0"),
        ({"noop_max": -1}, ValueError, "noop_max must be >= 0, got -1"),
        ({"max_episode_frames": 0}, ValueError, "max_episode_frames"),
        ({"frame_stack": 2.5}, TypeError, "frame_stack must be an int"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"sticky_actions": 1}, TypeError, "sticky_actions must be a bool"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, error, match):
    args = {"game": "Pong", "seed": 0} | kwargs
    with pytest.raises(error, match=match):
        make_atari(**args)


def test_bad_vector_input_is_a_clear_error():
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        make_atari_vector("Pong", num_envs=0, seed=0)
    with pytest.raises(ValueError, match="autoreset_mode must be 'next_step' or 'same_step'"):
        make_atari_vector("Pong", num_envs=1, seed=0, autoreset_mode="sometimes")
    with pytest.raises(ValueError, match="Did you mean: Breakout"):
        make_atari_vector("Breakot", num_envs=1, seed=0)
