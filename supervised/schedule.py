"""When the interventions of :mod:`plasticrl.interventions` act in a supervised run.

The intervention objects are the agents' own; this module only decides *when* to call them. Each
config's ``unit`` says what its schedule counts:

- ``step``: the intervention's own ``maybe_apply(update_step)`` after every update (as in the agents);
- ``epoch``: it acts (``apply()``; ReDo ``recycle``; hare & tortoise ``reset_hare``) when its schedule
  fires at the number of epochs completed in the run;
- ``phase``: the same at phase switches, counted 1, 2, … (1 = before phase 2 / task 2 starts).

Hare & tortoise updates its tortoise after every update whatever the unit; continual backprop runs after
every update; L2-init acts through :meth:`InterventionSchedule.penalty`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from plasticrl.interventions import (
    ContinualBackprop,
    HareTortoise,
    Intervention,
    InterventionSet,
    L2Init,
    PlasticityInjection,
    PlasticityMonitor,
    ReDo,
    Reset,
    ShrinkPerturb,
)

from .config import CommonConfig

__all__ = ["InterventionSchedule", "build_interventions"]


def _fired(name: str, extra: Mapping[str, float] | None = None) -> dict[str, float]:
    out = {f"interventions/{name}": 1.0}
    for key, value in (extra or {}).items():
        out[f"interventions/{name}/{key}"] = float(value)
    return out


class InterventionSchedule:
    """The interventions of one run with their units, called at updates, epoch ends and phase switches.

    Args:
        entries: (intervention, unit) pairs in application order; unit is ``step``, ``epoch`` or
            ``phase`` (ignored for L2-init and continual backprop, which act every update).
        monitor: diagnostics whose dormant-overlap reference is marked right before a reset or ReDo step.
    """

    def __init__(self, entries: Sequence[tuple[Intervention, str]], monitor: PlasticityMonitor | None = None):
        for intervention, unit in entries:
            if unit not in ("step", "epoch", "phase"):
                raise ValueError(f"{intervention.name}: unit must be step, epoch or phase, got {unit!r}")
        self.entries = list(entries)
        self.interventions = InterventionSet([i for i, _ in entries])
        self.monitor = monitor

    def __len__(self) -> int:
        return len(self.entries)

    def penalty(self) -> torch.Tensor | float:
        """The loss terms of the interventions that add one (L2-init)."""
        return self.interventions.penalty()

    @property
    def hare_tortoise(self) -> HareTortoise | None:
        for intervention, _ in self.entries:
            if isinstance(intervention, HareTortoise):
                return intervention
        return None

    def eval_network(self, network: nn.Module) -> nn.Module:
        """The network to evaluate: hare & tortoise's acting network when it is active, else ``network``."""
        ht = self.hare_tortoise
        return ht.acting_network if ht is not None and ht.config.enabled else network

    def _act(self, intervention: Intervention) -> dict[str, float]:
        if self.monitor is not None and isinstance(intervention, (Reset, ReDo)):
            self.monitor.mark_reset()
        if isinstance(intervention, ReDo):
            return _fired(intervention.name, intervention.recycle(intervention.batch_fn()))
        if isinstance(intervention, HareTortoise):
            intervention.reset_hare()
        elif isinstance(intervention, (Reset, ShrinkPerturb, PlasticityInjection)):
            intervention.apply()
        else:
            raise TypeError(f"{type(intervention).__name__} has no scheduled action")
        return _fired(intervention.name)

    def after_update(self, update_step: int) -> dict[str, float]:
        """Call after gradient update number ``update_step`` (1-based)."""
        out: dict[str, float] = {}
        for intervention, unit in self.entries:
            if unit == "step" or isinstance(intervention, (ContinualBackprop, L2Init)):
                if self.monitor is not None and isinstance(intervention, (Reset, ReDo)):
                    if intervention.config.fires(update_step):
                        self.monitor.mark_reset()
                out.update(intervention.maybe_apply(update_step))
            elif isinstance(intervention, HareTortoise) and intervention.config.enabled:
                intervention.update_tortoise()
        return out

    def _scheduled(self, unit: str, count: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for intervention, entry_unit in self.entries:
            if entry_unit != unit or isinstance(intervention, (ContinualBackprop, L2Init)):
                continue
            config = intervention.config
            if isinstance(intervention, HareTortoise) and not config.enabled:
                continue
            if config.fires(count):
                out.update(self._act(intervention))
        return out

    def after_epoch(self, epochs_done: int) -> dict[str, float]:
        """Call at the end of every epoch with the number of epochs completed in the run."""
        return self._scheduled("epoch", epochs_done)

    def at_phase_switch(self, switches: int) -> dict[str, float]:
        """Call before phase ``switches + 1`` starts (``switches`` = 1 before the second phase)."""
        return self._scheduled("phase", switches)

    def state_dict(self) -> dict[str, Any]:
        return self.interventions.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.interventions.load_state_dict(state)

    def close(self) -> None:
        """Remove forward hooks (continual backprop)."""
        for intervention, _ in self.entries:
            if isinstance(intervention, ContinualBackprop):
                intervention.remove_hooks()


def build_interventions(
    config: CommonConfig,
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    batch_fn: Callable[[], torch.Tensor],
    example_inputs: torch.Tensor,
    monitor: PlasticityMonitor | None = None,
    extra: Sequence[tuple[Intervention, str]] = (),
) -> InterventionSchedule:
    """Bind every intervention the config switches on to ``network`` and ``optimizer``, in
    ``INTERVENTION_ORDER`` (hare & tortoise, continual backprop, ReDo, reset, shrink & perturb, injection,
    L2-init), then ``extra``.

    ``batch_fn`` returns a training batch (ReDo scores units on it); ``example_inputs`` are a few inputs
    (continual backprop finds its layers with them).
    """
    entries: list[tuple[Intervention, str]] = []
    opt = [optimizer]
    if config.hare_tortoise.enabled:
        entries.append((HareTortoise(config.hare_tortoise, network, opt), config.hare_tortoise.unit))
    if config.cbp.enabled:
        entries.append((ContinualBackprop(config.cbp, network, example_inputs, opt), "step"))
    if config.redo.enabled:
        entries.append((ReDo(config.redo, network, batch_fn, opt), config.redo.unit))
    if config.reset.enabled:
        entries.append((Reset(config.reset, network, opt), config.reset.unit))
    if config.shrink_perturb.enabled:
        entries.append((ShrinkPerturb(config.shrink_perturb, network, opt), config.shrink_perturb.unit))
    if config.injection.enabled:
        entries.append((PlasticityInjection(config.injection, network, opt), config.injection.unit))
    if config.l2_init.enabled:
        entries.append((L2Init(config.l2_init, network), "step"))
    entries.extend(extra)
    return InterventionSchedule(entries, monitor)
