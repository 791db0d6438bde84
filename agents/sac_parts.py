"""The pieces of soft actor-critic that ``sac.py`` and ``drq.py`` share: the learned temperature, the
tanh-squashed Gaussian sample with its log-probability, the bounded log σ, and a context that turns off
the critic's weight gradients during the actor loss."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Temperature", "no_weight_grads", "squash_log_std", "tanh_gaussian_sample"]


class Temperature(nn.Module):
    """SAC's learned entropy temperature α = exp(log α) (Haarnoja et al. 2018b).

    ``reset_parameters`` returns to the initial value, so resets and fresh draws restore it.
    """

    def __init__(self, initial: float):
        super().__init__()
        if not float(initial) > 0:
            raise ValueError(f"the initial temperature must be > 0, got {initial}")
        self.initial = float(initial)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(self.initial)))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.log_alpha.fill_(math.log(self.initial))

    def forward(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def extra_repr(self) -> str:
        return f"initial={self.initial}"


_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def squash_log_std(raw: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """log σ = low + (high − low)·(tanh(raw) + 1)/2, a smooth map into [low, high] (drq ``Actor``; jaxrl)."""
    return low + 0.5 * (high - low) * (torch.tanh(raw) + 1.0)


def tanh_gaussian_sample(
    mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """a = tanh(μ + σ·ε) and log π(a|s) summed over the action axis.

    log π = Σ [log N(u; μ, σ) − log(1 − tanh²u)], with log(1 − tanh²u) = 2(log 2 − u − softplus(−2u))
    (the numerically stable form used by drq's ``TanhTransform`` and TFP's ``Tanh`` bijector).
    """
    pre_tanh = mean + log_std.exp() * noise
    log_normal = -0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI
    log_det = 2.0 * (_LOG_2 - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return torch.tanh(pre_tanh), (log_normal - log_det).sum(-1)


class no_weight_grads:
    """Compute no gradients for a module's weights inside the block (gradients w.r.t. inputs still flow):
    the actor loss needs dQ/da, not the critic's weight gradients, which would be discarded anyway."""

    def __init__(self, module: nn.Module):
        self.params = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc_info: Any) -> None:
        for p in self.params:
            p.requires_grad_(True)

