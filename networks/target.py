"""Target networks that track an online network."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["soft_update_"]


@torch.no_grad()
def soft_update_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """θ' ← (1 − τ)·θ' + τ·θ for every parameter, in place with one fused ``_foreach_lerp_``."""
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError("target and online networks have different parameters")
    torch._foreach_lerp_(target_params, online_params, tau)

