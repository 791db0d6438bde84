"""L2-init / regenerative regularisation (Kumar et al. 2023): loss + λ‖θ − θ₀‖², θ₀ the initial weights.

The norm is *squared* (its gradient 2λ(θ − θ₀) pulls harder the further θ has drifted); the unsquared
‖θ − θ₀‖ of some peers has a gradient of constant size. It changes no weights directly, so it needs no
optimizer handling; target copies are untouched. θ₀ is the value of each parameter when the
intervention is bound and is not moved by later resets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .base import Intervention
from .config import L2InitConfig

__all__ = ["L2Init"]


# Elements per chunk of the forward's θ − θ₀ (4 MiB in float32): large parameters are reduced chunk by
# chunk through one reusable scratch buffer instead of a parameter-sized temporary.
_CHUNK = 1 << 20


class _SquaredDistance(torch.autograd.Function):
    """‖θ − θ₀‖² whose gradient 2(θ − θ₀)·g is formed once, in the backward, in the tensor it returns.

    The plain expression ``(θ − θ₀).pow(2).sum()`` allocates about four parameter-sized tensors per
    step through autograd; saving θ − θ₀ for the backward still costs two (and keeps one alive until the
    backward). Here the forward reduces θ − θ₀ in chunks through ``scratch`` (no parameter-sized
    temporary) and the backward allocates only the gradient it returns: on a CPU, fresh parameter-sized
    allocations (page faults) dominate this penalty's cost on large networks.
    """

    @staticmethod
    def forward(ctx: Any, param: torch.Tensor, initial: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(param, initial)
        flat, flat0 = param.detach().reshape(-1), initial.reshape(-1)
        if flat.numel() <= _CHUNK:
            diff = flat - flat0
            return torch.dot(diff, diff)
        total = torch.zeros((), dtype=flat.dtype, device=flat.device)
        for start in range(0, flat.numel(), _CHUNK):
            stop = min(start + _CHUNK, flat.numel())
            diff = torch.sub(flat[start:stop], flat0[start:stop], out=scratch[: stop - start])
            total += torch.dot(diff, diff)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        param, initial = ctx.saved_tensors
        return torch.sub(param.detach(), initial).mul_(2 * grad_output), None, None


class L2Init(Intervention):
    """The penalty λ‖θ − θ₀‖² over the bound modules' trainable parameters; add :meth:`penalty` to the loss.

    Args:
        config: ``coef`` (λ) and module names.
        network: the network the modules belong to.
        modules: explicit module references instead of ``config.modules``.
        name: log and checkpoint key (default ``"l2_init"``).
    """

    def __init__(
        self,
        config: L2InitConfig,
        network: nn.Module,
        *,
        modules: Sequence[nn.Module] | None = None,
        name: str = "l2_init",
    ):
        self.config = config
        self.name = name
        self._bind(network, modules, config.modules, None, (), needs_optimizer=False)
        self.params = [p for m in self.modules for p in m.parameters() if p.requires_grad]
        self.initial = [p.detach().clone() for p in self.params]
        self._scratch: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _scratch_for(self, param: torch.Tensor) -> torch.Tensor:
        key = (param.device, param.dtype)
        if key not in self._scratch:
            self._scratch[key] = torch.empty(_CHUNK, device=param.device, dtype=param.dtype)
        return self._scratch[key]

    def penalty(self) -> torch.Tensor:
        """λ Σ ‖θ − θ₀‖² (a scalar tensor with gradient 2λ(θ − θ₀)); 0 when disabled."""
        if not self.config.enabled or not self.params:
            return torch.zeros((), device=self.params[0].device if self.params else None)
        total = sum(
            _SquaredDistance.apply(p, p0, self._scratch_for(p)) for p, p0 in zip(self.params, self.initial)
        )
        return self.config.coef * total

    def maybe_apply(self, update_step: int) -> dict[str, float]:
        """Nothing to do per update: the penalty acts through the loss."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """θ₀ (in parameter order)."""
        return {"initial": [t.clone() for t in self.initial]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore θ₀."""
        initial = state["initial"]
        if len(initial) != len(self.params) or any(a.shape != p.shape for a, p in zip(initial, self.params)):
            raise ValueError("checkpointed initial parameters do not match the bound parameters")
        self.initial = [t.detach().clone().to(p.device) for t, p in zip(initial, self.params)]
