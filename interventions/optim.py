"""Keeping an optimizer consistent when an intervention changes weights.

Works for any ``torch.optim`` optimizer whose per-parameter state is a dict of tensors shaped like the
parameter plus scalars, for the state keys listed in :data:`ENTRY_STATE_RESETS` (Adam, AdamW, NAdam,
RAdam, Adamax, SGD with momentum, RMSprop, Adagrad, Adadelta, Rprop; foreach and fused variants).

Two kinds of clearing:

- whole parameters (:func:`clear_state_`): the parameter's state entry is deleted, so the optimizer
  re-creates it lazily on the next step exactly as for a new parameter: zero moments and ``step = 0``,
  hence Adam's bias correction restarts for that tensor.
- entries (:func:`zero_state_entries_`): the per-entry state (``exp_avg``, ``exp_avg_sq``,
  ``max_exp_avg_sq``, ``momentum_buffer``, ...) is put back to the value the optimizer initialises it
  with, at given rows / columns / channels: zero for moments, ``lr`` for Rprop's ``step_size`` (zeroing it
  would freeze those entries forever), ``initial_accumulator_value`` for Adagrad's ``sum``. Per-entry state
  it does not know (ASGD's averaged parameter ``ax``, Adafactor's factored moments, L-BFGS's history) is
  a ValueError rather than a guess. Torch keeps one ``step`` counter per tensor, so it is left alone, as
  dopamine's ReDo leaves optax's count: the first Adam updates of those entries are then larger than a
  fresh Adam's (about 3·lr after one step with β = (0.9, 0.999), decaying over ~1/(1−β₂) steps).
  Dohare et al.'s AdamGnT keeps per-entry step counts to avoid this; plain torch optimizers cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

__all__ = [
    "ENTRY_STATE_RESETS",
    "add_params_",
    "clear_state_",
    "group_of",
    "optimizers_holding",
    "zero_state_entries_",
]

# Per-entry optimizer state → the value torch initialises it with (from the param group), as in each
# optimizer's ``_init_group``. Scalar state (``step``, NAdam's ``mu_product``) is per tensor and kept.
ENTRY_STATE_RESETS: Mapping[str, Callable[[Mapping[str, Any]], Any]] = {
    "exp_avg": lambda group: 0.0,  # Adam, AdamW, NAdam, RAdam, Adamax
    "exp_avg_sq": lambda group: 0.0,  # Adam, AdamW, NAdam, RAdam
    "max_exp_avg_sq": lambda group: 0.0,  # Adam / AdamW with amsgrad
    "exp_inf": lambda group: 0.0,  # Adamax
    "momentum_buffer": lambda group: 0.0,  # SGD, RMSprop
    "square_avg": lambda group: 0.0,  # RMSprop, Adadelta
    "grad_avg": lambda group: 0.0,  # RMSprop centered
    "acc_delta": lambda group: 0.0,  # Adadelta
    "sum": lambda group: group.get("initial_accumulator_value", 0.0),  # Adagrad
    "prev": lambda group: 0.0,  # Rprop: previous gradient
    "step_size": lambda group: group["lr"],  # Rprop: per-entry step sizes start at lr
}


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
    """Reset the per-entry optimizer state of ``param`` at ``index`` along ``dim`` in every optimizer.

    Each state key of :data:`ENTRY_STATE_RESETS` gets the value the optimizer initialises it with (zero
    for moments); scalar entries such as ``step`` are kept (see the module docstring). ValueError for
    per-entry state of another kind, checked before anything is changed.
    """
    if index.numel() == 0:
        return
    edits = []
    for opt in optimizers:
        state = opt.state.get(param)
        if not state:
            continue
        group = next((g for g in opt.param_groups if any(p is param for p in g["params"])), None)
        if group is None:
            continue  # stale state of a parameter the optimizer no longer steps
        for key, value in state.items():
            if not torch.is_tensor(value) or value.dim() == 0:
                continue
            if key not in ENTRY_STATE_RESETS or value.shape != param.shape:
                raise ValueError(
                    f"{type(opt).__name__} keeps per-entry state {key!r} (shape {tuple(value.shape)}) for a "
                    f"parameter of shape {tuple(param.shape)}, which zero_state_entries_ cannot reset; "
                    f"supported per-entry state: {sorted(ENTRY_STATE_RESETS)} (Adam/AdamW/NAdam/RAdam/"
                    "Adamax/SGD/RMSprop/Adagrad/Adadelta/Rprop)"
                )
            initial = ENTRY_STATE_RESETS[key](group)
            edits.append((value, float(initial) if torch.is_tensor(initial) else initial))
    for value, initial in edits:
        value.index_fill_(dim, index.to(value.device), initial)


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
