"""Plasticity injection (Nikishin et al. 2023, "Deep reinforcement learning with plasticity injection").

At injection, a module h_θ (the head) is replaced in its parent by

    h_θ(x) + ( h_θ'(x) − h_θ'⁻(x) )

with θ frozen, θ' a fresh draw from the module's own initialiser (trainable) and θ'⁻ a frozen copy of
θ'. The bracket is exactly zero at injection, so outputs are unchanged; afterwards only θ' learns (the
frozen twin must stay frozen, or the bracket stays zero forever). Gradients still flow through all three
terms into whatever feeds the head.

Optimizer: each parameter of θ' takes the place of its counterpart in θ (the parameter with the same
name) in the optimizer's param group, so it trains with exactly that group's settings (BBF's no-decay
bias group stays no-decay; a learning-rate scheduler keeps scheduling it). θ leaves the optimizer, its
state is deleted and its ``.grad`` set to None: neither weight decay nor a stale gradient left by
``zero_grad(set_to_none=False)`` can move it again.

Targets: the same operation is applied to each target copy (its own θ frozen, and copies of the *same*
θ' and θ'⁻, all without gradients), so target and online networks keep the same structure and parameter
names and the target's outputs are unchanged too. Repeated injections nest (the composite is frozen in
turn).

Checkpoints: :meth:`PlasticityInjection.load_state_dict` re-creates the injected modules (structure and
optimizer groups); load it before the network's and the optimizer's state dicts, which fill the values.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from plasticrl.networks import fresh_copy

from .base import Intervention, check_schedule_fires, notify_structure_changed
from .config import InjectionConfig
from .optim import clear_state_

__all__ = ["InjectedHead", "PlasticityInjection"]


class InjectedHead(nn.Module):
    """``frozen(x) + (trainable(x) − anchor(x))``: the module that replaces an injected head.

    ``frozen`` is the old head, ``trainable`` the fresh copy that learns, ``anchor`` its frozen twin.
    The bracket is computed first so that it is exactly zero at injection (no rounding of frozen(x)).
    """

    def __init__(self, frozen: nn.Module, trainable: nn.Module, anchor: nn.Module):
        super().__init__()
        self.frozen = frozen
        self.trainable = trainable
        self.anchor = anchor

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        old = self.frozen(*args, **kwargs)
        new = self.trainable(*args, **kwargs)
        anchor = self.anchor(*args, **kwargs)
        if not (torch.is_tensor(old) and torch.is_tensor(new) and torch.is_tensor(anchor)):
            raise TypeError("plasticity injection supports heads that return a single tensor")
        return old + (new - anchor)


def _parents(root: nn.Module, module: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every (parent, attribute) under which ``module`` is registered in ``root``."""
    found = []
    for _, parent in root.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():
            if child is module:
                found.append((parent, attr))
    unique = []
    for parent, attr in found:
        if all(parent is not p or attr != a for p, a in unique):
            unique.append((parent, attr))
    return unique


class PlasticityInjection(Intervention):
    """Inject plasticity into the bound modules on schedule (usually once: ``at=(N,)``).

    It changes the network's structure: right after injecting it calls
    :func:`~.base.notify_structure_changed`, so hare & tortoise (the tortoise gets the same injected
    modules), ReDo and continual backprop (unit groups found again, the trainable copy's layers included,
    frozen layers never recycled) bound to the same network follow.

    Args:
        config: schedule (it must fire, usually ``at=(N,)``) and module names (default the head).
        network: the network the modules belong to (the replacement happens inside it).
        optimizers: the optimizer(s) holding the modules' parameters; each new parameter takes its
            counterpart's place in its param group.
        targets: copies of ``network`` that track it; the same replacement happens in each.
        modules: explicit module references instead of ``config.modules``.
        name: log and checkpoint key (default ``"injection"``).
    """

    changes_structure = True

    def __init__(
        self,
        config: InjectionConfig,
        network: nn.Module,
        optimizers: Sequence[Optimizer],
        targets: Sequence[nn.Module] = (),
        *,
        modules: Sequence[nn.Module] | None = None,
        name: str = "injection",
    ):
        self.config = config
        self.name = name
        check_schedule_fires(config, name)
        self._bind(network, modules, config.modules, optimizers, targets)
        for module, module_name in zip(self.modules, self.module_names):
            if module is network:
                raise ValueError(
                    "plasticity injection needs a part of the network (e.g. 'head'), not all of it"
                )
            if not any(p.requires_grad for p in module.parameters()):
                raise ValueError(f"module {module_name!r} has no trainable parameters to inject into")
        self.injections = 0

    def _inject_one(self, index: int) -> None:
        module = self.modules[index]
        prototype = module.trainable if isinstance(module, InjectedHead) else module
        trainable = fresh_copy(prototype)
        counterparts = dict(prototype.named_parameters())
        for name, param in trainable.named_parameters():
            param.requires_grad_(counterparts[name].requires_grad)
        anchor = copy.deepcopy(trainable).requires_grad_(False)
        self._swap_into_optimizers(
            [(name, counterparts[name], param) for name, param in trainable.named_parameters()]
        )
        frozen = list(module.parameters())
        clear_state_(self.optimizers, frozen)
        module.requires_grad_(False)
        for param in frozen:
            param.grad = None
        injected = InjectedHead(module, trainable, anchor).train(module.training)
        for parent, attr in _parents(self.network, module):
            setattr(parent, attr, injected)
        for target, twins in zip(self.targets, self.target_modules):
            twin = twins[index]
            twin_injected = InjectedHead(
                twin.requires_grad_(False),
                copy.deepcopy(trainable).requires_grad_(False),
                copy.deepcopy(anchor),
            ).train(twin.training)
            for parent, attr in _parents(target, twin):
                setattr(parent, attr, twin_injected)
            twins[index] = twin_injected
        self.modules[index] = injected

    def _swap_into_optimizers(self, pairs: list[tuple[str, nn.Parameter, nn.Parameter]]) -> None:
        """For each (name, old, new): put ``new`` where ``old`` is in every optimizer's param groups."""
        held = {id(p) for opt in self.optimizers for group in opt.param_groups for p in group["params"]}
        for name, old, new in pairs:
            if new.requires_grad and id(old) not in held:
                raise ValueError(
                    f"parameter {name!r} of the injected module is trainable but held by none of the "
                    "bound optimizers, so its fresh copy would not train; pass the optimizer that trains it"
                )
        for _, old, new in pairs:
            for opt in self.optimizers:
                for group in opt.param_groups:
                    group["params"][:] = [new if p is old else p for p in group["params"]]

    def apply(self) -> None:
        """Inject now, regardless of the schedule."""
        with torch.no_grad():
            for i in range(len(self.modules)):
                self._inject_one(i)
        self.injections += 1
        # Hare & tortoise, ReDo and continual backprop bound to this network re-discover its structure.
        notify_structure_changed(self.network)

    def maybe_apply(self, update_step: int) -> dict[str, float]:
        """Inject if the schedule fires at ``update_step``."""
        if not self.config.fires(update_step):
            return {}
        self.apply()
        return self._fired()

    def state_dict(self) -> dict[str, Any]:
        """How many injections were done."""
        return {"injections": self.injections}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Re-create the checkpoint's injections (structure and optimizer groups; values come from the
        network's and optimizer's own state dicts, loaded afterwards)."""
        wanted = int(state["injections"])
        if wanted < self.injections:
            raise ValueError(f"checkpoint has {wanted} injections but {self.injections} were already done")
        while self.injections < wanted:
            self.apply()
