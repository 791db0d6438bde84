"""Continual backprop (Dohare et al. 2024, Nature; shibhansh/loss-of-plasticity ``lop/algos/gnt.py``).

After every update, for each hidden layer (the unit groups of :mod:`plasticrl.interventions.units`):

1. every unit ages by one;
2. its utility is a running average of its *contribution*: u_i ← η·u_i + (1−η)·E|h_i|·mean|w_out,i|,
   with E|h_i| over the samples (and spatial positions) of the training forward passes since the last
   update, and mean|w_out,i| over all weights leaving the unit; it is bias-corrected as in Adam,
   û_i = u_i / (1 − η^age_i);
3. units older than the maturity threshold are eligible; ``replacement_rate × #eligible`` units are due
   per update, fractions accumulating across updates (the authors' ``accumulate`` option), and the due
   number of eligible units with the lowest û are replaced.

A replaced unit gets fresh incoming weights from the layer's own initialiser (bias zero), zero outgoing
weights, zero utility and age, and its optimizer moments are zeroed (entries only; torch's per-tensor
step is kept, whereas the authors' AdamGnT resets a per-entry step). Targets: ``same`` (default) replaces
the same units of each target copy with the same fresh values, ``sync`` copies the affected layers,
``keep`` leaves them.

Activations are read by forward hooks on the activation modules, from forward passes run with gradients
enabled (the training forward passes; acting and target computations under ``torch.no_grad`` are
ignored). Call :meth:`ContinualBackprop.remove_hooks` when done with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .base import Intervention
from .config import CBPConfig
from .diagnostics import NON_NEGATIVE_ACTIVATIONS, unit_sums
from .units import UnitGroup, find_unit_groups, recycle_units_, sync_group_

__all__ = ["ContinualBackprop"]


def _outgoing_magnitude(group: UnitGroup) -> torch.Tensor:
    """mean |w| over every weight leaving each unit of ``group``."""
    total = count = 0
    for out in group.outgoing:
        weight = out.layer.weight.detach()
        if isinstance(out.layer, nn.Conv2d):
            per_unit = torch.linalg.vector_norm(weight, ord=1, dim=(0, 2, 3))
            entries = weight.shape[0] * weight.shape[2] * weight.shape[3]
        else:
            blocks = weight.reshape(weight.shape[0], group.num_units, out.columns_per_unit)
            per_unit = torch.linalg.vector_norm(blocks, ord=1, dim=(0, 2))
            entries = weight.shape[0] * out.columns_per_unit
        total = total + per_unit
        count += entries
    return total / count


class ContinualBackprop(Intervention):
    """Generate-and-test replacement of low-utility mature units after every update.

    Args:
        config: ``replacement_rate``, ``decay_rate`` (η), ``maturity_threshold``, modules, target rule.
        network: the network whose hidden units are replaced.
        example_inputs: one batch of inputs, used once to find the layers (a couple of samples suffice).
        optimizers: the optimizer(s) training ``network``.
        targets: copies of ``network`` that track it; parts match by name.
        modules: explicit module references instead of ``config.modules``.
        name: log and checkpoint key (default ``"cbp"``).
    """

    def __init__(
        self,
        config: CBPConfig,
        network: nn.Module,
        example_inputs: Any,
        optimizers: Sequence[Optimizer],
        targets: Sequence[nn.Module] = (),
        *,
        modules: Sequence[nn.Module] | None = None,
        name: str = "cbp",
    ):
        self.config = config
        self.name = name
        self._bind(network, modules, config.modules, optimizers, targets)
        groups, skipped = find_unit_groups(network, example_inputs, within=self.modules)
        if not groups:
            reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no activation modules"
            raise ValueError(f"continual backprop found no replaceable hidden layer ({reasons})")
        self.groups: list[UnitGroup] = groups
        self.skipped = skipped
        self.mirrors = [[g.mirror(network, t) for g in groups] for t in self.targets]
        device = groups[0].incoming.weight.device
        self.utility = {g.name: torch.zeros(g.num_units, device=device) for g in groups}
        self.age = {g.name: torch.zeros(g.num_units, dtype=torch.long, device=device) for g in groups}
        self.accumulated = {g.name: 0.0 for g in groups}
        self._activity: dict[str, torch.Tensor] = {}
        self._forwards: dict[str, int] = {}
        self._handles = [
            g.activation.register_forward_hook(
                self._make_hook(g.name, isinstance(g.activation, NON_NEGATIVE_ACTIVATIONS))
            )
            for g in groups
        ]

    def _make_hook(self, name: str, non_negative: bool):
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if not (self.config.enabled and torch.is_grad_enabled()):
                return
            total, _, count = unit_sums(output, non_negative)
            self._activity[name] = self._activity.get(name, 0) + total / count
            self._forwards[name] = self._forwards.get(name, 0) + 1

        return hook

    def remove_hooks(self) -> None:
        """Stop reading activations (the intervention does nothing afterwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def generate_and_test(self) -> int:
        """Update utilities from the activations seen since the last call and replace due units now.

        Returns the number of units replaced. Layers without a training forward since the last call
        are left as they are.
        """
        decay = self.config.decay_rate
        replaced = 0
        for i, group in enumerate(self.groups):
            if group.name not in self._activity:
                continue
            activity = self._activity.pop(group.name) / self._forwards.pop(group.name)
            age = self.age[group.name]
            age += 1
            utility = self.utility[group.name]
            utility.mul_(decay).add_((1 - decay) * activity * _outgoing_magnitude(group))
            corrected = utility / (1 - decay ** age.double()).to(utility.dtype)
            eligible = (age > self.config.maturity_threshold).nonzero().flatten()
            if eligible.numel() == 0:
                continue
            self.accumulated[group.name] += self.config.replacement_rate * eligible.numel()
            due = min(int(self.accumulated[group.name]), eligible.numel())
            if due == 0:
                continue
            self.accumulated[group.name] -= due
            units = eligible[torch.topk(corrected[eligible], due, largest=False).indices]
            twins = [m[i] for m in self.mirrors]
            same_twins = [twins] if self.config.target_rule == "same" else ()
            recycle_units_([(group, units)], self.optimizers, same_twins)
            if self.config.target_rule == "sync":
                for twin in twins:
                    sync_group_(group, twin)
            utility[units] = 0.0
            age[units] = 0
            replaced += units.numel()
        return replaced

    def maybe_apply(self, update_step: int) -> dict[str, float]:
        """Run generate-and-test (every update while enabled); report when units were replaced."""
        if not self.config.enabled:
            return {}
        replaced = self.generate_and_test()
        return self._fired({"replaced_units": replaced}) if replaced else {}

    def state_dict(self) -> dict[str, Any]:
        """Utilities, ages and fractional replacement counts per layer."""
        return {
            "utility": {k: v.clone() for k, v in self.utility.items()},
            "age": {k: v.clone() for k, v in self.age.items()},
            "accumulated": dict(self.accumulated),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if set(state["utility"]) != set(self.utility):
            raise ValueError(
                f"checkpoint has CBP layers {sorted(state['utility'])}, not {sorted(self.utility)}"
            )
        for key in self.utility:
            self.utility[key].copy_(state["utility"][key])
            self.age[key].copy_(state["age"][key])
        self.accumulated = {k: float(v) for k, v in state["accumulated"].items()}
