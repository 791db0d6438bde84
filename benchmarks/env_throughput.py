"""Agent steps per second of the environment factories, with random actions.

Measures ``make_atari`` (one env), ``make_atari_vector`` (C++ threads), ``make_dmc`` on states and on
pixels with the fast and the default (papers') render settings. An agent step is one call's worth of
decisions: a vector step of ``n`` envs counts ``n`` agent steps; a DMC agent step is ``action_repeat``
physics steps (and, for pixels, one render). Episodes are reset as they end; construction and the
first reset are not timed.

    python benchmarks/env_throughput.py                # about a minute on a 2-core CPU
    python benchmarks/env_throughput.py --steps-atari 20000 --json throughput.json
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tyro

from plasticrl.envs import make_atari, make_atari_vector, make_dmc


@dataclass
class Args:
    """Throughput benchmark of the environment factories."""

    seed: int = 0
    """Seed of the envs and of the random actions."""
    atari_game: str = "Pong"
    """Atari game for the single and vector measurements."""
    atari_vector_envs: int = 2
    """Sub-environments of the vector env (2 matches this project's 2-core machines)."""
    steps_atari: int = 10000
    """Agent steps per Atari measurement."""
    dmc_state_tasks: list[str] = field(default_factory=lambda: ["cheetah-run", "walker-walk"])
    """DMC tasks measured on states (action repeat 1, the SAC setting)."""
    steps_dmc_states: int = 10000
    """Agent steps per DMC state measurement."""
    dmc_pixel_task: str = "cheetah-run"
    """DMC task measured on pixels (its PlaNet action repeat, 84×84, stack 3)."""
    steps_dmc_pixels: int = 1000
    """Agent steps per DMC pixel measurement."""
    json: Path | None = None
    """Also write the results to this JSON file."""


@dataclass
class Measurement:
    """One throughput figure."""

    name: str
    agent_steps: int
    seconds: float
    detail: str

    @property
    def steps_per_second(self) -> float:
        return self.agent_steps / self.seconds


def _time_single(env, steps: int, seed: int) -> float:
    """Seconds for ``steps`` random-action steps of a gymnasium env (resetting at episode ends)."""
    env.reset()
    env.action_space.seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - start


def _time_vector(env, iterations: int, seed: int) -> float:
    """Seconds for ``iterations`` vector steps with random actions (the env autoresets)."""
    env.reset()
    rng = np.random.default_rng(seed)
    actions = rng.integers(env.single_action_space.n, size=(iterations, env.num_envs))
    start = time.perf_counter()
    for step_actions in actions:
        env.step(step_actions)
    return time.perf_counter() - start


def run(args: Args) -> list[Measurement]:
    """All measurements, in the order printed."""
    results = []
    env = make_atari(args.atari_game, args.seed)
    results.append(
        Measurement(
            "atari single", args.steps_atari, _time_single(env, args.steps_atari, args.seed), args.atari_game
        )
    )
    env.close()

    vector = make_atari_vector(args.atari_game, args.atari_vector_envs, args.seed)
    iterations = max(1, args.steps_atari // args.atari_vector_envs)
    seconds = _time_vector(vector, iterations, args.seed)
    results.append(
        Measurement(
            f"atari vector ×{args.atari_vector_envs}",
            iterations * args.atari_vector_envs,
            seconds,
            f"{args.atari_game}, ale_py.AtariVectorEnv",
        )
    )
    vector.close()

    for task in args.dmc_state_tasks:
        env = make_dmc(task, args.seed)
        seconds = _time_single(env, args.steps_dmc_states, args.seed)
        results.append(
            Measurement(
                f"dmc states {task}",
                args.steps_dmc_states,
                seconds,
                f"action repeat {env.unwrapped.action_repeat}",
            )
        )

    for fast_render in (True, False):
        env = make_dmc(args.dmc_pixel_task, args.seed, pixels=True, fast_render=fast_render)
        seconds = _time_single(env, args.steps_dmc_pixels, args.seed)
        look = "fast render" if fast_render else "default render"
        results.append(
            Measurement(
                f"dmc pixels {args.dmc_pixel_task} ({look})",
                args.steps_dmc_pixels,
                seconds,
                f"action repeat {env.unwrapped.action_repeat}, 84×84, stack 3, one render per agent step",
            )
        )
    return results


def main(args: Args) -> list[Measurement]:
    """Run the benchmark, print a table, optionally write JSON."""
    results = run(args)
    print(f"{'measurement':<42} {'agent steps/s':>14} {'steps':>7} {'s':>7}  detail")
    for m in results:
        print(f"{m.name:<42} {m.steps_per_second:>14,.0f} {m.agent_steps:>7} {m.seconds:>7.2f}  {m.detail}")
    if args.json is not None:
        payload = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
            "machine": platform.platform(),
            "results": [asdict(m) | {"steps_per_second": m.steps_per_second} for m in results],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
