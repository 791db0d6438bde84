"""Plasticity interventions and diagnostics that work on any ``nn.Module`` and its optimizer.

Interventions (each built from a config dataclass in :mod:`.config`, bound to module references, their
optimizer(s) and target copies, and called once per gradient update with ``maybe_apply(step)``):

- :class:`Reset` — re-initialise modules with their own initialiser (Nikishin et al. 2022).
- :class:`ShrinkPerturb` — θ ← α·θ + σ·φ, φ a fresh initialisation (Ash & Adams 2020; BBF).
- :class:`HareTortoise` — EMA tortoise, hare reset to it (Lee et al. 2024).
- :class:`L2Init` — loss + λ‖θ − θ₀‖² (Kumar et al. 2023).
- :class:`ReDo` — recycle τ-dormant units (Sokar et al. 2023).
- :class:`PlasticityInjection` — frozen head + fresh trainable copy − its frozen twin (Nikishin et al. 2023).
- :class:`ContinualBackprop` — replace mature low-utility units (Dohare et al. 2024).

Diagnostics: :func:`measure` (stateless, one probe batch → ``{tag: value}``),
:class:`PlasticityMonitor` (adds distance from init and dormant overlap across resets, and curvature when
given a loss) and :func:`curvature` (sharpness, Hessian trace and rank, gradient noise scale and cosine of
``loss_fn(model, inputs)``).
"""

from .base import Intervention, InterventionSet, apply_all
from .binding import resolve_modules, weight_layers
from .cbp import ContinualBackprop
from .config import (
    INTERVENTION_ORDER,
    CBPConfig,
    HareTortoiseConfig,
    InjectionConfig,
    L2InitConfig,
    ReDoConfig,
    ResetConfig,
    ScheduleConfig,
    ShrinkPerturbConfig,
    ordered_configs,
    run_tag,
)
from .curvature import CURVATURE_QUANTITIES, CurvatureConfig, curvature
from .diagnostics import (
    PlasticityMonitor,
    activation_statistics,
    dormant_mask,
    effective_rank,
    measure,
    srank,
)
from .hare_tortoise import HareTortoise
from .injection import InjectedHead, PlasticityInjection
from .l2_init import L2Init
from .optim import add_params_, clear_state_, zero_state_entries_
from .redo import ReDo
from .reset import Reset, ShrinkPerturb
from .units import Outgoing, UnitGroup, find_unit_groups, recycle_units_

__all__ = [
    "CURVATURE_QUANTITIES",
    "INTERVENTION_ORDER",
    "CBPConfig",
    "ContinualBackprop",
    "CurvatureConfig",
    "HareTortoise",
    "HareTortoiseConfig",
    "InjectedHead",
    "InjectionConfig",
    "Intervention",
    "InterventionSet",
    "L2Init",
    "L2InitConfig",
    "Outgoing",
    "PlasticityInjection",
    "PlasticityMonitor",
    "ReDo",
    "ReDoConfig",
    "Reset",
    "ResetConfig",
    "ScheduleConfig",
    "ShrinkPerturb",
    "ShrinkPerturbConfig",
    "UnitGroup",
    "activation_statistics",
    "add_params_",
    "apply_all",
    "clear_state_",
    "curvature",
    "dormant_mask",
    "effective_rank",
    "find_unit_groups",
    "measure",
    "recycle_units_",
    "resolve_modules",
    "ordered_configs",
    "run_tag",
    "srank",
    "weight_layers",
    "zero_state_entries_",
]
