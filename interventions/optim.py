"""Keeping an optimizer consistent when an intervention changes weights.

Works for any ``torch.optim`` optimizer whose per-parameter state is a dict of tensors shaped like the
parameter plus scalars (Adam, AdamW, SGD with momentum, RMSprop, Adagrad; foreach and fused variants).

Two kinds of clearing:

- whole parameters (:func:`clear_state_`): the parameter's state entry is deleted, so the optimizer
  re-creates it lazily on the next step exactly as for a new parameter: zero moments and ``step = 0``,
  hence Adam's bias correction restarts for that tensor.
- entries (:func:`zero_state_entries_`): the moment tensors (``exp_avg``, ``exp_avg_sq``,
  ``max_exp_avg_sq``, ``momentum_buffer``, ...) are zeroed at given rows / columns / channels. Torch
  keeps one ``step`` counter per tensor, so it is left alone, as dopamine's ReDo leaves optax's count:
  the first Adam updates of those entries are then larger than a fresh Adam's (about 3·lr after one
  step with β = (0.9, 0.999), decaying over ~1/(1−β₂) steps). Dohare et al.'s AdamGnT keeps per-entry
  step counts to avoid this; plain torch optimizers cannot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.optim import Optimizer

__all__ = ["add_params_", "clear_state_", "group_of", "optimizers_holding", "zero_state_entries_"]


def _holds(optimizer: Optimizer, param: torch.Tensor) -> bool:
    return any(p is param for group in optimizer.param_groups for p in group["params"])


def optimizers_holding(param: torch.Tensor, optimizers: Sequence[Optimizer]) -> list[Optimizer]:
    """The optimizers among ``optimizers`` that hold ``param``."""
    return [opt for opt in optimizers if _holds(opt, param)]


def group_of(optimizer: Optimizer, param: torch.Tensor) -> dict:
    """The param group of ``optimizer`` holding ``param``; ValueError if it holds none."""
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise ValueError(f"{type(optimizer).__name__} does not hold this parameter (shape {tuple(param.shape)})")


def clear_state_(optimizers: Sequence[Optimizer], params: Iterable[torch.Tensor]) -> None:
    """Forget the optimizer state of ``params`` (moments and step), as for freshly created parameters."""
    params = list(params)
    for opt in optimizers:
        for param in params:
            opt.state.pop(param, None)


@torch.no_grad()
def zero_state_entries_(
    optimizers: Sequence[Optimizer], param: torch.Tensor, index: torch.Tensor, dim: int
) -> None:
    """Zero the moment entries of ``param`` at ``index`` along ``dim`` in every optimizer's state.

    Every state tensor with the parameter's shape is a per-entry moment and is zeroed there; scalar
    entries such as ``step`` are kept (see the module docstring).
    """
    if index.numel() == 0:
        return
    for opt in optimizers:
        state = opt.state.get(param)
        if not state:
            continue
        for key, value in state.items():
            if key != "step" and torch.is_tensor(value) and value.shape == param.shape:
                value.index_fill_(dim, index.to(value.device), 0)


def add_params_(optimizer: Optimizer, params: Iterable[nn.Parameter], like: torch.Tensor) -> None:
    """Register new ``params`` in ``optimizer`` as a new group with the hyperparameters of ``like``'s group.

    Every group setting (lr, betas, eps, weight_decay, foreach/fused, a scheduler's ``initial_lr``) is
    copied. A learning-rate scheduler created before this call keeps one base lr per group it saw and
    does not schedule the new group.
    """
    params = list(params)
    if not params:
        return
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if any(id(p) in known for p in params):
        raise ValueError("some parameters are already held by this optimizer")
    settings = {k: v for k, v in group_of(optimizer, like).items() if k != "params"}
    optimizer.add_param_group({**settings, "params": params})
