"""What the off-policy agents (SAC, DrQ) share apart from their networks and update rules.

- :func:`cli` — tyro command line; with ``--resume RUN_DIR`` the saved config supplies the defaults.
- :class:`AgentResetConfig` and the other ``Agent*Config`` — the scheduled interventions' configs with a
  ``unit``: ``update`` (gradient updates done, the default) or ``step`` (agent steps, independent of the
  replay ratio and of ``--learning-starts``).
- :func:`check_common_args` — clear errors for bad values of the common flags (DESIGN.md §2).
- :class:`ResumableEnv`, :func:`env_rng_state` — a training env whose position can be checkpointed: the
  task's RNG state at the start of the current episode and the actions taken since. Resuming replays
  those actions (MuJoCo is deterministic), so a run resumed mid-episode continues exactly.
- :func:`evaluate` — full episodes with a deterministic policy on a separate env.
- :class:`Temperature`, :func:`tanh_gaussian_sample`, :func:`squash_log_std`, :func:`soft_update_` —
  the pieces of SAC that SAC and DrQ both use.
- :func:`build_interventions` — every intervention flag group bound to the agent's networks, as an
  :class:`AgentInterventions` (update-unit schedules after each update, step-unit ones after each step).
- :func:`measure_parts` — plasticity diagnostics of the agent's networks on the probe batch.
- :class:`OffPolicyLoop` — the bookkeeping around the agent's loop: replay ratio, episode statistics,
  logging, evaluation, diagnostics, interventions, checkpoints, signals, non-finite losses and result.

Checkpoints hold everything needed to continue exactly: networks, optimizers, temperature (in the
agent's state), interventions, replay buffer (with its RNG), replay-ratio counters, every global RNG
state, the warm-up action RNG, the training env's episode start and actions, the evaluation env's RNG,
counters, the probe batch and the initial parameters used by the diagnostics. A signal that arrives
during an evaluation aborts it (within one env step) and the checkpoint says so: the resumed run
redoes that evaluation and the rest of that step's work first, so the results stay exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, TypeVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer

from plasticrl.buffers import ReplayBatch, ReplayBuffer, ReplayRatioSchedule, exact_ratio
from plasticrl.interventions import (
    ContinualBackprop,
    HareTortoise,
    HareTortoiseConfig,
    InjectionConfig,
    Intervention,
    InterventionSet,
    L2Init,
    PlasticityInjection,
    ReDo,
    ReDoConfig,
    Reset,
    ResetConfig,
    ShrinkPerturb,
    ShrinkPerturbConfig,
    effective_rank,
    measure,
    resolve_modules,
    srank,
)

from .files import atomic_torch_save
from .run import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    NonFiniteLossError,
    Progress,
    Run,
    config_dict,
    rng_states,
    seed_everything,
    select_device,
    set_rng_states,
    stop_on_signals,
)

__all__ = [
    "NONFINITE_CHECKPOINT_FILE",
    "AgentHareTortoiseConfig",
    "AgentInjectionConfig",
    "AgentInterventions",
    "AgentReDoConfig",
    "AgentResetConfig",
    "AgentShrinkPerturbConfig",
    "OffPolicyLoop",
    "ResumableEnv",
    "Temperature",
    "acting_network",
    "add_penalties",
    "announce",
    "build_interventions",
    "check_common_args",
    "cli",
    "dataclass_from_dict",
    "env_rng_state",
    "evaluate",
    "exit_code",
    "initial_parameters",
    "l2_penalty",
    "measure_parts",
    "no_weight_grads",
    "open_run",
    "optimizers_holding",
    "schedule_lines",
    "set_env_rng_state",
    "setup_torch",
    "soft_update_",
    "squash_log_std",
    "tanh_gaussian_sample",
]

T = TypeVar("T")

NONFINITE_CHECKPOINT_FILE = "checkpoint.nonfinite.pt"
# Fields that may differ between the saved config and the flags of a resumed run.
RESUME_IGNORED_FIELDS = ("resume", "total_steps", "device", "threads", "run_dir")


# ----------------------------------------------------------------------------- intervention configs

ScheduleUnit = Literal["update", "step"]
SCHEDULE_UNITS = ("update", "step")


def schedule_unit(config: Any) -> str:
    """What a config's schedule counts: ``update`` (also for configs without a ``unit``) or ``step``."""
    return getattr(config, "unit", "update")


def _check_unit(unit: str) -> None:
    if unit not in SCHEDULE_UNITS:
        raise ValueError(f"unit must be 'update' (gradient updates) or 'step' (agent steps), got {unit!r}")


def _unit_tag(tag: str, unit: str) -> str:
    return tag if unit == "update" else f"{tag}-{unit}"


# The agents' versions of the scheduled interventions' configs: the same fields plus ``unit``. With
# ``unit = "step"`` every/at/start/until count agent steps and the intervention acts right after agent step
# N (after that step's gradient updates and its evaluation, before its checkpoint, as rl_with_resets'
# train_dense.py resets after ``i % reset_interval == 0``), whatever the replay ratio and learning starts.
# (The supervised harness has its own ``unit``, where ``step`` means a gradient update.)


@dataclass(frozen=True)
class _ScheduledInUnits:
    """The ``unit`` field the agents add to a scheduled intervention's config (listed first among bases,
    so that ``unit`` comes after the intervention's own fields and its checks run first)."""

    unit: ScheduleUnit = "update"
    """what every/at/start/until count: 'update' (gradient updates done) or 'step' (agent steps)"""

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        _check_unit(self.unit)

    def tag(self) -> str:
        """Run-name fragment, e.g. ``reset-all-e200000-step``."""
        return _unit_tag(super().tag(), self.unit)  # type: ignore[misc]


@dataclass(frozen=True)
class AgentResetConfig(_ScheduledInUnits, ResetConfig):
    """Reset (Nikishin et al. 2022), scheduled in gradient updates or agent steps."""


@dataclass(frozen=True)
class AgentShrinkPerturbConfig(_ScheduledInUnits, ShrinkPerturbConfig):
    """Shrink & perturb (Ash & Adams 2020), scheduled in gradient updates or agent steps."""


@dataclass(frozen=True)
class AgentHareTortoiseConfig(_ScheduledInUnits, HareTortoiseConfig):
    """Hare & tortoise (Lee et al. 2024): EMA after every update; hare resets in updates or agent steps."""

    unit: ScheduleUnit = "update"
    """what the hare reset's every/at/start/until count: 'update' or 'step' (agent steps); EMA every update"""

    def tag(self) -> str:
        return super().tag() if self.scheduled else HareTortoiseConfig.tag(self)


@dataclass(frozen=True)
class AgentReDoConfig(_ScheduledInUnits, ReDoConfig):
    """ReDo (Sokar et al. 2023), scheduled in gradient updates or agent steps."""


@dataclass(frozen=True)
class AgentInjectionConfig(_ScheduledInUnits, InjectionConfig):
    """Plasticity injection (Nikishin et al. 2023), scheduled in gradient updates or agent steps."""


# ----------------------------------------------------------------------------- command line


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild a (nested) dataclass from ``dataclasses.asdict``-style JSON data (lists → tuples)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            continue
        value = data[field.name]
        hint = hints.get(field.name)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = dataclass_from_dict(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return cls(**values)


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def cli(args_type: type[T], argv: Sequence[str] | None = None) -> T:
    """Parse the command line into ``args_type`` with tyro.

    With ``--resume RUN_DIR`` the run's saved ``config.json`` gives the defaults, so
    ``python agents/sac.py --resume RUN_DIR`` continues a run without repeating its flags; flags that
    are given must agree with the saved ones (checked when the run is reopened).
    """
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    default = None
    resume = _flag_value(argv, "--resume")
    if resume and (Path(resume) / CONFIG_FILE).is_file():
        saved = json.loads((Path(resume) / CONFIG_FILE).read_text())["args"]
        default = dataclasses.replace(dataclass_from_dict(args_type, saved), resume=resume)
    return tyro.cli(args_type, args=argv, default=default)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"--{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"--{name} must be >= {minimum}, got {value}")


def check_common_args(args: Any) -> None:
    """Raise a ValueError/TypeError naming the flag for bad values of the common flags."""
    _check_int("total-steps", args.total_steps, 1)
    try:
        exact_ratio(args.replay_ratio)
    except (ValueError, TypeError) as error:
        raise ValueError(f"--replay-ratio {args.replay_ratio!r}: {error}") from None
    _check_int("learning-starts", args.learning_starts, 0)
    if args.learning_starts >= args.total_steps:
        raise ValueError(
            f"--learning-starts {args.learning_starts} must be below --total-steps {args.total_steps}, "
            "or no gradient update would ever run"
        )
    _check_int("batch-size", args.batch_size, 1)
    if args.learning_starts < args.batch_size:
        raise ValueError(
            f"--learning-starts {args.learning_starts} must be at least --batch-size {args.batch_size}: "
            "the first update samples a batch from the transitions collected before it"
        )
    _check_int("eval-every", args.eval_every, 1)
    _check_int("eval-episodes", args.eval_episodes, 1)
    _check_int("log-every", args.log_every, 1)
    _check_int("diagnostics-every", args.diagnostics_every, 0)
    _check_int("checkpoint-every", args.checkpoint_every, 0)
    _check_int("buffer-size", args.buffer_size, 2)
    _check_int("probe-batch-size", args.probe_batch_size, 2)
    _check_int("threads", args.threads, 0)
    if not 0.0 <= float(args.gamma) <= 1.0:
        raise ValueError(f"--gamma must be in [0, 1], got {args.gamma}")
    if not 0.0 < float(args.tau) <= 1.0:
        raise ValueError(f"--tau must be in (0, 1], got {args.tau}")


def setup_torch(args: Any) -> torch.device:
    """Threads, seeds and the device, in that order (call before building anything random)."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    return select_device(args.device)


def open_run(agent: str, args: Any, tag: str) -> tuple[Run, dict | None]:
    """Create the run directory, or reopen ``args.resume`` and return its checkpoint.

    A resume that cannot continue (the checkpoint already reached ``--total-steps``) is refused before
    any file of the run directory is touched.
    """
    if args.resume:

        def check(checkpoint: Mapping[str, Any]) -> None:
            reached = int(checkpoint["global_step"])
            if reached >= args.total_steps and not checkpoint.get("step_pending", False):
                raise ValueError(
                    f"--resume: the run already reached step {reached} >= --total-steps {args.total_steps}; "
                    "pass a larger --total-steps to continue it"
                )

        defaults = config_dict(type(args)()) if dataclasses.is_dataclass(args) else None
        return Run.resume(args.resume, args, ignore=RESUME_IGNORED_FIELDS, check=check, defaults=defaults)
    return Run.create(args.run_dir, agent, args.env_id, tag, args.seed, args), None


_SCHEDULED = ("reset", "shrink_perturb", "redo", "injection", "hare_tortoise")


def _listed(values: list[int], more: bool) -> str:
    return ", ".join(str(int(v)) for v in values) + (", ..." if more else "")


def _firing_points(config: Any, limit: int, count: int = 3) -> tuple[list[int], bool]:
    """The first ``count`` counts in [1, limit] at which ``config`` fires, and whether more follow."""
    candidates = set(config.at)
    if config.every:
        first = max(1, -(-config.start // config.every)) * config.every
        candidates.update(range(first, first + (count + 1) * config.every, config.every))
    points = sorted(c for c in candidates if c <= limit and config.fires(c))
    return points[:count], len(points) > count


def schedule_lines(args: Any, env_steps_per_step: int = 1) -> list[str]:
    """Each intervention schedule in its unit and in the other one, at the run's replay ratio and
    learning starts: when update U is done (agent step learning_starts + ⌈U / ratio⌉), or how many updates
    are done at agent step N (⌊(N − learning_starts)·ratio⌋); env steps too when actions repeat."""
    schedule = ReplayRatioSchedule(args.replay_ratio, args.learning_starts)
    ratio = schedule.ratio
    total_updates = schedule.updates_after(args.total_steps)
    context = f"(learning starts {args.learning_starts}, replay ratio {args.replay_ratio:g})"
    lines = []
    for name in _SCHEDULED:
        config = getattr(args, name)
        if not config.enabled or not config.scheduled:
            continue
        flag = name.replace("_", "-")
        unit = schedule_unit(config)
        what = "agent steps" if unit == "step" else "updates"
        when = ([f"every {config.every} {what}"] if config.every else []) + (
            [f"at {what} {_listed(list(config.at), False)}"] if config.at else []
        )
        limit = args.total_steps if unit == "step" else total_updates
        points, more = _firing_points(config, limit)
        if not points:
            lines.append(
                f"--{flag}: {' and '.join(when)}: never within --total-steps {args.total_steps} {context}"
            )
            continue
        if unit == "step":
            steps = points
            other = f"after updates {_listed([schedule.updates_after(s) for s in steps], more)}"
        else:
            steps = [args.learning_starts + math.ceil(Fraction(u) / ratio) for u in points]
            other = ""
        text = f"--{flag}: {' and '.join(when)} = after agent steps {_listed(steps, more)}"
        if env_steps_per_step != 1:
            text += f" = env steps {_listed([s * env_steps_per_step for s in steps], more)}"
        if other:
            text += f" ({other})"
        lines.append(f"{text} {context}")
    return lines


def announce(agent: str, args: Any, run: Run, env_steps_per_step: int = 1) -> None:
    """Print the run directory and the intervention schedules in both units (stderr)."""
    print(f"[{agent}] {args.env_id}: run directory {run.path}", file=sys.stderr)
    for line in schedule_lines(args, env_steps_per_step):
        print(f"[{agent}] {line}", file=sys.stderr)


def exit_code(summary: Mapping[str, Any]) -> int:
    """Process exit status for a summary: 0 when finished, 128 + signal number when stopped by one."""
    stopped = summary.get("interrupted")
    return 0 if stopped is None else 128 + int(getattr(signal.Signals, stopped))


# ----------------------------------------------------------------------------- environments


def env_rng_state(env: gym.Env) -> dict[str, Any]:
    """The RNG states that decide an env's next episodes (a DMC task's RNG, gymnasium's np_random)."""
    state: dict[str, Any] = {}
    if hasattr(env.unwrapped, "random_state"):  # plasticrl.envs.DMCEnv
        state["task"] = env.unwrapped.random_state()
    generator = getattr(env.unwrapped, "_np_random", None)
    if generator is not None:
        state["np_random"] = generator.bit_generator.state
    return state


def set_env_rng_state(env: gym.Env, state: Mapping[str, Any]) -> None:
    """Restore :func:`env_rng_state`."""
    if "task" in state:
        if not hasattr(env.unwrapped, "set_random_state"):
            raise ValueError("checkpoint holds a DMC task RNG state but this env is not a plasticrl DMC env")
        env.unwrapped.set_random_state(state["task"])
    if "np_random" in state:
        generator = env.unwrapped.np_random
        generator.bit_generator.state = state["np_random"]


class ResumableEnv:
    """A training env whose position can be saved: episode-start RNG state plus the actions since.

    :meth:`load_state_dict` restores the RNG, resets and replays the actions, which reproduces the
    episode exactly (MuJoCo and the suite are deterministic), so resuming mid-episode is exact.
    """

    def __init__(self, env: gym.Env):
        self.env = env
        self.obs: np.ndarray | None = None
        self.episodes = 0
        self._start_state: dict[str, Any] | None = None
        self._actions: list[np.ndarray] = []

    def reset(self) -> np.ndarray:
        """Start the next episode; returns its first observation."""
        self._start_state = env_rng_state(self.env)
        self._actions = []
        self.obs, _ = self.env.reset()
        return self.obs

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Step the env; the action is recorded for replay. Does not reset at the end of an episode."""
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        self._actions.append(np.array(action, copy=True))
        self.obs = next_obs
        return next_obs, float(reward), bool(terminated), bool(truncated), info

    def state_dict(self) -> dict[str, Any]:
        """Episode start RNG state, the actions of the current episode, the episode count."""
        actions = np.stack(self._actions) if self._actions else np.zeros((0,), dtype=np.float32)
        return {"start": self._start_state, "actions": actions, "episodes": self.episodes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the RNG, reset and replay the saved actions."""
        set_env_rng_state(self.env, state["start"])
        self.reset()
        for action in state["actions"]:
            _, _, terminated, truncated, _ = self.step(action)
            if terminated or truncated:
                raise RuntimeError(
                    "replaying the checkpointed episode ended it early: the env is not the same"
                )
        self.episodes = int(state["episodes"])


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


# ----------------------------------------------------------------------------- SAC pieces


class Temperature(nn.Module):
    """SAC's learned entropy temperature α = exp(log α) (Haarnoja et al. 2018b).

    ``reset_parameters`` returns to the initial value, so resets and fresh draws restore it.
    """

    def __init__(self, initial: float):
        super().__init__()
        if not float(initial) > 0:
            raise ValueError(f"the initial temperature must be > 0, got {initial}")
        self.initial = float(initial)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(self.initial)))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.log_alpha.fill_(math.log(self.initial))

    def forward(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def extra_repr(self) -> str:
        return f"initial={self.initial}"


_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def squash_log_std(raw: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """log σ = low + (high − low)·(tanh(raw) + 1)/2, a smooth map into [low, high] (drq ``Actor``; jaxrl)."""
    return low + 0.5 * (high - low) * (torch.tanh(raw) + 1.0)


def tanh_gaussian_sample(
    mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """a = tanh(μ + σ·ε) and log π(a|s) summed over the action axis.

    log π = Σ [log N(u; μ, σ) − log(1 − tanh²u)], with log(1 − tanh²u) = 2(log 2 − u − softplus(−2u))
    (the numerically stable form used by drq's ``TanhTransform`` and TFP's ``Tanh`` bijector).
    """
    pre_tanh = mean + log_std.exp() * noise
    log_normal = -0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI
    log_det = 2.0 * (_LOG_2 - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return torch.tanh(pre_tanh), (log_normal - log_det).sum(-1)


class no_weight_grads:
    """Compute no gradients for a module's weights inside the block (gradients w.r.t. inputs still flow):
    the actor loss needs dQ/da, not the critic's weight gradients, which would be discarded anyway."""

    def __init__(self, module: nn.Module):
        self.params = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc_info: Any) -> None:
        for p in self.params:
            p.requires_grad_(True)


@torch.no_grad()
def soft_update_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """θ' ← (1 − τ)·θ' + τ·θ for every parameter, in place with one fused ``_foreach_lerp_``."""
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError("target and online networks have different parameters")
    torch._foreach_lerp_(target_params, online_params, tau)


# ----------------------------------------------------------------------------- interventions


def optimizers_holding(modules: Sequence[nn.Module], optimizers: Sequence[Optimizer]) -> list[Optimizer]:
    """The optimizers that train at least one parameter of ``modules``."""
    params = {id(p) for m in modules for p in m.parameters() if p.requires_grad}
    return [
        opt
        for opt in optimizers
        if any(id(p) in params for group in opt.param_groups for p in group["params"])
    ]


def _parts_help(network: nn.Module) -> str:
    """The agent's top-level parts and the name syntax, for error messages."""
    parts = [name for name, _ in network.named_children()]
    example = next(
        (f"{name}.{child}" for name, part in network.named_children() for child, _ in part.named_children()),
        None,
    )
    dotted = f"a sub-module by dotted path (e.g. {example})" if example else "a sub-module by dotted path"
    return f"This agent's parts: {', '.join(parts)}; or {dotted}, 'last:K' (the last K weight layers), 'all'"


def _resolve(network: nn.Module, names: Sequence[str], flag: str) -> list[nn.Module]:
    try:
        return resolve_modules(network, names)
    except ValueError as error:
        # resolve_modules lists every sub-module it knows (dozens for an ensemble critic): keep its first
        # sentence and list the top-level parts instead.
        reason = str(error).split("; available:")[0]
        raise ValueError(f"--{flag}.modules {' '.join(names)}: {reason}. {_parts_help(network)}") from None


def _within(part: nn.Module, modules: Sequence[nn.Module]) -> list[nn.Module]:
    """The modules (or the part itself) that lie in ``part``: selections intersected with one part."""
    inside = []
    for module in modules:
        if any(module is m for m in part.modules()):
            inside.append(module)
        elif any(part is m for m in module.modules()):
            inside.append(part)
    return inside


def build_interventions(
    args: Any,
    network: nn.Module,
    target: nn.Module,
    loss_parts: Mapping[str, tuple[Sequence[nn.Module], Optimizer]],
    batch_fn: Callable[[], Any],
    example_inputs: Any,
) -> tuple[AgentInterventions, dict[str, list[L2Init]]]:
    """Bind every enabled intervention flag group to ``network`` (the agent's container module).

    Module names resolve against ``network`` (``actor``, ``critic.head``, ``last:2``, ``all``); an unknown
    name is a ValueError naming the flag and the available parts. Each intervention gets the optimizers
    that hold its modules and ``target`` (a copy of ``network`` whose critic parts track it).

    ``loss_parts`` maps each loss (``critic``, ``actor``, ``temperature``) to the parts it trains and
    their optimizer. L2-init is bound once per loss, restricted to the selected modules inside that
    loss's parts (``l2_init_<loss>``), so each penalty is added to the loss whose optimizer steps those
    parameters. Order of application after each update: ``INTERVENTION_ORDER`` (hare & tortoise, continual
    backprop, ReDo, reset, shrink & perturb, plasticity injection). Returns the set and the L2-init terms
    per loss. Schedules count gradient updates, or agent steps for groups with ``unit = "step"`` (see
    :class:`AgentInterventions`).
    """
    optimizers = [opt for _, opt in loss_parts.values()]
    # Application order: plasticrl.interventions.INTERVENTION_ORDER (the same in the supervised harness).
    entries = []
    if args.hare_tortoise.enabled:
        entries.append(HareTortoise(args.hare_tortoise, network, optimizers, [target]))
    # Unit-level interventions also zero columns of the layers reading the units, which may belong to
    # another part (the conv units feed the actor's and the critic's projections): all optimizers.
    if args.cbp.enabled:
        modules = _resolve(network, args.cbp.modules, "cbp")
        entries.append(
            ContinualBackprop(args.cbp, network, example_inputs, optimizers, [target], modules=modules)
        )
    if args.redo.enabled:
        modules = _resolve(network, args.redo.modules, "redo")
        entries.append(ReDo(args.redo, network, batch_fn, optimizers, [target], modules=modules))
    if args.reset.enabled:
        modules = _resolve(network, args.reset.modules, "reset")
        entries.append(
            Reset(args.reset, network, optimizers_holding(modules, optimizers), [target], modules=modules)
        )
    if args.shrink_perturb.enabled:
        modules = _resolve(network, args.shrink_perturb.modules, "shrink-perturb")
        entries.append(
            ShrinkPerturb(
                args.shrink_perturb,
                network,
                optimizers_holding(modules, optimizers),
                [target],
                modules=modules,
            )
        )
    if args.injection.enabled:
        modules = _resolve(network, args.injection.modules, "injection")
        entries.append(
            PlasticityInjection(
                args.injection, network, optimizers_holding(modules, optimizers), [target], modules=modules
            )
        )
    penalties: dict[str, list[L2Init]] = {name: [] for name in loss_parts}
    if args.l2_init.enabled:
        selected = _resolve(network, args.l2_init.modules, "l2-init")
        for loss, (parts, _) in loss_parts.items():
            modules = [m for part in parts for m in _within(part, selected)]
            if modules:
                term = L2Init(args.l2_init, network, modules=modules, name=f"l2_init_{loss}")
                penalties[loss].append(term)
                entries.append(term)
    return AgentInterventions(entries), penalties


def l2_penalty(terms: Sequence[L2Init]) -> torch.Tensor | float:
    """Sum of the L2-init penalties of one loss (0.0 without any)."""
    return sum((t.penalty() for t in terms), 0.0) if terms else 0.0


def add_penalties(loss: torch.Tensor, terms: Sequence[L2Init]) -> torch.Tensor:
    """``loss`` plus the L2-init penalties of its parameters (``loss`` itself, no extra op, without any)."""
    return loss + l2_penalty(terms) if terms else loss


class AgentInterventions(InterventionSet):
    """The agent's interventions, each scheduled in its config's unit (:func:`schedule_unit`).

    :meth:`maybe_apply` runs after every gradient update with the update count: update-unit schedules act
    as in :class:`InterventionSet`; for step-unit ones only hare & tortoise's EMA runs there. :meth:`at_step`
    runs after every agent step (after its updates and evaluation) with the agent step count: step-unit
    schedules act there. Both counts are checkpointed by the loop, so schedules continue across a resume.
    """

    def __init__(self, interventions: Sequence[Intervention] = ()):
        super().__init__(interventions)
        self.step_unit = {
            i.name
            for i in self.interventions
            if isinstance(i, (Reset, ShrinkPerturb, ReDo, PlasticityInjection, HareTortoise))
            and schedule_unit(i.config) == "step"
        }

    def maybe_apply(self, update_step: int) -> dict[str, float]:
        """After gradient update ``update_step``: update-unit schedules, and every EMA."""
        out: dict[str, float] = {}
        for intervention in self.interventions:
            if intervention.name not in self.step_unit:
                out.update(intervention.maybe_apply(update_step))
            elif isinstance(intervention, HareTortoise) and intervention.config.enabled:
                intervention.update_tortoise()
        return out

    def at_step(self, agent_step: int) -> dict[str, float]:
        """After agent step ``agent_step``: the step-unit schedules that fire there."""
        out: dict[str, float] = {}
        for intervention in self.interventions:
            if intervention.name not in self.step_unit:
                continue
            if isinstance(intervention, HareTortoise):
                if intervention.config.enabled and intervention.config.fires(agent_step):
                    intervention.reset_hare()
                    out[f"interventions/{intervention.name}"] = 1.0
            else:  # Reset, ShrinkPerturb, ReDo, PlasticityInjection: their schedule, read in agent steps
                out.update(intervention.maybe_apply(agent_step))
        return out


def acting_network(network: nn.Module, interventions: InterventionSet) -> nn.Module:
    """The network that acts and is evaluated: hare & tortoise's choice when active, else ``network``."""
    for intervention in interventions:
        if isinstance(intervention, HareTortoise):
            return intervention.acting_network
    return network


# ----------------------------------------------------------------------------- diagnostics


def measure_parts(
    parts: Mapping[str, tuple[nn.Module, Any]],
    initial: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    dormant_threshold: float,
    ensemble_features: Mapping[str, Sequence[torch.Tensor]] | None = None,
    rank_delta: float = 0.01,
) -> dict[str, float]:
    """Diagnostics (DESIGN.md §4) of each named network on its probe inputs, ``plasticity/<metric>/<name>``.

    ``initial`` holds θ₀ per network (parameter name → tensor) for ``distance_from_init``. For ensembles
    (twin critics), ``ensemble_features[name]`` gives each member's penultimate features: ``srank``,
    ``effective_rank`` and ``feature_norm`` of the network are then the mean over members, with each
    member's value under ``.../<name>/member<m>`` (one network's "last activation" would be one member).
    """
    out: dict[str, float] = {}
    for name, (module, inputs) in parts.items():
        out.update(
            measure(
                module,
                inputs,
                dormant_threshold=dormant_threshold,
                rank_delta=rank_delta,
                name=name,
                initial_params=initial.get(name),
            )
        )
    for name, features in (ensemble_features or {}).items():
        per_metric: dict[str, list[float]] = {"srank": [], "effective_rank": [], "feature_norm": []}
        for m, feature in enumerate(features):
            flat = feature.detach().reshape(feature.shape[0], -1).float()
            values = {
                "srank": float(srank(flat, rank_delta)),
                "effective_rank": effective_rank(flat),
                "feature_norm": float(flat.norm(dim=1).mean()),
            }
            for metric, value in values.items():
                per_metric[metric].append(value)
                out[f"plasticity/{metric}/{name}/member{m}"] = value
        for metric, values in per_metric.items():
            out[f"plasticity/{metric}/{name}"] = float(np.mean(values))
    return out


def initial_parameters(parts: Mapping[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """θ₀ of each named network (for ``distance_from_init``), detached copies on the CPU."""
    return {
        name: {n: p.detach().cpu().clone() for n, p in module.named_parameters()}
        for name, module in parts.items()
    }


# ----------------------------------------------------------------------------- the loop


def _batch_to_dict(batch: ReplayBatch | None) -> dict | None:
    if batch is None:
        return None
    return {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}


class OffPolicyLoop:
    """Bookkeeping around an off-policy agent's loop (the agent's ``main`` stays the loop itself)::

        with OffPolicyLoop(...) as loop:
            while loop.running:
                action = loop.random_action() if loop.warming_up else act(loop.obs)
                for _ in range(loop.env_step(action)):   # gradient updates due (replay ratio)
                    loop.after_update(update(...))        # metrics dict of the update
                loop.after_step()                         # log, evaluate, step-unit interventions,
        return loop.summary()                             # checkpoint, signals

    Non-finite losses: every update's ``losses/*`` metrics are checked on the device (no host sync: a
    flag and the first failing update's index and values are kept with ``torch.where``); log steps and
    checkpoints read that record and stop the run naming the first failing update, its agent step and
    the loss.

    Args:
        agent: agent name (progress bar, result).
        args: the agent's Args (common flags, DESIGN.md §2).
        run: the open run directory.
        env, eval_env: training and evaluation envs (separate, differently seeded).
        buffer: the replay buffer (its ``state_dict`` goes into checkpoints).
        interventions: applied after every update with the update count and, for step-unit schedules
            (:class:`AgentInterventions`), after every agent step with the step count.
        networks: the agent's container module (checked for non-finite values before checkpoints).
        eval_policy: deterministic policy obs → action used for evaluation.
        agent_state / load_agent_state: networks, targets and optimizers of the agent, to and from a dict.
        diagnostics: probe batch (on the device) → ``{tag: value}``; None disables them.
        device: where probe batches go.
        checkpoint: the checkpoint of a resumed run (None for a new run).
        extra_state / load_extra_state: further state to checkpoint (e.g. θ₀ of the diagnostics).
    """

    def __init__(
        self,
        *,
        agent: str,
        args: Any,
        run: Run,
        env: gym.Env,
        eval_env: gym.Env,
        buffer: ReplayBuffer,
        interventions: InterventionSet,
        networks: nn.Module,
        eval_policy: Callable[[np.ndarray], np.ndarray],
        agent_state: Callable[[], dict],
        load_agent_state: Callable[[dict], None],
        diagnostics: Callable[[ReplayBatch], dict[str, float]] | None,
        device: torch.device,
        checkpoint: dict | None = None,
        env_steps_per_step: int = 1,
    ):
        self.agent = agent
        self.args = args
        self.run = run
        self.env = ResumableEnv(env)
        self.eval_env = eval_env
        self.buffer = buffer
        self.interventions = interventions
        self.networks = networks
        self.eval_policy = eval_policy
        self.agent_state = agent_state
        self.diagnostics = diagnostics if args.diagnostics_every > 0 else None
        self.device = device
        self.env_steps_per_step = env_steps_per_step
        self.total_steps = int(args.total_steps)
        self.schedule = ReplayRatioSchedule(args.replay_ratio, args.learning_starts)
        space = env.action_space
        self._action_low = np.asarray(space.low, dtype=np.float32)
        self._action_high = np.asarray(space.high, dtype=np.float32)
        self.warmup_rng = np.random.default_rng(args.seed)
        self.global_step = 0
        self.updates = 0
        self.last_return: float | None = None
        self.last_metrics: dict[str, torch.Tensor] = {}
        self.intervention_counts: dict[str, int] = {}
        self.probe: ReplayBatch | None = None
        self.stopped_by: str | None = None
        self.result: dict[str, Any] | None = None
        # Device-side record of the first update with a non-finite loss (0: none yet).
        self._all_finite: torch.Tensor | None = None
        self._first_bad_update: torch.Tensor | None = None
        self._bad_values: dict[tuple[str, ...], torch.Tensor] = {}
        # True when a signal interrupted the evaluation of ``global_step``: the rest of that step
        # (evaluation, step-unit interventions, checkpoint, end of run) is still to do.
        self._step_pending = False
        self._signals: dict[str, Any] = {"signal": None}
        self._stack = contextlib.ExitStack()
        if checkpoint is None:
            self.env.reset()
        else:
            self._restore(checkpoint, load_agent_state)

    # -- context ---------------------------------------------------------------------------------

    def __enter__(self) -> OffPolicyLoop:
        self._signals = self._stack.enter_context(stop_on_signals())
        self.progress = Progress(
            self.total_steps, f"{self.agent} {self.args.env_id}", initial=self.global_step
        )
        self._stack.callback(self.progress.close)
        self._stack.callback(self.run.close)
        self._start_time = time.time()
        self._start_step = self.global_step
        if self._step_pending:  # resumed from a checkpoint written during an evaluation
            self._step_pending = False
            self._end_of_step(self.global_step)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stack.close()

    @property
    def running(self) -> bool:
        """More agent steps to take and no stop signal received."""
        return self.global_step < self.total_steps and self.stopped_by is None

    @property
    def warming_up(self) -> bool:
        """Before ``learning_starts``: act uniformly at random (all references do)."""
        return self.global_step < self.args.learning_starts

    @property
    def obs(self) -> np.ndarray:
        """The current observation of the training env."""
        return self.env.obs

    def random_action(self) -> np.ndarray:
        """A uniform random action from the loop's own (checkpointed) generator."""
        return self.warmup_rng.uniform(self._action_low, self._action_high).astype(np.float32)

    # -- per step --------------------------------------------------------------------------------

    def env_step(self, action: np.ndarray) -> int:
        """Step the env, store the transition, handle an episode end; returns the updates now due."""
        obs = self.env.obs
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        self.buffer.add(obs, action, reward, next_obs, terminated, truncated)
        self.global_step += 1
        self.progress.update(1)
        if terminated or truncated:
            episode = info.get("episode", {})
            self.last_return = float(np.asarray(episode.get("r", np.nan)))
            self.run.log_scalars(
                {
                    "charts/episodic_return": self.last_return,
                    "charts/episodic_length": float(np.asarray(episode.get("l", np.nan))),
                },
                self.global_step,
            )
            self.env.episodes += 1
            self.progress.update(0, ret=self.last_return, updates=self.updates)
            self.env.reset()
        return self.schedule.step()

    def after_update(self, metrics: Mapping[str, torch.Tensor]) -> None:
        """Count the update, keep its metrics, apply interventions, run diagnostics when due."""
        self.updates += 1
        self.last_metrics.update(metrics)
        self._record_nonfinite(metrics)
        if self.diagnostics is not None and self.probe is None:
            size = min(self.args.probe_batch_size, self.buffer.num_valid())
            self.probe = self.buffer.sample(size)
        self._log_events(self.interventions.maybe_apply(self.updates))
        if self.diagnostics is not None and self.updates % self.args.diagnostics_every == 0:
            self.run.log_scalars(self.diagnostics(self.probe.to(self.device)), self.global_step)

    def after_step(self) -> None:
        """Log training scalars, evaluate, apply step-unit interventions, checkpoint and react to signals,
        as due at this step (rl_with_resets train_dense.py order: updates, evaluation, reset)."""
        step = self.global_step
        if step % self.args.log_every == 0:
            self._log_training(step)
        self._end_of_step(step)

    def _stop_requested(self) -> bool:
        return self._signals.get("signal") is not None

    def _end_of_step(self, step: int) -> None:
        if step % self.args.eval_every == 0 or step == self.total_steps:
            eval_rng = env_rng_state(self.eval_env)
            returns = evaluate(
                self.eval_policy, self.eval_env, self.args.eval_episodes, should_stop=self._stop_requested
            )
            if returns is None:  # a signal arrived: checkpoint now, redo this evaluation on resume
                set_env_rng_state(self.eval_env, eval_rng)
                self._step_pending = True
                self._stop(step, "during the evaluation; the resumed run evaluates this step again")
                return
            self.run.log_eval(step, returns)
        at_step = getattr(self.interventions, "at_step", None)
        if at_step is not None:
            self._log_events(at_step(step))
        if self._stop_requested():
            self._stop(step)
        elif self.args.checkpoint_every and step % self.args.checkpoint_every == 0:
            self.save_checkpoint()
        if step == self.total_steps:
            self._finish()

    def _stop(self, step: int, note: str = "") -> None:
        self.stopped_by = self._signals["signal"]
        path = self.save_checkpoint()
        note = f" {note}" if note else ""
        print(
            f"[{self.agent}] {self.stopped_by} at step {step}{note}: checkpoint written to {path}",
            file=sys.stderr,
        )

    def _log_events(self, events: Mapping[str, float]) -> None:
        if not events:
            return
        self.run.log_scalars(events, self.global_step)
        for tag in events:
            name = tag.split("/")[1]
            if tag == f"interventions/{name}":
                self.intervention_counts[name] = self.intervention_counts.get(name, 0) + 1

    # -- logging and failure ---------------------------------------------------------------------

    def _log_training(self, step: int) -> None:
        elapsed = max(time.time() - self._start_time, 1e-9)
        scalars = {
            "charts/SPS": (step - self._start_step) / elapsed,
            "charts/updates": float(self.updates),
        }
        if self.last_metrics:
            self._check_finite(step)
            names = list(self.last_metrics)
            values = torch.stack([self.last_metrics[n].detach().float().cpu().reshape(()) for n in names])
            scalars.update(zip(names, values.tolist()))
        self.run.log_scalars(scalars, step)

    def _record_nonfinite(self, metrics: Mapping[str, torch.Tensor]) -> None:
        """Keep, on the device, the index and loss values of the first update with a non-finite loss."""
        names = tuple(k for k in metrics if k.startswith("losses/"))
        if not names:
            return
        values = torch.stack([metrics[k] for k in names])  # 0-dim detached float tensors (the agents')
        if self._all_finite is None:
            self._all_finite = torch.ones((), dtype=torch.bool, device=values.device)
            self._first_bad_update = torch.zeros((), dtype=torch.int64, device=values.device)
        finite = torch.isfinite(values).all()
        first = self._all_finite > finite  # finite so far, not now
        self._all_finite.logical_and_(finite)
        self._first_bad_update.masked_fill_(first, self.updates)
        held = self._bad_values.get(names)
        self._bad_values[names] = torch.where(first, values, values if held is None else held)

    def step_of_update(self, update: int) -> int:
        """The agent step during which gradient update ``update`` ran: learning_starts + ⌈update / ratio⌉."""
        return self.schedule.learning_starts + math.ceil(Fraction(update) / self.schedule.ratio)

    def _check_finite(self, step: int) -> None:
        if self._first_bad_update is None:
            return
        first = int(self._first_bad_update)  # the one host sync, at log steps and checkpoints
        if first == 0:
            return
        bad = {}
        for names, values in self._bad_values.items():
            values = values.cpu()
            for name, value in zip(names, values.tolist()):
                if not math.isfinite(value):
                    bad[name] = value
        losses = ", ".join(f"{name} = {value}" for name, value in bad.items())
        raise self._nonfinite(
            f"non-finite loss {losses} first at update {first} (agent step {self.step_of_update(first)}); "
            f"detected at step {step}"
        )

    def _nonfinite(self, message: str) -> NonFiniteLossError:
        path = self.run.path / NONFINITE_CHECKPOINT_FILE
        atomic_torch_save(self.state_dict(), path)
        good = self.run.path / CHECKPOINT_FILE
        last_good = f"; the last good checkpoint is {good}" if good.is_file() else ""
        self.run.writer.flush()
        return NonFiniteLossError(
            f"{message} (update {self.updates}); stopped the run; the state at detection is saved in "
            f"{path}{last_good}"
        )

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (see the module docstring)."""
        return {
            "format": 1,
            "global_step": self.global_step,
            "updates": self.updates,
            "last_return": self.last_return,
            "intervention_counts": dict(self.intervention_counts),
            "agent": self.agent_state(),
            "interventions": self.interventions.state_dict(),
            "buffer": self.buffer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": rng_states(),
            "warmup_rng": self.warmup_rng.bit_generator.state,
            "env": self.env.state_dict(),
            "eval_env": env_rng_state(self.eval_env),
            "probe": _batch_to_dict(self.probe),
            "step_pending": self._step_pending,
        }

    def save_checkpoint(self) -> Path:
        """Atomically write ``checkpoint.pt`` (after checking losses and parameters are finite)."""
        self._check_finite(self.global_step)
        bad = [n for n, p in self.networks.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise self._nonfinite(f"non-finite parameters {', '.join(bad[:5])} at step {self.global_step}")
        return self.run.save_checkpoint(self.state_dict())

    def _restore(self, checkpoint: dict, load_agent_state: Callable[[dict], None]) -> None:
        reached = int(checkpoint["global_step"])
        self._step_pending = bool(checkpoint.get("step_pending", False))
        if reached >= self.total_steps and not self._step_pending:  # (open_run refuses this first)
            raise ValueError(
                f"--resume: the run already reached step {reached} >= --total-steps {self.total_steps}; "
                "pass a larger --total-steps to continue it"
            )
        # Interventions first: plasticity injection re-creates modules whose values the agent's state fills.
        self.interventions.load_state_dict(checkpoint["interventions"])
        load_agent_state(checkpoint["agent"])
        self.buffer.load_state_dict(checkpoint["buffer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        self.warmup_rng.bit_generator.state = checkpoint["warmup_rng"]
        set_env_rng_state(self.eval_env, checkpoint["eval_env"])
        self.env.load_state_dict(checkpoint["env"])
        self.global_step = int(checkpoint["global_step"])
        self.updates = int(checkpoint["updates"])
        self.last_return = checkpoint["last_return"]
        self.intervention_counts = dict(checkpoint["intervention_counts"])
        probe = checkpoint["probe"]
        self.probe = None if probe is None else ReplayBatch(**probe)
        set_rng_states(checkpoint["rng"])

    # -- the end ---------------------------------------------------------------------------------

    def _finish(self) -> None:
        if self.args.checkpoint_every:
            self.save_checkpoint()
        rows = self.run.eval_rows
        means = [float(r["mean_return"]) for r in rows]
        elapsed = time.time() - self._start_time
        self.result = {
            "agent": self.agent,
            "env_id": self.args.env_id,
            "seed": self.args.seed,
            "final_eval_return": means[-1] if means else None,
            "best_eval_return": max(means) if means else None,
            "final_eval_step": int(rows[-1]["step"]) if rows else None,
            "steps": self.global_step,
            "env_steps": self.global_step * self.env_steps_per_step,
            "updates": self.updates,
            "episodes": self.env.episodes,
            "interventions": dict(self.intervention_counts),
            "wall_time_s": elapsed,
            "sps": (self.global_step - self._start_step) / max(elapsed, 1e-9),
            "run_dir": str(self.run.path),
        }
        self.run.write_result(self.result)

    def summary(self) -> dict[str, Any]:
        """The final result, or (stopped by a signal) the state reached with ``interrupted`` set."""
        if self.result is not None:
            return dict(self.result)
        return {
            "agent": self.agent,
            "env_id": self.args.env_id,
            "seed": self.args.seed,
            "steps": self.global_step,
            "updates": self.updates,
            "interrupted": self.stopped_by,
            "run_dir": str(self.run.path),
        }
