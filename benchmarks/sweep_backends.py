"""Where a sweep's runs execute: ``local`` (worker threads on this machine, each waiting on one agent
process; GPUs shared k runs per GPU) or ``ray`` (one Ray task per attempt, fractional GPUs, on a cluster
or a local Ray instance). Both run :func:`sweep_exec.run_attempt`; the :class:`Scheduler` above them
retries failed attempts (a retry resumes from the run's checkpoint), shows progress and reports failures.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from plasticrl.benchmarks.sweep_cli import InputError
from plasticrl.benchmarks.sweep_exec import AttemptResult, AttemptSpec, run_attempt

FINAL = ("done", "skipped", "failed", "bad-input", "interrupted")


def visible_gpus() -> list[str]:
    """GPU ids of this machine: CUDA_VISIBLE_DEVICES when set, else ``nvidia-smi -L`` (none without it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


# ----------------------------------------------------------------------------- progress


class ProgressDisplay:
    """One line with done / running / failed / remaining, printed when a count changes and at least every
    ``every_s`` seconds; events (failures, retries) on their own lines."""

    def __init__(self, name: str, total: int, stream: TextIO | None = None, every_s: float = 60.0):
        self.name, self.total, self.every_s = name, total, every_s
        self.stream = stream or sys.stderr
        self.start = time.time()
        self._last: tuple | None = None
        self._last_time = 0.0

    def show(self, done: int, running: int, failed: int, force: bool = False) -> None:
        counts = (done, running, failed)
        now = time.time()
        if not force and counts == self._last and now - self._last_time < self.every_s:
            return
        remaining = self.total - done - running - failed
        elapsed = _duration(now - self.start)
        self.note(
            f"done {done} · running {running} · failed {failed} · remaining {remaining} "
            f"(of {self.total}) · {elapsed}"
        )
        self._last, self._last_time = counts, now

    def note(self, text: str) -> None:
        print(f"[sweep {self.name}] {text}", file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# ----------------------------------------------------------------------------- scheduling and retries


@dataclass
class SweepOutcome:
    results: dict[str, AttemptResult]
    attempts: Counter
    wall_s: float
    stopped: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def count(self, *statuses: str) -> int:
        return sum(r.status in statuses for r in self.results.values())

    @property
    def failed(self) -> list[AttemptResult]:
        return [r for r in self.results.values() if r.status in ("failed", "bad-input", "interrupted")]


class Scheduler:
    """Submits attempts while the backend has room, retries failures up to ``max_retries`` times (the
    retry resumes from the checkpoint), and stops cleanly on SIGINT / SIGTERM (runs get SIGTERM, write a
    checkpoint and count as interrupted; re-running the sweep resumes them)."""

    def __init__(self, specs: list[AttemptSpec], max_retries: int, display: ProgressDisplay):
        self.specs = specs
        self.max_retries = max_retries
        self.display = display
        self.stopping = False
        self.pending: deque[AttemptSpec] = deque(specs)
        self.running: dict[Any, AttemptSpec] = {}
        self.attempts: Counter = Counter()
        self.results: dict[str, AttemptResult] = {}
        self.history: list[dict[str, Any]] = []

    def _on_signal(self, signum, _frame) -> None:
        if not self.stopping:
            self.display.note(f"{signal.Signals(signum).name}: stopping the running runs (they checkpoint)")
        self.stopping = True

    def run(self, backend: Any) -> SweepOutcome:
        start = time.time()
        previous = _install_handlers(self._on_signal)
        cancelled = False
        try:
            while self.pending or self.running:
                if self.stopping and not cancelled:
                    self.pending.clear()
                    backend.cancel(list(self.running))
                    cancelled = True
                while self.pending and not self.stopping and len(self.running) < backend.capacity():
                    spec = self.pending.popleft()
                    self.attempts[spec.label] += 1
                    self.running[backend.submit(spec)] = spec
                self._show()
                for handle, result in backend.wait(list(self.running), timeout=1.0):
                    self._finished(self.running.pop(handle), result)
        finally:
            _restore_handlers(previous)
            backend.close()
        self._show(force=True)
        for spec in self.specs:  # never started because the sweep stopped
            self.results.setdefault(
                spec.label, AttemptResult(spec.label, "interrupted", message="not started")
            )
        return SweepOutcome(self.results, self.attempts, time.time() - start, self.stopping, self.history)

    def _finished(self, spec: AttemptSpec, result: AttemptResult) -> None:
        """Record an attempt's result; queue a retry when it failed and retries are left."""
        result.label = spec.label
        tries = self.attempts[spec.label]
        self.history.append({"attempt": tries, **result.as_dict()})
        if result.status == "failed" and tries <= self.max_retries and not self.stopping:
            self.display.note(
                f"{spec.label}: attempt {tries} failed ({result.message}); "
                f"retry {tries} of {self.max_retries}"
            )
            self.pending.append(spec)
            return
        if result.status in ("failed", "bad-input"):
            self.display.note(f"{spec.label}: {result.status} after {tries} attempt(s): {result.message}")
        self.results[spec.label] = result

    def _show(self, force: bool = False) -> None:
        done = sum(r.status in ("done", "skipped") for r in self.results.values())
        failed = sum(r.status in ("failed", "bad-input", "interrupted") for r in self.results.values())
        self.display.show(done, len(self.running), failed, force=force)


def _install_handlers(handler) -> dict:
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_handlers(previous: dict) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


# ----------------------------------------------------------------------------- local backend


class LocalBackend:
    """``workers`` threads, each running one agent process at a time; with GPUs, runs take a GPU slot
    (``runs_per_gpu`` slots per GPU) and see only that GPU (CUDA_VISIBLE_DEVICES)."""

    def __init__(self, workers: int, gpus: list[str], runs_per_gpu: int = 1):
        self.workers = workers
        self.stop = threading.Event()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep")
        self.slots: queue.Queue | None = None
        if gpus:
            self.slots = queue.Queue()
            for _ in range(runs_per_gpu):
                for gpu in gpus:
                    self.slots.put(gpu)

    def capacity(self) -> int:
        return self.workers

    def submit(self, spec: AttemptSpec) -> concurrent.futures.Future:
        return self.pool.submit(self._attempt, spec)

    def _attempt(self, spec: AttemptSpec) -> AttemptResult:
        gpu = self.slots.get() if self.slots is not None else None
        try:
            return run_attempt(spec, gpu=gpu, stop=self.stop)
        finally:
            if self.slots is not None:
                self.slots.put(gpu)

    def wait(self, handles: list, timeout: float) -> list[tuple[Any, AttemptResult]]:
        if not handles:
            return []
        done, _ = concurrent.futures.wait(
            handles, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
        )
        out = []
        for future in done:
            try:
                result = future.result()
            except Exception as error:  # a bug or an OS error around the agent process
                result = AttemptResult("?", "failed", message=f"{type(error).__name__}: {error}")
            out.append((future, result))
        return out

    def cancel(self, handles: list) -> None:
        self.stop.set()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


# ----------------------------------------------------------------------------- Ray backend


class RayBackend:
    """One Ray task per attempt with ``cpus_per_run`` CPUs and ``gpus_per_run`` (fractional) GPUs. Tasks
    lost with a node are re-run by Ray (``max_retries``); the new attempt resumes from the checkpoint on the
    shared sweep directory. Without ``address`` (and without RAY_ADDRESS) a local instance starts."""

    def __init__(
        self,
        address: str | None,
        cpus_per_run: float,
        gpus_per_run: float,
        node_retries: int,
        local_cpus: int,
    ):
        try:
            import ray
        except ImportError:
            raise InputError(
                "--backend ray needs Ray: pip install 'ray[default]>=2,<3' (or plasticrl[ray])"
            ) from None
        self.ray = ray
        self.started_here = False
        if not ray.is_initialized():
            if address or os.environ.get("RAY_ADDRESS"):
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=local_cpus, include_dashboard=False, log_to_driver=False)
            self.started_here = True
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        self.remote = ray.remote(run_attempt).options(
            num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=node_retries, retry_exceptions=False
        )

    def capacity(self) -> int:
        """Runs the cluster can hold at once (re-read each time: clusters grow and shrink)."""
        resources = self.ray.cluster_resources()
        limits = []
        if self.cpus_per_run > 0:
            limits.append(math.floor(resources.get("CPU", 0) / self.cpus_per_run + 1e-9))
        if self.gpus_per_run > 0:
            limits.append(math.floor(resources.get("GPU", 0) / self.gpus_per_run + 1e-9))
        return max(1, min(limits)) if limits else 1

    def submit(self, spec: AttemptSpec) -> Any:
        return self.remote.remote(spec)

    def wait(self, handles: list, timeout: float) -> list[tuple[Any, AttemptResult]]:
        if not handles:
            return []
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = self.ray.wait(handles, num_returns=len(handles), timeout=0)
        out = []
        for ref in ready:
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.TaskCancelledError:
                result = AttemptResult("?", "interrupted", message="cancelled")
            except Exception as error:  # the worker or its node died and Ray's own retries ran out
                result = AttemptResult(
                    "?", "failed", message=f"{type(error).__name__}: {str(error).splitlines()[0]}"
                )
            out.append((ref, result))
        return out

    def cancel(self, handles: list) -> None:
        for ref in handles:
            self.ray.cancel(ref)  # KeyboardInterrupt in the task: the agent gets SIGTERM and checkpoints

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()
