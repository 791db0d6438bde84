"""Configuration of every intervention: small frozen dataclasses usable as nested tyro groups.

Each agent's ``Args`` holds one field per intervention (``reset: ResetConfig = ResetConfig()``), so the
command line reads ``--reset.every 40000 --reset.modules head``. Every intervention is off by default:
scheduled ones act when ``every > 0`` or ``at`` is non-empty, the others have an ``enabled`` flag.

Update steps count gradient updates *done*: the intervention is called right after the optimizer step of
update ``n`` with ``update_step = n`` (so ``every = 40000`` acts after updates 40000, 80000, ...).
Agents that think in environment steps (BBF resets every 20,000 agent steps) convert with their replay
ratio before building the config.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "INTERVENTION_ORDER",
    "CBPConfig",
    "HareTortoiseConfig",
    "InjectionConfig",
    "L2InitConfig",
    "ReDoConfig",
    "ResetConfig",
    "ScheduleConfig",
    "ShrinkPerturbConfig",
    "ordered_configs",
    "run_tag",
]

# The order in which interventions act after a gradient update, in the agents and in the supervised
# harness alike: the tortoise first averages the weights the optimizer just produced, then the unit-level
# recyclers (continual backprop, ReDo), then the scheduled re-draws (reset, shrink & perturb), then the
# structural change (injection); L2-init only adds a loss term. Field names of the configs in an agent's
# Args or a harness config.
INTERVENTION_ORDER = ("hare_tortoise", "cbp", "redo", "reset", "shrink_perturb", "injection", "l2_init")


def ordered_configs(settings: object) -> list:
    """The intervention configs held by ``settings`` (one field per name of ``INTERVENTION_ORDER``),
    in application order: what :func:`run_tag` expects."""
    missing = [name for name in INTERVENTION_ORDER if not hasattr(settings, name)]
    if missing:
        raise AttributeError(f"{type(settings).__name__} has no intervention fields {missing}")
    return [getattr(settings, name) for name in INTERVENTION_ORDER]


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_modules(modules: tuple[str, ...]) -> None:
    if isinstance(modules, str) or not modules:
        raise ValueError(
            "modules must be a non-empty tuple of names ('head', 'encoder', 'last:2', 'all'), "
            f"got {modules!r}"
        )


def _num(x: float) -> str:
    return f"{x:g}"


def _names_tag(modules: tuple[str, ...]) -> str:
    return ".".join(m.replace(":", "") for m in modules)


@dataclass(frozen=True)
class ScheduleConfig:
    """When a scheduled intervention acts: every N updates and/or at listed updates, within [start, until)."""

    every: int = 0
    """act after every N-th gradient update, or N-th count of the group's .unit where it has one (0: never)"""
    at: tuple[int, ...] = ()
    """also act after exactly these gradient updates (or counts of .unit)"""
    start: int = 0
    """do not act before this update (or count of .unit)"""
    until: int | None = None
    """do not act at or after this update (or count of .unit; None: no end)"""

    def __post_init__(self) -> None:
        # every = 0 means "off"; a negative interval is a mistake, not a way to switch it off.
        _check_int("every (the interval in updates; 0 turns it off)", self.every, minimum=0)
        for step in self.at:
            _check_int("each entry of at (an update number)", step, minimum=1)
        _check_int("start", self.start, minimum=0)
        if self.until is not None:
            _check_int("until", self.until, minimum=1)
            if self.until <= self.start:
                raise ValueError(f"until ({self.until}) must be greater than start ({self.start})")

    @property
    def scheduled(self) -> bool:
        """Whether the schedule ever fires."""
        return self.every > 0 or bool(self.at)

    def fires(self, update_step: int) -> bool:
        """Whether to act right after gradient update number ``update_step`` (1-based)."""
        if update_step < self.start or (self.until is not None and update_step >= self.until):
            return False
        periodic = self.every > 0 and update_step > 0 and update_step % self.every == 0
        return periodic or update_step in self.at

    def schedule_tag(self) -> str:
        """Compact description of the schedule for run names: ``e40000``, ``at5000.9000``, ``s0u100000``."""
        parts = []
        if self.every > 0:
            parts.append(f"e{self.every}")
        if self.at:
            parts.append("at" + ".".join(str(s) for s in sorted(self.at)))
        if self.start > 0:
            parts.append(f"s{self.start}")
        if self.until is not None:
            parts.append(f"u{self.until}")
        return "-".join(parts)


@dataclass(frozen=True)
class ResetConfig(ScheduleConfig):
    """Re-initialise modules with their own initialiser (Nikishin et al. 2022, primacy bias)."""

    modules: tuple[str, ...] = ("head",)
    """parts to reset: attribute paths ('head', 'encoder', 'critic.head'), 'last:K' or 'all'"""
    target_rule: Literal["sync", "keep"] = "sync"
    """target copies: 'sync' copies the fresh weights into them, 'keep' leaves them to track by themselves"""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_modules(self.modules)

    @property
    def enabled(self) -> bool:
        """Whether the intervention is active."""
        return self.scheduled

    def tag(self) -> str:
        """Run-name fragment, e.g. ``reset-head-e40000``."""
        return f"reset-{_names_tag(self.modules)}-{self.schedule_tag()}"


@dataclass(frozen=True)
class ShrinkPerturbConfig(ScheduleConfig):
    """θ ← α·θ + σ·φ with φ a fresh draw from each module's initialiser (Ash & Adams 2020).

    BBF's interpolation α·θ + (1−α)·φ is σ = 1 − α (BBF: α = σ = 0.5 on the encoder every 40k updates).
    """

    # Ash & Adams 2020, their code's defaults (shrink 0.4, perturb 0.1).
    shrink_factor: float = 0.4
    """α, the factor on the current weights, in [0, 1]"""
    perturb_factor: float = 0.1
    """σ, the factor on the fresh initialisation, in [0, 1]"""
    modules: tuple[str, ...] = ("all",)
    """parts to shrink and perturb: attribute paths, 'last:K' or 'all'"""
    # BBF keeps the optimizer state of shrink-perturbed modules (bbf/agents/spr_agent.py, jit_reset).
    reset_optimizer: bool = False
    """also clear the optimizer state (moments, step) of the shrink-perturbed parameters"""
    target_rule: Literal["same", "sync", "keep"] = "same"
    """target copies: 'same' applies α·θ' + σ·φ (same φ), 'sync' copies the result, 'keep' leaves them"""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_unit_interval("shrink_factor (alpha)", self.shrink_factor)
        _check_unit_interval("perturb_factor (sigma)", self.perturb_factor)
        _check_modules(self.modules)

    @property
    def enabled(self) -> bool:
        """Whether the intervention is active."""
        return self.scheduled

    def tag(self) -> str:
        """Run-name fragment, e.g. ``sp-0.5-0.5-encoder-e40000``."""
        return (
            f"sp-{_num(self.shrink_factor)}-{_num(self.perturb_factor)}-{_names_tag(self.modules)}"
            f"-{self.schedule_tag()}"
        )


@dataclass(frozen=True)
class HareTortoiseConfig(ScheduleConfig):
    """Hare & tortoise (Lee et al. 2024): an EMA 'tortoise' of the trained 'hare'; the hare is reset to it.

    The schedule fields say when hare ← tortoise; the EMA runs after every update while enabled.
    """

    enabled: bool = False
    """keep a tortoise (EMA of the network) and act/evaluate with the network chosen by act_with"""
    # Lee et al. 2024, dojeon-ai/Hare-Tortoise (EMA 0.999 after every optimizer step).
    momentum: float = 0.999
    """m in tortoise ← m·tortoise + (1−m)·hare, in [0, 1)"""
    act_with: Literal["tortoise", "hare"] = "tortoise"
    """which network acts and is evaluated (not confirmed from the authors' RL code)"""
    # The authors' trainer keeps the optimizer state when the hare is reset.
    reset_optimizer: bool = False
    """clear the hare's optimizer state when it is reset to the tortoise"""
    target_rule: Literal["sync", "keep"] = "sync"
    """target copies of the hare at a hare reset: 'sync' copies the reset weights, 'keep' leaves them"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= float(self.momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")

    def tag(self) -> str:
        """Run-name fragment, e.g. ``ht-0.999-e10000`` (``-hare`` when the hare acts)."""
        parts = [f"ht-{_num(self.momentum)}"]
        if self.scheduled:
            parts.append(self.schedule_tag())
        if self.act_with != "tortoise":
            parts.append(self.act_with)
        return "-".join(parts)


@dataclass(frozen=True)
class L2InitConfig:
    """L2-init / regenerative regularisation (Kumar et al. 2023): add λ‖θ − θ₀‖² to the loss."""

    enabled: bool = False
    """add the penalty to the loss"""
    # Kumar et al. 2023, "Maintaining plasticity in continual learning via regenerative regularization":
    # 1e-2 was the best value across their problems.
    coef: float = 1e-2
    """λ, the weight of the squared distance to the initial parameters"""
    modules: tuple[str, ...] = ("all",)
    """parts whose parameters are regularised"""

    def __post_init__(self) -> None:
        # `not x >= 0` also rejects NaN; infinity is rejected explicitly.
        if not float(self.coef) >= 0 or not math.isfinite(float(self.coef)):
            raise ValueError(f"coef (lambda) must be a finite number >= 0, got {self.coef}")
        _check_modules(self.modules)

    def tag(self) -> str:
        """Run-name fragment, e.g. ``l2init-0.01``."""
        suffix = "" if self.modules == ("all",) else f"-{_names_tag(self.modules)}"
        return f"l2init-{_num(self.coef)}{suffix}"


@dataclass(frozen=True)
class ReDoConfig(ScheduleConfig):
    """Recycle τ-dormant units (Sokar et al. 2023): fresh incoming weights, zero outgoing, cleared moments."""

    # Sokar et al. 2023 recycle with τ = 0.1 (0.025 is the value of their dormant-count plots).
    threshold: float = 0.1
    """τ: a unit is dormant when its normalised mean |activation| is <= τ"""
    # dopamine labs/redo: batch_size_statistics = 256.
    batch_size: int = 256
    """samples in the batch the agent draws to score units"""
    modules: tuple[str, ...] = ("all",)
    """parts whose hidden units may be recycled (the output layer never is)"""
    target_rule: Literal["same", "sync", "keep"] = "same"
    """target copies: 'same' recycles the same units with the same fresh weights, 'sync' copies the layers"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not float(self.threshold) >= 0 or not math.isfinite(float(self.threshold)):
            raise ValueError(f"threshold (tau) must be a finite number >= 0, got {self.threshold}")
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_modules(self.modules)

    @property
    def enabled(self) -> bool:
        """Whether the intervention is active."""
        return self.scheduled

    def tag(self) -> str:
        """Run-name fragment, e.g. ``redo-0.1-e1000``."""
        suffix = "" if self.modules == ("all",) else f"-{_names_tag(self.modules)}"
        return f"redo-{_num(self.threshold)}{suffix}-{self.schedule_tag()}"


@dataclass(frozen=True)
class InjectionConfig(ScheduleConfig):
    """Plasticity injection (Nikishin et al. 2023): freeze the head, add a fresh copy minus a frozen twin."""

    modules: tuple[str, ...] = ("head",)
    """parts to inject into (each is replaced, in its parent, by frozen + trainable − frozen copy)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_modules(self.modules)

    @property
    def enabled(self) -> bool:
        """Whether the intervention is active."""
        return self.scheduled

    def tag(self) -> str:
        """Run-name fragment, e.g. ``inject-head-at50000``."""
        return f"inject-{_names_tag(self.modules)}-{self.schedule_tag()}"


@dataclass(frozen=True)
class CBPConfig:
    """Continual backprop (Dohare et al. 2024): replace a small fraction of mature low-utility units."""

    enabled: bool = False
    """run generate-and-test after every update"""
    # Dohare et al. 2024, shibhansh/loss-of-plasticity lop/permuted_mnist/cfg/cbp.json:
    # replacement rate 1e-4 (swept 1e-4 … 1e-6), decay 0.99, maturity threshold 100, accumulated counts.
    replacement_rate: float = 1e-4
    """fraction of a layer's mature units replaced per update (fractions accumulate across updates)"""
    decay_rate: float = 0.99
    """η of the running utility u ← η·u + (1−η)·|h|·mean|w_out|, in [0, 1)"""
    maturity_threshold: int = 100
    """updates a unit must have lived before it may be replaced"""
    modules: tuple[str, ...] = ("all",)
    """parts whose hidden units may be replaced (the output layer never is)"""
    target_rule: Literal["same", "sync", "keep"] = "same"
    """target copies: 'same' replaces the same units with the same fresh weights, 'sync' copies the layers"""
    # lop/algos/gnt.py gen_new_features writes b_next += w_out · mean_act / (1 − η^age) before w_out ← 0, but
    # the released code zeroes that mean just before, so it adds nothing, and Dohare et al. 2024 (Nature)
    # describe no correction: off by default to match the published algorithm (see interventions/cbp.py).
    bias_correction: bool = False
    """add a replaced unit's mean contribution w_out·E[h] to the next layer's bias (keeps outputs' mean)"""

    def __post_init__(self) -> None:
        _check_unit_interval("replacement_rate", self.replacement_rate)
        if not 0.0 <= float(self.decay_rate) < 1.0:
            raise ValueError(f"decay_rate must be in [0, 1), got {self.decay_rate}")
        _check_int("maturity_threshold", self.maturity_threshold, minimum=0)
        _check_modules(self.modules)

    def tag(self) -> str:
        """Run-name fragment, e.g. ``cbp-0.0001-m100``."""
        suffix = "" if self.modules == ("all",) else f"-{_names_tag(self.modules)}"
        suffix += "-bc" if self.bias_correction else ""
        return f"cbp-{_num(self.replacement_rate)}-m{self.maturity_threshold}{suffix}"


class _TaggedConfig(Protocol):
    @property
    def enabled(self) -> bool: ...

    def tag(self) -> str: ...


def run_tag(configs: Iterable[_TaggedConfig]) -> str:
    """Name every active intervention, in the given (application) order: ``reset-head-e40000+sp-...``.

    Deterministic and complete: each enabled config contributes its own fragment, so combined
    interventions are never labelled by the first one alone. ``"baseline"`` when none is active.
    """
    parts = [c.tag() for c in configs if c.enabled]
    return "+".join(parts) if parts else "baseline"
