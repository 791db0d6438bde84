"""The supervised training loop: phases of epochs over tensors on the device, with interventions,
diagnostics, logging, and checkpoints that resume mid-epoch.

A run is a list of :class:`Phase` s (warm start: phase 1 then phase 2; continual: one phase per task).
Each epoch visits the phase's examples in a fresh order drawn with the run's seeded generator
(``torch.randperm``) — or, for sampled phases (smooth transition), ``steps_per_epoch`` batches drawn by
the phase's sampler — and indexes the dataset tensors by batch; there is no per-sample Python.

Per update: cross-entropy (+ L2-init's penalty), optional gradient clipping, optimizer step, then the
interventions (:mod:`.schedule`). Per epoch: training accuracy (the accuracy of each batch's logits before
its update, accumulated on the device; in the first epoch of a task this is the *online* accuracy of
Dohare et al. 2024 and Kumar et al. 2023), epoch-unit interventions, test accuracy every ``eval_every``
epochs and at the end of each phase, diagnostics (:class:`~plasticrl.interventions.PlasticityMonitor`).
At the end of each phase (and, when asked, at its start) the monitor's curvature diagnostics
(:func:`~plasticrl.interventions.curvature`: sharpness, Hessian trace and rank, gradient noise scale and
cosine) of the cross-entropy on ``curvature_probe_size`` examples of that phase, drawn with a generator
seeded by ``curvature_seed`` (so the fresh and warm arms of a seed measure the same examples of the
full set); when the evaluated network is another module (hare & tortoise's tortoise) its diagnostics and
curvature are measured too, under the name ``tortoise`` (``eval_diagnostics`` in the summary). Measuring
changes no weight, mode, buffer, optimizer state or RNG state, so runs train identically with or without.
At each phase switch: phase-unit interventions, then (optionally) the optimizer state is cleared, which
is what building a new optimizer does (Berariu et al.; Lee et al. 2024), while every intervention stays
bound to the same optimizer object.

Logs (TensorBoard, global update count on the x-axis): ``losses/cross_entropy``, ``losses/l2_init``,
``charts/train_accuracy`` (per epoch), ``charts/online_accuracy`` (first epoch of each phase),
``charts/epoch``, ``charts/phase``, ``charts/SPS`` (updates per second), ``eval/test_accuracy`` and
``eval/episodic_return`` (the same value, DESIGN §5), ``eval/test_accuracy_hare`` (hare & tortoise),
``plasticity/...``, ``interventions/...``. ``eval.csv``: ``step`` = updates done, ``mean_return`` = test
accuracy in [0, 1] of the evaluated network (the tortoise under hare & tortoise), ``returns`` = the same
value, ``normalized_score`` empty.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plasticrl.common import Progress, Run, check_finite, rng_states, set_rng_states
from plasticrl.common.run import device_description
from plasticrl.interventions import PlasticityMonitor, curvature, measure

from .schedule import InterventionSchedule

__all__ = ["Phase", "RunInterrupted", "Trainer", "TrainSettings", "cross_entropy_loss", "evaluate_accuracy"]


def cross_entropy_loss(network: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The training loss as ``loss_fn(model, (inputs, labels))`` for the curvature diagnostics: mean
    cross-entropy (L2-init's penalty left out: its Hessian only adds 2λ to every eigenvalue)."""
    inputs, labels = batch
    return F.cross_entropy(network(inputs), labels)


def _network_level(measured: Mapping[str, float]) -> dict[str, float]:
    """``{metric: value}`` of the whole-network tags ``plasticity/<metric>/<network>``."""
    return {k.split("/")[1]: v for k, v in measured.items() if k.count("/") == 2}


def _matching_parts(
    other: nn.Module, network: nn.Module, parts: Mapping[str, nn.Module] | None
) -> dict[str, nn.Module] | None:
    """``parts`` of ``network`` mapped to the modules at the same paths in ``other`` (a tortoise copy)."""
    if parts is None:
        return None
    paths = {id(module): path for path, module in network.named_modules()}
    modules = dict(other.named_modules())
    return {name: modules[paths[id(module)]] for name, module in parts.items()}


class RunInterrupted(RuntimeError):
    """Training stopped on a signal after writing ``checkpoint.pt``; rerun with ``--resume`` to continue."""


@dataclass
class Phase:
    """One phase (or task) of a run.

    Attributes:
        name: label for logs and results.
        indices: rows of the trainer's input tensor used in this phase.
        labels: the label of each of those rows (may differ from the dataset's: noisy or random labels).
        epochs: epochs to train (the most, when ``target_train_accuracy`` is set).
        target_train_accuracy: end the phase once an epoch's training accuracy reaches it (0: off).
        patience: with a target, also end after this many epochs without a better training accuracy.
        lr_multiplier: learning-rate factor for this phase.
        transform: applied to every input batch (a task's pixel permutation).
        sampler: ``sampler(epoch_in_phase, batch_size) -> positions into indices``; then each epoch has
            ``steps_per_epoch`` sampled batches instead of a permutation of the phase's examples.
        steps_per_epoch: batches per epoch of a sampled phase.
        evaluate: evaluate test accuracy during and at the end of this phase.
    """

    name: str
    indices: torch.Tensor
    labels: torch.Tensor
    epochs: int
    target_train_accuracy: float = 0.0
    patience: int = 0
    lr_multiplier: float = 1.0
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    sampler: Callable[[int, int], torch.Tensor] | None = None
    steps_per_epoch: int = 0
    evaluate: bool = True

    def __post_init__(self) -> None:
        if self.indices.dim() != 1 or self.labels.shape != self.indices.shape:
            raise ValueError(f"phase {self.name!r}: indices and labels must be 1-D of equal length")
        if self.indices.numel() == 0:
            raise ValueError(f"phase {self.name!r} has no examples")
        if self.epochs < 1:
            raise ValueError(f"phase {self.name!r}: epochs must be >= 1, got {self.epochs}")
        if self.sampler is not None and self.steps_per_epoch < 1:
            raise ValueError(f"phase {self.name!r}: a sampled phase needs steps_per_epoch >= 1")

    def batches_per_epoch(self, batch_size: int) -> int:
        if self.sampler is not None:
            return self.steps_per_epoch
        return math.ceil(self.indices.numel() / batch_size)


@dataclass
class TrainSettings:
    """Loop settings that are not part of the phases."""

    lr: float
    batch_size: int
    grad_clip: float = 0.0
    warmup_fraction: float = 0.0
    reset_optimizer_between_phases: bool = True
    eval_every: int = 1
    eval_batch_size: int = 1024
    diagnostics_every: int = 1
    checkpoint_every: int = 0
    log_every: int = 100
    progress: bool = True
    progress_desc: str = "train"
    curvature_probe_size: int = 0  # examples of the phase in the curvature probe batch (0: no curvature)
    curvature_seed: int = 0  # seed of the draw of those examples (the same for every arm of a seed)
    curvature_at: tuple[str, ...] = ("end",)  # at phase "start" (after the switch) and/or "end"
    curvature_last_phase_only: bool = False  # only in the last phase (a warm start's tuning phase)


@torch.no_grad()
def evaluate_accuracy(
    network: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1024,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Accuracy of ``network`` (in eval mode; its modes are restored) on ``inputs``; NaN when empty."""
    if labels.numel() == 0:
        return float("nan")
    modes = [(m, m.training) for m in network.modules()]
    network.eval()
    correct = torch.zeros((), dtype=torch.int64, device=labels.device)
    try:
        for start in range(0, labels.numel(), batch_size):
            x = inputs[start : start + batch_size]
            if transform is not None:
                x = transform(x)
            correct += (network(x).argmax(dim=1) == labels[start : start + batch_size]).sum()
    finally:
        for module, training in modes:
            module.training = training
    return int(correct) / labels.numel()


@dataclass
class _LoopState:
    phase: int = 0
    phase_started: bool = False
    epoch_in_phase: int = 0
    batch_in_epoch: int = 0
    step_in_phase: int = 0
    global_step: int = 0
    epochs_done: int = 0
    epoch_order: torch.Tensor | None = None
    best_train_accuracy: float = -1.0
    epochs_without_improvement: int = 0
    phase_stats: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    eval_diagnostics: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Train ``network`` through ``phases``; see the module docstring.

    Args:
        network: the network (its parameters are what ``optimizer`` holds).
        optimizer: the one optimizer of the run.
        inputs: every training input (rows addressed by the phases' indices), on the device.
        phases: the phases in order.
        settings: loop settings.
        interventions: what to call after updates, at epoch ends and phase switches.
        generator: the seeded CPU generator for data order and sampling.
        monitor: diagnostics on a fixed probe batch (None: off).
        evaluator: ``evaluator(network, phase_index) -> test accuracy`` (None: no evaluation).
        run: the run directory to log into and checkpoint (None: nothing written).
        stop: the dict of :func:`plasticrl.common.stop_on_signals`; a set ``"signal"`` makes the loop
            checkpoint and raise :class:`RunInterrupted`.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        inputs: torch.Tensor,
        phases: Sequence[Phase],
        settings: TrainSettings,
        interventions: InterventionSchedule,
        generator: torch.Generator,
        *,
        monitor: PlasticityMonitor | None = None,
        evaluator: Callable[[nn.Module, int], float] | None = None,
        run: Run | None = None,
        stop: Mapping[str, Any] | None = None,
    ):
        if not phases:
            raise ValueError("a run needs at least one phase")
        self.network = network
        self.optimizer = optimizer
        self.inputs = inputs
        self.phases = list(phases)
        self.settings = settings
        self.interventions = interventions
        self.generator = generator
        self.monitor = monitor
        self.evaluator = evaluator
        self.run = run
        self.stop = stop if stop is not None else {"signal": None}
        self.state = _LoopState()
        # The monitor's probe as given; a phase with a transform (a task's permutation) sees it transformed.
        self._probe = monitor.probe_inputs if monitor is not None else None
        device = inputs.device
        self._loss_sum = torch.zeros((), device=device)
        self._correct = torch.zeros((), dtype=torch.int64, device=device)
        self._seen = 0
        self._wall = 0.0

    # -- schedule helpers ------------------------------------------------------------------------

    @property
    def current_phase(self) -> Phase:
        return self.phases[min(self.state.phase, len(self.phases) - 1)]

    def random_batch(self, size: int) -> torch.Tensor:
        """A random batch of the current phase's inputs (for ReDo's scoring)."""
        phase = self.current_phase
        positions = torch.randint(phase.indices.numel(), (size,), generator=self.generator)
        x = self.inputs[phase.indices[positions.to(phase.indices.device)]]
        return phase.transform(x) if phase.transform is not None else x

    def planned_updates(self) -> int:
        """Updates if every phase runs all its epochs."""
        return sum(p.epochs * p.batches_per_epoch(self.settings.batch_size) for p in self.phases)

    def _lr(self, phase: Phase) -> float:
        lr = self.settings.lr * phase.lr_multiplier
        if self.settings.warmup_fraction > 0:
            planned = phase.epochs * phase.batches_per_epoch(self.settings.batch_size)
            warmup = max(1, round(self.settings.warmup_fraction * planned))
            # Lee et al. 2024: linear warm-up from 0 over the first 10% of each task's updates.
            lr *= min(1.0, (self.state.step_in_phase + 1) / warmup)
        return lr

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Run every remaining phase; returns the summary (also the basis of ``result.json``)."""
        settings = self.settings
        progress = None
        if settings.progress:
            progress = Progress(
                self.planned_updates(), settings.progress_desc, initial=self.state.global_step
            )
        start = time.time()
        steps_at_start = self.state.global_step
        try:
            while self.state.phase < len(self.phases):
                phase = self.phases[self.state.phase]
                if not self.state.phase_started:
                    self._begin_phase()
                self._sync_probe(phase)
                self._run_epoch(phase, progress)
                if self._end_epoch(phase):
                    self._end_phase(phase)
        finally:
            self._wall += time.time() - start
            if progress is not None:
                progress.close()
        updates = self.state.global_step - steps_at_start
        elapsed = time.time() - start
        if self.run is not None and elapsed > 0:
            self.run.log_scalars({"charts/SPS": updates / elapsed}, self.state.global_step)
        return self.summary()

    def _sync_probe(self, phase: Phase) -> None:
        if self.monitor is not None and self._probe is not None:
            self.monitor.probe_inputs = (
                phase.transform(self._probe) if phase.transform is not None else self._probe
            )

    def _begin_phase(self) -> None:
        st = self.state
        logs: dict[str, float] = {}
        if st.phase > 0:
            logs.update(self.interventions.at_phase_switch(st.phase))
            if self.settings.reset_optimizer_between_phases:
                self.optimizer.state.clear()
        st.phase_started = True
        st.epoch_in_phase = 0
        st.batch_in_epoch = 0
        st.step_in_phase = 0
        st.best_train_accuracy = -1.0
        st.epochs_without_improvement = 0
        st.phase_stats = {"loss_sum": 0.0, "correct": 0, "seen": 0, "first_epoch_accuracy": None}
        if self._curvature_on and "start" in self.settings.curvature_at:
            phase = self.phases[st.phase]
            self._sync_probe(phase)
            logs.update(self._diagnose(phase, "start", full=bool(self.settings.diagnostics_every)))
        if self.run is not None:
            logs["charts/phase"] = float(st.phase)
            self.run.log_scalars(logs, st.global_step)

    def _run_epoch(self, phase: Phase, progress: Progress | None) -> None:
        st = self.state
        settings = self.settings
        batch_size = settings.batch_size
        if st.batch_in_epoch == 0:
            if phase.sampler is None:
                st.epoch_order = torch.randperm(phase.indices.numel(), generator=self.generator).to(
                    phase.indices.device
                )
            self._loss_sum.zero_()
            self._correct.zero_()
            self._seen = 0
        for b in range(st.batch_in_epoch, phase.batches_per_epoch(batch_size)):
            if phase.sampler is None:
                positions = st.epoch_order[b * batch_size : (b + 1) * batch_size]
            else:
                positions = phase.sampler(st.epoch_in_phase, batch_size).to(phase.indices.device)
            x = self.inputs[phase.indices[positions]]
            if phase.transform is not None:
                x = phase.transform(x)
            self._update(x, phase.labels[positions], phase)
            st.batch_in_epoch = b + 1
            if progress is not None:
                progress.update(1)
            if self.stop.get("signal"):
                path = self.save_checkpoint()
                raise RunInterrupted(
                    f"stopped by {self.stop['signal']} at update {st.global_step}; checkpoint written to "
                    f"{path}; run the same command with --resume to continue"
                )

    def _update(self, x: torch.Tensor, y: torch.Tensor, phase: Phase) -> None:
        st = self.state
        self.network.train()
        lr = self._lr(phase)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits = self.network(x)
        cross_entropy = F.cross_entropy(logits, y)
        penalty = self.interventions.penalty()
        loss = cross_entropy + penalty
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.network.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        st.global_step += 1
        st.step_in_phase += 1
        with torch.no_grad():
            self._loss_sum += cross_entropy.detach() * y.numel()
            self._correct += (logits.detach().argmax(dim=1) == y).sum()
        self._seen += y.numel()
        logs = self.interventions.after_update(st.global_step)
        if self.run is None:
            return
        if st.global_step % self.settings.log_every == 0:
            losses = {"losses/cross_entropy": cross_entropy.detach()}
            if torch.is_tensor(penalty):
                losses["losses/l2_init"] = penalty.detach()
            check_finite(losses, st.global_step)
            logs.update({k: float(v) for k, v in losses.items()})
            logs["charts/lr"] = lr
        if logs:
            self.run.log_scalars(logs, st.global_step)

    def _end_epoch(self, phase: Phase) -> bool:
        """Epoch bookkeeping; returns whether the phase is over."""
        st = self.state
        settings = self.settings
        seen = max(self._seen, 1)
        train_accuracy = int(self._correct) / seen
        mean_loss = float(self._loss_sum) / seen
        check_finite({"cross_entropy": mean_loss}, st.global_step)
        st.epoch_in_phase += 1
        st.epochs_done += 1
        st.batch_in_epoch = 0
        stats = st.phase_stats
        stats["loss_sum"] += float(self._loss_sum)
        stats["correct"] += int(self._correct)
        stats["seen"] += self._seen
        if stats["first_epoch_accuracy"] is None:
            stats["first_epoch_accuracy"] = train_accuracy
        logs = {
            "charts/train_accuracy": train_accuracy,
            "losses/epoch_cross_entropy": mean_loss,
            "charts/epoch": float(st.epochs_done),
        }
        if st.epoch_in_phase == 1:
            logs["charts/online_accuracy"] = train_accuracy

        if train_accuracy > st.best_train_accuracy:
            st.best_train_accuracy = train_accuracy
            st.epochs_without_improvement = 0
        else:
            st.epochs_without_improvement += 1
        done = st.epoch_in_phase >= phase.epochs
        if phase.target_train_accuracy > 0:
            done |= train_accuracy >= phase.target_train_accuracy
            done |= phase.patience > 0 and st.epochs_without_improvement >= phase.patience

        logs.update(self.interventions.after_epoch(st.epochs_done))
        record: dict[str, Any] = {
            "phase": st.phase,
            "epoch": st.epochs_done,
            "step": st.global_step,
            "train_accuracy": train_accuracy,
            "loss": mean_loss,
        }
        if (
            self.evaluator is not None
            and phase.evaluate
            and (done or st.epoch_in_phase % settings.eval_every == 0)
        ):
            record["test_accuracy"] = self._evaluate(logs)
        diagnose = (
            self.monitor is not None
            and settings.diagnostics_every
            and (done or st.epochs_done % settings.diagnostics_every == 0)
        )
        with_curvature = done and self._curvature_on and "end" in settings.curvature_at
        if diagnose or with_curvature:
            logs.update(
                self._diagnose(phase, "end" if done else "epoch", full=bool(diagnose), curv=with_curvature)
            )
        st.epochs.append(record)
        if self.run is not None:
            self.run.log_scalars(logs, st.global_step)
        if settings.checkpoint_every and st.epochs_done % settings.checkpoint_every == 0 and not done:
            self.save_checkpoint()
        return done

    @property
    def _curvature_on(self) -> bool:
        """Whether curvature is measured in the current phase."""
        return (
            self.monitor is not None
            and self.monitor.loss_fn is not None
            and self.settings.curvature_probe_size > 0
            and (not self.settings.curvature_last_phase_only or self.state.phase == len(self.phases) - 1)
        )

    def curvature_batch(self, phase: Phase) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of ``curvature_probe_size`` examples of ``phase`` (its labels, its transform),
        drawn with a generator seeded by ``curvature_seed``: the same examples whenever two phases hold
        the same indices (the fresh arm and the warm arm's full phase)."""
        n = phase.indices.numel()
        generator = torch.Generator().manual_seed(self.settings.curvature_seed)
        positions = torch.randperm(n, generator=generator)[: self.settings.curvature_probe_size]
        positions = positions.to(phase.indices.device)
        x = self.inputs[phase.indices[positions]]
        if phase.transform is not None:
            x = phase.transform(x)
        return x, phase.labels[positions]

    def _diagnose(self, phase: Phase, when: str, *, full: bool, curv: bool = True) -> dict[str, float]:
        """Diagnostics (``full``) and / or curvature (``curv``) of the trained network — and at phase
        starts and ends of the evaluated network when it is another module — recorded in the summary."""
        st = self.state
        monitor = self.monitor
        curv = curv and self._curvature_on
        if curv:
            monitor.loss_inputs = self.curvature_batch(phase)
        measured = monitor.measure(curvature=curv) if full else monitor.curvature()
        # Whole-network values (plasticity/<metric>/<network>) go into the result too.
        where = {"phase": st.phase, "epoch": st.epochs_done, "step": st.global_step, "when": when}
        st.diagnostics.append({**where, **_network_level(measured)})
        evaluated = self.interventions.eval_network(self.network)
        if curv and evaluated is not self.network:
            other = measure(
                evaluated,
                monitor.probe_inputs,
                dormant_threshold=monitor.dormant_threshold,
                rank_delta=monitor.rank_delta,
                name="tortoise",
                chunk_size=monitor.chunk_size,
                exclude_output_activation=monitor.exclude_output_activation,
            )
            other.update(
                curvature(
                    evaluated,
                    monitor.loss_fn,
                    monitor.loss_inputs,
                    name="tortoise",
                    parts=_matching_parts(evaluated, self.network, monitor.curvature_parts),
                    parameters="all",  # the tortoise is never trained: its parameters are frozen
                    **monitor.curvature_config.kwargs(),
                )
            )
            st.eval_diagnostics.append({**where, "network": "tortoise", **_network_level(other)})
            measured = {**measured, **other}
        return measured

    def _evaluate(self, logs: dict[str, float]) -> float:
        st = self.state
        evaluated = self.interventions.eval_network(self.network)
        accuracy = self.evaluator(evaluated, st.phase)
        logs["eval/test_accuracy"] = accuracy
        record = {"phase": st.phase, "epoch": st.epochs_done, "step": st.global_step, "accuracy": accuracy}
        if evaluated is not self.network:
            record["hare_accuracy"] = logs["eval/test_accuracy_hare"] = self.evaluator(self.network, st.phase)
        st.evals.append(record)
        if self.run is not None:
            self.run.log_eval(st.global_step, [accuracy])
        return accuracy

    def _end_phase(self, phase: Phase) -> None:
        st = self.state
        stats = st.phase_stats
        last = st.epochs[-1]
        st.phases.append(
            {
                "name": phase.name,
                "epochs": st.epoch_in_phase,
                "updates": st.step_in_phase,
                "first_epoch_accuracy": stats["first_epoch_accuracy"],
                "mean_train_accuracy": stats["correct"] / max(stats["seen"], 1),
                "final_train_accuracy": last["train_accuracy"],
                "test_accuracy": last.get("test_accuracy"),
            }
        )
        st.phase += 1
        st.phase_started = False

    # -- results and checkpoints -----------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Updates, epochs, per-phase results, evaluations and wall time so far."""
        st = self.state
        accuracies = [e["accuracy"] for e in st.evals]
        return {
            "updates": st.global_step,
            "epochs": st.epochs_done,
            "phases": list(st.phases),
            "evals": list(st.evals),
            "diagnostics": list(st.diagnostics),
            "eval_diagnostics": list(st.eval_diagnostics),
            "final_test_accuracy": accuracies[-1] if accuracies else None,
            "best_test_accuracy": max(accuracies) if accuracies else None,
            "final_train_accuracy": st.epochs[-1]["train_accuracy"] if st.epochs else None,
            "wall_time_s": self._wall,
            "updates_per_s": st.global_step / self._wall if self._wall > 0 else None,
            "device": device_description(self.inputs.device),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: network, optimizer, interventions, monitor, loop state,
        accumulators of the unfinished epoch, the data generator and the global RNG states."""
        st = self.state
        return {
            "global_step": st.global_step,
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "interventions": self.interventions.state_dict(),
            "monitor": self.monitor.state_dict() if self.monitor is not None else None,
            "loop": {k: getattr(st, k) for k in st.__dataclass_fields__},
            "accumulators": {
                "loss_sum": self._loss_sum.clone(),
                "correct": self._correct.clone(),
                "seen": self._seen,
            },
            "wall_time_s": self._wall,
            "generator": self.generator.get_state(),
            "rng": rng_states(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` into a trainer built exactly as the checkpointed one was. The
        interventions' state is loaded first (plasticity injection re-creates modules and optimizer
        groups)."""
        self.interventions.load_state_dict(state["interventions"])
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.monitor is not None and state["monitor"] is not None:
            self.monitor.load_state_dict(state["monitor"])
        for key, value in state["loop"].items():
            setattr(self.state, key, value)
        if self.state.epoch_order is not None:
            self.state.epoch_order = self.state.epoch_order.to(self.inputs.device)
        acc = state["accumulators"]
        self._loss_sum.copy_(acc["loss_sum"])
        self._correct.copy_(acc["correct"])
        self._seen = int(acc["seen"])
        self._wall = float(state["wall_time_s"])
        self.generator.set_state(state["generator"])
        set_rng_states(state["rng"])

    def save_checkpoint(self) -> Any:
        """Write ``checkpoint.pt`` into the run directory (atomically); None without a run."""
        if self.run is None:
            return None
        return self.run.save_checkpoint(self.state_dict())
