"""The bookkeeping around an off-policy agent's loop (:class:`OffPolicyLoop`): replay ratio, episode
statistics, logging, evaluation, diagnostics, interventions, checkpoints, signals, non-finite losses and
the result.

Checkpoints hold everything needed to continue exactly: networks, optimizers, temperature (in the
agent's state), interventions, replay buffer (with its RNG), replay-ratio counters, every global RNG
state, the warm-up action RNG, the training env's episode start and actions, the evaluation env's RNG,
counters, the probe batch and the initial parameters used by the diagnostics. A signal that arrives
during an evaluation aborts it (within one env step) and the checkpoint says so: the resumed run
redoes that evaluation and the rest of that step's work first, so the results stay exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plasticrl.buffers import ReplayBatch, ReplayBuffer, ReplayRatioSchedule
from plasticrl.interventions import InterventionSet

from .evaluation import AtariEvaluator, EpisodeEvaluator
from .exploration import epsilon_greedy
from .files import atomic_torch_save
from .run import (
    CHECKPOINT_FILE,
    NonFiniteLossError,
    Progress,
    Run,
    device_description,
    rng_states,
    set_rng_states,
    stop_on_signals,
)
from .training_env import AtariEnvs, SingleEnv

__all__ = ["NONFINITE_CHECKPOINT_FILE", "OffPolicyLoop"]

NONFINITE_CHECKPOINT_FILE = "checkpoint.nonfinite.pt"


def _crossed(previous: int, step: int, every: int) -> bool:
    """Whether (previous, step] holds a multiple of ``every`` (with one env: ``step % every == 0``)."""
    return step // every > previous // every


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


def summary_line(agent: str, result: Mapping[str, Any]) -> str:
    """The one line a finished run prints: final and best evaluation (normalised score where defined),
    gradient updates, wall time and the run directory."""

    def score(key: str) -> str:
        value = result.get(f"{key}_eval_return")
        if value is None:
            return "none"
        normalized = result.get(f"{key}_normalized_score")
        return f"{value:.1f}" + ("" if normalized is None else f" (normalised {normalized:.3f})")

    best = score("best")
    if result.get("best_eval_step") is not None:
        best += f" at step {result['best_eval_step']}"
    return (
        f"[{agent}] {result['env_id']} finished: final eval return {score('final')}, best {best}; "
        f"{result['updates']} updates, {_duration(result['wall_time_s'])}; run directory {result['run_dir']}"
    )


def _batch_to_dict(batch: ReplayBatch | None) -> dict | None:
    """A batch as a dict of tensors (None stays None), so checkpoints load with weights_only."""
    if batch is None:
        return None
    values = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return {name: None if value is None else torch.as_tensor(value) for name, value in values.items()}


class OffPolicyLoop:
    """Bookkeeping around an off-policy agent's loop (the agent's ``main`` stays the loop itself)::

        with OffPolicyLoop(...) as loop:
            while loop.running:
                action = loop.random_action() if loop.warming_up else act(loop.obs)
                for _ in range(loop.env_step(action)):   # gradient updates due (replay ratio)
                    loop.after_update(update(...))        # metrics dict of the update
                loop.after_step()                         # log, evaluate, step-unit interventions,
        return loop.summary()                             # checkpoint, signals

    Discrete-action agents act with ``loop.epsilon_greedy(greedy, epsilon)`` instead (ε from
    :func:`~plasticrl.common.exploration.linearly_decaying_epsilon` of ``loop.global_step``).

    Vector envs (:class:`~plasticrl.common.training_env.AtariEnvs`): one ``env_step`` steps every env and
    stores every env's transition; ``global_step`` counts real agent steps (all envs together, reset steps
    excluded), so the replay ratio, ``--total-steps`` and every step-unit schedule count agent steps
    whatever ``--num-envs`` is. The last vector step stores only the steps up to ``--total-steps``.
    ``after_step`` then handles every agent step the vector step took: a step-unit intervention due at
    any of them acts (in order), and logging, evaluation and checkpoints happen once when the vector step
    reaches or crosses their interval (at that step; with one env, exactly at multiples).

    Non-finite losses: every update's ``losses/*`` metrics are checked on the device (no host sync: a
    flag and the first failing update's index and values are kept with ``torch.where``); log steps and
    checkpoints read that record and stop the run naming the first failing update, its agent step and
    the loss.

    Args:
        agent: agent name (progress bar, result).
        args: the agent's Args (common flags, DESIGN.md §2).
        run: the open run directory.
        env: the training env(s): :class:`~plasticrl.common.training_env.SingleEnv` or ``AtariEnvs``.
        evaluator: ``evaluator(step, episodes, should_stop) -> returns | None`` with ``state_dict`` /
            ``load_state_dict`` (:mod:`plasticrl.common.evaluation`), on envs separate from training's.
        buffer: the replay buffer (its ``state_dict`` goes into checkpoints).
        interventions: applied after every update with the update count and, for step-unit schedules
            (:class:`AgentInterventions`), after every agent step with the step count.
        networks: the agent's container module (checked for non-finite values before checkpoints).
        agent_state / load_agent_state: networks, targets and optimizers of the agent, to and from a dict.
        diagnostics: probe batch (on the device) → ``{tag: value}``; None disables them.
        curvature: probe batch → curvature tags (:func:`plasticrl.interventions.curvature` of the agent's
            TD loss), every ``args.curvature_every`` updates when that is > 0.
        device: where probe batches go.
        checkpoint: the checkpoint of a resumed run (None for a new run).
        env_steps_per_step: env steps per agent step (action repeat), for the result.
        normalize_score: mean return → normalised score (Atari: human-normalised), logged as
            ``eval/normalized_score`` and kept in eval.csv and result.json; None where undefined.
        intermediate_eval_episodes: episodes of the evaluations before the last (None: as the last,
            ``--eval-episodes``).
    """

    def __init__(
        self,
        *,
        agent: str,
        args: Any,
        run: Run,
        env: SingleEnv | AtariEnvs,
        evaluator: EpisodeEvaluator | AtariEvaluator,
        buffer: ReplayBuffer,
        interventions: InterventionSet,
        networks: nn.Module,
        agent_state: Callable[[], dict],
        load_agent_state: Callable[[dict], None],
        diagnostics: Callable[[ReplayBatch], dict[str, float]] | None,
        device: torch.device,
        curvature: Callable[[ReplayBatch], dict[str, float]] | None = None,
        checkpoint: dict | None = None,
        env_steps_per_step: int = 1,
        normalize_score: Callable[[float], float] | None = None,
        intermediate_eval_episodes: int | None = None,
    ):
        self.agent = agent
        self.args = args
        self.run = run
        self.env = env
        self.evaluator = evaluator
        self.normalize_score = normalize_score
        self.intermediate_eval_episodes = intermediate_eval_episodes
        self.buffer = buffer
        self.interventions = interventions
        self.networks = networks
        self.agent_state = agent_state
        self.diagnostics = diagnostics if args.diagnostics_every > 0 else None
        self.curvature_every = int(getattr(args, "curvature_every", 0))
        self.curvature = curvature if self.curvature_every > 0 else None
        self.device = device
        self.env_steps_per_step = env_steps_per_step
        self.total_steps = int(args.total_steps)
        self.schedule = ReplayRatioSchedule(args.replay_ratio, args.learning_starts, env.num_envs)
        # Warm-up and ε-greedy random actions (checkpointed), apart from the global RNGs.
        self.action_rng = np.random.default_rng(args.seed)
        self.global_step = 0
        self.handled_step = 0  # agent steps whose end-of-step work (after_step) is done
        self.updates = 0
        self.last_return: float | None = None
        self.last_metrics: dict[str, torch.Tensor] = {}
        self.intervention_counts: dict[str, int] = {}
        self.probe: ReplayBatch | None = None
        self.stopped_by: str | None = None
        self.result: dict[str, Any] | None = None
        # Device-side record of the first update with a non-finite loss (0: none yet).
        self._all_finite: torch.Tensor | None = None
        self._first_bad_update: torch.Tensor | None = None
        self._bad_values: dict[tuple[str, ...], torch.Tensor] = {}
        # True when a signal interrupted the evaluation at ``global_step``: the rest of the end-of-step work
        # for steps (handled_step, global_step] (evaluation, step-unit interventions, checkpoint, end of
        # run) is still to do.
        self._step_pending = False
        self._finish_pending = False
        self._saved_step: int | None = None  # agent step of the last checkpoint written or loaded
        self._signals: dict[str, Any] = {"signal": None}
        self._stack = contextlib.ExitStack()
        if checkpoint is None:
            self.env.reset()
        else:
            self._restore(checkpoint, load_agent_state)

    # -- context ---------------------------------------------------------------------------------

    def __enter__(self) -> OffPolicyLoop:
        self._signals = self._stack.enter_context(stop_on_signals())
        self.progress = Progress(
            self.total_steps, f"{self.agent} {self.args.env_id}", initial=self.global_step
        )
        self._stack.callback(self.progress.close)
        self._stack.callback(self.run.close)
        self._start_time = time.time()
        self._start_step = self.global_step
        if self._step_pending:  # resumed from a checkpoint written during an evaluation
            self._step_pending = False
            self._end_of_step(self.handled_step, self.global_step)
        elif self._finish_pending:
            self._finish()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stack.close()  # the progress bar's last line first, then the result's
        if self.result is not None:
            print(summary_line(self.agent, self.result), flush=True)

    @property
    def running(self) -> bool:
        """More agent steps to take and no stop signal received."""
        return self.global_step < self.total_steps and self.stopped_by is None

    @property
    def warming_up(self) -> bool:
        """Before ``learning_starts``: act uniformly at random (all references do)."""
        return self.global_step < self.args.learning_starts

    @property
    def obs(self) -> np.ndarray:
        """The current observation of the training env."""
        return self.env.obs

    def random_action(self) -> np.ndarray:
        """A uniform random action (one per env for vector envs) from the loop's checkpointed generator."""
        return self.env.random_action(self.action_rng)

    def epsilon_greedy(self, greedy: Callable[[], np.ndarray], epsilon: float) -> np.ndarray:
        """One action per env: uniform with probability ``epsilon``, else from ``greedy()`` (evaluated only
        when some env acts greedily), drawn from the loop's checkpointed generator."""
        return epsilon_greedy(greedy, epsilon, self.env.num_actions, self.action_rng, self.env.num_envs)

    # -- per step --------------------------------------------------------------------------------

    def env_step(self, action: np.ndarray) -> int:
        """Step the env(s), store the transitions, log ended episodes; returns the updates now due."""
        self._check_action(action)
        step = self.env.step(action)
        step.keep_first(self.total_steps - self.global_step)
        skip = {} if step.skip is None else {"skip": step.skip}
        self.buffer.add(
            step.obs, step.action, step.reward, step.next_obs, step.terminated, step.truncated, **skip
        )
        self.global_step += step.agent_steps
        self.progress.update(step.agent_steps, updates=self.updates)
        for episode_return, length in step.episodes:
            self.last_return = episode_return
            self.run.log_scalars(
                {"charts/episodic_return": episode_return, "charts/episodic_length": length}, self.global_step
            )
        if step.episodes:
            self.progress.update(0, ret=self.last_return)
        return self.schedule.step(step.agent_steps)

    def after_update(self, metrics: Mapping[str, torch.Tensor]) -> None:
        """Count the update, keep its metrics, apply interventions, run diagnostics when due."""
        self.updates += 1
        self.last_metrics.update(metrics)
        self._record_nonfinite(metrics)
        if (self.diagnostics is not None or self.curvature is not None) and self.probe is None:
            size = min(self.args.probe_batch_size, self.buffer.num_valid())
            self.probe = self.buffer.sample(size)
        self._log_events(self.interventions.maybe_apply(self.updates))
        if self.diagnostics is not None and self.updates % self.args.diagnostics_every == 0:
            self.run.log_scalars(self.diagnostics(self.probe.to(self.device)), self.global_step)
        if self.curvature is not None and self.updates % self.curvature_every == 0:
            self.run.log_scalars(self.curvature(self.probe.to(self.device)), self.global_step)

    def after_step(self) -> None:
        """Log training scalars, evaluate, apply step-unit interventions, checkpoint and react to signals,
        as due at the agent steps since the last call (rl_with_resets train_dense.py order: updates,
        evaluation, reset)."""
        previous, step = self.handled_step, self.global_step
        if _crossed(previous, step, self.args.log_every):
            self._log_training(step)
        self._end_of_step(previous, step)

    def _stop_requested(self) -> bool:
        return self._signals.get("signal") is not None

    def _eval_episodes(self, step: int) -> int:
        if step >= self.total_steps or self.intermediate_eval_episodes is None:
            return self.args.eval_episodes
        return self.intermediate_eval_episodes

    def _end_of_step(self, previous: int, step: int) -> None:
        """The end-of-step work for agent steps (previous, step]."""
        if _crossed(previous, step, self.args.eval_every) or step >= self.total_steps:
            returns = self.evaluator(step, self._eval_episodes(step), self._stop_requested)
            if returns is None:  # a signal arrived: checkpoint now, redo this evaluation on resume
                self._step_pending = True
                self._stop(step, "during the evaluation; the resumed run evaluates this step again")
                return
            mean = float(np.mean(returns))
            normalized = None if self.normalize_score is None else float(self.normalize_score(mean))
            self.run.log_eval(step, returns, normalized)
        at_step = getattr(self.interventions, "at_step", None)
        if at_step is not None:
            for agent_step in range(previous + 1, step + 1):
                self._log_events(at_step(agent_step))
        self.handled_step = step
        if self._stop_requested():
            self._stop(step)
        elif self.args.checkpoint_every and _crossed(previous, step, self.args.checkpoint_every):
            self.save_checkpoint()
        if step >= self.total_steps:
            self._finish()

    def _stop(self, step: int, note: str = "") -> None:
        self.stopped_by = self._signals["signal"]
        path = self.save_checkpoint()
        note = f" {note}" if note else ""
        print(
            f"[{self.agent}] {self.stopped_by} at step {step}{note}: checkpoint written to {path}",
            file=sys.stderr,
        )

    def _log_events(self, events: Mapping[str, float]) -> None:
        if not events:
            return
        self.run.log_scalars(events, self.global_step)
        for tag in events:
            name = tag.split("/")[1]
            if tag == f"interventions/{name}":
                self.intervention_counts[name] = self.intervention_counts.get(name, 0) + 1

    # -- logging and failure ---------------------------------------------------------------------

    def _log_training(self, step: int) -> None:
        elapsed = max(time.time() - self._start_time, 1e-9)
        scalars = {
            "charts/SPS": (step - self._start_step) / elapsed,
            "charts/updates": float(self.updates),
        }
        if self.last_metrics:
            self._check_finite(step)
            names = list(self.last_metrics)
            values = torch.stack([self.last_metrics[n].detach().float().cpu().reshape(()) for n in names])
            scalars.update(zip(names, values.tolist()))
        self.run.log_scalars(scalars, step)

    def _record_nonfinite(self, metrics: Mapping[str, torch.Tensor]) -> None:
        """Keep, on the device, the index and loss values of the first update with a non-finite loss."""
        names = tuple(k for k in metrics if k.startswith("losses/"))
        if not names:
            return
        values = torch.stack([metrics[k] for k in names])  # 0-dim detached float tensors (the agents')
        if self._all_finite is None:
            self._all_finite = torch.ones((), dtype=torch.bool, device=values.device)
            self._first_bad_update = torch.zeros((), dtype=torch.int64, device=values.device)
        finite = torch.isfinite(values).all()
        first = self._all_finite > finite  # finite so far, not now
        self._all_finite.logical_and_(finite)
        self._first_bad_update.masked_fill_(first, self.updates)
        held = self._bad_values.get(names)
        self._bad_values[names] = torch.where(first, values, values if held is None else held)

    def step_of_update(self, update: int) -> int:
        """The agent step during which gradient update ``update`` ran: learning_starts + ⌈update / ratio⌉."""
        return self.schedule.learning_starts + math.ceil(Fraction(update) / self.schedule.ratio)

    def _check_finite(self, step: int) -> None:
        if self._first_bad_update is None:
            return
        first = int(self._first_bad_update)  # the one host sync, at log steps and checkpoints
        if first == 0:
            return
        bad = {}
        for names, values in self._bad_values.items():
            values = values.cpu()
            for name, value in zip(names, values.tolist()):
                if not math.isfinite(value):
                    bad[name] = value
        losses = ", ".join(f"{name} = {value}" for name, value in bad.items())
        raise self._nonfinite(
            f"non-finite loss {losses} first at update {first} (agent step {self.step_of_update(first)}); "
            f"detected at step {step}"
        )

    def _check_action(self, action: np.ndarray) -> None:
        """Stop the run before a NaN / Inf action reaches the env (MuJoCo would fail with a PhysicsError
        that hides the cause), naming the first non-finite quantity: a loss, else a parameter, else the
        action itself."""
        if action.dtype.kind != "f" or np.isfinite(action).all():
            return
        self._check_finite(self.global_step)
        bad = self._nonfinite_parameters()
        what = f"parameters {', '.join(bad[:5])}" if bad else f"action {action.tolist()}"
        raise self._nonfinite(
            f"non-finite {what} before agent step {self.global_step + 1}; the action was not sent to the env"
        )

    def _nonfinite_parameters(self) -> list[str]:
        return [n for n, p in self.networks.named_parameters() if not bool(torch.isfinite(p).all())]

    def _nonfinite(self, message: str) -> NonFiniteLossError:
        path = self.run.path / NONFINITE_CHECKPOINT_FILE
        atomic_torch_save(self.state_dict(), path)
        good = self.run.path / CHECKPOINT_FILE
        last_good = f"; the last good checkpoint is {good}" if good.is_file() else ""
        self.run.writer.flush()
        return NonFiniteLossError(
            f"{message} (update {self.updates}); stopped the run; the state at detection is saved in "
            f"{path}{last_good}"
        )

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (see the module docstring)."""
        return {
            "format": 1,
            "global_step": self.global_step,
            "updates": self.updates,
            "last_return": self.last_return,
            "intervention_counts": dict(self.intervention_counts),
            "agent": self.agent_state(),
            "interventions": self.interventions.state_dict(),
            "buffer": self.buffer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": rng_states(),
            "action_rng": self.action_rng.bit_generator.state,
            "env": self.env.state_dict(),
            "eval_env": self.evaluator.state_dict(),
            "probe": _batch_to_dict(self.probe),
            "step_pending": self._step_pending,
            "handled_step": self.handled_step,
        }

    def save_checkpoint(self) -> Path:
        """Atomically write ``checkpoint.pt`` (after checking losses and parameters are finite)."""
        self._check_finite(self.global_step)
        bad = self._nonfinite_parameters()
        if bad:
            raise self._nonfinite(f"non-finite parameters {', '.join(bad[:5])} at step {self.global_step}")
        path = self.run.save_checkpoint(self.state_dict())
        self._saved_step = self.global_step
        return path

    def _restore(self, checkpoint: dict, load_agent_state: Callable[[dict], None]) -> None:
        reached = int(checkpoint["global_step"])
        self._step_pending = bool(checkpoint.get("step_pending", False))
        # Killed after its last checkpoint but before result.json (open_run refuses a finished run): only
        # the result is left to write.
        self._finish_pending = reached >= self.total_steps and not self._step_pending
        self._saved_step = reached
        # Interventions first: plasticity injection re-creates modules whose values the agent's state fills.
        self.interventions.load_state_dict(checkpoint["interventions"])
        load_agent_state(checkpoint["agent"])
        self.buffer.load_state_dict(checkpoint["buffer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        # (checkpoints written before the Atari agents call it warmup_rng)
        self.action_rng.bit_generator.state = checkpoint.get("action_rng", checkpoint.get("warmup_rng"))
        self.evaluator.load_state_dict(checkpoint["eval_env"])
        self.env.load_state_dict(checkpoint["env"])
        self.global_step = int(checkpoint["global_step"])
        self.handled_step = int(checkpoint.get("handled_step", self.global_step))
        self.updates = int(checkpoint["updates"])
        self.last_return = checkpoint["last_return"]
        self.intervention_counts = dict(checkpoint["intervention_counts"])
        probe = checkpoint["probe"]
        self.probe = None if probe is None else ReplayBatch(**probe)
        set_rng_states(checkpoint["rng"])

    # -- the end ---------------------------------------------------------------------------------

    def _finish(self) -> None:
        if self.args.checkpoint_every and self._saved_step != self.global_step:
            self.save_checkpoint()
        rows = self.run.eval_rows
        means = [float(r["mean_return"]) for r in rows]
        best = int(np.argmax(means)) if means else None
        normalized = [float(r["normalized_score"]) if r["normalized_score"] != "" else None for r in rows]
        elapsed = time.time() - self._start_time
        self.result = {
            "agent": self.agent,
            "env_id": self.args.env_id,
            "seed": self.args.seed,
            "final_eval_return": means[-1] if means else None,
            "best_eval_return": means[best] if means else None,
            "best_eval_step": int(rows[best]["step"]) if means else None,
            "final_normalized_score": normalized[-1] if normalized else None,
            "best_normalized_score": normalized[best] if normalized else None,
            "final_eval_step": int(rows[-1]["step"]) if rows else None,
            "steps": self.global_step,
            "env_steps": self.global_step * self.env_steps_per_step,
            "updates": self.updates,
            "episodes": self.env.episodes,
            "interventions": dict(self.intervention_counts),
            "wall_time_s": elapsed,
            "sps": (self.global_step - self._start_step) / max(elapsed, 1e-9),
            "device": device_description(self.device),
            "run_dir": str(self.run.path),
        }
        self.run.write_result(self.result)

    def summary(self) -> dict[str, Any]:
        """The final result, or (stopped by a signal) the state reached with ``interrupted`` set."""
        if self.result is not None:
            return dict(self.result)
        return {
            "agent": self.agent,
            "env_id": self.args.env_id,
            "seed": self.args.seed,
            "steps": self.global_step,
            "updates": self.updates,
            "interrupted": self.stopped_by,
            "run_dir": str(self.run.path),
        }

