"""Small layers and the activation registry shared by every network."""

from __future__ import annotations

import numbers

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


def _weight_and_bias(module: nn.Module) -> tuple[nn.Parameter, nn.Parameter | None]:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() < 2:
        raise TypeError(
            f"{type(module).__name__} has no weight matrix or kernel (a parameter named 'weight' with at "
            "least 2 dimensions); attach this initializer to Linear/Conv layers only, e.g. with "
            "set_initializer(net, init, types=(nn.Linear, nn.Conv2d))"
        )
    bias = getattr(module, "bias", None)
    return weight, bias if isinstance(bias, nn.Parameter) else None


class XavierUniformInit:
    """Glorot-uniform weights and zero bias, an initializer for :func:`set_initializer`.

    Matches Flax's ``nn.initializers.xavier_uniform()`` kernel init with the default zero bias, used by
    BBF for every layer (google-research ``bigger_better_faster/bbf/spr_networks.py``). For a conv kernel
    fan-in and fan-out both include the receptive field, as in Flax. A class rather than a closure so
    that modules carrying it stay picklable.
    """

    def __init__(self, gain: float = 1.0):
        self.gain = float(gain)

    def __call__(self, module: nn.Module) -> None:
        weight, bias = _weight_and_bias(module)
        nn.init.xavier_uniform_(weight, gain=self.gain)
        if bias is not None:
            nn.init.zeros_(bias)

    def __repr__(self) -> str:
        return f"XavierUniformInit(gain={self.gain})"


class OrthogonalInit:
    """(Semi-)orthogonal weights scaled by ``gain`` and zero bias, an initializer for :func:`set_initializer`.

    The weight viewed as an (out, in·k·k) matrix W satisfies W Wᵀ = gain²·I when out ≤ in (else
    Wᵀ W = gain²·I). DrQ (denisyarats/drq ``utils.weight_init``) uses gain 1 for Linear layers and
    the ReLU gain √2 for convolutions.
    """

    def __init__(self, gain: float = 1.0):
        self.gain = float(gain)

    def __call__(self, module: nn.Module) -> None:
        weight, bias = _weight_and_bias(module)
        nn.init.orthogonal_(weight, gain=self.gain)
        if bias is not None:
            nn.init.zeros_(bias)

    def __repr__(self) -> str:
        return f"OrthogonalInit(gain={self.gain})"


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is a positive int (bools excluded), else a ValueError/TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)
