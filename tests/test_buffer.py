"""ReplayBuffer against brute force: every sampled field is recomputed from the raw episode lists.

Frames encode (env, episode, step) in their pixels, episodes end by termination, truncation or both,
are often shorter than the frame stack and than n, several envs run in parallel, and the circular
storage wraps several times. The reference below never looks at the buffer's storage: it walks the
list of transitions exactly as the env produced them.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from gymnasium import spaces
from scipy import stats

from plasticrl.buffers import ReplayBatch, ReplayBuffer, ReplayRatioSchedule, SumTree

EPISODE_LENGTHS = (1, 2, 3, 4, 5, 7, 11, 30)  # below the stack (3, 4) and below n (up to 10)
END_KINDS = ("terminated", "truncated", "both")


@dataclass
class Step:
    obs: np.ndarray
    action: np.ndarray
    reward: float
    next_obs: np.ndarray
    terminated: bool
    truncated: bool


def image_frame(env: int, episode: int, step: int, frame_shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(frame_shape))
    code = [env + 1, episode % 256, episode // 256, step % 256, step // 256]
    code += [(31 * env + 17 * episode + 7 * step + 3 * i) % 251 for i in range(size - len(code))]
    return np.array(code[:size], dtype=np.uint8).reshape(frame_shape)


def state_frame(env: int, episode: int, step: int, frame_shape: tuple[int, ...]) -> np.ndarray:
    values = np.arange(int(np.prod(frame_shape)), dtype=np.float32) * 0.01
    values[:3] = (env, episode, step)
    return values.reshape(frame_shape)


def stacked(frames: list[np.ndarray], step: int, stack: int, padding: str) -> np.ndarray:
    """What a frame-stacking env returns at ``step``: oldest first, padded before the episode start."""
    parts = []
    for index in range(step - stack + 1, step + 1):
        if index >= 0:
            parts.append(frames[index])
        elif padding == "zeros":  # ale_py.AtariVectorEnv
            parts.append(np.zeros_like(frames[0]))
        else:  # gymnasium FrameStackObservation(padding_type="reset")
            parts.append(frames[0])
    return np.concatenate(parts, axis=0)


def make_stream(
    env: int,
    num_steps: int,
    *,
    frame_shape: tuple[int, ...],
    stack: int,
    padding: str,
    action_space: spaces.Space,
    rng: np.random.Generator,
    frame_fn=image_frame,
    lengths: tuple[int, ...] = EPISODE_LENGTHS,
) -> list[Step]:
    """One env's transitions; the last episode is cut off unfinished."""
    steps: list[Step] = []
    episode = 0
    while len(steps) < num_steps:
        length = int(rng.choice(lengths))
        end = END_KINDS[int(rng.integers(len(END_KINDS)))]
        frames = [frame_fn(env, episode, s, frame_shape) for s in range(length + 1)]
        for s in range(length):
            last = s == length - 1
            steps.append(
                Step(
                    obs=stacked(frames, s, stack, padding),
                    action=sample_action(action_space, rng),
                    reward=float(np.float32(rng.normal())),
                    next_obs=stacked(frames, s + 1, stack, padding),
                    terminated=last and end in ("terminated", "both"),
                    truncated=last and end in ("truncated", "both"),
                )
            )
        episode += 1
    return steps[:num_steps]


def sample_action(action_space: spaces.Space, rng: np.random.Generator) -> np.ndarray:
    if isinstance(action_space, spaces.Discrete):
        return np.int64(rng.integers(action_space.n))
    return rng.uniform(-1, 1, size=action_space.shape).astype(np.float32)


def reference(stream: list[Step], position: int, n_step: int, gamma: float, sequence_length: int) -> dict:
    """Brute force: walk the env's transitions from ``position``."""
    first = stream[position]
    ret, steps = 0.0, 0
    for j in range(n_step):
        step = stream[position + j]
        ret += gamma**j * step.reward
        steps += 1
        if step.terminated or step.truncated:
            break
    last = stream[position + steps - 1]
    out = {
        "obs": first.obs,
        "action": first.action,
        "reward": ret,
        "discount": 0.0 if last.terminated else gamma**steps,
        "next_obs": last.next_obs,
        "n_steps": steps,
    }
    if sequence_length:
        obs, actions, rewards, mask = [], [], [], []
        in_episode = True
        for j in range(sequence_length):
            if (
                in_episode
                and j > 0
                and (stream[position + j - 1].terminated or stream[position + j - 1].truncated)
            ):
                in_episode = False
            if in_episode:
                step = stream[position + j]
                obs.append(step.next_obs)
                actions.append(step.action)
                rewards.append(step.reward)
            else:
                obs.append(np.zeros_like(first.obs))
                actions.append(np.zeros_like(first.action))
                rewards.append(0.0)
            mask.append(float(in_episode))
        out.update(future_obs=np.stack(obs), future_action=np.stack(actions))
        out.update(future_reward=np.array(rewards), future_mask=np.array(mask))
    return out


def reference_valid(stream_length: int, stream: list[Step], kept: int, horizon: int) -> set[int]:
    """Positions among the newest ``kept`` whose ``horizon``-step window (or rest of episode) exists."""
    valid = set()
    for position in range(max(0, stream_length - kept), stream_length):
        for j in range(horizon):
            if position + j >= stream_length:
                break
            if stream[position + j].terminated or stream[position + j].truncated:
                valid.add(position)
                break
        else:
            valid.add(position)
    return valid


def check_batch(batch: ReplayBatch, streams, added, n_step, gamma, sequence_length, num_envs) -> None:
    indices = np.asarray(batch.indices)
    for i, index in enumerate(indices.tolist()):
        env, position = index % num_envs, index // num_envs
        assert position < added[env]
        want = reference(streams[env], position, n_step, gamma, sequence_length)
        np.testing.assert_array_equal(batch.obs[i], want["obs"])
        np.testing.assert_array_equal(batch.next_obs[i], want["next_obs"])
        np.testing.assert_array_equal(batch.action[i], want["action"])
        assert batch.n_steps[i] == want["n_steps"]
        np.testing.assert_allclose(batch.reward[i], want["reward"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batch.discount[i], want["discount"], rtol=1e-6, atol=0)
        if sequence_length:
            np.testing.assert_array_equal(batch.future_obs[i], want["future_obs"])
            np.testing.assert_array_equal(batch.future_action[i], want["future_action"])
            np.testing.assert_allclose(batch.future_reward[i], want["future_reward"], rtol=1e-6)
            np.testing.assert_array_equal(batch.future_mask[i], want["future_mask"])
        else:
            assert batch.future_obs is None and batch.future_mask is None


def feed(buffer: ReplayBuffer, streams, tick: int) -> None:
    """Add step ``tick`` of every env in one vectorised call."""
    if buffer.num_envs == 1 and tick % 2:  # a single env also accepts arrays without the env axis
        step = streams[0][tick]
        buffer.add(step.obs, step.action, step.reward, step.next_obs, step.terminated, step.truncated)
        return
    steps = [stream[tick] for stream in streams]
    buffer.add(
        np.stack([s.obs for s in steps]),
        np.stack([s.action for s in steps]),
        np.array([s.reward for s in steps], dtype=np.float32),
        np.stack([s.next_obs for s in steps]),
        np.array([s.terminated for s in steps]),
        np.array([s.truncated for s in steps]),
    )


SETTINGS = [  # (frame_shape, stack, padding, num_envs, action_space, capacity)
    ((1, 3, 3), 4, "zeros", 1, spaces.Discrete(6), 40),  # Atari-like
    ((3, 2, 2), 3, "reset", 3, spaces.Box(-1, 1, (2,), np.float32), 75),  # DMC-pixels-like
    ((1, 3, 3), 4, "reset", 2, spaces.Discrete(4), 48),
]
SAMPLE_SETTINGS = [(1, 0), (3, 0), (10, 0), (1, 5), (10, 5), (3, 8)]  # (n_step, sequence_length)
GAMMAS = (0.99, 0.5, 1.0, 0.0, 0.97)


@pytest.mark.parametrize("frame_shape, stack, padding, num_envs, action_space, capacity", SETTINGS)
def test_samples_match_brute_force_while_filling_and_wrapping(
    frame_shape, stack, padding, num_envs, action_space, capacity
):
    rng = np.random.default_rng(1)
    obs_shape = (frame_shape[0] * stack, *frame_shape[1:])
    space = spaces.Box(0, 255, obs_shape, np.uint8)
    num_steps = 6 * capacity // num_envs  # the ring wraps about six times
    streams = [
        make_stream(
            env,
            num_steps,
            frame_shape=frame_shape,
            stack=stack,
            padding=padding,
            action_space=action_space,
            rng=rng,
        )
        for env in range(num_envs)
    ]
    # A large reserve: only the transition ring bounds what is kept, so the valid set is known exactly.
    buffer = ReplayBuffer(
        capacity, space, action_space, frame_stack=stack, num_envs=num_envs, seed=3, start_frame_reserve=10.0
    )
    per_env = capacity // num_envs
    call = 0
    for tick in range(num_steps):
        feed(buffer, streams, tick)
        added = [tick + 1] * num_envs
        assert len(buffer) == num_envs * min(tick + 1, per_env)
        if tick % 3:
            continue
        n_step, sequence_length = SAMPLE_SETTINGS[call % len(SAMPLE_SETTINGS)]
        gamma = GAMMAS[call % len(GAMMAS)]
        call += 1
        horizon = max(n_step, sequence_length)
        if per_env < stack + horizon:
            continue
        valid = {
            position * num_envs + env
            for env in range(num_envs)
            for position in reference_valid(tick + 1, streams[env], per_env, horizon)
        }
        assert buffer.num_valid(n_step, sequence_length) == len(valid)
        if not valid:
            with pytest.raises(ValueError, match="cannot sample"):
                buffer.sample(1, n_step=n_step, gamma=gamma, sequence_length=sequence_length)
            continue
        batch = buffer.sample(
            min(16, len(valid)), n_step=n_step, gamma=gamma, sequence_length=sequence_length
        )
        assert set(batch.indices.tolist()) <= valid
        np.testing.assert_array_equal(batch.weights, 1.0)
        check_batch(batch, streams, added, n_step, gamma, sequence_length, num_envs)
    assert call > 40


def reference_first_kept(stream: list[Step], added: int, per_env: int, frame_slots: int, stack: int) -> int:
    """The oldest position still stored after ``added`` adds, from the documented storage rule.

    Frames are written per env: ``stack`` frames for the first observation of an episode, then one per
    step. A transition is kept while it is among the newest ``per_env`` and the ``stack`` frames of its
    obs are among the newest ``frame_slots`` frames written (the frames of next_obs are newer still).
    """
    written = 0
    oldest_frame = []
    for position in range(added):
        starts = position == 0 or stream[position - 1].terminated or stream[position - 1].truncated
        written += stack if starts else 0
        oldest_frame.append(written - stack)  # the obs window ends at frame written - 1
        written += 1
    first = max(0, added - per_env)
    while first < added and oldest_frame[first] < written - frame_slots:
        first += 1
    return first


def reference_valid_from(stream: list[Step], first: int, added: int, horizon: int) -> set[int]:
    """Positions in [first, added) whose ``horizon``-step window (or the rest of their episode) is stored."""
    return reference_valid(added, stream, added - first, horizon)


@pytest.mark.parametrize("frame_shape, stack, padding, num_envs, action_space, capacity", SETTINGS)
def test_samples_match_brute_force_with_envs_out_of_step_and_the_default_reserve(
    frame_shape, stack, padding, num_envs, action_space, capacity
):
    """Random ``skip`` per env (junk in the skipped rows), episodes ending at different times, and the
    default start-frame reserve, which these short episodes overflow: the kept set, the valid set and
    every sampled field still match the reference built from the raw episode lists."""
    rng = np.random.default_rng(11)
    obs_shape = (frame_shape[0] * stack, *frame_shape[1:])
    space = spaces.Box(0, 255, obs_shape, np.uint8)
    num_steps = 6 * capacity // num_envs
    streams = [
        make_stream(
            env,
            num_steps,
            frame_shape=frame_shape,
            stack=stack,
            padding=padding,
            action_space=action_space,
            rng=rng,
        )
        for env in range(num_envs)
    ]
    buffer = ReplayBuffer(capacity, space, action_space, frame_stack=stack, num_envs=num_envs, seed=4)
    per_env = capacity // num_envs
    frame_slots = per_env + math.ceil(0.05 * per_env) + stack  # the documented default frame ring
    added = [0] * num_envs
    calls = dropped_by_frames = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        while min(added) < num_steps:
            skip = (rng.random(num_envs) < 0.35) | (np.array(added) >= num_steps)
            rows = []
            for env in range(num_envs):
                if skip[env]:  # junk of the right shape and dtype: never looked at
                    junk = rng.integers(0, 256, obs_shape, dtype=np.uint8)
                    rows.append(Step(junk, sample_action(action_space, rng), 9.0, junk, True, False))
                else:
                    rows.append(streams[env][added[env]])
            buffer.add(
                np.stack([r.obs for r in rows]),
                np.stack([r.action for r in rows]),
                np.array([r.reward for r in rows], dtype=np.float32),
                np.stack([r.next_obs for r in rows]),
                np.array([r.terminated for r in rows]),
                np.array([r.truncated for r in rows]),
                skip=skip,
            )
            added = [count + int(not s) for count, s in zip(added, skip)]
            first = [
                reference_first_kept(streams[env], added[env], per_env, frame_slots, stack)
                for env in range(num_envs)
            ]
            dropped_by_frames += sum(max(0, added[e] - per_env) < first[e] for e in range(num_envs))
            assert len(buffer) == sum(a - f for a, f in zip(added, first))
            assert buffer.steps_added == sum(added)
            if rng.random() > 0.4:
                continue
            n_step, sequence_length = SAMPLE_SETTINGS[calls % len(SAMPLE_SETTINGS)]
            gamma = GAMMAS[calls % len(GAMMAS)]
            calls += 1
            horizon = max(n_step, sequence_length)
            if per_env < stack + horizon:
                continue
            valid = {
                position * num_envs + env
                for env in range(num_envs)
                for position in reference_valid_from(streams[env], first[env], added[env], horizon)
            }
            assert buffer.num_valid(n_step, sequence_length) == len(valid)
            if not valid:
                with pytest.raises(ValueError, match="cannot sample"):
                    buffer.sample(1, n_step=n_step, gamma=gamma, sequence_length=sequence_length)
                continue
            batch = buffer.sample(
                min(16, len(valid)), n_step=n_step, gamma=gamma, sequence_length=sequence_length
            )
            assert set(batch.indices.tolist()) <= valid
            check_batch(batch, streams, added, n_step, gamma, sequence_length, num_envs)
    assert calls > 40
    assert dropped_by_frames > 0  # the default reserve really overflowed, and it was said once
    assert len([w for w in caught if "start_frame_reserve" in str(w.message)]) == 1


def test_uniform_sampling_covers_exactly_the_valid_set_uniformly():
    rng = np.random.default_rng(2)
    action_space = spaces.Discrete(3)
    streams = [
        make_stream(
            env, 150, frame_shape=(1, 2, 2), stack=4, padding="zeros", action_space=action_space, rng=rng
        )
        for env in range(2)
    ]
    buffer = ReplayBuffer(
        120,
        spaces.Box(0, 255, (4, 2, 2), np.uint8),
        action_space,
        frame_stack=4,
        num_envs=2,
        seed=0,
        start_frame_reserve=10.0,
    )
    for tick in range(150):
        feed(buffer, streams, tick)
    valid = sorted(
        position * 2 + env for env in range(2) for position in reference_valid(150, streams[env], 60, 10)
    )
    counts = dict.fromkeys(valid, 0)
    for _ in range(400):
        for index in buffer.sample(64, n_step=10).indices.tolist():
            counts[index] += 1  # KeyError if an invalid transition is drawn
    observed = np.array(list(counts.values()))
    assert observed.min() > 0
    assert stats.chisquare(observed).pvalue > 1e-3


@pytest.mark.filterwarnings("ignore:ReplayBuffer env:UserWarning")  # short episodes
def test_state_vectors_single_frame_and_next_step_autoreset_skip():
    """k=1 float vectors, 2 envs, next-step autoreset: the reset step of a done env is passed with skip."""
    rng = np.random.default_rng(4)
    space = spaces.Box(-np.inf, np.inf, (5,), np.float32)
    action_space = spaces.Box(-1, 1, (3,), np.float32)
    streams = [
        make_stream(
            env, 200, frame_shape=(5,), stack=1, padding="reset", action_space=action_space, rng=rng,
            frame_fn=state_frame,
        )
        for env in range(2)
    ]  # fmt: skip
    buffer = ReplayBuffer(80, space, action_space, num_envs=2, seed=5)
    cursor = [0, 0]
    autoreset = np.zeros(2, dtype=bool)
    while min(cursor) < 200:
        rows = []
        for env in range(2):
            if autoreset[env] or cursor[env] >= 200:  # the env returns a reset step: not a transition
                previous = streams[env][cursor[env] - 1]
                following = streams[env][min(cursor[env], 199)]
                rows.append(
                    Step(
                        previous.next_obs, sample_action(action_space, rng), 0.0, following.obs, False, False
                    )
                )
            else:
                rows.append(streams[env][cursor[env]])
        skip = autoreset | (np.array(cursor) >= 200)
        buffer.add(
            np.stack([r.obs for r in rows]),
            np.stack([r.action for r in rows]),
            np.array([r.reward for r in rows]),
            np.stack([r.next_obs for r in rows]),
            np.array([r.terminated for r in rows]),
            np.array([r.truncated for r in rows]),
            skip=skip,
        )
        autoreset = np.array([(r.terminated or r.truncated) and not s for r, s in zip(rows, skip)])
        for env in range(2):
            cursor[env] += int(not skip[env])
        if sum(cursor) % 3 == 0 and buffer.num_valid(3, 4) >= 8:
            batch = buffer.sample(8, n_step=3, gamma=0.9, sequence_length=4)
            check_batch(batch, streams, cursor, 3, 0.9, 4, 2)
    assert buffer.steps_added == 400
    # One stored vector per step plus one per episode start.
    episodes = sum(s.terminated or s.truncated for stream in streams for s in stream) + 2
    assert buffer.frames_written == 400 + episodes - sum(
        1 for stream in streams if stream[-1].terminated or stream[-1].truncated
    )


@pytest.mark.parametrize("prioritized", [False, True])
def test_short_episodes_overflow_the_frame_reserve_without_corrupting_samples(prioritized):
    """Episodes of 1-2 steps store k+1 frames per step: the oldest transitions are dropped, never mixed."""
    rng = np.random.default_rng(6)
    action_space = spaces.Discrete(2)
    stream = make_stream(
        0, 300, frame_shape=(1, 2, 2), stack=4, padding="zeros", action_space=action_space, rng=rng,
        lengths=(1, 2),
    )  # fmt: skip
    buffer = ReplayBuffer(
        50,
        spaces.Box(0, 255, (4, 2, 2), np.uint8),
        action_space,
        frame_stack=4,
        seed=1,
        prioritized=prioritized,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for tick in range(300):
            feed(buffer, [stream], tick)
            if tick > 10:
                assert len(buffer) < 50
                batch = buffer.sample(8, n_step=3, gamma=0.9, sequence_length=2)
                check_batch(batch, [stream], [tick + 1], 3, 0.9, 2, 1)
                assert min(batch.indices.tolist()) >= tick + 1 - 50
                if prioritized:
                    buffer.update_priorities(batch.indices, np.arange(1.0, 9.0))
    # Warned once, naming the numbers and the fix.
    assert len(caught) == 1 and caught[0].category is UserWarning
    message = str(caught[0].message)
    assert "57 slots" in message and "start_frame_reserve=0.05" in message and "below capacity" in message
    assert "start_frame_reserve >= " in message and caught[0].filename == __file__
    suggested = float(message.split("start_frame_reserve >= ")[1].split()[0])
    roomy = ReplayBuffer(
        50,
        spaces.Box(0, 255, (4, 2, 2), np.uint8),
        action_space,
        frame_stack=4,
        start_frame_reserve=suggested,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the suggested reserve keeps the full capacity without a warning
        for tick in range(300):
            feed(roomy, [stream], tick)
    assert len(roomy) == 50


def test_life_loss_terminal_shares_frames_with_the_continuing_game():
    """terminated=True on a life loss while the env plays on: the next obs equals the last next_obs."""
    rng = np.random.default_rng(7)
    frames = [image_frame(0, 0, s, (1, 3, 3)) for s in range(121)]
    lives_end = {29, 59, 99}
    stream = [
        Step(
            stacked(frames, s, 4, "zeros"),
            np.int64(rng.integers(4)),
            float(np.float32(rng.normal())),
            stacked(frames, s + 1, 4, "zeros"),
            s in lives_end,
            False,
        )
        for s in range(120)
    ]
    buffer = ReplayBuffer(200, spaces.Box(0, 255, (4, 3, 3), np.uint8), spaces.Discrete(4), frame_stack=4)
    for tick in range(120):
        feed(buffer, [stream], tick)
    assert buffer.frames_written == 4 + 120  # no extra frames at the three life-loss starts
    for _ in range(20):
        check_batch(
            buffer.sample(16, n_step=10, gamma=0.99, sequence_length=5), [stream], [120], 10, 0.99, 5, 1
        )


@pytest.mark.filterwarnings("ignore:ReplayBuffer env:UserWarning")  # short episodes
def test_device_output_is_torch_and_keeps_dtypes():
    rng = np.random.default_rng(8)
    action_space = spaces.Discrete(3)
    stream = make_stream(
        0, 40, frame_shape=(1, 2, 2), stack=4, padding="zeros", action_space=action_space, rng=rng
    )
    buffer = ReplayBuffer(40, spaces.Box(0, 255, (4, 2, 2), np.uint8), action_space, frame_stack=4, seed=2)
    for tick in range(40):
        feed(buffer, [stream], tick)
    state = buffer.state_dict()["rng"]
    as_numpy = buffer.sample(4, n_step=3, sequence_length=2)
    buffer._rng.bit_generator.state = state
    as_torch = buffer.sample(4, n_step=3, sequence_length=2, device="cpu")
    assert isinstance(as_torch.obs, torch.Tensor) and as_torch.obs.dtype == torch.uint8
    assert as_torch.action.dtype == torch.int64 and as_torch.reward.dtype == torch.float32
    assert as_torch.future_mask.shape == (4, 2) and as_torch.future_obs.shape == (4, 2, 4, 2, 2)
    for name in ("obs", "next_obs", "action", "reward", "discount", "indices", "weights", "future_obs"):
        np.testing.assert_array_equal(getattr(as_torch, name).numpy(), getattr(as_numpy, name))


# --------------------------------------------------------------------------- prioritized


@pytest.mark.parametrize("size", [1, 5, 64, 1000])
def test_sum_tree_search_matches_cumulative_sums(size):
    rng = np.random.default_rng(size)
    tree = SumTree(size)
    masses = np.zeros(size)
    for _ in range(30):  # updates of every size, repeated leaves included (the last value wins)
        leaves = rng.integers(0, size, size=int(rng.integers(1, 40)))
        values = np.where(rng.random(leaves.size) < 0.3, 0.0, rng.exponential(size=leaves.size))
        tree.set(leaves, values)
        for leaf, value in zip(leaves, values):
            masses[leaf] = value
        if masses.sum() == 0:
            continue
        np.testing.assert_allclose(tree.total, masses.sum(), rtol=1e-12)
        np.testing.assert_array_equal(tree.get(np.arange(size)), masses)
        cumulative = np.cumsum(masses)
        targets = np.concatenate(
            [rng.random(200) * masses.sum(), cumulative[masses > 0][:-1], [masses.sum()]]
        )
        found = tree.find(targets)
        assert np.all(masses[found] > 0)  # never an empty leaf, even at boundaries and past the end
        # Away from interval boundaries (where float rounding of the two summation orders may differ)
        # the leaf is exactly the one np.searchsorted finds on the cumulative sums.
        clear = np.abs(targets[:, None] - cumulative[None, :]).min(axis=1) > 1e-9 * cumulative[-1]
        clear &= targets < cumulative[-1]
        expected = np.searchsorted(cumulative, targets[clear], side="right")
        np.testing.assert_array_equal(found[clear], expected)
        assert clear.sum() >= 150


def filled_prioritized(
    seed: int = 0, priority_exponent: float = 0.5, importance_exponent: float = 0.5, extra_steps: int = 0
):
    """Two envs, 50 transitions each kept after 90 steps; ``extra_steps`` more are generated, not fed."""
    rng = np.random.default_rng(seed)
    action_space = spaces.Discrete(4)
    streams = [
        make_stream(
            env, 90 + extra_steps, frame_shape=(1, 2, 2), stack=4, padding="zeros", action_space=action_space,
            rng=rng,
        )
        for env in range(2)
    ]  # fmt: skip
    buffer = ReplayBuffer(
        100,
        spaces.Box(0, 255, (4, 2, 2), np.uint8),
        action_space,
        frame_stack=4,
        num_envs=2,
        prioritized=True,
        priority_exponent=priority_exponent,
        importance_exponent=importance_exponent,
        seed=seed,
        start_frame_reserve=10.0,
    )
    for tick in range(90):
        feed(buffer, streams, tick)
    return buffer, streams


STORED_IDS = np.array([position * 2 + env for env in range(2) for position in range(40, 90)])


def valid_ids(streams, added: int, horizon: int) -> list[int]:
    kept = 50
    return sorted(
        position * 2 + env
        for env in range(2)
        for position in reference_valid(added, streams[env], kept, horizon)
    )


def test_prioritized_sampling_matches_priorities_and_weights_formula():
    alpha, beta, n_step = 0.6, 0.4, 3
    buffer, streams = filled_prioritized(priority_exponent=alpha, importance_exponent=beta)
    rng = np.random.default_rng(11)
    priorities = dict(zip(STORED_IDS.tolist(), rng.uniform(0.05, 3.0, size=STORED_IDS.size)))
    assert buffer.update_priorities(STORED_IDS, np.array(list(priorities.values()))) == 100
    valid = valid_ids(streams, 90, n_step)
    mass = np.array([priorities[i] ** alpha for i in valid])
    probability = dict(zip(valid, mass / mass.sum()))
    counts = dict.fromkeys(valid, 0)
    for _ in range(600):
        batch = buffer.sample(32, n_step=n_step, gamma=0.9)
        raw = np.array([(len(valid) * probability[i]) ** -beta for i in batch.indices.tolist()])
        np.testing.assert_allclose(batch.weights, raw / raw.max(), rtol=1e-5)
        for index in batch.indices.tolist():
            counts[index] += 1  # KeyError if an invalid transition is drawn
    check_batch(batch, streams, [90, 90], n_step, 0.9, 0, 2)
    observed = np.array([counts[i] for i in valid])
    expected = np.array([probability[i] for i in valid]) * observed.sum()
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    assert stats.chisquare(observed).pvalue < 1e-6  # the test has power: far from uniform


def test_new_transitions_get_the_running_max_priority():
    buffer, streams = filled_prioritized(seed=1, extra_steps=1)
    buffer.update_priorities(STORED_IDS, np.full(STORED_IDS.size, 1e-8))
    buffer.update_priorities(STORED_IDS[:1], [9.0])
    buffer.update_priorities(STORED_IDS[:1], [1e-8])  # the running maximum stays 9
    assert buffer.max_priority == 9.0
    feed(buffer, streams, 90)  # each env's new transition gets mass 9^alpha, every other one 1e-8^alpha
    new = {90 * 2, 90 * 2 + 1}
    horizon = 1
    available = new & set(valid_ids(streams, 91, horizon))
    draws = np.concatenate([buffer.sample(16, n_step=horizon).indices for _ in range(50)])
    assert set(draws.tolist()) == available == new
    assert abs(np.mean(draws == 180) - 0.5) < 0.1


def test_prioritized_never_draws_incomplete_windows():
    """The newest steps of unfinished episodes at a huge priority are still never drawn with n=10."""
    buffer, streams = filled_prioritized(seed=2)
    valid = valid_ids(streams, 90, 10)
    incomplete = sorted(set(STORED_IDS.tolist()) - set(valid))
    assert incomplete
    buffer.update_priorities(np.array(incomplete), np.full(len(incomplete), 1e6))
    for _ in range(20):
        batch = buffer.sample(16, n_step=10, gamma=0.99, sequence_length=5)
        assert set(batch.indices.tolist()) <= set(valid)
        check_batch(batch, streams, [90, 90], 10, 0.99, 5, 2)
        np.testing.assert_allclose(batch.weights, 1.0)  # all valid ones still share priority 1


def test_stale_priority_updates_are_ignored():
    buffer, _ = filled_prioritized(seed=2)
    batch = buffer.sample(8, n_step=1)
    oldest_kept, overwritten = 40 * 2, 39 * 2
    assert buffer.update_priorities([oldest_kept, overwritten, -4, 10**9], [1.0, 1.0, 1.0, 1.0]) == 1
    assert buffer.update_priorities(batch.indices, np.ones(8)) == 8


# --------------------------------------------------------------------------- checkpoints


def test_state_dict_round_trip_gives_identical_future_samples_and_adds():
    buffer, streams = filled_prioritized(seed=3, extra_steps=30)
    batch = buffer.sample(16, n_step=3)
    buffer.update_priorities(batch.indices, np.linspace(0.1, 2.0, 16))
    blob = io.BytesIO()
    torch.save(buffer.state_dict(), blob)
    blob.seek(0)
    restored = ReplayBuffer(
        100,
        spaces.Box(0, 255, (4, 2, 2), np.uint8),
        spaces.Discrete(4),
        frame_stack=4,
        num_envs=2,
        prioritized=True,
        seed=123,  # a different seed: the RNG state comes from the checkpoint
        start_frame_reserve=10.0,
    )
    restored.load_state_dict(torch.load(blob))  # weights_only=True by default
    assert len(restored) == len(buffer)

    def same(a: ReplayBatch, b: ReplayBatch) -> None:
        for name in ("obs", "action", "reward", "discount", "next_obs", "indices", "weights", "future_obs"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))

    for tick in range(90, 120):
        same(buffer.sample(8, n_step=3, sequence_length=2), restored.sample(8, n_step=3, sequence_length=2))
        feed(buffer, streams, tick)
        feed(restored, streams, tick)
        priorities = np.arange(1, 5, dtype=np.float64) * tick
        buffer.update_priorities(buffer.sample(4, n_step=1).indices, priorities)
        restored.update_priorities(restored.sample(4, n_step=1).indices, priorities)
    same(buffer.sample(32, n_step=5, sequence_length=3), restored.sample(32, n_step=5, sequence_length=3))
    assert buffer.max_priority == restored.max_priority == 4 * 119
    check_batch(restored.sample(32, n_step=5, sequence_length=3), streams, [120, 120], 5, 0.99, 3, 2)

    uniform = ReplayBuffer(
        100, spaces.Box(0, 255, (4, 2, 2), np.uint8), spaces.Discrete(4), frame_stack=4, num_envs=2
    )
    with pytest.raises(ValueError, match="differs"):
        uniform.load_state_dict(buffer.state_dict())


# --------------------------------------------------------------------------- bad input


def test_state_dict_holds_only_the_written_part_and_restores_into_a_used_buffer():
    space = spaces.Box(0, 255, (4, 8, 8), np.uint8)

    def build(seed: int) -> ReplayBuffer:
        return ReplayBuffer(10_000, space, spaces.Discrete(3), frame_stack=4, num_envs=2, seed=seed)

    rng = np.random.default_rng(0)
    small = build(0)
    obs = rng.integers(0, 255, (2, 4, 8, 8), dtype=np.uint8)
    for _ in range(5):
        next_obs = np.concatenate([obs[:, 1:], rng.integers(0, 255, (2, 1, 8, 8), dtype=np.uint8)], axis=1)
        small.add(obs, np.array([0, 1]), np.ones(2), next_obs, np.zeros(2, bool), np.zeros(2, bool))
        obs = next_obs
    state = small.state_dict()
    # 5 steps of one episode per env: 4 + 5 frames and 5 transitions written, not the 10,000-slot rings.
    assert state["frames"].shape[:2] == (2, 9)
    assert state["action"].shape[:2] == (2, 5)

    used = build(1)  # a buffer that already holds other data must end up identical to `small`
    for _ in range(20):
        obs = rng.integers(0, 255, (2, 4, 8, 8), dtype=np.uint8)
        next_obs = np.concatenate([obs[:, 1:], obs[:, :1]], axis=1)
        used.add(obs, np.array([2, 2]), np.zeros(2), next_obs, np.ones(2, bool), np.zeros(2, bool))
    blob = io.BytesIO()
    torch.save(state, blob)
    blob.seek(0)
    used.load_state_dict(torch.load(blob))
    for name in ReplayBuffer._ARRAYS:
        np.testing.assert_array_equal(getattr(used, name), getattr(small, name), err_msg=name)
    a, b = small.sample(4), used.sample(4)
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.next_obs, b.next_obs)


def atari_buffer(**kwargs) -> ReplayBuffer:
    return ReplayBuffer(
        32, spaces.Box(0, 255, (4, 2, 2), np.uint8), spaces.Discrete(3), frame_stack=4, **kwargs
    )


def test_bad_input_raises_clear_errors():
    obs = np.zeros((4, 2, 2), np.uint8)
    next_obs = obs.copy()
    next_obs[-1] = 1
    buffer = atari_buffer()
    with pytest.raises(ValueError, match="cannot sample"):
        buffer.sample(1)
    with pytest.raises(ValueError, match="shape"):
        buffer.add(np.zeros((4, 2, 3), np.uint8), 0, 0.0, next_obs, False, False)
    with pytest.raises(TypeError, match="dtype"):
        buffer.add(obs.astype(np.float32), 0, 0.0, next_obs, False, False)
    with pytest.raises(TypeError, match="integer"):
        buffer.add(obs, 1.5, 0.0, next_obs, False, False)
    with pytest.raises(ValueError, match="Discrete range"):
        buffer.add(obs, 3, 0.0, next_obs, False, False)
    with pytest.raises(ValueError, match="shape"):
        buffer.add(obs, np.array([0, 1]), 0.0, next_obs, False, False)
    with pytest.raises(ValueError, match="non-finite"):
        buffer.add(obs, 0, np.nan, next_obs, False, False)
    with pytest.raises(ValueError, match="shifted by one frame"):  # a reset obs passed as next_obs
        buffer.add(obs, 0, 0.0, np.full_like(obs, 7), True, False)
    assert len(buffer) == 0  # nothing half-written by the failed calls
    buffer.add(obs, 0, 0.0, next_obs, False, False)
    with pytest.raises(ValueError, match="differs from the next_obs"):
        buffer.add(obs, 0, 0.0, next_obs, False, False)
    with pytest.raises(ValueError, match="cannot sample"):  # the only episode is still running
        buffer.sample(1, n_step=2)
    buffer.add(next_obs, 1, 1.0, np.concatenate([next_obs[1:], next_obs[-1:] + 1]), True, False)
    assert buffer.sample(2).obs.shape == (2, 4, 2, 2)
    with pytest.raises(ValueError, match="batch_size 3 is more than the 2"):
        buffer.sample(3)
    with pytest.raises(ValueError, match="n_step"):
        buffer.sample(1, n_step=0)
    for gamma in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="gamma"):
            buffer.sample(1, gamma=gamma)
    with pytest.raises(ValueError, match="frame_stack \\+ max"):
        buffer.sample(1, n_step=29)
    with pytest.raises(ValueError, match="sequence_length"):
        buffer.sample(1, sequence_length=-1)
    with pytest.raises(RuntimeError, match="prioritized=True"):
        buffer.update_priorities([0], [1.0])

    with pytest.raises(ValueError, match=r"at least frame_stack \+ 1 = 5 \(sampling with n_step"):
        ReplayBuffer(4, spaces.Box(0, 255, (4, 2, 2), np.uint8), spaces.Discrete(3), frame_stack=4)
    with pytest.warns(UserWarning, match=r"capacity 100 is not divisible by num_envs=3: .* 33 .* 99 in all"):
        uneven = ReplayBuffer(100, spaces.Box(0, 1, (2,), np.float32), spaces.Discrete(2), num_envs=3)
    assert uneven.capacity == 99 and uneven.capacity_per_env == 33
    with pytest.raises(ValueError, match="autoreset_mode must be None, 'next_step' or 'same_step'"):
        atari_buffer(autoreset_mode="sometimes")
    with pytest.raises(ValueError, match="divisible"):
        ReplayBuffer(32, spaces.Box(0, 255, (4, 2, 2), np.uint8), spaces.Discrete(3), frame_stack=3)
    with pytest.raises(TypeError, match="action_space"):
        ReplayBuffer(32, spaces.Box(0, 255, (4,), np.uint8), spaces.MultiBinary(3))
    with pytest.raises(TypeError, match="observation_space"):
        ReplayBuffer(32, spaces.Discrete(3), spaces.Discrete(3))

    prioritized = atari_buffer(prioritized=True)
    with pytest.raises(ValueError, match="finite"):
        prioritized.update_priorities([0], [-1.0])
    with pytest.raises(ValueError, match="indices but"):
        prioritized.update_priorities([0, 1], [1.0])
    with pytest.raises(ValueError, match="priority_exponent"):
        atari_buffer(prioritized=True, priority_exponent=-1.0)

    box = ReplayBuffer(
        8, spaces.Box(-1, 1, (3,), np.float32), spaces.Box(-1, 1, (2,), np.float32), num_envs=2
    )
    vector = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="float"):
        box.add(vector, np.zeros((2, 2), np.int64), np.zeros(2), vector, np.zeros(2, bool), np.zeros(2, bool))
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        box.add(
            vector, np.zeros((2, 2), np.float32), np.zeros(3), vector, np.zeros(2, bool), np.zeros(2, bool)
        )
    with pytest.raises(TypeError, match="bool"):
        box.add(
            vector, np.zeros((2, 2), np.float32), np.zeros(2), vector, np.array([0, 2]), np.zeros(2, bool)
        )


@pytest.mark.parametrize("autoreset_mode", ["NextStep", "SameStep"])
def test_atari_vector_env_loop_as_documented(autoreset_mode):
    """ale_py.AtariVectorEnv, both autoreset modes, the add() loop of the module docstring."""
    vector_env = pytest.importorskip("ale_py.vector_env")
    env = vector_env.AtariVectorEnv(
        "pong", num_envs=2, max_num_frames_per_episode=60, autoreset_mode=autoreset_mode
    )
    obs_space, action_space = env.single_observation_space, env.single_action_space
    buffer = ReplayBuffer(400, obs_space, action_space, frame_stack=4, num_envs=2, seed=0)
    rng = np.random.default_rng(0)
    streams: list[list[Step]] = [[], []]
    obs, _ = env.reset(seed=0)
    autoreset = np.zeros(2, dtype=bool)
    for _ in range(120):
        action = rng.integers(0, action_space.n, size=2)
        next_obs, reward, terminated, truncated, info = env.step(action)
        done = terminated | truncated
        if autoreset_mode == "SameStep":
            final_obs = next_obs  # info["final_obs"] is present only on steps where an env is done
            if done.any():
                final_obs = np.where(done[:, None, None, None], info["final_obs"], next_obs)
            buffer.add(obs, action, reward, final_obs, terminated, truncated)
            skip = np.zeros(2, dtype=bool)
        else:
            final_obs = next_obs
            skip = autoreset
            buffer.add(obs, action, reward, final_obs, terminated, truncated, skip=skip)
            autoreset = done
        for e in np.flatnonzero(~skip):
            streams[e].append(
                Step(obs[e], action[e], float(reward[e]), final_obs[e], terminated[e], truncated[e])
            )
        obs = next_obs
    env.close()
    assert sum(s.truncated for stream in streams for s in stream) >= 4  # several 15-step episodes
    assert buffer.steps_added == sum(map(len, streams))
    added = [len(stream) for stream in streams]
    for _ in range(10):
        check_batch(
            buffer.sample(16, n_step=10, gamma=0.99, sequence_length=5), streams, added, 10, 0.99, 5, 2
        )


def test_next_step_autoreset_without_skip_is_caught():
    vector_env = pytest.importorskip("ale_py.vector_env")
    env = vector_env.AtariVectorEnv("pong", num_envs=1, max_num_frames_per_episode=20)  # NextStep by default
    buffer = ReplayBuffer(100, env.single_observation_space, env.single_action_space, frame_stack=4)
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="skip=<envs done at the previous step>"):
        for _ in range(12):
            next_obs, reward, terminated, truncated, _ = env.step(np.zeros(1, dtype=np.int64))
            buffer.add(obs, np.zeros(1, np.int64), reward, next_obs, terminated, truncated)
            obs = next_obs
    env.close()
    assert buffer.steps_added == 5  # the 5-step episode was stored; its reset step was refused


# --------------------------------------------------------------------------- gymnasium autoreset modes


def record_cartpole(num_steps: int, frame_stack: int, *, autoreset_mode: str = "NextStep", seed: int = 0):
    """Raw ``env.step`` results of a 2-env CartPole SyncVectorEnv (env 1 truncates at 12 steps).

    Returns ``(calls, streams)``: per call, what ``add`` gets (obs, action, reward, next_obs, terminated,
    truncated, info); per env, the real transitions, from the raw lists (next-step: the step after a
    done is the reset step; same-step: the done step's final observation is in ``info``).
    """
    gym = pytest.importorskip("gymnasium")
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    def make(limit: int):
        def thunk():
            env = gym.make("CartPole-v1", max_episode_steps=limit)
            return gym.wrappers.FrameStackObservation(env, frame_stack) if frame_stack > 1 else env

        return thunk

    env = SyncVectorEnv([make(500), make(12)], autoreset_mode=AutoresetMode(autoreset_mode))
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    calls, streams = [], [[], []]
    previous_done = np.zeros(2, dtype=bool)
    for _ in range(num_steps):
        action = rng.integers(0, 2, size=2)
        next_obs, reward, terminated, truncated, info = env.step(action)
        calls.append((obs.copy(), action, reward, next_obs.copy(), terminated, truncated, info))
        done = terminated | truncated
        for e in range(2):
            final = next_obs[e]
            if autoreset_mode == "SameStep" and done[e]:
                final = info["final_obs"][e]
            elif autoreset_mode == "NextStep" and previous_done[e]:  # the reset step: reward 0, no done
                assert reward[e] == 0 and not done[e]
                np.testing.assert_array_equal(obs[e], calls[-2][3][e])
                continue
            streams[e].append(
                Step(obs[e].copy(), action[e], float(reward[e]), final.copy(), terminated[e], truncated[e])
            )
        previous_done = done
        obs = next_obs
    env.close()
    return calls, streams, env.single_observation_space, env.single_action_space


def final_observations(next_obs: np.ndarray, done: np.ndarray, info: dict) -> np.ndarray:
    """Same-step autoreset: next_obs with the done envs' rows replaced by info["final_obs"]."""
    final = next_obs.copy()
    for e in np.flatnonzero(done):
        final[e] = info["final_obs"][e]  # an object array in SyncVectorEnv
    return final


@pytest.mark.parametrize("frame_stack", [1, 4])
def test_gymnasium_next_step_autoreset_mode_stores_only_real_transitions(frame_stack):
    """CartPole-v1 in a SyncVectorEnv (next-step autoreset): with autoreset_mode="next_step" every raw
    step goes to ``add`` unchanged; the buffer drops the reset steps itself and holds exactly the real
    transitions, the same as a buffer given ``skip=``; the replay-ratio schedule counts the same steps."""
    calls, streams, obs_space, action_space = record_cartpole(300, frame_stack)
    episodes = [sum(s.terminated or s.truncated for s in stream) for stream in streams]
    assert min(episodes) >= 5 and sum(s.truncated for s in streams[1]) >= 5  # terminations, truncations

    def build(mode):
        return ReplayBuffer(
            1000, obs_space, action_space, frame_stack=frame_stack, num_envs=2, seed=1, autoreset_mode=mode
        )

    auto, with_skip, both = build("next_step"), build(None), build("NextStep")
    schedule = ReplayRatioSchedule(0.5, learning_starts=20, num_envs=2)
    previous_done = np.zeros(2, dtype=bool)
    updates = 0
    for obs, action, reward, next_obs, terminated, truncated, _ in calls:
        auto.add(obs, action, reward, next_obs, terminated, truncated)
        with_skip.add(obs, action, reward, next_obs, terminated, truncated, skip=previous_done)
        both.add(obs, action, reward, next_obs, terminated, truncated, skip=previous_done)
        updates += schedule.step(int((~previous_done).sum()))
        previous_done = terminated | truncated
    added = [len(stream) for stream in streams]
    assert (
        auto.steps_added
        == sum(added)
        == schedule.agent_steps
        == 300 * 2
        - sum(episodes[e] - int(streams[e][-1].terminated or streams[e][-1].truncated) for e in range(2))
    )  # one reset step per episode that ended before the last call
    assert updates == (sum(added) - 20) // 2
    for other in (with_skip, both):
        for name in ReplayBuffer._ARRAYS:
            np.testing.assert_array_equal(getattr(auto, name), getattr(other, name), err_msg=name)
    for _ in range(10):
        check_batch(auto.sample(16, n_step=5, gamma=0.9, sequence_length=5), streams, added, 5, 0.9, 5, 2)


@pytest.mark.parametrize("frame_stack", [1, 4])
def test_gymnasium_next_step_autoreset_without_skip_or_mode_raises(frame_stack):
    """The default buffer fed next-step steps without ``skip=`` refuses the first reset step (at k=1 the
    new guard, at k=4 the stacking check) instead of storing a bogus final -> reset transition."""
    calls, streams, obs_space, action_space = record_cartpole(300, frame_stack)
    buffer = ReplayBuffer(1000, obs_space, action_space, frame_stack=frame_stack, num_envs=2)
    message = "autoreset_mode='next_step'" if frame_stack == 1 else "shifted by one frame"
    stored = 0
    with pytest.raises(ValueError, match=message):
        for obs, action, reward, next_obs, terminated, truncated, _ in calls:
            buffer.add(obs, action, reward, next_obs, terminated, truncated)
            stored += 2
    assert buffer.steps_added == stored  # nothing of the refused call was written
    first_done = min(
        next(i for i, s in enumerate(stream) if s.terminated or s.truncated) for stream in streams
    )
    assert stored == 2 * (first_done + 1)  # refused exactly at the reset step after the first done


def test_next_step_mode_refuses_a_same_step_env():
    """autoreset_mode="next_step" on a same-step env: the step after a done starts from the reset obs,
    not from the final one, and the buffer says which mode to use."""
    calls, _, obs_space, action_space = record_cartpole(200, 1, autoreset_mode="SameStep")
    buffer = ReplayBuffer(1000, obs_space, action_space, num_envs=2, autoreset_mode="next_step")
    with pytest.raises(ValueError, match="autoreset_mode='same_step'"):
        for obs, action, reward, next_obs, terminated, truncated, info in calls:
            done = terminated | truncated
            final = final_observations(next_obs, done, info)
            buffer.add(obs, action, reward, final, terminated, truncated)


def test_same_step_mode_and_gymnasium_spellings():
    """Same-step data needs no skip in any mode but next_step; at k=1 a 'life loss' (done, then the
    game goes on from the same observation) is refused by the default guard and stored, sharing its
    frame, with autoreset_mode="same_step" (or skip= given)."""
    from gymnasium.vector import AutoresetMode

    calls, streams, obs_space, action_space = record_cartpole(200, 1, autoreset_mode="SameStep")
    buffers = [
        ReplayBuffer(1000, obs_space, action_space, num_envs=2, autoreset_mode=mode)
        for mode in (None, "same_step", "SameStep", "Disabled", AutoresetMode.SAME_STEP)
    ]
    assert {b.autoreset_mode for b in buffers} == {None, "same_step"}
    assert ReplayBuffer(
        8, obs_space, action_space, autoreset_mode=AutoresetMode.NEXT_STEP
    ).autoreset_mode == ("next_step")
    for obs, action, reward, next_obs, terminated, truncated, info in calls:
        done = terminated | truncated
        final = final_observations(next_obs, done, info)
        for buffer in buffers:
            buffer.add(obs, action, reward, final, terminated, truncated)
    added = [len(stream) for stream in streams]
    assert added == [200, 200]
    for buffer in buffers:
        check_batch(buffer.sample(16, n_step=3, gamma=0.9, sequence_length=4), streams, added, 3, 0.9, 4, 2)

    space = spaces.Box(-10, 10, (3,), np.float32)
    frames = [np.full(3, s, np.float32) for s in range(8)]
    life_loss = [Step(frames[s], np.int64(0), 1.0, frames[s + 1], s == 2, False) for s in range(7)]

    def feed_all(buffer, **kwargs):
        for step in life_loss:
            buffer.add(step.obs, step.action, step.reward, step.next_obs, step.terminated, False, **kwargs)

    with pytest.raises(ValueError, match="life loss passed as terminated"):
        feed_all(ReplayBuffer(20, space, spaces.Discrete(2)))
    for kwargs in ({"autoreset_mode": "same_step"}, {}):
        buffer = ReplayBuffer(20, space, spaces.Discrete(2), **kwargs)
        feed_all(buffer, **({} if kwargs else {"skip": False}))  # skip= given: the guard stays off
        assert buffer.steps_added == 7 and buffer.frames_written == 8  # the frame after the loss is shared
        check_batch(buffer.sample(5, n_step=3, gamma=0.5), [life_loss], [7], 3, 0.5, 0, 1)


def test_next_step_mode_state_dict_keeps_the_pending_reset_step():
    """A checkpoint taken right after a done restores the pending skip; an older checkpoint without it
    loads too."""
    calls, streams, obs_space, action_space = record_cartpole(120, 1)

    def build():
        return ReplayBuffer(1000, obs_space, action_space, num_envs=2, autoreset_mode="next_step")

    buffer = build()
    cut = next(i for i, call in enumerate(calls) if (call[4] | call[5]).any()) + 1
    for call in calls[:cut]:
        buffer.add(*call[:6])
    state = buffer.state_dict()
    assert state["after_done"].any()
    restored, legacy = build(), build()
    restored.load_state_dict(state)
    legacy.load_state_dict({key: value for key, value in state.items() if key != "after_done"})
    for call in calls[cut:]:
        for b in (buffer, restored, legacy):
            b.add(*call[:6])
    for name in ReplayBuffer._ARRAYS:
        np.testing.assert_array_equal(getattr(restored, name), getattr(buffer, name), err_msg=name)
        np.testing.assert_array_equal(getattr(legacy, name), getattr(buffer, name), err_msg=name)
    assert buffer.steps_added == sum(map(len, streams))
