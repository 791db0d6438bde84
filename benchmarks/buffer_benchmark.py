"""Replay buffer memory and sampling-speed benchmark (prints its figures; not a timed test).

Memory: fills an Atari-100k buffer (100k steps, 84×84 frames, stack 4) and a DMC-pixel buffer (100k
steps, 3×84×84 frames, stack 3) with random frames in fresh processes, and reports the growth of the
process's resident memory (VmRSS from /proc/self/status) against the bytes of the unique frames
(705.6 MB and 2116.8 MB). Target: ≤ 1.1×.

Speed: on the filled Atari buffer, the median time of ``sample(32, n_step=10)`` with and without
sequences of 5, uniform and prioritized, next to the median time of a Nature-CNN double-DQN update
(batch 32) on the same CPU. Target: sampling ≤ 5% of the update.

    python benchmarks/buffer_benchmark.py                 # everything (about 2 minutes, 4 GB of RAM)
    python benchmarks/buffer_benchmark.py --part speed    # one part: memory-atari, memory-dmc, speed
    python benchmarks/buffer_benchmark.py --part speed --threads 1   # update on one torch thread

The update time depends on what else runs on the machine (two torch threads on a loaded 2-core CPU
are much slower than one); the last column compares sampling with the 20 ms quoted for an idle one.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from plasticrl.buffers import ReplayBuffer

MB = 1e6


def resident_bytes() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes, read from /proc/self/status."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def fill(
    buffer: ReplayBuffer,
    steps: int,
    frame_shape: tuple[int, ...],
    stack: int,
    episode_lengths: tuple[int, int],
    seed: int = 0,
) -> float:
    """Add ``steps`` transitions of random frames; episodes start from zero padding. Returns s per add."""
    rng = np.random.default_rng(seed)
    discrete = isinstance(buffer.action_dtype, np.dtype) and buffer.action_dtype.kind == "i"
    obs = None
    remaining = 0
    add_seconds = 0.0
    for _ in range(steps):
        if remaining == 0:
            remaining = int(rng.integers(*episode_lengths))
            obs = np.zeros((stack * frame_shape[0], *frame_shape[1:]), dtype=np.uint8)
            obs[-frame_shape[0] :] = rng.integers(0, 256, frame_shape, dtype=np.uint8)
        next_obs = np.concatenate([obs[frame_shape[0] :], rng.integers(0, 256, frame_shape, dtype=np.uint8)])
        action = rng.integers(18) if discrete else rng.uniform(-1, 1, buffer.action_shape).astype(np.float32)
        remaining -= 1
        start = time.perf_counter()
        buffer.add(
            obs, action, float(rng.normal()), next_obs, remaining == 0 and rng.random() < 0.5, remaining == 0
        )
        add_seconds += time.perf_counter() - start
        obs = next_obs
    return add_seconds / steps


def memory(kind: str) -> None:
    steps = 100_000
    if kind == "atari":
        frame_shape, stack = (1, 84, 84), 4
        action_space = spaces.Discrete(18)
        episode_lengths = (400, 3000)  # Atari-100k episodes: hundreds to thousands of agent steps
    else:
        frame_shape, stack = (3, 84, 84), 3
        action_space = spaces.Box(-1, 1, (6,), np.float32)
        episode_lengths = (500, 501)  # 1000 env steps at action repeat 2
    obs_space = spaces.Box(0, 255, (stack * frame_shape[0], *frame_shape[1:]), np.uint8)
    rss_before, _ = resident_bytes()
    buffer = ReplayBuffer(steps, obs_space, action_space, frame_stack=stack)
    rss_built, _ = resident_bytes()
    seconds_per_add = fill(buffer, steps, frame_shape, stack, episode_lengths)
    rss_full, peak = resident_bytes()
    unique = steps * int(np.prod(frame_shape))
    arrays = sum(getattr(buffer, name).nbytes for name in ReplayBuffer._ARRAYS)
    print(f"[memory {kind}] {steps} steps, frame {frame_shape}, stack {stack}, obs {obs_space.shape}")
    print(f"  RSS before the buffer    {rss_before / MB:9.1f} MB (interpreter, numpy, torch)")
    print(f"  unique frames            {unique / MB:9.1f} MB")
    print(f"  buffer arrays (nbytes)   {arrays / MB:9.1f} MB  ({arrays / unique:.3f}x)")
    print(f"  RSS after construction   +{(rss_built - rss_before) / MB:8.1f} MB")
    growth = rss_full - rss_before
    print(f"  RSS growth after filling {growth / MB:9.1f} MB  ({growth / unique:.3f}x)")
    print(f"  peak RSS of the process  {peak / MB:9.1f} MB; frames written {buffer.frames_written}")
    print(f"  add(): {seconds_per_add * 1e6:.1f} us per step (includes the input checks)")


def nature_dqn_update() -> Callable[[], None]:
    """One double-DQN update of the Nature CNN with a dueling head, batch 32 (a DrQ(ε)-sized update)."""

    def network() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, 19),  # dueling: 18 advantages + 1 value
        )

    online, target = network(), network()
    optimizer = torch.optim.Adam(online.parameters(), lr=1e-4, eps=1.5e-4)

    def q_values(model: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        out = model(obs.float() / 255.0)
        advantage, value = out[:, :18], out[:, 18:]
        return value + advantage - advantage.mean(dim=1, keepdim=True)

    obs = torch.randint(0, 256, (32, 4, 84, 84), dtype=torch.uint8)
    next_obs = torch.randint(0, 256, (32, 4, 84, 84), dtype=torch.uint8)
    action = torch.randint(0, 18, (32,))
    reward, discount = torch.randn(32), torch.full((32,), 0.99**10)

    def update() -> None:
        with torch.no_grad():
            best = q_values(online, next_obs).argmax(dim=1, keepdim=True)
            target_q = reward + discount * q_values(target, next_obs).gather(1, best).squeeze(1)
        q = q_values(online, obs).gather(1, action[:, None]).squeeze(1)
        loss = nn.functional.smooth_l1_loss(q, target_q)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return update


def timed(function: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def speed(rounds: int = 8) -> None:
    """Sampling vs update times, measured in interleaved rounds so that load from other processes on
    the machine affects both alike; medians over all rounds."""
    steps = 100_000
    frame_shape, stack = (1, 84, 84), 4
    obs_space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    calls: dict[str, Callable[[], object]] = {"Nature-CNN double-DQN update, batch 32": nature_dqn_update()}
    buffers = []
    for prioritized in (False, True):
        buffer = ReplayBuffer(
            steps, obs_space, spaces.Discrete(18), frame_stack=stack, prioritized=prioritized
        )
        fill(buffer, steps, frame_shape, stack, (400, 3000), seed=1)
        buffers.append(buffer)
        name = "prioritized" if prioritized else "uniform"
        if prioritized:  # priorities spread over orders of magnitude, as after some training
            rng = np.random.default_rng(0)
            for _ in range(3000):
                ids = buffer.sample(32, n_step=10).indices
                buffer.update_priorities(ids, rng.exponential(1.0, 32) ** 3)
        calls[f"{name}: sample(32, n_step=10)"] = lambda b=buffer: b.sample(32, n_step=10, gamma=0.99)
        calls[f"{name}: sample(32, n_step=10, sequence_length=5)"] = lambda b=buffer: b.sample(
            32, n_step=10, gamma=0.99, sequence_length=5
        )
        calls[f"{name}: same, device='cpu' (torch tensors)"] = lambda b=buffer: b.sample(
            32, n_step=10, gamma=0.99, sequence_length=5, device="cpu"
        )
        if prioritized:
            priorities = np.random.default_rng(1).exponential(1.0, 32)
            calls[f"{name}: update_priorities(32 ids)"] = lambda b=buffer, i=ids, p=priorities: (
                b.update_priorities(i, p)
            )
    times: dict[str, list[float]] = {label: [] for label in calls}
    for call in calls.values():  # warm-up
        timed(call, 3)
    for _ in range(rounds):
        for label, call in calls.items():
            times[label] += timed(call, 8 if "update," in label else 60)
    medians = {label: statistics.median(values) for label, values in times.items()}
    update_label = next(iter(calls))
    update = medians[update_label]
    reference = 20e-3  # the Atari DQN update time quoted for this machine in the issue
    print(f"[speed] {steps}-step Atari buffer, batch 32; torch threads {torch.get_num_threads()}; "
          f"medians over {rounds} interleaved rounds")  # fmt: skip
    print(f"  {update_label}: {update * 1e3:.1f} ms")
    print(f"  {'call':58s} {'median':>9s} {'% of update':>12s} {'% of 20 ms':>11s}")
    for label, seconds in medians.items():
        if label != update_label:
            print(f"  {label:58s} {seconds * 1e6:6.0f} us {100 * seconds / update:11.2f}% "
                  f"{100 * seconds / reference:10.2f}%")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("all", "memory-atari", "memory-dmc", "speed"), default="all")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads for the update (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part == "all":  # each part in a fresh process, so RSS figures do not mix
        for part in ("memory-atari", "memory-dmc", "speed"):
            command = [sys.executable, __file__, "--part", part, "--threads", str(args.threads)]
            subprocess.run(command, check=True)
    elif args.part == "memory-atari":
        memory("atari")
    elif args.part == "memory-dmc":
        memory("dmc")
    else:
        speed()


if __name__ == "__main__":
    main()
