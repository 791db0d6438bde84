"""The intervention protocol and running several interventions in an explicit order.

An intervention is bound, at construction, to a network, the modules of it that it acts on (by
reference), their optimizer(s) and any target copies; the training loop then calls
``maybe_apply(update_step)`` once after every gradient update. The returned dict says what it did:
``{"interventions/<name>": 1.0, ...}`` at the updates where it acted, ``{}`` otherwise.

    interventions = InterventionSet([reset, shrink_perturb, hare_tortoise])
    for step in range(1, num_updates + 1):
        loss = td_loss + interventions.penalty()      # L2-init adds its term here
        ...; optimizer.step()
        writer.log(interventions.maybe_apply(step))

Checkpoints: save ``interventions.state_dict()``; on resume, build the network, optimizer and
interventions as at the start, then load the interventions' state **before** the network's and the
optimizer's (plasticity injection re-creates its modules and optimizer groups, whose values the
network and optimizer state then fill in). :meth:`InterventionSet.load_state_dict` loads the interventions
that change the network's structure first, so the others find the structure they checkpointed.

Structural changes: plasticity injection replaces modules of the network (the head by frozen + trainable
− anchor). Interventions that hold a picture of the structure (hare & tortoise's tortoise, the unit
groups of ReDo and continual backprop) re-discover it: injection calls :func:`notify_structure_changed`
right after it acts, which calls ``structure_changed()`` on every intervention watching a network that
contains the changed one (:func:`watch_structure`), and each of them also compares
:func:`~.binding.structure_signature` at its next call, which catches changes made by other code.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .binding import (
    check_modules_in_network,
    check_optimizers_hold,
    mirror_module,
    qualified_name,
    resolve_modules,
)

__all__ = [
    "Intervention",
    "InterventionSet",
    "apply_all",
    "check_schedule_fires",
    "notify_structure_changed",
    "watch_structure",
]

# Network → weak references to the interventions that track its structure, in registration order.
_WATCHERS: weakref.WeakKeyDictionary[nn.Module, list[weakref.ref]] = weakref.WeakKeyDictionary()


def watch_structure(network: nn.Module, intervention: Intervention) -> None:
    """Have ``intervention.structure_changed()`` called when :func:`notify_structure_changed` is told about
    a change inside ``network`` (held weakly: a discarded intervention is not kept alive)."""
    refs = _WATCHERS.setdefault(network, [])
    refs[:] = [r for r in refs if r() is not None and r() is not intervention]
    refs.append(weakref.ref(intervention))


def notify_structure_changed(module: nn.Module) -> None:
    """Call ``structure_changed()`` on every intervention watching a network that contains ``module`` or
    lies inside it (plasticity injection calls this right after replacing modules)."""
    for network, refs in list(_WATCHERS.items()):
        related = any(m is module for m in network.modules()) or any(m is network for m in module.modules())
        if not related:
            continue
        for ref in list(refs):
            watcher = ref()
            if watcher is not None:
                watcher.structure_changed()


def _fires_ever(config: Any) -> bool:
    """Whether a schedule (every / at within [start, until)) fires at some update ≥ 1."""
    until = config.until
    if any(step >= config.start and (until is None or step < until) for step in config.at):
        return True
    if config.every > 0:
        first = max(config.start, 1)
        first = -(-first // config.every) * config.every  # the first multiple of every at or after start
        return until is None or first < until
    return False


def check_schedule_fires(config: Any, name: str) -> None:
    """ValueError when a scheduled intervention's schedule never fires (it would bind and never act)."""
    if not config.scheduled:
        raise ValueError(
            f"{name}: its schedule never fires (every = 0 and no at=...), so it would be bound and never "
            "act; set every > 0 or at=(...) (to act only when you call apply(), use e.g. at=(1,) and call "
            "apply())"
        )
    if not _fires_ever(config):
        raise ValueError(
            f"{name}: its schedule (every={config.every}, at={tuple(config.at)}) has no update in "
            f"[start={config.start}, until={config.until}), so it would never act; widen start/until or "
            "change every/at"
        )


class Intervention(ABC):
    """Base class: binding checks shared by all interventions, and the per-update protocol."""

    name: str = "intervention"
    changes_structure: bool = False
    """whether it adds or replaces modules of the network (its state is loaded first on resume)"""

    def _bind(
        self,
        network: nn.Module,
        modules: Sequence[nn.Module] | None,
        module_names: Sequence[str],
        optimizers: Sequence[Optimizer] | None,
        targets: Sequence[nn.Module],
        *,
        needs_optimizer: bool = True,
        check_optimizers: bool = True,
    ) -> None:
        """Resolve and check the bound modules, optimizers and target copies; sets ``self.network``,
        ``self.modules``, ``self.module_names``, ``self.optimizers``, ``self.targets`` and
        ``self.target_modules`` (per target copy, the twin of each bound module).

        With ``check_optimizers=False`` the optimizer check is left to the caller, which knows more
        modules it touches (see :meth:`_check_optimizers_cover`)."""
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be an nn.Module, got {type(network).__name__}")
        if isinstance(modules, nn.Module):
            modules = [modules]
        self.network = network
        self.modules = list(modules) if modules is not None else resolve_modules(network, module_names)
        self.module_names = check_modules_in_network(network, self.modules)
        if isinstance(optimizers, Optimizer):
            raise TypeError("optimizers must be a sequence of optimizers, e.g. [opt]")
        self.optimizers = list(optimizers or [])
        if check_optimizers and (needs_optimizer or self.optimizers):
            check_optimizers_hold(self.modules, self.optimizers, self.module_names)
        if isinstance(targets, nn.Module):
            targets = [targets]
        self.targets = list(targets)
        for target in self.targets:
            if target is network:
                raise ValueError("a target copy cannot be the bound network itself")
        self.target_modules = [
            [mirror_module(t, n, m) for n, m in zip(self.module_names, self.modules)] for t in self.targets
        ]

    def _check_optimizers_cover(self, touched: Mapping[nn.Module, str]) -> None:
        """Check that the optimizers hold every trainable parameter of the bound modules and of the
        modules in ``touched`` (module → what is done to it), and that each optimizer trains some part of
        the bound network (so all of a network's optimizers may be passed).

        Unit-level interventions change layers found from the data flow, which may lie outside the bound
        modules (the layer after ``body`` reading its units is the head): their optimizer state must be
        reset too (peers.md mistake #3), so their optimizer must be given."""
        modules = list(self.modules)
        names = list(self.module_names)
        why: dict[int, str] = {}
        for module, note in touched.items():
            why.setdefault(id(module), note)
            if all(module is not m for m in modules):
                modules.append(module)
                names.append(qualified_name(self.network, module))
        check_optimizers_hold(modules, self.optimizers, names, why=why, scope=self.network)

    def structure_changed(self) -> None:
        """Called right after the structure of the bound network changed (see :func:`watch_structure`);
        interventions that hold a picture of the structure re-discover it here (default: nothing)."""
        return None

    @abstractmethod
    def maybe_apply(self, update_step: int) -> dict[str, float]:
        """Act if the schedule says so after gradient update ``update_step``; return what was done."""

    def state_dict(self) -> dict[str, Any]:
        """State needed to resume (empty for stateless interventions)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (stateless interventions accept only an empty state)."""
        if state:
            raise ValueError(f"{self.name} has no state to load, got keys {sorted(state)}")

    def _fired(self, extra: Mapping[str, float] | None = None) -> dict[str, float]:
        out = {f"interventions/{self.name}": 1.0}
        for key, value in (extra or {}).items():
            out[f"interventions/{self.name}/{key}"] = float(value)
        return out


class InterventionSet:
    """Interventions applied in list order after every update, with one state dict and one loss penalty."""

    def __init__(self, interventions: Sequence[Intervention] = ()):
        names = [i.name for i in interventions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"intervention names must be unique (they key logs and checkpoints); duplicated: "
                f"{duplicates}. Pass name=... when binding two of the same kind"
            )
        self.interventions = list(interventions)

    def __iter__(self) -> Iterator[Intervention]:
        return iter(self.interventions)

    def __len__(self) -> int:
        return len(self.interventions)

    def maybe_apply(self, update_step: int) -> dict[str, float]:
        """Call every intervention in order; the merged dict of what they did."""
        return apply_all(self.interventions, update_step)

    def penalty(self) -> torch.Tensor | float:
        """Sum of the loss terms of interventions that add one (L2-init); 0.0 when none does."""
        terms = [i.penalty() for i in self.interventions if hasattr(i, "penalty")]
        return sum(terms[1:], terms[0]) if terms else 0.0

    def state_dict(self) -> dict[str, Any]:
        """Every intervention's state, keyed by name."""
        return {i.name: i.state_dict() for i in self.interventions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the set of names must match. Interventions that change the network's
        structure (plasticity injection) are loaded first, so that the others (hare & tortoise's tortoise,
        the unit groups of ReDo and continual backprop) find the structure they checkpointed."""
        ours = {i.name for i in self.interventions}
        if set(state) != ours:
            raise ValueError(f"checkpoint has interventions {sorted(state)}, this run has {sorted(ours)}")
        structural = [i for i in self.interventions if i.changes_structure]
        for intervention in structural + [i for i in self.interventions if not i.changes_structure]:
            intervention.load_state_dict(state[intervention.name])


def apply_all(interventions: Sequence[Intervention], update_step: int) -> dict[str, float]:
    """Call ``maybe_apply(update_step)`` on each intervention in order; merge what they report."""
    if isinstance(update_step, bool) or not isinstance(update_step, int) or update_step < 0:
        raise ValueError(f"update_step must be a non-negative int, got {update_step!r}")
    out: dict[str, float] = {}
    for intervention in interventions:
        out.update(intervention.maybe_apply(update_step))
    return out
