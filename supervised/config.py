"""Settings of the supervised studies: flat dataclasses that tyro turns into command lines.

:class:`CommonConfig` holds what every protocol shares (data, network, optimizer, run, interventions);
each protocol's config extends it. Intervention settings are the configs of
:mod:`plasticrl.interventions` extended with a ``unit`` saying what their schedule counts here:
``step`` (gradient updates, as in the agents), ``epoch`` (epochs completed in the run) or ``phase``
(phase boundaries passed: 1 is the switch from phase 1 to phase 2, or from task 1 to task 2). So
``--shrink-perturb.every 1`` shrinks and perturbs at every phase switch, and
``--hare-tortoise.enabled --hare-tortoise.every 10`` resets the hare to the tortoise every 10 epochs.

Default hyperparameters: Ash & Adams 2020 (MLP 100-100, Adam lr 1e-3, batch 128) unless a preset or a
protocol says otherwise; the presets cite their sources.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from plasticrl.interventions import (
    CBPConfig,
    CurvatureConfig,
    HareTortoiseConfig,
    InjectionConfig,
    L2InitConfig,
    ReDoConfig,
    ResetConfig,
    ShrinkPerturbConfig,
    ordered_configs,
    run_tag,
)
from plasticrl.networks import ACTIVATION_NAMES, activation_width_factor

from .splits import check_fraction

__all__ = [
    "CommonConfig",
    "ContinualConfig",
    "LayerResetConfig",
    "MultiStageConfig",
    "SmoothTransitionConfig",
    "SupervisedCurvatureConfig",
    "SupervisedHareTortoiseConfig",
    "SupervisedInjectionConfig",
    "SupervisedReDoConfig",
    "SupervisedResetConfig",
    "SupervisedShrinkPerturbConfig",
    "WARM_START_PRESETS",
    "NETWORK_NAMES",
    "WarmStartConfig",
    "interventions_tag",
    "network_options_error",
    "without_interventions",
]

Unit = Literal["step", "epoch", "phase"]


def _unit_tag(tag: str, unit: str) -> str:
    return tag if unit == "step" else f"{tag}-{unit}"


# ----------------------------------------------------------------------------- intervention configs


@dataclass(frozen=True)
class SupervisedResetConfig(ResetConfig):
    """Reset (Nikishin et al. 2022); here by default at phase switches."""

    unit: Unit = "phase"
    """what every/at/start/until count: 'step' (updates), 'epoch' (epochs done) or 'phase' (phase switches)"""

    def tag(self) -> str:
        return _unit_tag(super().tag(), self.unit)


@dataclass(frozen=True)
class SupervisedShrinkPerturbConfig(ShrinkPerturbConfig):
    """Shrink & perturb (Ash & Adams 2020); here by default at phase switches."""

    unit: Unit = "phase"
    """what every/at/start/until count: 'step' (updates), 'epoch' (epochs done) or 'phase' (phase switches)"""

    def tag(self) -> str:
        return _unit_tag(super().tag(), self.unit)


@dataclass(frozen=True)
class SupervisedHareTortoiseConfig(HareTortoiseConfig):
    """Hare & tortoise (Lee et al. 2024): EMA after every update, hare ← tortoise every 10 epochs."""

    # dojeon-ai/Hare-Tortoise scripts/paper/warm_start_wo_aug/hare_tortoise.sh: reset_every=10 (epochs).
    every: int = 10
    """reset the hare to the tortoise every N units (0: EMA only)"""
    unit: Unit = "epoch"
    """what every/at/start/until count: 'step' (updates), 'epoch' (epochs done) or 'phase' (phase switches)"""

    def tag(self) -> str:
        return _unit_tag(super().tag(), self.unit)


@dataclass(frozen=True)
class SupervisedReDoConfig(ReDoConfig):
    """ReDo (Sokar et al. 2023); here the schedule counts epochs by default."""

    unit: Unit = "epoch"
    """what every/at/start/until count: 'step' (updates), 'epoch' (epochs done) or 'phase' (phase switches)"""

    def tag(self) -> str:
        return _unit_tag(super().tag(), self.unit)


@dataclass(frozen=True)
class SupervisedInjectionConfig(InjectionConfig):
    """Plasticity injection (Nikishin et al. 2023); here by default at phase switches."""

    unit: Unit = "phase"
    """what every/at/start/until count: 'step' (updates), 'epoch' (epochs done) or 'phase' (phase switches)"""

    def tag(self) -> str:
        return _unit_tag(super().tag(), self.unit)


# ----------------------------------------------------------------------------- curvature diagnostics


@dataclass(frozen=True)
class SupervisedCurvatureConfig(CurvatureConfig):
    """Curvature and gradient-noise diagnostics (:func:`plasticrl.interventions.curvature`) of the training
    loss (cross-entropy) on a probe batch of the current phase's training examples with the phase's labels,
    measured in eval mode (BatchNorm's running statistics, no dropout: see the function's docstring) at
    the end of every phase; on by default, ``--curvature.no-enabled`` turns them off."""

    enabled: bool = True
    """measure sharpness, Hessian trace and rank, gradient noise scale and cosine at phase ends"""
    probe_size: int = 256
    """examples of the phase in the curvature probe batch (the same seeded draw for every arm of a seed)"""
    minibatch_size: int = 0
    """examples per minibatch for the gradient cosine (0: the training batch size, at most half the probe)"""
    at: tuple[Literal["start", "end"], ...] = ("end",)
    """when: at the end of each phase and/or at its start (after the phase-switch interventions)"""
    per_part: bool = False
    """also sharpness of the encoder and of the head alone (about 2x the sharpness cost)"""
    last_phase_only: bool = False
    """measure only in the last phase (a warm start's tuning phase; the fresh arm's only phase)"""

    def __post_init__(self) -> None:
        if isinstance(self.minibatch_size, bool) or not isinstance(self.minibatch_size, int):
            raise TypeError(f"curvature.minibatch_size must be an int, got {self.minibatch_size!r}")
        if self.minibatch_size < 0:
            raise ValueError(
                "curvature.minibatch_size must be >= 0 (0: the training batch size), "
                f"got {self.minibatch_size}"
            )
        self.validate(self.minibatch_size or 1)
        if isinstance(self.probe_size, bool) or not isinstance(self.probe_size, int) or self.probe_size < 2:
            raise ValueError(f"curvature.probe_size must be an int >= 2, got {self.probe_size!r}")
        if not self.at or any(when not in ("start", "end") for when in self.at):
            raise ValueError(f"curvature.at must name start and/or end, got {self.at!r}")

    def estimator(self, batch_size: int) -> CurvatureConfig:
        """The :class:`CurvatureConfig` to measure with, ``minibatch_size`` resolved for ``batch_size``."""
        minibatch = self.minibatch_size or min(batch_size, self.probe_size // 2)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(CurvatureConfig)}
        return CurvatureConfig(**{**fields, "minibatch_size": min(minibatch, self.probe_size)})


# ----------------------------------------------------------------------------- network options

NETWORK_NAMES = ("mlp", "linear", "resnet18")


def network_options_error(
    network: str, activation: str = "relu", layer_norm: bool = False, keep_param_count: bool = False
) -> str | None:
    """Why ``network`` cannot take these options (a message naming what is allowed), or None.

    ``--layer-norm`` and ``--keep-param-count`` are MLP options; ``resnet18`` has BatchNorm and needs an
    activation that keeps the width (its residual sums), so CReLU is refused; ``linear`` has no hidden
    layer, so it takes no activation (other than the default relu, which is unused), LayerNorm or CReLU.
    """
    if network not in NETWORK_NAMES:
        return f"unknown network {network!r}; choose {', '.join(NETWORK_NAMES)}"
    if activation not in ACTIVATION_NAMES:
        return f"unknown activation {activation!r}; choose {', '.join(ACTIVATION_NAMES)}"
    if network == "resnet18":
        if layer_norm:
            return (
                "--layer-norm is an MLP option (LayerNorm before each hidden activation); resnet18 has "
                "BatchNorm and takes no LayerNorm (use --network mlp)"
            )
        if activation_width_factor(activation) != 1:
            return (
                f"resnet18 needs an activation that keeps the width (its residual sums); {activation!r} "
                "does not (crelu is for --network mlp)"
            )
        if keep_param_count:
            return "--keep-param-count is an MLP option (CReLU widths); resnet18 does not take it"
    if network == "linear":
        if activation == "crelu":
            return "a linear model has no hidden activation to make CReLU (use --network mlp)"
        if activation != "relu":
            return f"a linear model has no hidden activation; --activation {activation} needs --network mlp"
        if layer_norm:
            return "a linear model has no hidden layer to normalise; --layer-norm needs --network mlp"
    return None


# ----------------------------------------------------------------------------- shared settings


@dataclass
class CommonConfig:
    """Data, network, optimizer, run and intervention settings shared by every supervised protocol."""

    # -- data
    dataset: str = "mnist_sample"
    """digits, mnist_sample (offline), mnist, fashion_mnist, cifar10, cifar100, svhn"""
    data_dir: str | None = None
    """folder holding <dataset>/<published files> (not needed for digits and mnist_sample)"""
    download: bool = False
    """download missing dataset files (resumable, MD5-checked)"""
    normalize: Literal["none", "unit", "half", "standard"] = "half"
    """pixel scaling: unit [0,1], half [-1,1] (Ash & Adams 2020), standard (per-channel z-score)"""
    test_fraction: float = 0.2
    """offline sets only: stratified share held out as the test set (fixed split seed 0)"""
    validation_fraction: float = 0.0
    """evaluate on this held-out share of the training split instead of the test split (Ash & Adams: 1/3)"""
    train_limit: int = 0
    """use a stratified subset of this many training examples (0: all)"""

    # -- network (plasticrl.networks)
    network: Literal["mlp", "linear", "resnet18"] = "mlp"
    """mlp, linear (logistic regression) or resnet18 (CIFAR ResNet-18, modules 1-6)"""
    # Ash & Adams 2020: MLP with two hidden layers of 100 ReLU units.
    hidden_dims: tuple[int, ...] = (100, 100)
    """MLP hidden widths"""
    activation: str = "relu"
    """hidden activation: relu, crelu, leaky_relu, elu, gelu, silu, tanh, sigmoid (resnet18: not crelu)"""
    layer_norm: bool = False
    """MLP only: LayerNorm before each hidden activation (an error for resnet18, which has BatchNorm)"""
    keep_param_count: bool = False
    """MLP only, with crelu: shrink hidden widths to keep the ReLU net's parameter count"""
    blocks_per_stage: tuple[int, int, int, int] = (2, 2, 2, 2)
    """resnet18: residual blocks per stage (depth scaling, Berariu et al.)"""
    base_width: int = 64
    """resnet18: channels of the first stage w (stages w, 2w, 4w, 8w; width scaling)"""

    # -- optimization
    # Ash & Adams 2020: Adam (or SGD), lr 1e-3, batch 128.
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    """adam, adamw or sgd"""
    lr: float = 1e-3
    """learning rate"""
    weight_decay: float = 0.0
    """weight decay (coupled L2 for adam/sgd, decoupled for adamw)"""
    momentum: float = 0.0
    """sgd momentum"""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam/AdamW (beta1, beta2)"""
    adam_eps: float = 1e-8
    """Adam/AdamW epsilon"""
    batch_size: int = 128
    """examples per gradient update"""
    grad_clip: float = 0.0
    """clip the global gradient norm to this value (0: off; Lee et al. 2024 use 0.5)"""
    warmup_fraction: float = 0.0
    """linear learning-rate warm-up over this share of each phase's updates (Lee et al. 2024: 0.1)"""

    # -- run
    seeds: tuple[int, ...] = (0,)
    """seeds to run (each gives one run directory per arm)"""
    run_dir: str = "runs"
    """parent folder of the run directories"""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N"""
    threads: int = 0
    """torch CPU threads (0: torch's default); 1 is fastest for small MLPs on a busy CPU"""
    eval_every: int = 1
    """evaluate test accuracy every N epochs (and at the end of every phase)"""
    eval_batch_size: int = 1024
    """batch size of evaluation forwards"""
    diagnostics_every: int = 1
    """plasticity diagnostics every N epochs and at the end of every phase (0: off)"""
    probe_size: int = 512
    """training examples in the fixed probe batch of the diagnostics"""
    dormant_threshold: float = 0.025
    """tau of the logged dormant ratio (Sokar et al. 2023 plots)"""
    curvature: SupervisedCurvatureConfig = field(default_factory=SupervisedCurvatureConfig)
    """curvature and gradient-noise diagnostics at phase ends (on by default; --curvature.no-enabled)"""
    checkpoint_every: int = 0
    """write checkpoint.pt every N epochs (0: only when stopped by a signal)"""
    resume: bool = False
    """reuse finished arms and continue unfinished ones found in --run-dir with the same settings"""
    log_every: int = 100
    """log training losses every N updates"""
    progress: bool = True
    """show a progress bar (periodic lines when not on a terminal)"""

    # -- interventions (all off by default), applied in this order
    hare_tortoise: SupervisedHareTortoiseConfig = field(default_factory=SupervisedHareTortoiseConfig)
    """hare & tortoise (Lee et al. 2024): on with --hare-tortoise.enabled; evaluation uses the tortoise"""
    cbp: CBPConfig = field(default_factory=CBPConfig)
    """continual backprop (Dohare et al. 2024): on with --cbp.enabled, acts after every update"""
    redo: SupervisedReDoConfig = field(default_factory=SupervisedReDoConfig)
    """ReDo (Sokar et al. 2023): on with --redo.every N (units: --redo.unit)"""
    reset: SupervisedResetConfig = field(default_factory=SupervisedResetConfig)
    """reset (Nikishin et al. 2022): on with --reset.every N or --reset.at ... (default unit: phase)"""
    shrink_perturb: SupervisedShrinkPerturbConfig = field(default_factory=SupervisedShrinkPerturbConfig)
    """shrink & perturb (Ash & Adams 2020): on with --shrink-perturb.every N (default unit: phase switches)"""
    injection: SupervisedInjectionConfig = field(default_factory=SupervisedInjectionConfig)
    """plasticity injection (Nikishin et al. 2023): on with --injection.every N or --injection.at ..."""
    l2_init: L2InitConfig = field(default_factory=L2InitConfig)
    """L2-init (Kumar et al. 2023): on with --l2-init.enabled, adds coef·||θ − θ0||² to the loss"""

    def __post_init__(self) -> None:
        check_fraction("test_fraction", self.test_fraction)
        check_fraction("validation_fraction", self.validation_fraction)
        check_fraction("warmup_fraction", self.warmup_fraction)
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        for name in ("batch_size", "eval_batch_size", "probe_size", "log_every", "eval_every", "base_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("diagnostics_every", "checkpoint_every", "train_limit", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.momentum < 0:
            raise ValueError("grad_clip, weight_decay and momentum must be >= 0")
        problem = network_options_error(self.network, self.activation, self.layer_norm, self.keep_param_count)
        if problem:
            raise ValueError(problem)
        if self.network == "mlp" and not self.hidden_dims:
            raise ValueError(
                "--network mlp needs --hidden-dims (use --network linear for logistic regression)"
            )


def interventions_tag(config: CommonConfig) -> str:
    """Run-name fragment of every active intervention (``baseline`` when none)."""
    return run_tag(ordered_configs(config))


def without_interventions(config: CommonConfig) -> CommonConfig:
    """The same settings with every intervention off (the fresh-initialisation control)."""
    return dataclasses.replace(
        config,
        hare_tortoise=dataclasses.replace(config.hare_tortoise, enabled=False),
        cbp=dataclasses.replace(config.cbp, enabled=False),
        redo=dataclasses.replace(config.redo, every=0, at=()),
        reset=dataclasses.replace(config.reset, every=0, at=()),
        shrink_perturb=dataclasses.replace(config.shrink_perturb, every=0, at=()),
        injection=dataclasses.replace(config.injection, every=0, at=()),
        l2_init=dataclasses.replace(config.l2_init, enabled=False),
    )


# ----------------------------------------------------------------------------- protocols


@dataclass
class WarmStartConfig(CommonConfig):
    """Warm start: phase 1 on a share p of the training set with a share q of its labels wrong, phase 2 on
    the full clean set; a fresh-initialisation control trains on phase 2 alone."""

    preset: Literal["none", "ash-adams", "hare-tortoise", "berariu"] = "none"
    """start from a published protocol's settings (other flags override them)"""
    fraction: float = 0.5
    """p: share of the training set in phase 1 (class-stratified)"""
    label_noise: float = 0.0
    """q: share of phase-1 labels replaced by a different class"""
    phase1_epochs: int = 20
    """epochs of phase 1 (the most epochs when a target accuracy is set)"""
    phase2_epochs: int = 20
    """epochs of phase 2 and of the fresh control"""
    base_epochs: int = 0
    """if > 0: phase epochs = base_epochs / data ratio (p, then 1 - p), as Lee et al. 2024 (100)"""
    target_train_accuracy: float = 0.0
    """end a phase once an epoch's training accuracy reaches this (Ash & Adams: 0.99; 0: off)"""
    patience: int = 0
    """with a target: also end a phase after this many epochs without a better training accuracy"""
    reset_optimizer: bool = True
    """clear the optimizer state at the phase switch (Berariu et al.; Lee et al. build a new optimizer)"""
    phase2_lr_multiplier: float = 1.0
    """learning-rate factor in phase 2 (Berariu et al.: 10 shrinks the gap)"""
    final_window: int = 1
    """score = mean test accuracy of the last N evaluations (Berariu et al.: last 100 epochs)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction("fraction (p)", self.fraction)
        check_fraction("label_noise (q)", self.label_noise)
        check_fraction("target_train_accuracy", self.target_train_accuracy)
        if self.fraction == 0.0:
            raise ValueError("fraction (p) must be > 0: phase 1 needs data")
        if self.base_epochs > 0 and self.fraction >= 1.0:
            raise ValueError("base_epochs divides by 1 - p for phase 2; it needs fraction < 1")
        for name in ("phase1_epochs", "phase2_epochs", "final_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.phase2_lr_multiplier <= 0:
            raise ValueError(f"phase2_lr_multiplier must be > 0, got {self.phase2_lr_multiplier}")

    def epochs(self) -> tuple[int, int]:
        """(phase-1 epochs, phase-2 epochs), from ``base_epochs`` when it is set."""
        if self.base_epochs > 0:
            # dojeon-ai/Hare-Tortoise src/trainers/base.py: num_epochs = int(base_epochs / input_data_ratio)
            # with input_data_ratios [0.1, 0.9] (the share of data new in each task).
            return int(self.base_epochs / self.fraction), int(self.base_epochs / (1.0 - self.fraction))
        return self.phase1_epochs, self.phase2_epochs


WARM_START_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # Ash & Adams 2020, Sec. 3 / JordanAsh/warm_start: 50% then 100%, train each round to 99% training
    # accuracy, validation on 1/3 of the training split, (0.5, 0.5) normalisation, Adam lr 1e-3, batch 128;
    # shrink 0.4, perturb 0.1.
    "ash-adams": dict(
        fraction=0.5,
        label_noise=0.0,
        target_train_accuracy=0.99,
        phase1_epochs=300,
        phase2_epochs=300,
        patience=10,
        validation_fraction=1.0 / 3.0,
        normalize="half",
        optimizer="adam",
        lr=1e-3,
        batch_size=128,
        reset_optimizer=True,
    ),
    # Lee et al. 2024, dojeon-ai/Hare-Tortoise configs/_warm_start.yaml, trainer/base.yaml,
    # w_cifar10_resnet18.yaml: 10% with 50% label noise, then all data clean; epochs 100 / ratio; AdamW
    # lr 1e-3, weight decay 1e-3, warm-up 0.1, gradient clipping 0.5, batch 256; shrink & perturb
    # 0.2·θ + 0.8·θ_init at the end of each task (θ_init here: a fresh draw); H&T EMA 0.999, every 10 epochs.
    "hare-tortoise": dict(
        fraction=0.1,
        label_noise=0.5,
        base_epochs=100,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=1e-3,
        warmup_fraction=0.1,
        grad_clip=0.5,
        batch_size=256,
        reset_optimizer=True,
        shrink_perturb=SupervisedShrinkPerturbConfig(shrink_factor=0.2, perturb_factor=0.8),
        hare_tortoise=SupervisedHareTortoiseConfig(momentum=0.999, every=10, unit="epoch"),
    ),
    # Berariu et al. App. A: ResNet-18, CIFAR-10, Adam lr 1e-3 constant, batch 128, optimizer statistics
    # reset between phases, 350 epochs on half the data then 500 on all, mean test accuracy of the last
    # 100 epochs.
    "berariu": dict(
        dataset="cifar10",
        network="resnet18",
        fraction=0.5,
        label_noise=0.0,
        phase1_epochs=350,
        phase2_epochs=500,
        optimizer="adam",
        lr=1e-3,
        batch_size=128,
        reset_optimizer=True,
        final_window=100,
    ),
}


@dataclass
class LayerResetConfig(WarmStartConfig):
    """Berariu et al.'s layer-reset study: before phase 2, re-initialise ResNet-18 modules k…6
    (1 first conv, 2–5 stages, 6 classifier), one arm per k, beside the fresh and the warm arms."""

    network: Literal["mlp", "linear", "resnet18"] = "resnet18"
    """the study needs resnet18 (modules 1-6)"""
    reset_from: tuple[int, ...] = (6, 5, 4, 3, 2, 1)
    """k values: each arm resets modules k..6 at the phase switch"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.network != "resnet18":
            raise ValueError(
                "the layer-reset study numbers ResNet-18 modules; --network must be resnet18, "
                f"got {self.network!r}"
            )
        for k in self.reset_from:
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 6:
                raise ValueError(
                    "reset_from entries are module numbers in 1..6 (1 first conv, 2-5 stages, "
                    f"6 classifier), got {k!r}"
                )


@dataclass
class MultiStageConfig(CommonConfig):
    """Several pretraining stages on nested, class-imbalanced subsets, then the full set
    (Berariu et al. App. A.3); the fresh control trains on the full set only."""

    num_stages: int = 2
    """K: pretraining stages before the final one on the whole training set"""
    uniform_fraction: float = 0.5
    """r: share of the data added uniformly over classes (1: random growth, 0: new classes per stage)"""
    stage_epochs: int = 20
    """epochs of each pretraining stage"""
    final_epochs: int = 20
    """epochs on the full set (and of the fresh control)"""
    reset_optimizer: bool = True
    """clear the optimizer state between stages"""
    final_window: int = 1
    """score = mean test accuracy of the last N evaluations"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction("uniform_fraction (r)", self.uniform_fraction)
        if self.num_stages < 1 or self.stage_epochs < 1 or self.final_epochs < 1 or self.final_window < 1:
            raise ValueError("num_stages, stage_epochs, final_epochs and final_window must be >= 1")


@dataclass
class SmoothTransitionConfig(CommonConfig):
    """One training run whose batches mix the full set (probability p) and a pretraining subset, for
    ``biased_epochs``, then the full set alone (Berariu et al. App. A.2); the control has p = 1 throughout."""

    subset_fraction: float = 0.5
    """share of the training set in the pretraining subset (class-stratified)"""
    p: float = 0.5
    """probability that an example is drawn from the full set during the biased epochs"""
    p_final: float | None = None
    """if set, p moves linearly from --p to this value over the biased epochs"""
    biased_epochs: int = 10
    """epochs of biased sampling"""
    total_epochs: int = 30
    """all epochs (an epoch is n_train / batch_size draws, with replacement)"""
    final_window: int = 1
    """score = mean test accuracy of the last N evaluations"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction("subset_fraction", self.subset_fraction)
        check_fraction("p", self.p)
        if self.p_final is not None:
            check_fraction("p_final", self.p_final)
        if self.subset_fraction == 0.0:
            raise ValueError("subset_fraction must be > 0")
        if not 1 <= self.biased_epochs < self.total_epochs:
            raise ValueError(
                f"need 1 <= biased_epochs < total_epochs, got {self.biased_epochs} and {self.total_epochs}"
            )
        if self.final_window < 1:
            raise ValueError("final_window must be >= 1")


@dataclass
class ContinualConfig(CommonConfig):
    """A stream of tasks trained one after another; per-task online accuracy (the accuracy of each batch
    before the update on it) shows loss of trainability (Dohare et al. 2024; Kumar et al. 2023)."""

    task: Literal["permuted", "random_labels", "class_incremental"] = "permuted"
    """permuted inputs (a new pixel permutation per task), random labels, or new classes per task"""
    num_tasks: int = 50
    """number of tasks"""
    epochs_per_task: int = 1
    """epochs on each task (Kumar et al.: 1 for permuted MNIST, 400 for random labels)"""
    examples_per_task: int = 0
    """examples per task, a fixed stratified subset (0: all; Kumar et al.: 10,000 permuted, 1,200 random)"""
    classes_per_task: int = 2
    """class_incremental: new classes per task"""
    reset_optimizer: bool = False
    """clear the optimizer state at each task switch"""
    # Kumar et al. 2023 (permuted MNIST): batch 16, inputs in [0, 1], all images used for training.
    batch_size: int = 16
    """examples per gradient update"""
    normalize: Literal["none", "unit", "half", "standard"] = "unit"
    """pixel scaling"""
    test_fraction: float = 0.0
    """offline sets only: share held out as a test set (used by class_incremental)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_tasks < 1 or self.epochs_per_task < 1 or self.examples_per_task < 0:
            raise ValueError("num_tasks and epochs_per_task must be >= 1, examples_per_task >= 0")
        if self.classes_per_task < 1:
            raise ValueError(f"classes_per_task must be >= 1, got {self.classes_per_task}")
