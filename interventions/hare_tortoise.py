"""Hare & tortoise (Lee et al. 2024, "Slow and steady wins the race").

The *hare* is the trained network; the *tortoise* is a copy updated after every gradient update as
tortoise ← m·tortoise + (1−m)·hare, parameters and floating-point buffers alike (integer buffers such as
BatchNorm's batch counter are copied). On schedule the hare is reset to the tortoise (parameters and
buffers). ``act_with`` chooses which of the two acts and is evaluated (:attr:`HareTortoise.acting_network`).

Optimizer: the hare's optimizer state is kept at a hare reset, as in the authors' trainer
(dojeon-ai/Hare-Tortoise ``src/trainers/base.py``); ``reset_optimizer`` clears it. The tortoise is
never trained (no gradients, in no optimizer). Targets (copies of the hare that track it): ``sync``
(default) copies the reset hare into them; ``keep`` leaves them to follow through their own updates.

Structural changes of the hare (plasticity injection wraps the head as frozen + trainable − anchor): the
tortoise gets the same structure, in place (``tortoise`` keeps its identity): modules and parameters the
hare already had keep their tortoise twins and averaged values (the injected head's ``frozen`` part is the
tortoise's own old head), and every new module or parameter starts as a copy of the hare's (the fresh
trainable copy and its anchor, so the tortoise's outputs are unchanged too). Injection triggers this at
once (:func:`~.base.notify_structure_changed`); any other change is found at the next call, by
comparing :func:`~.binding.structure_signature`, and then the new parts start from the hare's values at
that call. Target copies must receive the same change (pass them to the injection as well), or a hare
reset with ``target_rule='sync'`` is a ValueError.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .base import Intervention, _fires_ever, watch_structure
from .binding import structure_signature
from .config import HareTortoiseConfig
from .optim import clear_state_

__all__ = ["HareTortoise"]


def _twins(hare: nn.Module, tortoise: nn.Module) -> dict[int, tuple[Any, Any]]:
    """id of each module and parameter of ``hare`` → (it, its twin in ``tortoise``), matched by position in
    the module tree; ValueError where the two differ in structure."""
    pairs: dict[int, tuple[Any, Any]] = {}

    def visit(h: nn.Module, t: nn.Module, path: str) -> None:
        pairs[id(h)] = (h, t)
        for kind in ("_parameters", "_buffers", "_modules"):
            ours, theirs = getattr(h, kind), getattr(t, kind)
            if list(ours) != list(theirs) or any((ours[k] is None) != (theirs[k] is None) for k in ours):
                raise ValueError(
                    f"the tortoise's part {path or '<root>'!r} does not have the network's structure "
                    f"({kind[1:]} {list(theirs)} vs {list(ours)})"
                )
        for key, param in h._parameters.items():
            if param is not None:
                pairs[id(param)] = (param, t._parameters[key])
        for key, child in h._modules.items():
            if child is not None and id(child) not in pairs:
                visit(child, t._modules[key], f"{path}.{key}" if path else key)

    visit(hare, tortoise, "")
    return pairs


def _mirror_structure_(hare: nn.Module, tortoise: nn.Module, memo: dict[int, Any], done: set[int]) -> None:
    """Give ``tortoise`` the structure of ``hare`` in place, reusing the twins in ``memo`` (id of a hare
    module or parameter → its tortoise twin) and copying everything new from the hare."""
    if id(hare) in done:
        return
    done.add(id(hare))
    params: dict[str, Any] = {}
    for key, param in hare._parameters.items():
        if param is None:
            params[key] = None
        elif id(param) in memo:
            params[key] = memo[id(param)]
        else:
            params[key] = memo[id(param)] = nn.Parameter(param.detach().clone(), requires_grad=False)
    buffers: dict[str, Any] = {}
    for key, buffer in hare._buffers.items():
        mine = tortoise._buffers.get(key)
        keep = (
            mine is not None
            and buffer is not None
            and (mine.shape, mine.dtype, mine.device) == (buffer.shape, buffer.dtype, buffer.device)
        )
        buffers[key] = mine if keep else (None if buffer is None else buffer.detach().clone())
    children: dict[str, Any] = {}
    for key, child in hare._modules.items():
        if child is None:
            children[key] = None
        elif id(child) in memo:
            children[key] = memo[id(child)]
        else:
            # New module (e.g. the InjectedHead): a copy whose known parts are the existing twins.
            children[key] = copy.deepcopy(child, memo)
    for kind, new in (("_parameters", params), ("_buffers", buffers), ("_modules", children)):
        mapping = getattr(tortoise, kind)
        mapping.clear()
        mapping.update(new)
    tortoise._non_persistent_buffers_set = set(hare._non_persistent_buffers_set)
    for key, child in hare._modules.items():
        if child is not None:
            _mirror_structure_(child, children[key], memo, done)


class HareTortoise(Intervention):
    """Keep a tortoise (EMA) of ``network`` and reset the hare to it on schedule.

    Args:
        config: ``momentum``, the hare-reset schedule, ``act_with``, optimizer and target rules.
        network: the hare (the network the optimizer trains).
        optimizers: the optimizer(s) training the hare.
        targets: copies of the hare that track it (e.g. a DQN target network); parts match by name.
        tortoise: an existing copy to use as the tortoise (default: a deep copy of ``network`` now).
        name: log and checkpoint key (default ``"hare_tortoise"``).
    """

    def __init__(
        self,
        config: HareTortoiseConfig,
        network: nn.Module,
        optimizers: Sequence[Optimizer],
        targets: Sequence[nn.Module] = (),
        *,
        tortoise: nn.Module | None = None,
        name: str = "hare_tortoise",
    ):
        self.config = config
        self.name = name
        if config.scheduled and not _fires_ever(config):
            raise ValueError(
                f"{name}: the hare-reset schedule (every={config.every}, at={tuple(config.at)}) has no "
                f"update in [start={config.start}, until={config.until}); widen it, or set every = 0 and "
                "no at for an EMA without hare resets"
            )
        self._bind(network, [network], (), optimizers, targets)
        self.hare = network
        self.tortoise = copy.deepcopy(network) if tortoise is None else tortoise
        if self.tortoise is network:
            raise ValueError("the tortoise must be a separate copy of the network")
        self.tortoise.requires_grad_(False)
        ours = {k: v.shape for k, v in network.state_dict().items()}
        if {k: v.shape for k, v in self.tortoise.state_dict().items()} != ours:
            raise ValueError("the tortoise must have the same parameters and buffers as the network")
        self._track_structure()
        watch_structure(network, self)

    def _track_structure(self) -> None:
        """Record the hare ↔ tortoise pairing and the EMA's tensor lists for the current structure."""
        self._pairs = _twins(self.hare, self.tortoise)
        self._signature = structure_signature(self.hare)
        self._fast = list(self.hare.parameters())
        self._slow = [self._pairs[id(p)][1] for p in self._fast]

    @torch.no_grad()
    def sync_structure(self) -> bool:
        """Give the tortoise the hare's current structure if it changed (see the module docstring);
        returns whether it did."""
        if structure_signature(self.hare) == self._signature:
            return False
        memo = {key: twin for key, (_, twin) in self._pairs.items()}
        _mirror_structure_(self.hare, self.tortoise, memo, set())
        self.tortoise.requires_grad_(False)
        self._track_structure()
        return True

    def structure_changed(self) -> None:
        """The hare's structure changed (plasticity injection): mirror it in the tortoise now."""
        self.sync_structure()

    @property
    def acting_network(self) -> nn.Module:
        """The network that acts and is evaluated: the tortoise or the hare, per ``config.act_with``."""
        if self.config.act_with == "tortoise":
            self.sync_structure()
            return self.tortoise
        return self.hare

    @torch.no_grad()
    def update_tortoise(self) -> None:
        """tortoise ← m·tortoise + (1−m)·hare for parameters and floating-point buffers."""
        self.sync_structure()
        weight = 1.0 - self.config.momentum
        slow_buffers, fast_buffers = [], []
        for s, f in zip(self.tortoise.buffers(), self.hare.buffers()):
            if s.is_floating_point():
                slow_buffers.append(s)
                fast_buffers.append(f)
            else:
                s.copy_(f)
        # lerp(t, h, w) = t + w·(h − t) = (1 − w)·t + w·h with w = 1 − m.
        if self._slow:
            torch._foreach_lerp_(self._slow, self._fast, weight)
        if slow_buffers:
            torch._foreach_lerp_(slow_buffers, fast_buffers, weight)

    @torch.no_grad()
    def reset_hare(self) -> None:
        """hare ← tortoise (parameters and buffers), then the optimizer and target rules."""
        self.sync_structure()
        self.hare.load_state_dict(self.tortoise.state_dict())
        if self.config.reset_optimizer:
            clear_state_(self.optimizers, self.hare.parameters())
        if self.config.target_rule == "sync":
            state = self.hare.state_dict()
            for target in self.targets:
                if set(target.state_dict()) != set(state):
                    raise ValueError(
                        f"{self.name}: a target copy no longer has the hare's parameters and buffers (the "
                        "hare's structure changed, e.g. by plasticity injection); pass the target to that "
                        "intervention too, so that it gets the same change"
                    )
                target.load_state_dict(state)

    def maybe_apply(self, update_step: int) -> dict[str, float]:
        """Update the tortoise; then reset the hare if the schedule fires (so hare == tortoise after)."""
        if not self.config.enabled:
            return {}
        self.update_tortoise()
        if not self.config.fires(update_step):
            return {}
        self.reset_hare()
        return self._fired()

    def state_dict(self) -> dict[str, Any]:
        """The tortoise's parameters and buffers."""
        self.sync_structure()
        return {"tortoise": self.tortoise.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the tortoise (after any structural change of the hare has been re-created: load a
        plasticity injection's state first, as :meth:`InterventionSet.load_state_dict` does)."""
        self.sync_structure()
        theirs, ours = set(state["tortoise"]), set(self.tortoise.state_dict())
        if theirs != ours:
            raise ValueError(
                f"{self.name}: the checkpointed tortoise and this network's differ in entries "
                f"{sorted(theirs ^ ours)[:6]}; if the checkpoint was taken after a plasticity injection, "
                "load the injection's state first (InterventionSet.load_state_dict does)"
            )
        self.tortoise.load_state_dict(state["tortoise"])
