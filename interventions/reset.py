"""Reset and shrink & perturb: fresh draws from each module's own initialiser.

Both keep parameter objects (values change in place), so optimizers and other references stay valid.

Reset (Nikishin et al. 2022): the modules are re-drawn with ``reinitialize_`` (own initialiser, normalisation
statistics reset too). Optimizer: the state of every reset parameter is deleted (moments and Adam's step,
so bias correction restarts, as for a new parameter). Targets: ``sync`` (default) copies the fresh
parameters and buffers into each target copy, so the target restarts from the online network rather
than from an independent random draw; ``keep`` leaves targets to catch up through their own updates.

Shrink & perturb (Ash & Adams 2020): θ ← α·θ + σ·φ, φ one fresh draw per module, buffers (normalisation
statistics) untouched. Optimizer: kept by default, as BBF keeps it for its shrink-perturbed encoder;
``reset_optimizer`` deletes it. Targets: ``same`` (default) applies θ' ← α·θ' + σ·φ with the *same* φ
(BBF treats its target likewise but with an independent draw), ``sync`` copies the online result,
``keep`` leaves them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.optim import Optimizer

from plasticrl.networks import reinitialize_

from .base import Intervention, check_schedule_fires
from .config import ResetConfig, ShrinkPerturbConfig
from .optim import clear_state_

__all__ = ["Reset", "ShrinkPerturb"]


def _sync_(destination: nn.Module, source: nn.Module) -> None:
    with torch.no_grad():
        destination.load_state_dict(source.state_dict())


class Reset(Intervention):
    """Re-initialise the bound modules on schedule (see the module docstring for optimizer and targets).

    Args:
        config: schedule (it must fire: ``every > 0`` or ``at``), module names and target rule.
        network: the network the modules belong to (module names in ``config`` resolve against it).
        optimizers: the optimizer(s) holding the modules' parameters (their state is cleared).
        targets: copies of ``network`` that track it (target network, EMA copy); parts match by name.
        modules: explicit module references instead of ``config.modules``.
        name: log and checkpoint key (default ``"reset"``).
    """

    def __init__(
        self,
        config: ResetConfig,
        network: nn.Module,
        optimizers: Sequence[Optimizer],
        targets: Sequence[nn.Module] = (),
        *,
        modules: Sequence[nn.Module] | None = None,
        name: str = "reset",
    ):
        self.config = config
        self.name = name
        check_schedule_fires(config, name)
        self._bind(network, modules, config.modules, optimizers, targets)

    def apply(self) -> None:
        """Reset now, regardless of the schedule."""
        for i, module in enumerate(self.modules):
            reinitialize_(module)
            clear_state_(self.optimizers, module.parameters())
            if self.config.target_rule == "sync":
                for twins in self.target_modules:
                    _sync_(twins[i], module)

    def maybe_apply(self, update_step: int) -> dict[str, float]:
        """Reset if the schedule fires at ``update_step``."""
        if not self.config.fires(update_step):
            return {}
        self.apply()
        return self._fired()


class ShrinkPerturb(Intervention):
    """θ ← α·θ + σ·φ on schedule, φ a fresh draw from each module's initialiser.

    Args:
        config: schedule (it must fire), α (``shrink_factor``), σ (``perturb_factor``), modules, optimizer
            and target rules.
        network: the network the modules belong to.
        optimizers: the optimizer(s) holding the modules' parameters.
        targets: copies of ``network`` that track it; parts match by name.
        modules: explicit module references instead of ``config.modules``.
        factors: per-module (α, σ) overriding the config's, keyed by module.
        name: log and checkpoint key (default ``"shrink_perturb"``).
    """

    def __init__(
        self,
        config: ShrinkPerturbConfig,
        network: nn.Module,
        optimizers: Sequence[Optimizer],
        targets: Sequence[nn.Module] = (),
        *,
        modules: Sequence[nn.Module] | None = None,
        factors: Mapping[nn.Module, tuple[float, float]] | None = None,
        name: str = "shrink_perturb",
    ):
        self.config = config
        self.name = name
        check_schedule_fires(config, name)
        self._bind(network, modules, config.modules, optimizers, targets)
        factors = dict(factors or {})
        self.factors: list[tuple[float, float]] = []
        for module in self.modules:
            alpha, sigma = factors.pop(module, (config.shrink_factor, config.perturb_factor))
            for label, value in (("alpha (shrink)", alpha), ("sigma (perturb)", sigma)):
                if not 0.0 <= float(value) <= 1.0:
                    raise ValueError(f"{label} must be in [0, 1], got {value}")
            self.factors.append((float(alpha), float(sigma)))
        if factors:
            raise ValueError("factors given for modules that are not bound to this intervention")

    @torch.no_grad()
    def _shrink_perturb_module(self, index: int) -> None:
        module = self.modules[index]
        alpha, sigma = self.factors[index]
        params = list(module.parameters())
        twins = [list(t[index].parameters()) for t in self.target_modules]
        same = self.config.target_rule == "same"
        if sigma == 0.0:
            # No fresh component: nothing to draw.
            torch._foreach_mul_(params, alpha)
            for twin_params in twins if same else ():
                torch._foreach_mul_(twin_params, alpha)
            return
        current = [p.detach().clone() for p in params]
        buffers = [(b, b.clone()) for b in module.buffers()]
        reinitialize_(module)  # params now hold φ
        for b, saved in buffers:
            b.copy_(saved)
        if same:
            for twin_params in twins:
                torch._foreach_mul_(twin_params, alpha)
                torch._foreach_add_(twin_params, params, alpha=sigma)
        torch._foreach_mul_(params, sigma)
        torch._foreach_add_(params, current, alpha=alpha)

    def apply(self) -> None:
        """Shrink and perturb now, regardless of the schedule."""
        for i, module in enumerate(self.modules):
            self._shrink_perturb_module(i)
            if self.config.reset_optimizer:
                clear_state_(self.optimizers, module.parameters())
            if self.config.target_rule == "sync":
                for twins in self.target_modules:
                    _sync_(twins[i], module)

    def maybe_apply(self, update_step: int) -> dict[str, float]:
        """Shrink and perturb if the schedule fires at ``update_step``."""
        if not self.config.fires(update_step):
            return {}
        self.apply()
        return self._fired()
