"""The agents' command line: parsing (with ``--resume``), argument checks, run setup, one-line errors.

- :func:`cli` — tyro command line; with ``--resume RUN_DIR`` the saved config supplies the defaults.
- :func:`check_common_args` — clear errors for bad values of the common flags (DESIGN.md §2).
- :func:`setup_torch`, :func:`open_run`, :func:`announce` — threads, seeds and device; the run directory
  (new or resumed); the run directory and intervention schedules printed at start.
- :func:`run_agent` — an agent's ``__main__``: parse, train, exit status; bad input is one ``error:`` line
  and status 2 (``--debug`` keeps the traceback), a non-finite run one ``error:`` line and status 1.
- :func:`exit_code` — the process exit status of a finished or signalled run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from plasticrl.buffers import exact_ratio

from .agent_interventions import schedule_lines
from .errors import USER_ERROR_STATUS, USER_ERRORS, is_user_error
from .run import (
    CONFIG_FILE,
    RESULT_FILE,
    NonFiniteLossError,
    Run,
    check_resumable,
    check_writable_dir,
    config_dict,
    seed_everything,
    select_device,
)

__all__ = [
    "RESUME_IGNORED_FIELDS",
    "announce",
    "check_atari_args",
    "check_common_args",
    "cli",
    "dataclass_from_dict",
    "exit_code",
    "open_run",
    "run_agent",
    "setup_torch",
]

T = TypeVar("T")

# Fields that may differ between the saved config and the flags of a resumed run.
RESUME_IGNORED_FIELDS = ("resume", "total_steps", "device", "threads", "run_dir", "debug")
# Status of a run stopped because a loss, parameter or action became NaN / Inf.
NONFINITE_STATUS = 1


# ----------------------------------------------------------------------------- command line


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild a (nested) dataclass from ``dataclasses.asdict``-style JSON data (lists → tuples)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            continue
        value = data[field.name]
        hint = hints.get(field.name)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = dataclass_from_dict(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return cls(**values)


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _saved_args(path: Path) -> dict[str, Any]:
    """The ``args`` of a run's ``config.json``; a ValueError naming ``--resume`` if it has none."""
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--resume: cannot read {str(path)!r}: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("args"), dict):
        raise ValueError(f"--resume: {str(path)!r} is not a plasticrl run config (it has no 'args')")
    return config["args"]


def cli(args_type: type[T], argv: Sequence[str] | None = None) -> T:
    """Parse the command line into ``args_type`` with tyro.

    With ``--resume RUN_DIR`` the run's saved ``config.json`` gives the defaults, so
    ``python agents/sac.py --resume RUN_DIR`` continues a run without repeating its flags; flags that
    are given must agree with the saved ones (checked when the run is reopened).
    """
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    default = None
    resume = _flag_value(argv, "--resume")
    if resume and (Path(resume) / CONFIG_FILE).is_file():
        saved = _saved_args(Path(resume) / CONFIG_FILE)
        default = dataclasses.replace(dataclass_from_dict(args_type, saved), resume=resume)
    return tyro.cli(args_type, args=argv, default=default)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"--{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"--{name} must be >= {minimum}, got {value}")


def check_common_args(args: Any) -> None:
    """Raise a ValueError/TypeError naming the flag for bad values of the common flags."""
    _check_int("total-steps", args.total_steps, 1)
    try:
        exact_ratio(args.replay_ratio)
    except (ValueError, TypeError) as error:
        raise ValueError(f"--replay-ratio {args.replay_ratio!r}: {error}") from None
    _check_int("learning-starts", args.learning_starts, 0)
    if args.learning_starts >= args.total_steps:
        raise ValueError(
            f"--learning-starts {args.learning_starts} must be below --total-steps {args.total_steps}, "
            "or no gradient update would ever run"
        )
    _check_int("batch-size", args.batch_size, 1)
    if args.learning_starts < args.batch_size:
        raise ValueError(
            f"--learning-starts {args.learning_starts} must be at least --batch-size {args.batch_size}: "
            "the first update samples a batch from the transitions collected before it"
        )
    _check_int("eval-every", args.eval_every, 1)
    _check_int("eval-episodes", args.eval_episodes, 1)
    _check_int("log-every", args.log_every, 1)
    _check_int("diagnostics-every", args.diagnostics_every, 0)
    _check_int("curvature-every", getattr(args, "curvature_every", 0), 0)
    _check_int("checkpoint-every", args.checkpoint_every, 0)
    _check_int("buffer-size", args.buffer_size, 2)
    _check_int("probe-batch-size", args.probe_batch_size, 2)
    _check_int("threads", args.threads, 0)
    if not 0.0 <= float(args.gamma) <= 1.0:
        raise ValueError(f"--gamma must be in [0, 1], got {args.gamma}")
    if hasattr(args, "tau") and not 0.0 < float(args.tau) <= 1.0:
        raise ValueError(f"--tau must be in (0, 1], got {args.tau}")
    check_learning_rates(args)
    check_writable_dir(args.run_dir, "--run-dir")
    if args.resume:
        check_resumable(args.resume)


def check_atari_args(args: Any) -> None:
    """The Atari agents' flags: one of the 26 Atari-100k games (where human-normalised scores are defined),
    ``--num-envs``, the evaluation settings and the ε values; ValueError naming the flag otherwise."""
    from plasticrl.envs import ATARI_100K_GAMES, atari_human_normalized_score, resolve_atari_game

    try:
        resolve_atari_game(args.env_id)  # a typo gets "did you mean"
        atari_human_normalized_score(args.env_id, 0.0)  # outside the 26: no human score
    except ValueError as error:
        raise ValueError(
            f"--env-id {args.env_id!r}: {error}" if "Atari-100k games" in str(error) else
            f"--env-id {args.env_id!r}: {error} Atari-100k games: {', '.join(ATARI_100K_GAMES)}."
        ) from None
    _check_int("num-envs", args.num_envs, 1)
    _check_int("max-episode-frames", args.max_episode_frames, 1)
    _check_int("eval-batch", args.eval_batch, 1)
    _check_int("intermediate-eval-episodes", args.intermediate_eval_episodes, 1)
    for name in ("final_epsilon", "eval_epsilon"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    window = max(getattr(args, "n_step", 1), getattr(args, "max_n_step", 0), getattr(args, "spr_steps", 0))
    if args.buffer_size // args.num_envs < 4 + window + 1:
        raise ValueError(
            f"--buffer-size {args.buffer_size} holds {args.buffer_size // args.num_envs} transitions per env "
            f"with --num-envs {args.num_envs}; each needs more than frame stack + horizon = {4 + window}"
        )
    # A transition is sampled once the `window` steps after it are stored (or its game ended).
    if args.learning_starts < args.batch_size + args.num_envs * window:
        raise ValueError(
            f"--learning-starts {args.learning_starts} must be at least --batch-size {args.batch_size} + "
            f"--num-envs {args.num_envs} × {window} (the return / sequence horizon): the first update "
            "samples transitions whose whole horizon is stored"
        )


def check_learning_rates(args: Any) -> None:
    """Every field named ``lr`` or ``*_lr`` must be a finite number > 0 (torch's optimizers would
    otherwise fail deep inside, or train with a negative step)."""
    for field in dataclasses.fields(args):
        if field.name == "lr" or field.name.endswith("_lr"):
            value = getattr(args, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                flag = field.name.replace("_", "-")
                raise ValueError(f"--{flag} must be a finite number > 0, got {value!r}")


def setup_torch(args: Any) -> torch.device:
    """Threads, seeds and the device, in that order (call before building anything random)."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    return select_device(args.device)


def open_run(agent: str, args: Any, tag: str) -> tuple[Run, dict | None]:
    """Create the run directory, or reopen ``args.resume`` and return its checkpoint.

    A resume of a finished run (its checkpoint reached ``--total-steps`` and ``result.json`` exists) is
    refused before any file of the run directory is touched; one killed after its last checkpoint but before
    ``result.json`` only writes the result.
    """
    if args.resume:
        finished = (Path(args.resume) / RESULT_FILE).is_file()

        def check(checkpoint: Mapping[str, Any]) -> None:
            # A run killed between its last checkpoint and result.json resumes to write the result.
            reached = int(checkpoint["global_step"])
            if reached >= args.total_steps and not checkpoint.get("step_pending", False) and finished:
                raise ValueError(
                    f"--resume: the run already reached step {reached} >= --total-steps {args.total_steps}; "
                    "pass a larger --total-steps to continue it"
                )

        defaults = config_dict(type(args)()) if dataclasses.is_dataclass(args) else None
        return Run.resume(args.resume, args, ignore=RESUME_IGNORED_FIELDS, check=check, defaults=defaults)
    return Run.create(args.run_dir, agent, args.env_id, tag, args.seed, args), None


def announce(agent: str, args: Any, run: Run, env_steps_per_step: int = 1) -> None:
    """Print the run directory and the intervention schedules in both units (stderr)."""
    print(f"[{agent}] {args.env_id}: run directory {run.path}", file=sys.stderr)
    for line in schedule_lines(args, env_steps_per_step):
        print(f"[{agent}] {line}", file=sys.stderr)


def run_agent(
    main: Callable[[T], Mapping[str, Any]], args_type: type[T], argv: Sequence[str] | None = None
) -> int:
    """An agent's ``__main__``: ``main(cli(args_type))`` and the process exit status.

    Bad input (:func:`plasticrl.common.errors.is_user_error`: a ValueError, TypeError, OSError or
    ImportError raised by plasticrl's own checks) prints ``error: <message>`` and returns 2, as tyro does
    for unparsable flags; a run stopped by a non-finite loss, parameter or action prints ``error:
    <message>`` (naming the first non-finite quantity, the update and the checkpoint written) and returns
    1; a run stopped by a signal returns 128 + its number (:func:`exit_code`). Anything else is a bug and
    keeps its traceback, as does every error with ``--debug``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        summary = main(cli(args_type, argv))
    except NonFiniteLossError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return NONFINITE_STATUS
    except USER_ERRORS as error:
        if debug or not is_user_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_STATUS
    return exit_code(summary)


def exit_code(summary: Mapping[str, Any]) -> int:
    """Process exit status for a summary: 0 when finished, 128 + signal number when stopped by one."""
    stopped = summary.get("interrupted")
    return 0 if stopped is None else 128 + int(getattr(signal.Signals, stopped))

