"""ReDo: recycle τ-dormant units (Sokar et al. 2023; dopamine ``labs/redo/weight_recyclers.py``).

On schedule, units are scored on a batch: s_i = E|h_i| / (mean_k E|h_k| + 1e-9) (convs: the mean runs
over the batch and spatial positions), and every unit with s_i ≤ τ is recycled: incoming weights re-drawn
from the incoming layer's own initialiser, its bias zeroed, outgoing weights zeroed, and the optimizer
moments of exactly those entries zeroed (step counters kept, as optax's count is in dopamine). With zero
outgoing weights a recycled unit no longer reaches the output, so right after recycling the outputs are
unchanged on inputs where the recycled units output zero (dead units: every unit recycled with τ = 0, on
the scored batch), and lose the small contribution of a τ-dormant unit that was still slightly active.
The output layer is never recycled; which layers are recyclable is decided from the data flow
(:mod:`plasticrl.interventions.units`), and :attr:`ReDo.skipped` says why the others are not.

Targets: ``same`` (default) recycles the same units of each target copy with the same fresh incoming
weights and zero outgoing weights (a target that lags the online network keeps its other entries; its
outputs change by the recycled units' former contribution, like the online network's); ``sync`` copies
the affected layers from the online network; ``keep`` leaves targets alone (dopamine's choice, where the
target is re-synced periodically anyway).

The optimizers must hold every layer recycling changes, including a layer outside the bound modules that
reads their units (the head after ``body``): a ValueError names a parameter they miss.

Structural changes (plasticity injection): the unit groups are found again, on the first two samples of
the construction batch, right after the injection (:func:`~.base.notify_structure_changed`) or, for
other changes, at the next call. A bound module is replaced by whatever now sits at its name (the
``InjectedHead`` where the head was), so the trainable copy's units are recycled and its columns reading
recycled units are zeroed, together with the frozen head's and the anchor's columns (outputs unchanged);
units written by frozen layers (frozen head, anchor) are never recycled. Target copies must have received
the same change (pass them to the injection too), else a ValueError.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .base import check_schedule_fires, watch_structure
from .binding import structure_signature
from .config import ReDoConfig
from .diagnostics import activation_statistics, dormant_mask
from .units import (
    UnitGroup,
    UnitRecycler,
    example_batch,
    find_unit_groups,
    group_modules,
    recycle_units_,
    sync_group_,
)

__all__ = ["ReDo"]


class ReDo(UnitRecycler):
    """Recycle dormant units of ``network`` on schedule.

    Args:
        config: schedule (it must fire), τ (``threshold``), module names and target rule.
        network: the network whose hidden units are recycled.
        batch_fn: returns the batch to score units on (e.g. ``lambda: buffer.sample(256).obs``); called
            once at construction (to find the layers) and at each recycling step.
        optimizers: the optimizer(s) training ``network`` (all of them may be passed); every layer that
            recycling changes must be held, also one outside ``modules`` that reads their units.
        targets: copies of ``network`` that track it; parts match by name.
        modules: explicit module references instead of ``config.modules``: only units whose incoming
            layer lies inside them are recycled.
        name: log and checkpoint key (default ``"redo"``).
    """

    def __init__(
        self,
        config: ReDoConfig,
        network: nn.Module,
        batch_fn: Callable[[], Any],
        optimizers: Sequence[Optimizer],
        targets: Sequence[nn.Module] = (),
        *,
        modules: Sequence[nn.Module] | None = None,
        name: str = "redo",
    ):
        if not callable(batch_fn):
            raise TypeError("batch_fn must be a callable returning the batch to score units on")
        self.config = config
        self.name = name
        check_schedule_fires(config, name)
        self.batch_fn = batch_fn
        self._bind(network, modules, config.modules, optimizers, targets, check_optimizers=False)
        batch = batch_fn()
        self._example = example_batch(batch)
        self._discover(batch)
        self.previous_masks: dict[str, torch.Tensor] | None = None
        watch_structure(network, self)

    def _discover(self, inputs: Any) -> None:
        """Find the recyclable unit groups in the bound modules and check the optimizers and targets."""
        groups, skipped = find_unit_groups(self.network, inputs, within=self.modules)
        if not groups:
            reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no activation modules"
            raise ValueError(f"ReDo found no recyclable hidden layer in the bound modules ({reasons})")
        # The layers reading the units may lie outside the bound modules (the head after "body").
        self._check_optimizers_cover(group_modules(groups, self.name))
        self.mirrors = [[g.mirror(self.network, t) for g in groups] for t in self.targets]
        self.groups: list[UnitGroup] = groups
        self.skipped: dict[str, str] = skipped
        self._signature = structure_signature(self.network)

    def structure_changed(self) -> None:
        """The network's structure changed (plasticity injection): find the unit groups again now."""
        self.sync_structure()

    def dormant_masks(self, inputs: Any) -> dict[str, torch.Tensor]:
        """Per recyclable group, the mask of τ-dormant units on ``inputs``."""
        self.sync_structure()
        modules = {g.name: g.activation for g in self.groups}
        stats, _ = activation_statistics(self.network, inputs, modules)
        return {name: dormant_mask(s, self.config.threshold) for name, s in stats.items()}

    def recycle(self, inputs: Any) -> dict[str, float]:
        """Score units on ``inputs`` and recycle the dormant ones now; returns counts for logging."""
        return self.recycle_masks(self.dormant_masks(inputs))

    def recycle_masks(self, masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Recycle the units marked in ``masks`` (by group name, as from :meth:`dormant_masks`)."""
        self.sync_structure()
        if set(masks) != {g.name for g in self.groups}:
            raise ValueError(f"masks must cover exactly the groups {[g.name for g in self.groups]}")
        assignments = [(g, masks[g.name].nonzero().flatten()) for g in self.groups]
        twins = [[m[i] for m in self.mirrors] for i in range(len(self.groups))]
        recycle_units_(assignments, self.optimizers, twins if self.config.target_rule == "same" else ())
        if self.config.target_rule == "sync":
            for (group, units), group_twins in zip(assignments, twins):
                for twin in group_twins if units.numel() else ():
                    sync_group_(group, twin)
        recycled = sum(units.numel() for _, units in assignments)
        total = sum(m.numel() for m in masks.values())
        out = {"recycled_units": float(recycled), "recycled_fraction": recycled / total}
        if self.previous_masks is not None:
            # dopamine's dead_intersected_percent: units dormant at the previous recycling step that are
            # dormant again now (as a fraction).
            before = sum(int(self.previous_masks[k].sum()) for k in masks if k in self.previous_masks)
            both = sum(
                int((self.previous_masks[k].to(m.device) & m).sum())
                for k, m in masks.items()
                if k in self.previous_masks
            )
            out["dormant_overlap"] = both / before if before else 0.0
        self.previous_masks = {k: m.detach().cpu() for k, m in masks.items()}
        return out

    def maybe_apply(self, update_step: int) -> dict[str, float]:
        """Recycle on a fresh batch from ``batch_fn`` if the schedule fires."""
        if not self.config.fires(update_step):
            return {}
        return self._fired(self.recycle(self.batch_fn()))

    def state_dict(self) -> dict[str, Any]:
        """The dormant masks of the last recycling step (for the overlap metric)."""
        return {"previous_masks": self.previous_masks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        masks = state["previous_masks"]
        self.previous_masks = None if masks is None else {k: v.clone() for k, v in masks.items()}
