"""The supervised plasticity studies as functions: each runs its arms over seeds and returns a result dict.

- :func:`warm_start` — Ash & Adams 2020; Lee et al. 2024 (noisy 10% then all); fresh control included.
- :func:`multi_stage` — nested class-imbalanced pretraining stages (Berariu et al. App. A.3).
- :func:`smooth_transition` — biased sampling from a subset, then the full set (Berariu et al. App. A.2).
- :func:`layer_reset` — reset ResNet-18 modules k…6 before phase 2 (Berariu et al. App. A.5).
- :func:`continual` — permuted inputs / random labels / class-incremental tasks, per-task online accuracy.

Every arm of every seed is one run directory (DESIGN §5),
``<run_dir>/<protocol>__<dataset>__<tag>__seed<s>__<time>``, with ``config.json`` (every resolved
setting), TensorBoard events, ``eval.csv`` (``mean_return`` = test accuracy in [0, 1]), ``result.json``
and, when asked, ``checkpoint.pt``. With ``resume``, arms whose run directory with the same settings
(device, threads, run directory, checkpoint and logging intervals aside) already holds ``result.json``
are read back instead of rerun, and unfinished ones continue from their checkpoint. Every arm's network,
optimizer and interventions are built once before any arm trains (:func:`check_arms`,
:func:`check_sweep`), so a combination that cannot run fails before hours of training, not after.
An arm's *score* is the mean test accuracy of its last ``final_window`` evaluations in its last phase.
Gaps are fresh − arm per seed (paired), with Student-t 95% intervals over seeds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plasticrl.common import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    RESULT_FILE,
    Run,
    config_dict,
    run_name,
    seed_everything,
    select_device,
    stop_on_signals,
)
from plasticrl.interventions import Intervention, PlasticityMonitor, Reset, ResetConfig

from .config import (
    CommonConfig,
    ContinualConfig,
    LayerResetConfig,
    MultiStageConfig,
    SmoothTransitionConfig,
    WarmStartConfig,
    interventions_tag,
    without_interventions,
)
from .datasets import ArrayDataset, holdout_validation, load_dataset
from .models import build_network, check_network_input, flat_inputs, optimizer_for
from .schedule import InterventionSchedule, build_interventions
from .splits import (
    MixedSampler,
    class_incremental_tasks,
    multi_stage_splits,
    random_labels,
    stratified_split,
    task_permutation,
    warm_start_split,
)
from .stats import mean_ci, paired_gap
from .train import Phase, Trainer, TrainSettings, cross_entropy_loss, evaluate_accuracy

__all__ = [
    "SWEEP_ARMS",
    "ArmInputs",
    "check_arms",
    "check_sweep",
    "continual",
    "layer_reset",
    "multi_stage",
    "network_tag",
    "prepare_data",
    "run_arm",
    "smooth_transition",
    "summarize_arms",
    "sweep_arm",
    "warm_start",
]

# Settings that do not change what an arm computes: written to config.json, but left out when a run
# directory is matched to an arm (resume).
_VOLATILE = (
    "seeds",
    "threads",
    "resume",
    "run_dir",
    "device",
    "progress",
    "checkpoint_every",
    "log_every",
    "eval_batch_size",
    # output paths of the command lines (older continual runs saved them with the settings)
    "plot",
    "json_out",
    "table_out",
)


# ----------------------------------------------------------------------------- data


def prepare_data(config: CommonConfig) -> ArrayDataset:
    """Load the dataset, apply the validation hold-out and the training-set limit, move it to the device."""
    dataset = load_dataset(
        config.dataset,
        config.data_dir,
        download=config.download,
        normalize=config.normalize,
        test_fraction=config.test_fraction,
    )
    if config.validation_fraction > 0:
        dataset = holdout_validation(dataset, config.validation_fraction)
    if config.train_limit:
        n = dataset.y_train.numel()
        if config.train_limit < n:
            keep, _ = stratified_split(
                dataset.y_train, config.train_limit / n, dataset.num_classes, torch.Generator().manual_seed(0)
            )
            dataset = dataclasses.replace(
                dataset, x_train=dataset.x_train[keep], y_train=dataset.y_train[keep]
            )
    return dataset.to(select_device(config.device))


@dataclasses.dataclass
class ArmInputs:
    """The dataset as the network takes it (flattened for MLPs, views of the same memory)."""

    dataset: ArrayDataset
    x_train: torch.Tensor
    x_test: torch.Tensor

    @classmethod
    def of(cls, config: CommonConfig, dataset: ArrayDataset) -> ArmInputs:
        if flat_inputs(config):
            return cls(dataset, dataset.x_train.flatten(1), dataset.x_test.flatten(1))
        return cls(dataset, dataset.x_train, dataset.x_test)


def network_tag(config: CommonConfig) -> str:
    """Run-name fragment for network options that change the arm (CReLU, LayerNorm), else ``""``."""
    parts = []
    if config.activation != "relu":
        parts.append(config.activation + ("-matched" if config.keep_param_count else ""))
    if config.layer_norm:
        parts.append("ln")
    return "-".join(parts)


# ----------------------------------------------------------------------------- one arm


def curvature_parts(network: nn.Module) -> dict[str, nn.Module] | None:
    """``{"encoder": network.encoder, "head": network.head}`` for per-part sharpness (MLP, ResNet-18), or
    None when one of them has no parameters (logistic regression has no encoder)."""
    parts = {name: getattr(network, name, None) for name in ("encoder", "head")}
    if all(isinstance(m, nn.Module) and any(True for _ in m.parameters()) for m in parts.values()):
        return parts
    return None


def _arm_identity(protocol: str, arm: str, seed: int, config: CommonConfig, extra: dict | None) -> dict:
    """What ``config.json`` records as the run's ``args``: every resolved setting (DESIGN §5)."""
    return {"protocol": protocol, "arm": arm, "seed": seed, "settings": config_dict(config), **(extra or {})}


def _active_settings(identity: dict) -> dict:
    """``identity`` as compared for resuming: without the volatile settings (device, threads, …) and without
    the settings of interventions that are off: their parameters change nothing, so a changed default of an
    unused intervention does not make a finished arm look different."""
    settings = {k: v for k, v in identity.get("settings", {}).items() if k not in _VOLATILE}
    for name, value in list(settings.items()):
        if not isinstance(value, dict):
            continue
        active = value["enabled"] if "enabled" in value else bool(value.get("every") or value.get("at"))
        if not active:
            del settings[name]
    return {**identity, "settings": settings}


def _find_run(
    run_dir: Path, protocol: str, dataset: str, tag: str, seed: int, identity: dict
) -> tuple[Path, dict] | None:
    """The newest run directory of this arm with the same identity (finished ones first), and the
    identity it was saved with."""
    prefix = run_name(protocol, dataset, tag, seed, timestamp="T")[:-1]
    wanted = _active_settings(config_dict(identity))
    candidates = []
    for path in sorted(run_dir.glob(prefix + "*")):
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            continue
        saved = json.loads(config_path.read_text()).get("args", {})
        if _active_settings(saved) != wanted:
            continue
        if (path / RESULT_FILE).is_file():
            return path, saved
        if (path / CHECKPOINT_FILE).is_file():
            candidates.append((path, saved))
    return candidates[-1] if candidates else None


def _score(evals: list[dict], window: int) -> float | None:
    if not evals:
        return None
    last_phase = evals[-1]["phase"]
    values = [e["accuracy"] for e in evals if e["phase"] == last_phase][-window:]
    return sum(values) / len(values)


def run_arm(
    protocol: str,
    arm: str,
    config: CommonConfig,
    seed: int,
    inputs: ArmInputs,
    make_phases: Callable[[torch.Generator], list[Phase]],
    *,
    extra_interventions: Callable[[nn.Module, torch.optim.Optimizer], list[tuple[Intervention, str]]]
    | None = None,
    evaluator: Callable[[nn.Module, int], float] | None = None,
    identity: dict | None = None,
    final_window: int = 1,
    reset_optimizer: bool = True,
    tag_parts: Sequence[str] = (),
) -> dict[str, Any]:
    """Train one arm for one seed in its own run directory and return its result (also ``result.json``).

    The network is drawn after ``seed_everything(seed)``, so every arm of a seed starts from the same
    initial weights (paired comparisons). ``make_phases(generator)`` builds the phases with the arm's data
    generator; ``extra_interventions(network, optimizer)`` adds interventions bound by reference (layer
    resets); ``identity`` adds to what makes two arms the same for resuming; ``tag_parts`` are run-tag
    fragments of settings the phases carry (the phase-2 learning-rate multiplier).
    """
    dataset = inputs.dataset
    parts = (arm, *tag_parts, network_tag(config), interventions_tag(config))
    tag = "+".join(part for part in parts if part and part != "baseline")
    args = _arm_identity(protocol, arm, seed, config, identity)
    run_dir = Path(config.run_dir)
    found = _find_run(run_dir, protocol, dataset.name, tag, seed, args) if config.resume else None
    if found is not None and (found[0] / RESULT_FILE).is_file():
        return json.loads((found[0] / RESULT_FILE).read_text())

    if config.threads:
        torch.set_num_threads(config.threads)
    device = inputs.x_train.device
    seed_everything(seed)
    network = build_network(config, dataset.image_shape, dataset.num_classes).to(device)
    check_network_input(network, inputs.x_train, dataset.num_classes, dataset.name)
    optimizer = optimizer_for(config, network)
    generator = torch.Generator().manual_seed(seed)
    monitor = None
    curv = config.curvature
    if config.diagnostics_every or curv.enabled:
        probe_order = torch.randperm(
            inputs.x_train.shape[0], generator=torch.Generator().manual_seed(seed + 1)
        )
        probe = inputs.x_train[probe_order[: config.probe_size].to(device)]
        monitor = PlasticityMonitor(
            network,
            probe,
            name="network",
            dormant_threshold=config.dormant_threshold,
            loss_fn=cross_entropy_loss if curv.enabled else None,
            curvature_config=curv.estimator(config.batch_size),
            curvature_parts=curvature_parts(network) if curv.per_part else None,
        )
    if evaluator is None and dataset.y_test.numel():

        def evaluator(net: nn.Module, _phase: int) -> float:
            return evaluate_accuracy(net, inputs.x_test, dataset.y_test, config.eval_batch_size)

    settings = TrainSettings(
        lr=config.lr,
        batch_size=config.batch_size,
        grad_clip=config.grad_clip,
        warmup_fraction=config.warmup_fraction,
        reset_optimizer_between_phases=reset_optimizer,
        eval_every=config.eval_every,
        eval_batch_size=config.eval_batch_size,
        diagnostics_every=config.diagnostics_every,
        checkpoint_every=config.checkpoint_every,
        log_every=config.log_every,
        progress=config.progress,
        progress_desc=f"{protocol} {tag} seed {seed}",
        curvature_probe_size=curv.probe_size if curv.enabled else 0,
        # Every arm of a seed measures the same examples of a phase with the same indices (the full set).
        curvature_seed=seed + 2,
        curvature_at=tuple(curv.at),
        curvature_last_phase_only=curv.last_phase_only,
    )
    trainer = Trainer(
        network,
        optimizer,
        inputs.x_train,
        make_phases(generator),
        settings,
        InterventionSchedule([]),
        generator,
        monitor=monitor,
        evaluator=evaluator,
    )
    trainer.interventions = build_interventions(
        config,
        network,
        optimizer,
        batch_fn=lambda: trainer.random_batch(config.redo.batch_size),
        example_inputs=inputs.x_train[:2],
        monitor=monitor,
        extra=extra_interventions(network, optimizer) if extra_interventions else (),
    )
    if found is not None:
        run, checkpoint = Run.resume(found[0], found[1])
        trainer.load_state_dict(checkpoint)
    else:
        run = Run.create(run_dir, protocol, dataset.name, tag, seed, args)
    trainer.run = run
    try:
        with stop_on_signals() as stop:
            trainer.stop = stop
            summary = trainer.fit()
        result = {
            "protocol": protocol,
            "arm": arm,
            "tag": tag,
            "seed": seed,
            "dataset": dataset.name,
            "score": _score(summary["evals"], final_window),
            "run_dir": str(run.path),
            **summary,
        }
        run.write_result(result)
    finally:
        run.close()
        trainer.interventions.close()
    return result


# ----------------------------------------------------------------------------- checks before training

ExtraInterventions = Callable[[nn.Module, torch.optim.Optimizer], list[tuple[Intervention, str]]]


def _dry_build(
    config: CommonConfig,
    image_shape: tuple[int, int, int],
    num_classes: int,
    example: torch.Tensor | None = None,
    dataset: str = "",
    extra_interventions: ExtraInterventions | None = None,
) -> None:
    """Build ``config``'s network, optimizer and interventions on the CPU as :func:`run_arm` would, and run
    the network on two examples; nothing is trained or written, and the global RNG state is kept."""
    with torch.random.fork_rng(devices=[]):
        network = build_network(config, image_shape, num_classes)
        x = example if example is not None else torch.zeros((2, *image_shape))
        x = x.flatten(1) if flat_inputs(config) else x
        check_network_input(network, x, num_classes, dataset)
        optimizer = optimizer_for(config, network)
        extra = extra_interventions(network, optimizer) if extra_interventions else ()
        build_interventions(
            config, network, optimizer, batch_fn=lambda: x, example_inputs=x, extra=extra
        ).close()


def check_arms(
    arms: Sequence[tuple[str, CommonConfig]],
    dataset: ArrayDataset | None = None,
    *,
    image_shape: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
    extra_interventions: Mapping[str, ExtraInterventions] | None = None,
) -> None:
    """Build every arm's network, optimizer and interventions once (on ``dataset``'s first examples, else
    on zeros of ``image_shape``) before anything trains; ValueError naming the arm and the network of the
    first that cannot run (a network option or intervention the network does not take, a shape mismatch).
    ``extra_interventions`` maps arm names to their extra interventions (layer resets)."""
    example, name = None, ""
    if dataset is not None:
        image_shape, num_classes, name = dataset.image_shape, dataset.num_classes, dataset.name
        example = dataset.x_train[:2].cpu()
    for arm, config in arms:
        try:
            _dry_build(config, image_shape, num_classes, example, name, (extra_interventions or {}).get(arm))
        except (ValueError, TypeError) as error:
            raise ValueError(f"arm {arm!r} cannot run on --network {config.network}: {error}") from error


# ----------------------------------------------------------------------------- summaries


def summarize_arms(scores: dict[str, list[float]], reference: str = "fresh", baseline: str = "warm") -> dict:
    """Per arm: scores, mean ± 95% CI, the paired gap ``reference − arm`` ± CI, and the share of the
    ``baseline`` arm's gap that the arm closes (1 − gap_arm / gap_baseline, from the mean gaps; only when
    the baseline's mean gap is positive, as there is nothing to close otherwise)."""
    out: dict[str, Any] = {"arms": {}}
    ref = scores.get(reference)
    base_gap = paired_gap(ref, scores[baseline]).mean if ref is not None and baseline in scores else None
    for name, values in scores.items():
        ci = mean_ci(values)
        entry: dict[str, Any] = {"scores": list(values), "mean": ci.mean, "ci95": ci.half_width, "n": ci.n}
        if ref is not None and name != reference:
            gap = paired_gap(ref, values)
            entry["gap"] = gap.mean
            entry["gap_ci95"] = gap.half_width
            if base_gap is not None and base_gap > 0:
                entry["gap_closed"] = 1.0 - gap.mean / base_gap
        out["arms"][name] = entry
    if ref is not None and baseline in scores:
        out["gap"] = out["arms"][baseline]["gap"]
        out["gap_ci95"] = out["arms"][baseline]["gap_ci95"]
    return out


def _require_scores(results: dict[str, list[dict]]) -> dict[str, list[float]]:
    scores = {}
    for arm, runs in results.items():
        values = [r["score"] for r in runs]
        if any(v is None for v in values):
            raise ValueError(f"arm {arm!r} has no test evaluations (empty test set?); cannot compare arms")
        scores[arm] = values
    return scores


# ----------------------------------------------------------------------------- warm start


def _given(phases: Sequence[Phase]) -> Callable[[torch.Generator], list[Phase]]:
    """A phase builder that ignores the generator (phases without samplers)."""
    fixed = list(phases)
    return lambda _generator: list(fixed)


def _warm_start_phases(
    split, arm_config: WarmStartConfig, epochs: tuple[int, int], warm: bool
) -> list[Phase]:
    stop = {"target_train_accuracy": arm_config.target_train_accuracy, "patience": arm_config.patience}
    multiplier = arm_config.phase2_lr_multiplier if warm else 1.0
    full = Phase(
        "full", split.phase2_indices, split.phase2_labels, epochs[1], lr_multiplier=multiplier, **stop
    )
    if not warm:
        return [full]
    return [Phase("subset", split.phase1_indices, split.phase1_labels, epochs[0], **stop), full]


def _split_for(config: WarmStartConfig, dataset: ArrayDataset, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return warm_start_split(
        dataset.y_train, config.fraction, config.label_noise, dataset.num_classes, generator
    )


SWEEP_ARMS = (
    "warm",
    "shrink_perturb",
    "hare_tortoise",
    "head_reset",
    "reset_all",
    "l2_init",
    "redo",
    "cbp",
    "injection",
    "crelu",
    "layer_norm",
)


def sweep_arm(config: WarmStartConfig, name: str) -> WarmStartConfig:
    """The warm-start settings of sweep arm ``name``: ``config`` with only that intervention (or network
    option) on. An intervention keeps the config's parameters (a preset's α, σ, momentum, λ …) and its
    schedule when one is set; otherwise it acts at the phase switch (shrink & perturb, resets, injection),
    every epoch (ReDo) or as configured by default (hare & tortoise every 10 epochs, L2-init, CBP)."""
    base = without_interventions(config)
    replace = dataclasses.replace

    def at_switch(c):
        return c if c.scheduled else replace(c, every=1, unit="phase")

    if name == "warm":
        return base
    if name == "shrink_perturb":
        return replace(base, shrink_perturb=at_switch(config.shrink_perturb))
    if name == "hare_tortoise":
        return replace(base, hare_tortoise=replace(config.hare_tortoise, enabled=True))
    if name in ("head_reset", "reset_all"):
        modules = ("head",) if name == "head_reset" else ("all",)
        return replace(base, reset=replace(at_switch(config.reset), modules=modules))
    if name == "l2_init":
        return replace(base, l2_init=replace(config.l2_init, enabled=True))
    if name == "redo":
        redo = config.redo if config.redo.scheduled else replace(config.redo, every=1, unit="epoch")
        return replace(base, redo=redo)
    if name == "cbp":
        return replace(base, cbp=replace(config.cbp, enabled=True))
    if name == "injection":
        return replace(base, injection=at_switch(config.injection))
    if name == "crelu":
        return replace(base, activation="crelu", keep_param_count=True)
    if name == "layer_norm":
        return replace(base, layer_norm=True)
    raise ValueError(f"unknown sweep arm {name!r}; choose from {', '.join(SWEEP_ARMS)}")


def _sweep_arm_problem(config: WarmStartConfig, name: str) -> str | None:
    try:
        _dry_build(sweep_arm(config, name), (3, 32, 32), 10)
    except (ValueError, TypeError) as error:
        return str(error)
    return None


def check_sweep(config: WarmStartConfig, arms: Sequence[str], networks: Sequence[str] = ()) -> None:
    """Check every sweep arm on every network (default: ``config.network``) before anything trains, by
    building each arm's network, optimizer and interventions once on zeros. One ValueError lists every
    combination that cannot run, why, and the arms that do run on that network."""
    unknown = [name for name in arms if name not in SWEEP_ARMS]
    if unknown:
        raise ValueError(
            f"unknown sweep arm(s) {', '.join(map(repr, unknown))}; choose from {', '.join(SWEEP_ARMS[1:])}"
        )
    problems = []
    for network in dict.fromkeys(networks or (config.network,)):
        try:
            base = dataclasses.replace(config, network=network)
        except ValueError as error:
            problems.append(f"--network {network} with these settings: {error}")
            continue
        failed = {name: why for name in arms if (why := _sweep_arm_problem(base, name))}
        if not failed:
            continue
        allowed = [
            a
            for a in SWEEP_ARMS[1:]
            if a not in failed and (a in arms or _sweep_arm_problem(base, a) is None)
        ]
        problems.append(
            f"sweep arm(s) {', '.join(failed)} cannot run on network {network!r} (sweep arms that run on "
            f"{network}: {', '.join(allowed) or 'none'}):"
            + "".join(f"\n  {name}: {why}" for name, why in failed.items())
        )
    if problems:
        raise ValueError("\n".join(problems))


def _phase2_lr_tag(config: WarmStartConfig) -> tuple[str, ...]:
    """Run-tag fragment of a warm arm's phase-2 learning-rate multiplier, when it is not 1."""
    multiplier = config.phase2_lr_multiplier
    return () if multiplier == 1 else (f"phase2-lrx{multiplier:g}",)


def warm_start(
    config: WarmStartConfig,
    arms: Sequence[tuple[str, WarmStartConfig]] | None = None,
    *,
    dataset: ArrayDataset | None = None,
) -> dict[str, Any]:
    """Warm start vs fresh initialisation over ``config.seeds``.

    Phase 1 trains on a class-stratified share p (``fraction``) of the training set with a share q
    (``label_noise``) of those labels replaced by another class; phase 2 on the full clean set. The fresh
    control (no interventions) trains only phase 2. ``arms`` are (name, settings) pairs of warm-started
    arms (default: one arm ``"warm"`` with ``config``'s interventions). Returns per-arm scores, mean ± CI,
    the paired gap fresh − arm with its CI and the share of the warm gap each arm closes.
    """
    dataset = dataset if dataset is not None else prepare_data(config)
    arms = list(arms) if arms is not None else [("warm", config)]
    names = [name for name, _ in arms]
    if "fresh" in names or len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique and not 'fresh', got {names}")
    epochs = config.epochs()
    fresh_config = without_interventions(config)
    check_arms([("fresh", fresh_config), *arms], dataset)
    results: dict[str, list[dict]] = {"fresh": [], **{name: [] for name in names}}
    for seed in config.seeds:
        split = _split_for(config, dataset, seed)
        fresh = run_arm(
            "warm_start",
            "fresh",
            fresh_config,
            seed,
            ArmInputs.of(fresh_config, dataset),
            _given(_warm_start_phases(split, fresh_config, epochs, warm=False)),
            final_window=config.final_window,
            reset_optimizer=config.reset_optimizer,
        )
        results["fresh"].append(fresh)
        for name, arm_config in arms:
            result = run_arm(
                "warm_start",
                "warm",
                arm_config,
                seed,
                ArmInputs.of(arm_config, dataset),
                _given(_warm_start_phases(split, arm_config, epochs, warm=True)),
                identity={"fraction": config.fraction, "label_noise": config.label_noise},
                final_window=arm_config.final_window,
                reset_optimizer=arm_config.reset_optimizer,
                tag_parts=_phase2_lr_tag(arm_config),
            )
            results[name].append(result)
    baseline = "warm" if "warm" in names else names[0]
    summary = summarize_arms(_require_scores(results), baseline=baseline)
    summary["runs"] = {arm: [r["run_dir"] for r in runs] for arm, runs in results.items()}
    summary["tags"] = {arm: runs[0]["tag"] for arm, runs in results.items()}
    summary["epochs"] = list(epochs)
    return summary


def _layer_reset_builder(k: int | None):
    """Interventions of the arm that resets ResNet-18 modules k..6 at the first phase switch."""

    def build(network: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[Intervention, str]]:
        if k is None:
            return []
        modules = [network.numbered_module(i) for i in range(k, 7)]
        reset = Reset(ResetConfig(at=(1,)), network, [optimizer], modules=modules, name="layer_reset")
        return [(reset, "phase")]

    return build


def layer_reset(config: LayerResetConfig, *, dataset: ArrayDataset | None = None) -> dict[str, Any]:
    """Berariu et al.'s layer-reset study: fresh, warm, and warm with ResNet-18 modules k…6 re-initialised
    (own initialisers, their optimizer state cleared) at the phase switch, for each k in ``reset_from``.
    The config's own interventions, if any, apply to the warm arms."""
    dataset = dataset if dataset is not None else prepare_data(config)
    ks: list[int | None] = [None, *config.reset_from]
    names = ["warm" if k is None else f"reset{k}-6" for k in ks]
    epochs = config.epochs()
    inputs = ArmInputs.of(config, dataset)
    fresh_config = without_interventions(config)
    check_arms(
        [("fresh", fresh_config), *((name, config) for name in names)],
        dataset,
        extra_interventions={name: _layer_reset_builder(k) for name, k in zip(names, ks)},
    )
    results: dict[str, list[dict]] = {"fresh": [], **{name: [] for name in names}}
    for seed in config.seeds:
        split = _split_for(config, dataset, seed)
        fresh = run_arm(
            "layer_reset",
            "fresh",
            fresh_config,
            seed,
            inputs,
            _given(_warm_start_phases(split, fresh_config, epochs, warm=False)),
            final_window=config.final_window,
        )
        results["fresh"].append(fresh)
        warm_phases = _warm_start_phases(split, config, epochs, warm=True)
        for name, k in zip(names, ks):
            result = run_arm(
                "layer_reset",
                name,
                config,
                seed,
                inputs,
                _given(warm_phases),
                extra_interventions=_layer_reset_builder(k),
                identity={"reset_from": k},
                final_window=config.final_window,
                reset_optimizer=config.reset_optimizer,
                tag_parts=_phase2_lr_tag(config),
            )
            results[name].append(result)
    summary = summarize_arms(_require_scores(results))
    summary["runs"] = {arm: [r["run_dir"] for r in runs] for arm, runs in results.items()}
    summary["tags"] = {arm: runs[0]["tag"] for arm, runs in results.items()}
    return summary


# ----------------------------------------------------------------------------- multi-stage and smooth


def multi_stage(config: MultiStageConfig, *, dataset: ArrayDataset | None = None) -> dict[str, Any]:
    """K pretraining stages on nested class-imbalanced subsets, then the full set, vs fresh on the full set
    (the final stage alone)."""
    dataset = dataset if dataset is not None else prepare_data(config)
    inputs = ArmInputs.of(config, dataset)
    fresh_config = without_interventions(config)
    check_arms([("fresh", fresh_config), ("staged", config)], dataset)
    results: dict[str, list[dict]] = {"fresh": [], "staged": []}
    sizes = []
    for seed in config.seeds:
        generator = torch.Generator().manual_seed(seed)
        stages = multi_stage_splits(
            dataset.y_train, dataset.num_classes, config.num_stages, config.uniform_fraction, generator
        )
        sizes.append([int(s.numel()) for s in stages])
        pretraining = [
            Phase(f"stage{i + 1}", idx, dataset.y_train[idx], epochs=config.stage_epochs)
            for i, idx in enumerate(stages[:-1])
        ]
        full = Phase("full", stages[-1], dataset.y_train[stages[-1]], epochs=config.final_epochs)
        fresh = run_arm(
            "multi_stage",
            "fresh",
            fresh_config,
            seed,
            inputs,
            _given([full]),
            final_window=config.final_window,
        )
        results["fresh"].append(fresh)
        staged = run_arm(
            "multi_stage",
            f"staged{config.num_stages}-r{config.uniform_fraction:g}",
            config,
            seed,
            inputs,
            _given([*pretraining, full]),
            final_window=config.final_window,
            reset_optimizer=config.reset_optimizer,
        )
        results["staged"].append(staged)
    summary = summarize_arms(_require_scores(results), baseline="staged")
    summary["stage_sizes"] = sizes
    summary["runs"] = {arm: [r["run_dir"] for r in runs] for arm, runs in results.items()}
    summary["tags"] = {arm: runs[0]["tag"] for arm, runs in results.items()}
    return summary


def _smooth_builder(
    config: SmoothTransitionConfig, labels: torch.Tensor, subset: torch.Tensor, biased: bool
) -> Callable[[torch.Generator], list[Phase]]:
    n = labels.numel()
    steps = max(1, n // config.batch_size)
    everything = torch.arange(n, device=labels.device)
    p_end = config.p if config.p_final is None else config.p_final

    def p_at(epoch: int) -> float:
        return config.p + (p_end - config.p) * epoch / max(config.biased_epochs - 1, 1)

    def build(generator: torch.Generator) -> list[Phase]:
        sampler = MixedSampler(n, subset, generator)
        full = Phase(
            "full",
            everything,
            labels,
            epochs=config.total_epochs - (config.biased_epochs if biased else 0),
            sampler=lambda _epoch, size: sampler.sample(size, 1.0),
            steps_per_epoch=steps,
        )
        if not biased:
            return [full]
        mixed = Phase(
            "biased",
            everything,
            labels,
            epochs=config.biased_epochs,
            sampler=lambda epoch, size: sampler.sample(size, p_at(epoch)),
            steps_per_epoch=steps,
        )
        return [mixed, full]

    return build


def smooth_transition(
    config: SmoothTransitionConfig, *, dataset: ArrayDataset | None = None
) -> dict[str, Any]:
    """Biased sampling (full set with probability p, else the pretraining subset) for ``biased_epochs``,
    then the full set, vs the same run with p = 1 throughout; one optimizer, no reset (one stage)."""
    dataset = dataset if dataset is not None else prepare_data(config)
    inputs = ArmInputs.of(config, dataset)
    fresh_config = without_interventions(config)
    arm = f"p{config.p:g}" + (f"-{config.p_final:g}" if config.p_final is not None else "")
    check_arms([("fresh", fresh_config), (arm, config)], dataset)
    results: dict[str, list[dict]] = {"fresh": [], "smooth": []}
    for seed in config.seeds:
        generator = torch.Generator().manual_seed(seed)
        subset, _ = stratified_split(dataset.y_train, config.subset_fraction, dataset.num_classes, generator)
        subset = subset.to(dataset.y_train.device)
        for name, arm_config, biased in (("fresh", fresh_config, False), (arm, config, True)):
            result = run_arm(
                "smooth_transition",
                name,
                arm_config,
                seed,
                inputs,
                _smooth_builder(config, dataset.y_train, subset, biased),
                final_window=config.final_window,
                reset_optimizer=False,
            )
            results["smooth" if biased else "fresh"].append(result)
    summary = summarize_arms(_require_scores(results), baseline="smooth")
    summary["runs"] = {name: [r["run_dir"] for r in runs] for name, runs in results.items()}
    summary["tags"] = {name: runs[0]["tag"] for name, runs in results.items()}
    return summary


# ----------------------------------------------------------------------------- continual tasks


def _permute(perm: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def transform(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, perm].view_as(x)

    return transform


def _seen_classes_evaluator(
    config: ContinualConfig, inputs: ArmInputs, seen_by_phase: list[torch.Tensor]
) -> Callable[[nn.Module, int], float]:
    y_test = inputs.dataset.y_test

    def evaluate(network: nn.Module, phase: int) -> float:
        mask = torch.isin(y_test, seen_by_phase[phase])
        return evaluate_accuracy(network, inputs.x_test[mask], y_test[mask], config.eval_batch_size)

    return evaluate


def _continual_phases(
    config: ContinualConfig, inputs: ArmInputs, seed: int
) -> tuple[list[Phase], Callable[[nn.Module, int], float] | None]:
    dataset = inputs.dataset
    device = dataset.y_train.device
    generator = torch.Generator().manual_seed(seed)
    n = dataset.y_train.numel()
    if config.examples_per_task and config.examples_per_task < n:
        share = config.examples_per_task / n
        base, _ = stratified_split(dataset.y_train, share, dataset.num_classes, generator)
        base = base.to(device)
    else:
        base = torch.arange(n, device=device)
    labels = dataset.y_train[base]
    epochs = config.epochs_per_task
    if config.task == "permuted":
        num_features = inputs.x_train[0].numel()
        phases = []
        for t in range(config.num_tasks):
            transform = _permute(task_permutation(seed, t, num_features).to(device))
            phases.append(Phase(f"task{t + 1}", base, labels, epochs, transform=transform, evaluate=False))
        return phases, None
    if config.task == "random_labels":
        phases = []
        for t in range(config.num_tasks):
            noise = random_labels(seed, t, base.numel(), dataset.num_classes).to(device)
            phases.append(Phase(f"task{t + 1}", base, noise, epochs, evaluate=False))
        return phases, None
    tasks = class_incremental_tasks(labels, dataset.num_classes, config.classes_per_task, generator)
    if config.num_tasks > len(tasks):
        raise ValueError(
            f"class_incremental with {config.classes_per_task} classes per task has {len(tasks)} tasks; "
            f"--num-tasks {config.num_tasks} asks for more"
        )
    has_test = bool(dataset.y_test.numel())
    phases, seen_by_phase, seen = [], [], set()
    for t, (classes, members) in enumerate(tasks[: config.num_tasks]):
        seen |= set(classes)
        seen_by_phase.append(torch.tensor(sorted(seen), device=device))
        idx = base[members]
        phases.append(Phase(f"task{t + 1}", idx, dataset.y_train[idx], epochs, evaluate=has_test))
    return phases, _seen_classes_evaluator(config, inputs, seen_by_phase) if has_test else None


def continual(config: ContinualConfig, *, dataset: ArrayDataset | None = None) -> dict[str, Any]:
    """Train through ``num_tasks`` tasks; per task, the online accuracy (first epoch's accuracy of each batch
    before its update), the training accuracy of its last epoch and the mean over its epochs. The summary's
    ``task_accuracy`` (and first/last-10-task means) is the online accuracy with one epoch per task and the
    last epoch's training accuracy otherwise.

    Tasks: ``permuted`` — the same examples with a new random pixel permutation per task; ``random_labels``
    — the same examples with new uniformly random labels per task; ``class_incremental`` — each task the
    examples of ``classes_per_task`` new classes (the head keeps all outputs), evaluated on the test
    examples of every class seen so far. ``examples_per_task`` > 0 fixes a stratified subset per seed.
    """
    dataset = dataset if dataset is not None else prepare_data(config)
    check_arms([(config.task, config)], dataset)
    inputs = ArmInputs.of(config, dataset)
    per_seed = []
    for seed in config.seeds:
        phases, evaluator = _continual_phases(config, inputs, seed)
        result = run_arm(
            "continual",
            config.task,
            config,
            seed,
            inputs,
            _given(phases),
            evaluator=evaluator,
            reset_optimizer=config.reset_optimizer,
        )
        per_seed.append(result)
    online = [[p["first_epoch_accuracy"] for p in r["phases"]] for r in per_seed]
    final = [[p["final_train_accuracy"] for p in r["phases"]] for r in per_seed]
    mean_train = [[p["mean_train_accuracy"] for p in r["phases"]] for r in per_seed]
    # One epoch per task: the online accuracy (Kumar et al. 2023, Dohare et al. 2024). Several epochs per
    # task (random labels): the training accuracy reached by the end of each task (first-epoch accuracy on
    # random labels is chance by construction).
    headline = online if config.epochs_per_task == 1 else final
    window = min(10, config.num_tasks)
    first = mean_ci([sum(a[:window]) / window for a in headline])
    last = mean_ci([sum(a[-window:]) / window for a in headline])
    return {
        "task": config.task,
        "tag": per_seed[0]["tag"],
        "metric": "online_accuracy" if config.epochs_per_task == 1 else "final_train_accuracy",
        "task_accuracy": headline,
        "task_accuracy_mean": [sum(col) / len(col) for col in zip(*headline)],
        "online_accuracy": online,
        "final_train_accuracy": final,
        "mean_train_accuracy": mean_train,
        "online_accuracy_mean": [sum(col) / len(col) for col in zip(*online)],
        "first_tasks": {"window": window, "mean": first.mean, "ci95": first.half_width},
        "last_tasks": {"window": window, "mean": last.mean, "ci95": last.half_width},
        "diagnostics": [r.get("diagnostics", []) for r in per_seed],
        "runs": [r["run_dir"] for r in per_seed],
        "wall_time_s": sum(r.get("wall_time_s") or 0.0 for r in per_seed),
    }
