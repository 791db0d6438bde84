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

Bias correction (``config.bias_correction``, off by default; ``gen_new_features`` in gnt.py): before its
outgoing weights are zeroed, a replaced unit's mean contribution is moved into the bias of each layer
reading it, b ← b + W_out[:, i]·m̂_i, where m̂_i = m_i / (1 − η^age_i) and m_i ← η·m_i + (1−η)·E[h_i] is
a running mean of the unit's (signed) activation over the same forward passes as the utility. The
outputs then keep their mean over recent inputs: on an input they change by W_out[:, i]·(m̂_i − h_i)
instead of −W_out[:, i]·h_i. For a Linear layer reading a flattened conv output, m is kept per channel
and position (each column gets its own mean); for a Conv2d reader, per channel, added as m̂_i·Σ_k W[:, i, k]
(exact in expectation away from zero-padded borders). Layers without a bias get no correction; with the
``same`` target rule a target copy's readers get the correction computed with their own weights. In gnt.py
``test_features`` sets the replaced units' mean activation to zero before ``gen_new_features`` reads it,
so the released code in effect adds nothing (convGnT.py and cbp_linear.py have no correction, and the
Nature paper describes none); the default (off) matches the published algorithm and the released code's
effective behaviour, and ``bias_correction=True`` uses the running mean as gnt.py's code intends.

Activations are read by forward hooks on the activation modules, from forward passes run with gradients
enabled (the training forward passes; acting and target computations under ``torch.no_grad`` are
ignored; a hook copied along with its module, e.g. into a deep-copied target or tortoise, removes
itself from the copy at its first call). Call :meth:`ContinualBackprop.remove_hooks` when done with it.

Structural changes (plasticity injection): the unit groups are found again (on the first two samples of
``example_inputs``) right after the injection (:func:`~.base.notify_structure_changed`), or at the next
update for other changes; hooks move to the new groups. A bound module is replaced by whatever now sits at
its name (the ``InjectedHead`` where the head was). Groups whose incoming layer and activation are
unchanged keep their utilities, ages and running means (the units read by an injected head: replacing one
now zeroes its columns in the frozen head, the trainable copy and the anchor alike, and its outgoing
magnitude averages all three); the trainable copy's own hidden units start at age 0; units written by
frozen layers (frozen head, anchor) are never replaced. Targets must have received the same change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .base import watch_structure
from .binding import structure_signature
from .config import CBPConfig
from .diagnostics import NON_NEGATIVE_ACTIVATIONS, unit_sums
from .units import (
    UnitGroup,
    UnitRecycler,
    example_batch,
    find_unit_groups,
    group_modules,
    recycle_units_,
    sync_group_,
)

__all__ = ["ContinualBackprop"]


def _outgoing_magnitude(group: UnitGroup) -> torch.Tensor:
    """mean |w| over every weight leaving each unit of ``group``."""
    total = count = 0
    for out in group.outgoing:
        # Sum |w| over the output dimension first (a contiguous reduction; a strided L1 norm over dims
        # (0, 2) is ~8x slower on a CPU), then over a unit's kernel positions / flattened columns.
        column_sums = out.layer.weight.detach().abs().sum(dim=0)
        if isinstance(out.layer, nn.Conv2d):
            per_unit = column_sums.sum(dim=(1, 2))
            entries = out.layer.weight.shape[0] * column_sums.shape[1] * column_sums.shape[2]
        else:
            per_unit = column_sums.reshape(group.num_units, out.columns_per_unit).sum(dim=1)
            entries = out.layer.weight.shape[0] * out.columns_per_unit
        total = total + per_unit
        count += entries
    return total / count


class ContinualBackprop(UnitRecycler):
    """Generate-and-test replacement of low-utility mature units after every update.

    Args:
        config: ``replacement_rate``, ``decay_rate`` (η), ``maturity_threshold``, modules, target rule,
            ``bias_correction``.
        network: the network whose hidden units are replaced.
        example_inputs: one batch of inputs, used once to find the layers (a couple of samples suffice).
        optimizers: the optimizer(s) training ``network`` (all of them may be passed); every layer
            writing or reading a replaceable unit, also one outside ``modules``, must be held.
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
        self._bind(network, modules, config.modules, optimizers, targets, check_optimizers=False)
        self._example = example_batch(example_inputs)
        self.groups: list[UnitGroup] = []
        self.utility: dict[str, torch.Tensor] = {}
        self.age: dict[str, torch.Tensor] = {}
        self.accumulated: dict[str, float] = {}
        # Running mean activation per unit (and per position for a flattening reader): only for groups
        # whose readers have a bias to correct.
        self.mean_activation: dict[str, torch.Tensor] = {}
        self._seen: dict[str, list] = {}
        self._handles: list = []
        self._discover(example_inputs)
        watch_structure(network, self)

    def _discover(self, inputs: Any) -> None:
        """Find the replaceable unit groups; keep the state of groups that did not change; move the hooks."""
        groups, skipped = find_unit_groups(self.network, inputs, within=self.modules)
        if not groups:
            reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no activation modules"
            raise ValueError(f"continual backprop found no replaceable hidden layer ({reasons})")
        # The layers reading the units may lie outside the bound modules (the head after "body").
        self._check_optimizers_cover(group_modules(groups, self.name))
        mirrors = [[g.mirror(self.network, t) for g in groups] for t in self.targets]
        old = {(id(g.activation), id(g.incoming), g.num_units): g.name for g in self.groups}
        utility, age, accumulated, means, seen = {}, {}, {}, {}, {}
        for g in groups:
            device = g.incoming.weight.device
            before = old.get((id(g.activation), id(g.incoming), g.num_units))
            if before is not None:
                utility[g.name], age[g.name] = self.utility[before], self.age[before]
                accumulated[g.name] = self.accumulated[before]
                if before in self._seen:
                    seen[g.name] = self._seen[before]
            else:
                utility[g.name] = torch.zeros(g.num_units, device=device)
                age[g.name] = torch.zeros(g.num_units, dtype=torch.long, device=device)
                accumulated[g.name] = 0.0
            if self.config.bias_correction and any(o.layer.bias is not None for o in g.outgoing):
                shape = (g.num_units, _positions(g))
                previous = self.mean_activation.get(before) if before is not None else None
                means[g.name] = (
                    previous
                    if previous is not None and previous.shape == shape
                    else torch.zeros(shape, device=device)
                )
        self.remove_hooks()
        self.groups, self.skipped, self.mirrors = groups, skipped, mirrors
        self.utility, self.age, self.accumulated, self.mean_activation, self._seen = (
            utility,
            age,
            accumulated,
            means,
            seen,
        )
        self._handles = [self._register_hook(g) for g in groups]
        self._signature = structure_signature(self.network)

    def structure_changed(self) -> None:
        """The network's structure changed (plasticity injection): find the unit groups again now."""
        if self._handles:  # not after remove_hooks()
            self.sync_structure()

    def _register_hook(self, group: UnitGroup):
        """A forward hook on the group's activation that accumulates its activity for the next update."""
        name = group.name
        positions = _positions(group)
        track_mean = name in self.mean_activation
        non_negative = isinstance(group.activation, NON_NEGATIVE_ACTIVATIONS)
        activation = group.activation
        handle_id: list[int] = []

        def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if module is not activation:
                # A deep copy of the module (a target, the tortoise, an injected head's fresh copy) carries
                # a copy of this hook: it removes itself there.
                module._forward_hooks.pop(handle_id[0], None)
                return
            if not (self.config.enabled and torch.is_grad_enabled()):
                return
            total, _, count = unit_sums(output, non_negative)
            mean = _signed_mean(output, positions) if track_mean else None
            seen = self._seen.get(name)
            if seen is None:
                self._seen[name] = [total / count, mean, 1]
            else:
                seen[0] = seen[0] + total / count
                seen[1] = None if mean is None else seen[1] + mean
                seen[2] += 1

        handle = activation.register_forward_hook(hook)
        handle_id.append(handle.id)
        return handle

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
        if self._handles:
            self.sync_structure()
        decay = self.config.decay_rate
        replaced = 0
        for i, group in enumerate(self.groups):
            seen = self._seen.pop(group.name, None)
            if seen is None:
                continue
            activity_sum, mean_sum, forwards = seen
            age = self.age[group.name]
            age += 1
            utility = self.utility[group.name]
            utility.mul_(decay).add_((1 - decay) * (activity_sum / forwards) * _outgoing_magnitude(group))
            bias_correction = (1 - decay ** age.double()).to(utility.dtype)
            mean_activation = self.mean_activation.get(group.name)
            if mean_activation is not None:
                mean_activation.mul_(decay).add_((1 - decay) * (mean_sum / forwards))
            eligible = (age > self.config.maturity_threshold).nonzero().flatten()
            if eligible.numel() == 0:
                continue
            self.accumulated[group.name] += self.config.replacement_rate * eligible.numel()
            due = min(int(self.accumulated[group.name]), eligible.numel())
            if due == 0:
                continue
            self.accumulated[group.name] -= due
            corrected = utility / bias_correction
            units = eligible[torch.topk(corrected[eligible], due, largest=False).indices]
            twins = [m[i] for m in self.mirrors]
            same_twins = [twins] if self.config.target_rule == "same" else ()
            if mean_activation is not None:
                unit_means = mean_activation[units] / bias_correction[units, None]
                for g in (group, *(twin for twin in twins if self.config.target_rule == "same")):
                    _move_contribution_to_bias_(g, units, unit_means)
                mean_activation[units] = 0.0
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
        """Utilities, ages, running mean activations and fractional replacement counts per layer."""
        if self._handles:
            self.sync_structure()
        return {
            "utility": {k: v.clone() for k, v in self.utility.items()},
            "age": {k: v.clone() for k, v in self.age.items()},
            "mean_activation": {k: v.clone() for k, v in self.mean_activation.items()},
            "accumulated": dict(self.accumulated),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (load a plasticity injection's state first, as
        :meth:`InterventionSet.load_state_dict` does, if the checkpoint was taken after one)."""
        if self._handles:
            self.sync_structure()
        if set(state["utility"]) != set(self.utility):
            raise ValueError(
                f"checkpoint has CBP layers {sorted(state['utility'])}, not {sorted(self.utility)} (if it "
                "was taken after a plasticity injection, load the injection's state first, as "
                "InterventionSet.load_state_dict does)"
            )
        means = state.get("mean_activation", {})
        if set(means) != set(self.mean_activation):
            raise ValueError(
                f"checkpoint tracks mean activations of {sorted(means)}, this run of "
                f"{sorted(self.mean_activation)} (is bias_correction set the same way?)"
            )
        for key in self.utility:
            self.utility[key].copy_(state["utility"][key])
            self.age[key].copy_(state["age"][key])
        for key, value in means.items():
            self.mean_activation[key].copy_(value)
        self.accumulated = {k: float(v) for k, v in state["accumulated"].items()}


def _positions(group: UnitGroup) -> int:
    """Columns per unit of a flattening Linear reader (each keeps its own mean activation), else 1."""
    return max(out.columns_per_unit for out in group.outgoing)


def _signed_mean(output: torch.Tensor, positions: int) -> torch.Tensor:
    """E[h] per unit over the batch, per position too when ``positions`` > 1: shape (units, positions)."""
    x = output.detach()
    if positions == 1:
        dims = [d for d in range(x.dim()) if d != 1]
        return x.mean(dim=dims).unsqueeze(1)
    return x.mean(dim=0).reshape(x.shape[1], positions)


def _move_contribution_to_bias_(group: UnitGroup, units: torch.Tensor, unit_means: torch.Tensor) -> None:
    """b ← b + W_out[:, units]·m̂ for every reader of ``group`` with a bias (before W_out[:, units] ← 0)."""
    for out in group.outgoing:
        layer = out.layer
        if layer.bias is None:
            continue
        weight = layer.weight
        idx = units.to(weight.device)
        means = unit_means.to(device=weight.device, dtype=weight.dtype)
        if isinstance(layer, nn.Conv2d):
            kernel_sums = weight.index_select(1, idx).sum(dim=(2, 3))
            layer.bias.add_(kernel_sums @ means.mean(dim=1))
        else:
            columns = weight.index_select(1, group.outgoing_index(out, idx))
            column_means = means.expand(-1, out.columns_per_unit).reshape(-1)
            layer.bias.add_(columns @ column_means)
