"""The agents' side of the interventions: configs with a schedule unit, binding to an agent's networks.

- :class:`AgentResetConfig` and the other ``Agent*Config`` — the scheduled interventions' configs with a
  ``unit``: ``update`` (gradient updates done, the default) or ``step`` (agent steps, independent of the
  replay ratio and of ``--learning-starts``).
- :func:`build_interventions` — every intervention flag group bound to the agent's networks, as an
  :class:`AgentInterventions` (update-unit schedules after each update, step-unit ones after each step),
  plus the L2-init penalty terms per loss (:func:`add_penalties`).
- :func:`schedule_lines` — each schedule in both units at the run's replay ratio, printed at start.
- :func:`acting_network` — the network that acts (hare & tortoise's choice when active).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import torch
from torch import nn
from torch.optim import Optimizer

from plasticrl.buffers import ReplayRatioSchedule
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
    resolve_modules,
)

__all__ = [
    "SCHEDULE_UNITS",
    "AgentHareTortoiseConfig",
    "AgentInjectionConfig",
    "AgentInterventions",
    "AgentReDoConfig",
    "AgentResetConfig",
    "AgentShrinkPerturbConfig",
    "acting_network",
    "add_penalties",
    "build_interventions",
    "l2_penalty",
    "optimizers_holding",
    "schedule_lines",
    "schedule_unit",
]


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


# ----------------------------------------------------------------------------- binding


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
    target: nn.Module | None,
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
    targets = [] if target is None else [target]
    # Application order: plasticrl.interventions.INTERVENTION_ORDER (the same in the supervised harness).
    entries = []
    if args.hare_tortoise.enabled:
        entries.append(HareTortoise(args.hare_tortoise, network, optimizers, targets))
    # Unit-level interventions also zero columns of the layers reading the units, which may belong to
    # another part (the conv units feed the actor's and the critic's projections): all optimizers.
    if args.cbp.enabled:
        modules = _resolve(network, args.cbp.modules, "cbp")
        entries.append(
            ContinualBackprop(args.cbp, network, example_inputs, optimizers, targets, modules=modules)
        )
    if args.redo.enabled:
        modules = _resolve(network, args.redo.modules, "redo")
        entries.append(ReDo(args.redo, network, batch_fn, optimizers, targets, modules=modules))
    if args.reset.enabled:
        modules = _resolve(network, args.reset.modules, "reset")
        entries.append(
            Reset(args.reset, network, optimizers_holding(modules, optimizers), targets, modules=modules)
        )
    if args.shrink_perturb.enabled:
        modules = _resolve(network, args.shrink_perturb.modules, "shrink-perturb")
        entries.append(
            ShrinkPerturb(
                args.shrink_perturb,
                network,
                optimizers_holding(modules, optimizers),
                targets,
                modules=modules,
            )
        )
    if args.injection.enabled:
        modules = _resolve(network, args.injection.modules, "injection")
        entries.append(
            PlasticityInjection(
                args.injection, network, optimizers_holding(modules, optimizers), targets, modules=modules
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
        # Any intervention whose config has ``unit = "step"`` (the agent's own, e.g. BBF's resets, too).
        self.step_unit = {
            i.name for i in self.interventions if schedule_unit(getattr(i, "config", None)) == "step"
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



# ----------------------------------------------------------------------------- schedules in both units


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

