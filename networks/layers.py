"""Small layers and the activation registry shared by every network."""

from __future__ import annotations

import torch
from torch import nn


class CReLU(nn.Module):
    """Concatenated ReLU, [ReLU(x), ReLU(-x)] along ``dim`` (Shang et al. 2016).

    Doubles the feature dimension; no unit can be dead for every input. Used against loss of
    plasticity by Abbas et al. 2023 and in the seed talk.
    """

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "crelu": CReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}

# Modules whose outputs are a hidden layer's units (what diagnostics and ReDo look at).
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = tuple(_ACTIVATIONS.values()) + (nn.ReLU6, nn.Mish)

ACTIVATION_NAMES = tuple(_ACTIVATIONS)


def make_activation(name: str) -> nn.Module:
    """An activation module by name (one of ``ACTIVATION_NAMES``)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATION_NAMES)}")
    return _ACTIVATIONS[name]()


def activation_width_factor(name: str) -> int:
    """How many output features an activation produces per input feature (2 for CReLU)."""
    return 2 if name == "crelu" else 1
