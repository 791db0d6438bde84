"""Fresh initialisation of any module with its own initialiser.

Resets, shrink & perturb and the other interventions need a *fresh draw* from the
distribution a module was initialised with. PyTorch layers carry their default
initialiser (``reset_parameters``); networks that use another scheme (orthogonal,
Xavier, ...) attach it with :func:`set_initializer`, and every intervention then uses it
through :func:`reinitialize_` / :func:`fresh_copy` without knowing which scheme it is.

An initialiser is a callable ``init(module) -> None`` that initialises, in place, the
parameters *owned directly* by ``module`` (``module.parameters(recurse=False)``) and
any running statistics it owns directly (BatchNorm). It must draw from torch's global RNG,
so that ``torch.manual_seed`` makes fresh draws reproducible.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

Initializer = Callable[[nn.Module], None]

_ATTR = "plasticrl_initializer"


def set_initializer(
    module: nn.Module, initializer: Initializer, *, types: tuple[type, ...] = ()
) -> nn.Module:
    """Attach ``initializer`` to ``module`` and every descendant that owns parameters.

    With ``types``, only descendants that are instances of one of them. The initialiser is
    applied immediately, so the module's current weights are a draw from it. Returns ``module``.
    """
    if not callable(initializer):
        raise TypeError(f"initializer must be callable, got {type(initializer).__name__}")
    for sub in module.modules():
        if types and not isinstance(sub, types):
            continue
        if _owns_state(sub):
            setattr(sub, _ATTR, initializer)
            with torch.no_grad():
                initializer(sub)
    return module


def get_initializer(module: nn.Module) -> Initializer | None:
    """The initialiser attached to ``module`` itself, or None (then ``reset_parameters`` is used)."""
    return getattr(module, _ATTR, None)


def _owns_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(
        True for _ in module.buffers(recurse=False)
    )


def _reinit_leaf(module: nn.Module) -> None:
    init = get_initializer(module)
    if init is not None:
        init(module)
    elif hasattr(module, "reset_parameters"):
        module.reset_parameters()
    elif hasattr(module, "reset_running_stats"):
        module.reset_running_stats()
    elif any(True for _ in module.parameters(recurse=False)):
        raise TypeError(
            f"{type(module).__name__} owns parameters but has no reset_parameters() and no initializer "
            "attached; give it a reset_parameters() method or call "
            "plasticrl.networks.set_initializer(module, fn)"
        )


@torch.no_grad()
def reinitialize_(module: nn.Module) -> nn.Module:
    """Re-draw, in place, every parameter of ``module`` (and its descendants) from its own initialiser.

    Parameter objects keep their identity (optimizers and references stay valid); only values change.
    Running statistics of normalisation layers are reset too. Returns ``module``.
    """
    for sub in module.modules():
        if _owns_state(sub):
            _reinit_leaf(sub)
    return module


def fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` re-initialised with its own initialiser (same device, dtype, mode)."""
    return reinitialize_(copy.deepcopy(module))


@torch.no_grad()
def fresh_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A fresh draw of ``module``'s parameters and buffers as a state dict; ``module`` is not touched."""
    return {k: v.detach().clone() for k, v in fresh_copy(module).state_dict().items()}
