"""DrQ(ε) on Atari-100k and the shared loop's discrete-action machinery: ε schedule, dueling and double-DQN
targets against hand computations, life loss / truncation / reward clipping through the training envs and the
buffer, exact replay-ratio accounting with vector envs, the evaluation protocol, smoke runs of every
intervention flag, kill-and-resume equality and bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from plasticrl.agents import drq_atari
from plasticrl.buffers import ReplayBatch, ReplayBuffer
from plasticrl.common.cli import run_agent
from plasticrl.common.evaluation import AtariEvaluator
from plasticrl.common.exploration import epsilon_greedy, linearly_decaying_epsilon
from plasticrl.common.training_env import AtariEnvs, EnvStep
from plasticrl.envs import atari_human_normalized_score, make_atari_vector

REPO = Path(__file__).resolve().parents[1]

# A short game (50 agent steps at most) keeps evaluations and episodes cheap in tests.
SHORT_GAME = 200


def tiny_flags(run_dir: Path, *extra: str) -> list[str]:
    return [
        "--env-id", "Pong", "--total-steps", "160", "--learning-starts", "64", "--batch-size", "4",
        "--eval-every", "80", "--eval-episodes", "2", "--intermediate-eval-episodes", "1",
        "--max-episode-frames", str(SHORT_GAME), "--diagnostics-every", "40", "--probe-batch-size", "16",
        "--log-every", "40", "--hidden-dim", "32", "--padding", "valid", "--threads", "1",
        "--checkpoint-every", "0", "--run-dir", str(run_dir), *extra,
    ]  # fmt: skip


def run_tiny(tmp_path: Path, *extra: str) -> dict:
    from plasticrl.common.cli import cli

    return drq_atari.main(cli(drq_atari.Args, tiny_flags(tmp_path / "runs", *extra)))


# ----------------------------------------------------------------------------- exploration


def test_linearly_decaying_epsilon_is_dopamines():
    drq = lambda step: linearly_decaying_epsilon(step, 1600, 5000, 0.01)  # noqa: E731
    assert [drq(s) for s in (0, 1599, 1600)] == [1.0, 1.0, 1.0]
    assert drq(4100) == pytest.approx(0.505)  # halfway through the decay
    assert drq(6600) == pytest.approx(0.01) and drq(100_000) == pytest.approx(0.01)
    bbf = lambda step: linearly_decaying_epsilon(step, 2000, 2001, 0.0)  # noqa: E731
    assert bbf(2000) == 1.0 and bbf(4001) == 0.0 and bbf(3000) == pytest.approx(1001 / 2001)


def test_epsilon_greedy_draws_the_same_numbers_whatever_epsilon():
    calls = []

    def greedy():
        calls.append(1)
        return np.full(64, 7)

    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    random_only = epsilon_greedy(greedy, 1.0, 5, rng_a, 64)
    assert not calls and random_only.max() < 5
    greedy_only = epsilon_greedy(greedy, 0.0, 5, rng_b, 64)
    assert calls and (greedy_only == 7).all()
    assert rng_a.bit_generator.state == rng_b.bit_generator.state
    mixed = epsilon_greedy(greedy, 0.5, 5, np.random.default_rng(1), 64)
    assert 10 < (mixed != 7).sum() < 54


# ----------------------------------------------------------------------------- targets and loss


def test_dueling_head_matches_a_hand_computation():
    args = drq_atari.Args()
    head = drq_atari.DuelingHead(3, 2, 3, "relu", dueling=True)
    with torch.no_grad():
        head.hidden[0].weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]]))
        head.hidden[0].bias.copy_(torch.tensor([0.0, -1.0]))
        head.value.weight.copy_(torch.tensor([[2.0, -1.0]]))
        head.value.bias.fill_(0.5)
        head.advantage.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        head.advantage.bias.copy_(torch.tensor([0.0, 0.0, -3.0]))
    x = torch.tensor([[2.0, 4.0, 1.0]])
    h = np.maximum([2 - 1, 0.5 * 7 - 1], 0)  # [1, 2.5]
    value = 2 * h[0] - h[1] + 0.5  # 0.0
    advantage = np.array([h[0], h[1], h[0] + h[1] - 3])  # [1, 2.5, 0.5]
    expected = value + advantage - advantage.mean()
    np.testing.assert_allclose(head(x)[0].detach().numpy(), expected, rtol=1e-6)
    assert args.dueling


def test_double_dqn_target_selects_with_online_and_evaluates_with_target():
    online = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 4.0]])
    target = torch.tensor([[10.0, -2.0, 7.0], [1.0, 9.0, 3.0]])
    reward = torch.tensor([0.5, -1.0])
    discount = torch.tensor([0.9**10, 0.0])  # the second window ended in a terminal
    y = drq_atari.double_dqn_target(online, target, reward, discount)
    # argmax online: action 1 and action 0 -> target values -2 and 1
    torch.testing.assert_close(y, torch.tensor([0.5 + 0.9**10 * -2.0, -1.0]))


def _batch(b: int = 6, seed: int = 0) -> ReplayBatch:
    g = torch.Generator().manual_seed(seed)
    return ReplayBatch(
        obs=torch.randint(0, 256, (b, 4, 84, 84), generator=g, dtype=torch.uint8),
        action=torch.randint(0, 4, (b,), generator=g),
        reward=torch.randn(b, generator=g),
        discount=torch.tensor([0.9, 0.0, 0.5, 0.9, 0.0, 0.3])[:b],
        next_obs=torch.randint(0, 256, (b, 4, 84, 84), generator=g, dtype=torch.uint8),
        n_steps=torch.ones(b, dtype=torch.int64),
        indices=torch.arange(b),
        weights=torch.ones(b),
    )


def test_td_loss_is_the_huber_loss_of_the_bootstrapped_target():
    """Without augmentation the loss is Huber(Q(s, a) − (R + γ^k max_a' Q(s', a'))) computed by hand."""
    torch.manual_seed(0)
    args = drq_atari.Args(image_pad=0, intensity_scale=0.0, hidden_dim=16, padding="valid")
    q_net = drq_atari.QNetwork(4, args)
    batch = _batch()
    loss, q = drq_atari.td_loss(q_net, batch, args)
    with torch.no_grad():
        q_all = q_net(batch.obs.double().float() / 255).double().numpy()
        next_all = q_net(batch.next_obs.float() / 255).double().numpy()
    taken = q_all[np.arange(6), batch.action.numpy()]
    y = batch.reward.double().numpy() + batch.discount.double().numpy() * next_all.max(axis=1)
    error = np.abs(taken - y)
    huber = np.where(error <= 1, 0.5 * error**2, error - 0.5).mean()
    assert loss.item() == pytest.approx(huber, rel=1e-5)
    np.testing.assert_allclose(q.detach().numpy(), taken, rtol=1e-5)


def test_augmentation_shifts_s_and_s_prime_independently_and_scales_intensity():
    torch.manual_seed(0)
    args = drq_atari.Args(channels_last=False)
    obs = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    a, b = drq_atari.augment(obs, args), drq_atari.augment(obs, args)
    assert a.dtype == torch.float32 and a.shape == obs.shape and not torch.equal(a, b)
    plain = drq_atari.augment(obs, drq_atari.Args(image_pad=0, intensity_scale=0.0))
    torch.testing.assert_close(plain, obs.float() / 255)
    scaled = drq_atari.augment(obs, drq_atari.Args(image_pad=0, intensity_scale=0.05))
    ratio = scaled.sum(dim=(1, 2, 3)) / plain.sum(dim=(1, 2, 3))
    assert ((ratio >= 0.9 - 1e-6) & (ratio <= 1.1 + 1e-6)).all() and ratio.std() > 0


# ----------------------------------------------------------------------------- training envs and buffer


class ScriptedAtari:
    """A next-step-autoreset vector env that plays scripted steps: (reward, life_loss, terminated,
    truncated) per step, one script per env. Frames are distinct numbers; the stack is 4 frames, zeros
    before the start of a game, as the real env's."""

    def __init__(self, scripts: list[list[tuple[float, bool, bool, bool]]]):
        self.num_envs = len(scripts)
        self.scripts = [list(s) for s in scripts]
        self.single_action_space = spaces.Discrete(4)
        self.single_observation_space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
        self._counter = np.zeros(self.num_envs, dtype=np.int64)
        self._stacks = np.zeros((self.num_envs, 4, 84, 84), dtype=np.uint8)
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._done = np.zeros(self.num_envs, dtype=bool)

    def _new_frame(self, env: int, reset: bool) -> None:
        self._counter[env] += 1
        if reset:
            self._stacks[env] = 0
        self._stacks[env] = np.roll(self._stacks[env], -1, axis=0)
        self._stacks[env, -1] = self._counter[env] % 251 + 1

    def reset(self, *, seed=None, options=None):
        for env in range(self.num_envs):
            self._new_frame(env, reset=True)
        self._returns[:] = 0
        self._lengths[:] = 0
        return self._stacks.copy(), {"life_loss": np.zeros(self.num_envs, dtype=bool)}

    def step(self, actions):
        n = self.num_envs
        reward, life_loss = np.zeros(n), np.zeros(n, dtype=bool)
        terminated, truncated = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        ended = np.zeros(n, dtype=bool)
        episode_r, episode_l = np.zeros(n), np.zeros(n, dtype=np.int64)
        for env in range(n):
            if self._done[env]:  # next-step autoreset: the reset observation, nothing else
                self._new_frame(env, reset=True)
                self._returns[env] = self._lengths[env] = 0
                self._done[env] = False
                continue
            r, lost, term, trunc = self.scripts[env].pop(0)
            self._new_frame(env, reset=False)
            reward[env], life_loss[env], terminated[env], truncated[env] = r, lost or term, term, trunc
            self._returns[env] += r
            self._lengths[env] += 1
            if term or trunc:
                self._done[env] = ended[env] = True
                episode_r[env], episode_l[env] = self._returns[env], self._lengths[env]
        info = {"life_loss": life_loss, "episode": {"r": episode_r, "l": episode_l}, "_episode": ended}
        return self._stacks.copy(), reward, terminated, truncated, info


# One game: a life lost at step 3, the game cut (truncated) at step 6; a second game ends at its step 4.
SCRIPT = [
    (5.0, False, False, False), (-3.0, False, False, False), (0.5, True, False, False),
    (1.0, False, False, False), (0.0, False, False, False), (2.0, False, False, True),
    (1.0, False, False, False), (0.0, True, False, False), (-0.5, False, False, False),
    (1.0, False, True, False),
]  # fmt: skip


def test_life_loss_cuts_the_n_step_window_truncation_bootstraps_and_rewards_are_clipped_for_learning():
    envs = AtariEnvs(ScriptedAtari([list(SCRIPT) + [(0.0, False, False, False)] * 20]), seed=0)
    buffer = ReplayBuffer(100, envs.env.single_observation_space, envs.env.single_action_space, frame_stack=4)
    envs.reset()
    returns, stored = [], 0
    for _ in range(len(SCRIPT) + 1):  # 10 scripted steps and the reset step between the games
        step = envs.step(np.zeros(1, dtype=np.int64))
        buffer.add(
            step.obs, step.action, step.reward, step.next_obs, step.terminated, step.truncated, skip=step.skip
        )
        stored += step.agent_steps
        returns += [r for r, _ in step.episodes]
    assert stored == 10 and envs.episodes == 2
    assert returns == [5.0 - 3.0 + 0.5 + 1.0 + 0.0 + 2.0, 1.0 + 0.0 - 0.5 + 1.0]  # unclipped whole games

    clipped = [float(np.clip(r, -1, 1)) for r, *_ in SCRIPT]
    ends = {2: "terminal", 5: "truncated", 7: "terminal", 9: "terminal"}  # life losses count as terminal
    gamma, n = 0.9, 10
    batches = [buffer.sample(10, n_step=n, gamma=gamma) for _ in range(40)]
    sampled = [
        (t, r, d)
        for b in batches
        for t, r, d in zip(b.indices.tolist(), b.reward.tolist(), b.discount.tolist())
    ]
    seen = set()
    for t, reward, discount in sampled:
        k, end = 0, None
        while k < n:
            k += 1
            if t + k - 1 in ends:
                end = ends[t + k - 1]
                break
        expected_reward = sum(gamma**j * clipped[t + j] for j in range(k))
        expected_discount = 0.0 if end == "terminal" else gamma**k
        assert reward == pytest.approx(expected_reward, rel=1e-6), t
        assert discount == pytest.approx(expected_discount, rel=1e-6), t
        seen.add(t)
    assert {0, 2, 3, 5, 6, 8} <= seen


def test_keep_first_stores_only_the_steps_up_to_the_budget():
    step = EnvStep(np.zeros((4, 1)), np.zeros(4), np.zeros(4), np.zeros((4, 1)), np.zeros(4, bool),
                   np.zeros(4, bool), np.array([False, True, False, False]), 3)  # fmt: skip
    step.keep_first(2)
    assert step.agent_steps == 2 and step.skip.tolist() == [False, True, False, True]


def test_a_resumed_atari_env_replays_to_the_same_games():
    envs = AtariEnvs.make("Breakout", 2, seed=3, max_episode_frames=400)
    envs.reset()
    rng = np.random.default_rng(0)
    for _ in range(150):  # several games end and autoreset on the way
        envs.step(envs.random_action(rng))
    state = envs.state_dict()
    again = AtariEnvs.make("Breakout", 2, seed=3, max_episode_frames=400)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.obs, envs.obs)
    assert again.episodes == envs.episodes > 0
    action = envs.random_action(rng)
    a, b = envs.step(action), again.step(action)
    np.testing.assert_array_equal(a.next_obs, b.next_obs)
    with pytest.raises(RuntimeError, match="did not reach the checkpointed observation"):
        AtariEnvs.make("Breakout", 2, seed=4, max_episode_frames=400).load_state_dict(state)


# ----------------------------------------------------------------------------- replay ratio with vector envs


@pytest.mark.parametrize("num_envs", [1, 2, 4])
@pytest.mark.parametrize("ratio", [0.5, 1, 2])
def test_replay_ratio_counts_agent_steps_whatever_the_number_of_envs(tmp_path, num_envs, ratio):
    extra = ["--num-envs", str(num_envs), "--replay-ratio", str(ratio), "--total-steps", "131",
             "--eval-every", "1000", "--eval-episodes", "1", "--diagnostics-every", "0"]  # fmt: skip
    result = run_tiny(tmp_path, *extra)
    assert result["steps"] == 131
    assert result["updates"] == math.floor((131 - 64) * ratio)


# ----------------------------------------------------------------------------- evaluation protocol


def _obs_policy(num_actions: int):
    """Deterministic scores that depend only on the observation (the same batched or not)."""

    def q_values(obs: np.ndarray) -> np.ndarray:
        flat = obs.reshape(len(obs), -1).astype(np.int64)
        columns = [flat[:, 1000 + 977 * a :: 4093].sum(axis=1) % 17 for a in range(num_actions)]
        return np.stack(columns, axis=1)

    return q_values


def test_batched_evaluation_gives_the_scores_of_sequential_games():
    policy = _obs_policy(4)
    batched = AtariEvaluator("Breakout", 5, policy, epsilon=0.05, max_batch=4, max_episode_frames=2000)
    sequential = AtariEvaluator("Breakout", 5, policy, epsilon=0.05, max_batch=1, max_episode_frames=2000)
    scores = batched(1000, 4)
    assert scores == sequential(1000, 4)
    assert scores != batched(2000, 4)  # another evaluation step, other games


def test_evaluation_plays_whole_games_through_lost_lives_and_stops_at_the_cap():
    """Each game is played from its own seed until the game ends or the frame cap cuts it: the score equals a
    rollout of the same actions in a fresh env, through every lost life."""
    policy = _obs_policy(4)
    evaluator = AtariEvaluator("Breakout", 7, policy, epsilon=0.0, max_batch=2, max_episode_frames=4000)
    scores = evaluator(500, 2)
    for game, score in enumerate(scores):
        env = make_atari_vector("Breakout", 1, 0, max_episode_frames=4000)
        obs, _ = env.reset(seed=np.array([evaluator.game_seed(500, game)]))
        total, steps, lives_lost, done = 0.0, 0, 0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy(obs).argmax(axis=1))
            total, steps = total + float(reward[0]), steps + 1
            lives_lost += int(info["life_loss"][0] and not terminated[0])
            done = bool(terminated[0] or truncated[0])
        assert score == total
        assert steps <= 1000  # 4000 frames / frame skip 4
        assert lives_lost >= 1 or truncated[0]


def test_evaluation_epsilon_and_step_cap(monkeypatch):
    actions_taken = []
    evaluator = AtariEvaluator("Pong", 0, lambda obs: np.zeros((len(obs), 6)), epsilon=0.5, max_batch=1,
                               max_episode_frames=400)  # fmt: skip
    env = evaluator._env(1)
    original = env.step

    def recording_step(actions):
        actions_taken.append(int(actions[0]))
        return original(actions)

    monkeypatch.setattr(env, "step", recording_step)
    evaluator(0, 1)
    assert 90 <= len(actions_taken) <= 100  # the 400-frame cap (no-op frames count): ≤ 100 agent steps
    random_share = np.mean(np.array(actions_taken) != 0)
    assert 0.3 < random_share < 0.55  # ε 0.5, of which 5/6 differ from the greedy action 0


# ----------------------------------------------------------------------------- runs


def _complete(run_dir: Path) -> None:
    for name in ("config.json", "eval.csv", "result.json"):
        assert (run_dir / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())


def test_smoke_run_logs_normalised_scores_and_plasticity(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_tiny(tmp_path, "--num-envs", "2")
    run_dir = Path(result["run_dir"])
    _complete(run_dir)
    assert result["updates"] == 160 - 64 and result["steps"] == 160
    rows = list(csv.DictReader((run_dir / "eval.csv").open()))
    assert [int(r["step"]) for r in rows] == [80, 160] and len(rows[-1]["returns"].split()) == 2
    assert float(rows[-1]["normalized_score"]) == pytest.approx(
        atari_human_normalized_score("Pong", float(rows[-1]["mean_return"]))
    )
    assert result["final_normalized_score"] == pytest.approx(float(rows[-1]["normalized_score"]))
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"eval/normalized_score", "losses/td", "charts/episodic_return",
                "plasticity/dormant_ratio/head", "plasticity/srank/encoder"}  # fmt: skip
    assert expected <= tags


INTERVENTION_FLAGS = {
    "reset": ["--reset.every", "30"],
    "shrink_perturb": ["--shrink-perturb.every", "30", "--shrink-perturb.unit", "step"],
    "hare_tortoise": ["--hare-tortoise.enabled", "--hare-tortoise.every", "40"],
    "l2_init": ["--l2-init.enabled"],
    "redo": ["--redo.every", "30", "--redo.batch-size", "16"],
    "injection": ["--injection.at", "40"],
    "cbp": ["--cbp.enabled", "--cbp.maturity-threshold", "10", "--cbp.replacement-rate", "0.05"],
}


@pytest.mark.parametrize("name", list(INTERVENTION_FLAGS))
def test_every_intervention_flag_runs(tmp_path, name):
    result = run_tiny(tmp_path, *INTERVENTION_FLAGS[name], "--eval-every", "1000", "--eval-episodes", "1")
    _complete(Path(result["run_dir"]))
    assert result["updates"] == 96
    if name != "l2_init":  # (a penalty, not an event)
        assert result["interventions"].get(name, 0) >= 1, result["interventions"]


def _command(*flags: str) -> list[str]:
    return [sys.executable, str(REPO / "agents" / "drq_atari.py"), *flags]


def _eval_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "eval.csv"
    return list(csv.DictReader(path.open())) if path.is_file() else []


def test_killed_and_resumed_run_with_two_envs_gives_the_same_results(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = ["--num-envs", "2", "--checkpoint-every", "100", "--total-steps", "200", "--eval-every", "100",
             "--reset.every", "60", "--reset.unit", "step"]  # fmt: skip
    reference = subprocess.run(_command(*tiny_flags(tmp_path / "reference", *flags)), env=env,
                               capture_output=True, text=True, timeout=600)  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    [reference_dir] = (tmp_path / "reference").iterdir()

    process = subprocess.Popen(_command(*tiny_flags(tmp_path / "killed", *flags)), env=env,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    runs = tmp_path / "killed"
    start = time.time()
    while not (runs.exists() and any(runs.iterdir()) and (next(runs.iterdir()) / "checkpoint.pt").exists()):
        assert process.poll() is None, process.stderr.read()
        assert time.time() - start < 300
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    [run_dir] = runs.iterdir()
    assert not (run_dir / "result.json").exists()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["global_step"] in (100, 101)
    resumed = subprocess.run(_command("--resume", str(run_dir)), env=env, capture_output=True, text=True,
                             timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert _eval_rows(run_dir) == _eval_rows(reference_dir)
    ours, theirs = (json.loads((d / "result.json").read_text()) for d in (run_dir, reference_dir))
    keys = ("updates", "steps", "episodes", "interventions", "final_eval_return", "final_normalized_score")
    for key in keys:
        assert ours[key] == theirs[key], key


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--env-id", "SpaceInvaders"], "defined for the 26 Atari-100k games: Alien, Amidar"),
        (["--env-id", "Pongg"], "Did you mean: Pong?"),
        (["--num-envs", "0"], "--num-envs must be >= 1"),
        (["--eval-episodes", "0"], "--eval-episodes must be >= 1"),
        (["--intermediate-eval-episodes", "0"], "--intermediate-eval-episodes must be >= 1"),
        (["--reset.every", "10", "--reset.modules", "critic"], "QNetwork has no part named 'critic'"),
        (["--n-step", "0"], "--n-step must be an int >= 1"),
        (["--final-epsilon", "2"], "--final-epsilon must be in [0, 1]"),
        (["--lr", "0"], "--lr must be a finite number > 0"),
        (["--learning-starts", "10"], "must be at least --batch-size"),
        (["--learning-starts", "12"], "--learning-starts 12 must be at least --batch-size 4 + --num-envs 1"),
        (["--buffer-size", "20", "--num-envs", "4"], "--buffer-size 20 holds 5 transitions per env"),
        (["--padding", "full"], "--padding must be 'same' or 'valid'"),
    ],
)
def test_bad_input_is_one_error_line_and_nothing_is_written(tmp_path, capsys, flags, message):
    run_dir = tmp_path / "runs"
    status = run_agent(drq_atari.main, drq_atari.Args, [*tiny_flags(run_dir), *flags])
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and message in line, err
    assert not run_dir.exists() or not any(run_dir.iterdir())
