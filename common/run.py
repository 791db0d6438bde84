"""Run directories, logging and checkpoints shared by every agent and the supervised harness.

Layout (DESIGN.md §5): ``<run_dir>/<agent>__<env>__<tag>__seed<seed>__<timestamp>/`` holding
``config.json``, TensorBoard events, ``eval.csv``, ``checkpoint.pt`` and, last, ``result.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pickle
import platform
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import atomic_torch_save, atomic_write_json, atomic_write_text

CONFIG_FILE = "config.json"
EVAL_FILE = "eval.csv"
RESULT_FILE = "result.json"
CHECKPOINT_FILE = "checkpoint.pt"

_VERSIONED_PACKAGES = ("plasticrl", "torch", "numpy", "gymnasium", "ale-py", "dm-control", "mujoco", "tyro")


# ----------------------------------------------------------------------------- environment facts


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on (absent ones are omitted)."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the repository holding this package (with ``+dirty`` if modified), or None."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def select_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu`` / ``cuda`` / ``cuda:N`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {device!r} asked for CUDA but torch.cuda.is_available() is False")
        return torch.device(device)
    raise ValueError(f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def check_writable_dir(path: str | os.PathLike, flag: str = "--run-dir") -> None:
    """Raise a ValueError naming ``flag`` unless ``path`` is, or can be created as, a writable directory.

    Checked before anything is written, so a run directory that cannot be made fails in one line, not
    with a ``NotADirectoryError`` from deep inside ``mkdir``.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is" if existing == path else f"lies under {str(existing)!r}, which is"
        raise ValueError(f"{flag} {str(path)!r} {what} a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {str(path)!r}: {str(existing)!r} is not writable")


def check_resumable(path: str | os.PathLike) -> None:
    """Raise FileNotFoundError naming ``--resume`` unless ``path`` is a run directory with a checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {str(path)!r}: no such run directory")
    hints = {
        CONFIG_FILE: "not a run directory",
        CHECKPOINT_FILE: "run with --checkpoint-every > 0 to write one",
    }
    for name, hint in hints.items():
        if not (path / name).is_file():
            raise FileNotFoundError(f"--resume {str(path)!r}: the directory holds no {name} ({hint})")


def device_description(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what a run's wall time was spent on."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


# ----------------------------------------------------------------------------- seeding and RNG state


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def rng_states() -> dict[str, Any]:
    """Every global RNG state a run draws from, for checkpoints, as tensors and plain Python values (so
    that the checkpoint loads with ``torch.load(weights_only=True)``)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_states` (also the legacy tuple form of NumPy's state in older checkpoints)."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, Mapping):
        inner = dict(numpy_state["state"], key=np.asarray(numpy_state["state"]["key"], dtype=np.uint32))
        numpy_state = dict(numpy_state, state=inner)
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only.

    A checkpoint holding any other pickled object is refused with a ValueError: unpickling it could run
    arbitrary code, and a run directory someone shares must not be able to do that on ``--resume``.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "")
        reason = f" ({reason})" if reason else ""
        raise ValueError(
            f"{str(path)!r} holds objects other than tensors and plain containers{reason}; refusing to "
            "load it, since unpickling them could run code (plasticrl checkpoints never hold any)"
        ) from None


# ----------------------------------------------------------------------------- run naming


def run_name(agent: str, env_id: str, tag: str, seed: int, timestamp: str | None = None) -> str:
    """``<agent>__<env>__<tag>__seed<seed>__<timestamp>`` with path-unsafe characters replaced."""
    timestamp = time.strftime("%Y%m%d-%H%M%S") if timestamp is None else timestamp
    safe = lambda s: re.sub(r"[^A-Za-z0-9._+=-]+", "-", s).strip("-") or "none"
    return f"{safe(agent)}__{safe(env_id)}__{safe(tag or 'base')}__seed{seed}__{timestamp}"


def config_dict(args: Any) -> dict[str, Any]:
    """A dataclass (nested dataclasses included) as a JSON-ready dict."""
    if dataclasses.is_dataclass(args):
        return json.loads(json.dumps(dataclasses.asdict(args), default=str))
    if isinstance(args, Mapping):
        return json.loads(json.dumps(dict(args), default=str))
    raise TypeError(f"expected a dataclass or mapping of arguments, got {type(args).__name__}")


# ----------------------------------------------------------------------------- the run directory


class Run:
    """One run directory: config, TensorBoard scalars, eval.csv, checkpoint and result.

    ``Run.create`` starts a new directory; ``Run.resume`` reopens one that holds a checkpoint.
    Scalars go to TensorBoard with the global agent step on the x-axis; on resume, events after
    the checkpointed step are purged so curves do not double back.
    """

    def __init__(self, path: Path, config: dict[str, Any], *, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # deferred: tensorboard import is slow

        self.path = path
        self.config = config
        self.writer = SummaryWriter(log_dir=str(path), purge_step=purge_step)
        self._eval_rows: list[dict[str, Any]] = self._read_eval_rows()
        self._start_time = time.time()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def create(
        cls, run_dir: str | os.PathLike, agent: str, env_id: str, tag: str, seed: int, args: Any
    ) -> Run:
        root = Path(run_dir)
        name = run_name(agent, env_id, tag, seed)
        path = root / name
        suffix = 1
        while path.exists():  # two runs started in the same second
            path = root / f"{name}-{suffix}"
            suffix += 1
        path.mkdir(parents=True)
        config = {
            "agent": agent,
            "env_id": env_id,
            "tag": tag,
            "seed": seed,
            "args": config_dict(args),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(path / CONFIG_FILE, config)
        run = cls(path, config)
        run.writer.add_text("hyperparameters", hyperparameter_table(config["args"]), 0)
        return run

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike,
        args: Any,
        *,
        ignore: tuple[str, ...] = (),
        check: Callable[[Mapping[str, Any]], None] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> tuple[Run, dict]:
        """Reopen ``path`` and load its checkpoint; the flags given must match the saved config.

        Fields in ``ignore`` (e.g. ``total_steps``, ``resume``) may differ; with ``defaults`` (the
        config of default arguments), fields missing from an older saved config count as their default.
        ``check(checkpoint)`` may refuse the resume by raising. Every refusal happens before any file in
        the directory is touched. Then a stale ``result.json`` (its presence means the run finished) is
        deleted, eval.csv loses the rows after the checkpoint and TensorBoard events after it are purged.
        Returns ``(run, checkpoint)``.
        """
        path = Path(path)
        check_resumable(path)
        ckpt_path = path / CHECKPOINT_FILE
        config = json.loads((path / CONFIG_FILE).read_text())
        saved, given = config["args"], config_dict(args)
        if defaults is not None:
            saved, given = _with_defaults(saved, defaults), _with_defaults(given, defaults)
        conflicts = _config_conflicts(saved, given, ignore)
        if conflicts:
            raise ValueError(
                f"--resume {str(path)!r}: flags conflict with the saved config.json: "
                + "; ".join(f"{k}: saved {a!r}, given {b!r}" for k, a, b in conflicts)
            )
        checkpoint = load_checkpoint(ckpt_path)
        if check is not None:
            check(checkpoint)
        step = int(checkpoint["global_step"])
        (path / RESULT_FILE).unlink(missing_ok=True)  # the resumed run has not finished (yet)
        run = cls(path, config, purge_step=step + 1)
        run._eval_rows = [row for row in run._eval_rows if int(row["step"]) <= step]
        run._write_eval_csv()
        return run, checkpoint

    # -- logging -------------------------------------------------------------------------------

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)

    def log_eval(self, step: int, returns: list[float], normalized_score: float | None = None) -> dict:
        """Record one evaluation: ``eval/episodic_return`` (+ normalised score) and a row of eval.csv."""
        mean_return = float(np.mean(returns))
        scalars = {"eval/episodic_return": mean_return}
        if normalized_score is not None:
            scalars["eval/normalized_score"] = normalized_score
        self.log_scalars(scalars, step)
        row = {
            "step": step,
            "mean_return": mean_return,
            "normalized_score": "" if normalized_score is None else normalized_score,
            "returns": " ".join(f"{r:g}" for r in returns),
        }
        self._eval_rows.append(row)
        self._write_eval_csv()
        return row

    @property
    def eval_rows(self) -> list[dict[str, Any]]:
        return list(self._eval_rows)

    def _read_eval_rows(self) -> list[dict[str, Any]]:
        path = self.path / EVAL_FILE
        if not path.is_file():
            return []
        with path.open(newline="") as f:
            return list(csv.DictReader(f))

    def _write_eval_csv(self) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["step", "mean_return", "normalized_score", "returns"])
        writer.writeheader()
        writer.writerows(self._eval_rows)
        atomic_write_text(self.path / EVAL_FILE, out.getvalue())

    # -- checkpoint and result -----------------------------------------------------------------

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """Atomically write ``checkpoint.pt``; ``state`` must hold ``global_step``."""
        if "global_step" not in state:
            raise KeyError("checkpoint state must contain 'global_step'")
        self.writer.flush()
        return atomic_torch_save(state, self.path / CHECKPOINT_FILE)

    def write_result(self, result: Mapping[str, Any]) -> Path:
        """Write ``result.json`` last and atomically: its presence means the run finished."""
        self.writer.flush()
        return atomic_write_json(self.path / RESULT_FILE, dict(result))

    def close(self) -> None:
        self.writer.close()


def _with_defaults(saved: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``saved`` with the keys it lacks (fields added since it was written) taken from ``defaults``."""
    out = dict(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, Mapping) and isinstance(out[key], Mapping):
            out[key] = _with_defaults(out[key], value)
    return out


def _config_conflicts(saved: dict, given: dict, ignore: tuple[str, ...], prefix: str = "") -> list:
    conflicts = []
    for key in sorted(set(saved) | set(given)):
        name = f"{prefix}{key}"
        if name in ignore or key in ignore:
            continue
        a, b = saved.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            conflicts += _config_conflicts(a, b, ignore, prefix=f"{name}.")
        elif a != b:
            conflicts.append((name, a, b))
    return conflicts


def hyperparameter_table(args: Mapping[str, Any], prefix: str = "") -> str:
    """A Markdown table of (nested) hyperparameters for TensorBoard's text tab."""
    rows = []

    def walk(d: Mapping[str, Any], pre: str) -> None:
        for key, value in d.items():
            if isinstance(value, Mapping):
                walk(value, f"{pre}{key}.")
            else:
                rows.append(f"|{pre}{key}|{value}|")

    walk(args, prefix)
    return "|param|value|\n|-|-|\n" + "\n".join(rows)


# ----------------------------------------------------------------------------- failures and signals


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or Inf; the run stops after writing a checkpoint."""


def check_finite(losses: Mapping[str, torch.Tensor | float], step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the first non-finite loss and the step.

    Costs one host sync for all losses together; agents call it on logging steps.
    """
    if not losses:
        return
    values = torch.stack(
        [torch.as_tensor(v, dtype=torch.float32).detach().cpu().reshape(()) for v in losses.values()]
    )
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad = [name for name, ok in zip(losses, finite.tolist()) if not ok]
    raise NonFiniteLossError(f"non-finite loss {', '.join(bad)} = {values[~finite].tolist()} at step {step}")


@contextmanager
def stop_on_signals() -> Iterator[dict[str, Any]]:
    """Turn SIGTERM (and SIGINT) into a flag the training loop checks between steps.

    Yields a dict whose ``"signal"`` entry becomes the signal's name once one arrives; the loop
    then writes a checkpoint and exits cleanly. Handlers are restored on exit. A second Ctrl-C
    while stopping raises KeyboardInterrupt as usual.
    """
    state: dict[str, Any] = {"signal": None}
    previous = {}

    def handler(signum, _frame):
        if state["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        state["signal"] = signal.Signals(signum).name

    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on a terminal; on non-interactive output, a one-line summary every ``every_s`` seconds."""

    def __init__(self, total: int, desc: str, *, initial: int = 0, every_s: float = 60.0, stream=None):
        self.total = total
        self.desc = desc
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.n = initial
        self._last_print = time.time()
        self._t0 = time.time()
        self._n0 = initial
        self._postfix: dict[str, Any] = {}
        self._bar = None
        if hasattr(self.stream, "isatty") and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if postfix:
            self._postfix.update(postfix)
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(self._formatted(), refresh=False)
        elif time.time() - self._last_print >= self.every_s:
            self.print_line()

    def print_line(self) -> None:
        elapsed = max(time.time() - self._t0, 1e-9)
        rate = (self.n - self._n0) / elapsed
        extra = " ".join(f"{k}={v}" for k, v in self._formatted().items())
        line = f"[{self.desc}] {self.n}/{self.total} steps {rate:.1f} steps/s {extra}"
        print(line.rstrip(), file=self.stream)
        self.stream.flush()
        self._last_print = time.time()

    def _formatted(self) -> dict[str, str]:
        out = {}
        for k, v in self._postfix.items():
            out[k] = f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)
        return out

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self.print_line()
