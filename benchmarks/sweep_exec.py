"""One attempt at one sweep entry: decide skip / resume / fresh from the entry's directory, run the agent
script in its own process, and record the attempt. The same function runs in a local worker thread and in
a Ray task (on any node that sees the sweep directory at the same path).

An entry directory holds the run directory the agent writes (``--run-dir <entry>``), ``sweep_entry.json``
(the sweep's record: variant, flags and every attempt with its exit status, wall time, host and GPU) and
``attempt<k>.log`` (the agent's output). A run directory of a failed attempt that left nothing to resume
(no checkpoint) is moved into ``.stale/`` so that the entry holds one run directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plasticrl.benchmarks.sweep_results import CONFIG_FILE, ENTRY_FILE, RESULT_FILE, STALE_DIR

CHECKPOINT_FILE = "checkpoint.pt"
BAD_INPUT_EXIT = 2  # the agents' exit status for bad input: retrying cannot help
STOP_GRACE_S = 120.0  # after SIGTERM the agent writes a checkpoint; SIGKILL if it takes longer than this


@dataclass
class AttemptSpec:
    """Everything a worker needs for one attempt (plain data: it travels to Ray workers)."""

    sweep: str
    variant: str
    env: str
    seed: int
    agent: str
    argv: list[str]
    directory: str
    resume_style: str = "run-dir"
    runs_per_entry: str = "one"
    single_variant: bool = False
    env_vars: dict[str, str] = field(default_factory=dict)
    gpu_share: float | None = None
    python: str = sys.executable

    @property
    def label(self) -> str:
        return f"{self.variant} {self.env} seed {self.seed}"


@dataclass
class AttemptResult:
    label: str
    status: str  # done | skipped | failed | bad-input | interrupted
    exit_code: int | None = None
    wall_s: float = 0.0
    resumed_from: str | None = None
    run_dir: str | None = None
    log: str | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EntryState:
    kind: str  # done | resume | new
    run_dir: Path | None = None
    stale: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- the entry directory


def run_dirs_in(directory: Path) -> list[Path]:
    """The run directories an agent wrote into an entry directory (hidden ones are the sweep's own)."""
    if not directory.is_dir():
        return []
    return sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))


def read_record(directory: Path) -> dict[str, Any]:
    import json

    path = directory / ENTRY_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_record(directory: Path, record: dict[str, Any]) -> None:
    from plasticrl.common.files import atomic_write_json

    atomic_write_json(directory / ENTRY_FILE, record)


def inspect_entry(directory: Path, resume_style: str = "run-dir", runs_per_entry: str = "one") -> EntryState:
    """What the next attempt at this entry does.

    One run per entry (agents): done when its run directory has ``result.json``; resumed (``--resume
    RUN_DIR``) when it has ``checkpoint.pt``; otherwise started afresh, any run directory left by a crash
    before its first checkpoint moved aside. Several runs per entry (a warm-start study): done when the
    sweep recorded a successful attempt; otherwise re-run with a bare ``--resume`` (the script reuses its
    finished runs), or afresh when the script cannot resume.
    """
    run_dirs = run_dirs_in(directory)
    if runs_per_entry == "many":
        attempts = read_record(directory).get("attempts", [])
        if attempts and attempts[-1].get("status") == "done":
            return EntryState("done")
        if resume_style == "flag" and run_dirs:
            return EntryState("resume")
        return EntryState("new", stale=run_dirs)
    finished = [d for d in run_dirs if (d / RESULT_FILE).is_file()]
    if finished:
        return EntryState("done", finished[-1])
    resumable = [d for d in run_dirs if (d / CHECKPOINT_FILE).is_file() and (d / CONFIG_FILE).is_file()]
    if resumable and resume_style == "run-dir":
        newest = max(resumable, key=lambda d: (d / CHECKPOINT_FILE).stat().st_mtime)
        return EntryState("resume", newest, [d for d in run_dirs if d != newest])
    return EntryState("new", stale=run_dirs)


def move_aside(run_dirs: list[Path]) -> None:
    for run_dir in run_dirs:
        target = run_dir.parent / STALE_DIR / run_dir.name
        suffix = 1
        while target.exists():
            target = run_dir.parent / STALE_DIR / f"{run_dir.name}-{suffix}"
            suffix += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run_dir), str(target))


def command_for(spec: AttemptSpec, state: EntryState) -> list[str]:
    argv = [spec.python, spec.agent, *spec.argv, "--run-dir", spec.directory]
    if state.kind == "resume":
        argv += ["--resume", str(state.run_dir)] if spec.resume_style == "run-dir" else ["--resume"]
    return argv


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


# ----------------------------------------------------------------------------- one attempt


def run_attempt(
    spec: AttemptSpec, gpu: str | None = None, stop: threading.Event | None = None
) -> AttemptResult:
    """Skip, resume or start the entry; wait for the agent; record the attempt in ``sweep_entry.json``.

    ``gpu`` (local backend) pins the run to one GPU through CUDA_VISIBLE_DEVICES; under Ray the task's
    own GPU assignment is inherited. Setting ``stop`` (or a KeyboardInterrupt, which is how Ray cancels a
    task) sends the agent SIGTERM: it writes a checkpoint and exits, and the attempt is 'interrupted'.
    """
    directory = Path(spec.directory)
    state = inspect_entry(directory, spec.resume_style, spec.runs_per_entry)
    if state.kind == "done":
        run_dir = None if state.run_dir is None else str(state.run_dir)
        return AttemptResult(spec.label, "skipped", run_dir=run_dir, message="already finished")
    directory.mkdir(parents=True, exist_ok=True)
    move_aside(state.stale)
    gpu = gpu if gpu is not None else _ray_gpu()
    record, attempt = _open_attempt(spec, state, gpu)
    log = directory / attempt["log"]
    env = dict(os.environ, **spec.env_vars)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu

    def started(pid: int) -> None:  # the agent's pid, for whoever watches the sweep
        attempt["pid"] = pid
        write_record(directory, record)

    start = time.time()
    exit_code, interrupted = _run_process(attempt["command"], log, env, stop, on_start=started)
    wall_s = time.time() - start
    status, message = _outcome(spec, directory, exit_code, interrupted, log)
    attempt.update(
        ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"), wall_s=wall_s, exit_code=exit_code, status=status
    )
    record["status"] = status
    write_record(directory, record)
    finished = inspect_entry(directory, spec.resume_style, spec.runs_per_entry) if status == "done" else state
    return AttemptResult(
        spec.label,
        status,
        exit_code=exit_code,
        wall_s=wall_s,
        resumed_from=attempt["resumed_from"],
        run_dir=None if finished.run_dir is None else str(finished.run_dir),
        log=str(log),
        message=message,
    )


def _open_attempt(spec: AttemptSpec, state: EntryState, gpu: str | None) -> tuple[dict, dict]:
    """Append a running attempt to the entry's record (written at once) and return (record, attempt)."""
    directory = Path(spec.directory)
    record = read_record(directory) or {
        "sweep": spec.sweep,
        "variant": spec.variant,
        "env": spec.env,
        "seed": spec.seed,
        "agent": spec.agent,
        "runs_per_entry": spec.runs_per_entry,
        "single_variant": spec.single_variant,
        "attempts": [],
    }
    record.update(argv=spec.argv, gpu_share=spec.gpu_share if gpu is not None else None)
    number = len(record["attempts"]) + 1
    attempt = {
        "attempt": number,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "gpu": gpu,
        "resumed_from": None if state.kind != "resume" else str(state.run_dir or directory),
        "command": command_for(spec, state),
        "log": f"attempt{number}.log",
        "status": "running",
    }
    record["attempts"].append(attempt)
    write_record(directory, record)
    return record, attempt


def _ray_gpu() -> str | None:
    """The GPUs Ray assigned to this task (None outside Ray or without GPUs)."""
    if "ray" not in sys.modules:
        return None
    import ray

    try:
        ids = ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:  # not inside a task
        return None
    return ",".join(str(i) for i in ids) or None


def _run_process(
    command: list[str], log: Path, env: dict[str, str], stop: threading.Event | None, on_start=None
) -> tuple[int, bool]:
    """Run the agent with its output in ``log``; returns (exit status, whether the sweep stopped it)."""
    with log.open("ab") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        if on_start is not None:
            on_start(process.pid)
        interrupted = False
        try:
            while True:
                try:
                    return process.wait(timeout=0.5), interrupted
                except subprocess.TimeoutExpired:
                    if stop is not None and stop.is_set() and not interrupted:
                        interrupted = True
                        process.send_signal(signal.SIGTERM)
        except KeyboardInterrupt:  # Ray's cancel, or Ctrl-C in a single-threaded caller
            interrupted = True
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout=STOP_GRACE_S), True
            except subprocess.TimeoutExpired:
                process.kill()
                return process.wait(), True


def _outcome(
    spec: AttemptSpec, directory: Path, exit_code: int, interrupted: bool, log: Path
) -> tuple[str, str]:
    if interrupted:
        return "interrupted", "stopped by the sweep (checkpoint written if the agent had started)"
    if exit_code == 0:
        if (
            inspect_entry(directory, spec.resume_style, spec.runs_per_entry).kind == "done"
            or spec.runs_per_entry == "many"
        ):
            return "done", ""
        return "failed", f"exited 0 without a {RESULT_FILE}: {_tail(log)}"
    if exit_code == BAD_INPUT_EXIT:
        return "bad-input", _tail(log, 1)
    cause = f"exit {exit_code}"
    if exit_code < 0:  # killed by a signal it did not handle (SIGKILL: out of memory, a node going away)
        try:
            cause = f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            cause = f"killed by signal {-exit_code}"
    return "failed", f"{cause}: {_tail(log, 1)}"
