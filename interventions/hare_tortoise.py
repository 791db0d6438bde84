"""Hare & tortoise (Lee et al. 2024, "Slow and steady wins the race").

The *hare* is the trained network; the *tortoise* is a copy updated after every gradient update as
tortoise ← m·tortoise + (1−m)·hare, parameters and floating-point buffers alike (integer buffers such as
BatchNorm's batch counter are copied). On schedule the hare is reset to the tortoise (parameters and
buffers). ``act_with`` chooses which of the two acts and is evaluated (:attr:`HareTortoise.acting_network`).

Optimizer: the hare's optimizer state is kept at a hare reset, as in the authors' trainer
(dojeon-ai/Hare-Tortoise ``src/trainers/base.py``); ``reset_optimizer`` clears it. The tortoise is
never trained (no gradients, in no optimizer). Targets (copies of the hare that track it): ``sync``
(default) copies the reset hare into them; ``keep`` leaves them to follow through their own updates.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .base import Intervention
from .config import HareTortoiseConfig
from .optim import clear_state_

__all__ = ["HareTortoise"]


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
        self._bind(network, [network], (), optimizers, targets)
        self.hare = network
        self.tortoise = copy.deepcopy(network) if tortoise is None else tortoise
        if self.tortoise is network:
            raise ValueError("the tortoise must be a separate copy of the network")
        self.tortoise.requires_grad_(False)
        ours = {k: v.shape for k, v in network.state_dict().items()}
        if {k: v.shape for k, v in self.tortoise.state_dict().items()} != ours:
            raise ValueError("the tortoise must have the same parameters and buffers as the network")

    @property
    def acting_network(self) -> nn.Module:
        """The network that acts and is evaluated: the tortoise or the hare, per ``config.act_with``."""
        return self.tortoise if self.config.act_with == "tortoise" else self.hare

    @torch.no_grad()
    def update_tortoise(self) -> None:
        """tortoise ← m·tortoise + (1−m)·hare for parameters and floating-point buffers."""
        weight = 1.0 - self.config.momentum
        slow = list(self.tortoise.parameters())
        fast = list(self.hare.parameters())
        slow_buffers, fast_buffers = [], []
        for s, f in zip(self.tortoise.buffers(), self.hare.buffers()):
            if s.is_floating_point():
                slow_buffers.append(s)
                fast_buffers.append(f)
            else:
                s.copy_(f)
        # lerp(t, h, w) = t + w·(h − t) = (1 − w)·t + w·h with w = 1 − m.
        if slow:
            torch._foreach_lerp_(slow, fast, weight)
        if slow_buffers:
            torch._foreach_lerp_(slow_buffers, fast_buffers, weight)

    @torch.no_grad()
    def reset_hare(self) -> None:
        """hare ← tortoise (parameters and buffers), then the optimizer and target rules."""
        self.hare.load_state_dict(self.tortoise.state_dict())
        if self.config.reset_optimizer:
            clear_state_(self.optimizers, self.hare.parameters())
        if self.config.target_rule == "sync":
            for target in self.targets:
                target.load_state_dict(self.hare.state_dict())

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
        return {"tortoise": self.tortoise.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the tortoise."""
        self.tortoise.load_state_dict(state["tortoise"])
