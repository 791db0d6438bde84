"""Run a sweep — agent × tasks × seeds × variants — on this machine or on a Ray cluster.

    python benchmarks/sweep.py benchmarks/sweeps/sac_primacy.toml --dry-run       # list every run
    python benchmarks/sweep.py benchmarks/sweeps/sac_primacy.toml --workers 2      # local backend
    python benchmarks/sweep.py benchmarks/sweeps/bbf.toml --backend ray --address auto --gpus-per-run 0.5
    python benchmarks/sweep.py SPEC.toml --flags="--total-steps 5000" --variants sac --seeds 1 2 --aggregate

The sweep file (TOML; format in ``benchmarks/sweep_spec.py``) names the agent script, a suite or envs,
seeds, named variants (flag sets) and shared flags. Each run is the agent script in its own process,
writing its run directory into ``<sweep dir>/<variant>/<env>__seed<seed>/``. Re-running a sweep skips
runs whose ``result.json`` exists and resumes runs that left a ``checkpoint.pt`` (``--resume``); failed
runs are retried up to ``--max-retries`` times (each retry resumes) and listed at the end. Every flag of
every run is checked by the agent's own parser before anything starts; bad input is one ``error:`` line
and exit status 2. Exit status 1 when runs failed, 130 when stopped by Ctrl-C / SIGTERM (the runs write a
checkpoint; run the same command to continue).

Backends: ``local`` (default): ``--workers`` runs at once (default: the GPU slots, ``--runs-per-gpu`` per
GPU, else one per CPU core), each pinned to its GPU slot. ``ray``: one Ray task per run with
``--cpus-per-run`` / ``--gpus-per-run`` (fractional) resources, on ``--address`` (a running cluster whose
nodes see the sweep directory and this repository at the same paths) or a local Ray instance; Ray re-runs
the tasks of a node that dies, and they resume from their checkpoints.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plasticrl.benchmarks.sweep_backends import (
    LocalBackend,
    ProgressDisplay,
    RayBackend,
    Scheduler,
    visible_gpus,
)
from plasticrl.benchmarks.sweep_cli import InputError, Parser, run_main
from plasticrl.benchmarks.sweep_exec import AttemptSpec, command_for, inspect_entry
from plasticrl.benchmarks.sweep_spec import (
    Entry,
    Sweep,
    agent_fields,
    check_launch,
    load_agent_module,
    load_sweep,
    split_flags,
    validate,
)

STOPPED_EXIT = 130


def parse_args(argv: Sequence[str] | None) -> Any:
    parser = Parser(prog="sweep.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="the sweep file (TOML)")
    parser.add_argument(
        "--dry-run", action="store_true", help="list every run (new / resume / done) and exit"
    )
    parser.add_argument("--backend", choices=("local", "ray"), default="local")
    parser.add_argument("--address", help="ray: address of a running cluster ('auto', 'ray://host:10001')")
    parser.add_argument(
        "--workers", type=int, help="local: runs at once (default: GPU slots, else CPU cores)"
    )
    parser.add_argument(
        "--max-retries", type=int, help="retries of a failed run (default: the file's, else 2)"
    )
    parser.add_argument("--threads", type=int, help="--threads for every run whose agent has it")
    parser.add_argument("--runs-per-gpu", type=int, help="local: runs sharing one GPU")
    parser.add_argument("--gpus-per-run", type=float, help="ray: GPUs per run (fractional: 0.25)")
    parser.add_argument("--cpus-per-run", type=float, help="ray: CPUs per run")
    parser.add_argument("--sweep-dir", help="where the runs go (default: runs/sweeps/<name>)")
    parser.add_argument(
        "--flags", default="", help='extra flags for every run, last (they win): --flags="--total-steps 5000"'
    )
    parser.add_argument("--variants", nargs="+", help="run only these variants")
    parser.add_argument("--envs", nargs="+", help="run only these envs")
    parser.add_argument("--seeds", nargs="+", type=int, help="run only these seeds")
    parser.add_argument("--progress-every", type=float, default=60.0, help="seconds between progress lines")
    parser.add_argument("--aggregate", action="store_true", help="aggregate the sweep's runs at the end")
    return parser.parse_args(argv)


def apply_overrides(sweep: Sweep, args: Any) -> None:
    launch = sweep.launch
    for name in ("workers", "max_retries", "threads", "runs_per_gpu", "gpus_per_run", "cpus_per_run"):
        value = getattr(args, name)
        if value is not None:
            setattr(launch, name, value)
    check_launch(launch)
    sweep.extra_flags = split_flags(args.flags, "--flags")


def select(entries: list[Entry], sweep: Sweep, args: Any) -> list[Entry]:
    """The entries the --variants / --envs / --seeds filters keep; an unknown name is an error."""
    for flag, chosen, known in (
        ("--variants", args.variants, list(sweep.variants)),
        ("--envs", args.envs, list(sweep.envs)),
        ("--seeds", args.seeds, list(sweep.seeds)),
    ):
        unknown = [c for c in chosen or () if c not in known]
        if unknown:
            raise InputError(
                f"{flag} {' '.join(map(str, unknown))}: not in the sweep (it has {' '.join(map(str, known))})"
            )
    return [
        e
        for e in entries
        if (not args.variants or e.variant in args.variants)
        and (not args.envs or e.env in args.envs)
        and (not args.seeds or e.seed in args.seeds)
    ]


def plan_resources(sweep: Sweep, backend: str, fields: set[str]) -> tuple[int, list[str]]:
    """Workers and GPUs of the local backend, and the ``--threads`` every run gets (when the agent has it)."""
    launch = sweep.launch
    gpus = visible_gpus() if backend == "local" else []
    cores = os.cpu_count() or 1
    workers = launch.workers or (len(gpus) * launch.runs_per_gpu if gpus else cores)
    if launch.threads is None:
        # One torch thread per run unless runs are few: oversubscribed CPU threads slow every run down.
        per_run = max(1, int(launch.cpus_per_run)) if backend == "ray" else max(1, cores // workers)
        launch.threads = per_run
    if "threads" in fields and "--threads" not in (*sweep.flags, *sweep.extra_flags):
        sweep.flags = (*sweep.flags, "--threads", str(launch.threads))
    return workers, gpus


def attempt_specs(sweep: Sweep, entries: list[Entry], gpu_share: float | None) -> list[AttemptSpec]:
    return [
        AttemptSpec(
            sweep=sweep.name,
            variant=e.variant,
            env=e.env,
            seed=e.seed,
            agent=str(sweep.agent),
            argv=list(e.argv),
            directory=str(e.directory),
            resume_style=sweep.resume,
            runs_per_entry=sweep.runs_per_entry,
            single_variant=len(sweep.variants) == 1,
            env_vars=dict(sweep.launch.env),
            gpu_share=gpu_share,
        )
        for e in entries
    ]


def _shown(path: str) -> str:
    """A path relative to the working directory when it lies below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def dry_run(specs: list[AttemptSpec]) -> None:
    counts = {"new": 0, "resume": 0, "done": 0}
    for spec in specs:
        state = inspect_entry(Path(spec.directory), spec.resume_style, spec.runs_per_entry)
        counts[state.kind] += 1
        command = command_for(spec, state)
        command = ["python", _shown(command[1]), *command[2:]]
        print(f"[{state.kind}] {spec.label}: {shlex.join(command)}")
    print(
        f"{len(specs)} runs: {counts['new']} to start, {counts['resume']} to resume, "
        f"{counts['done']} finished (skipped)"
    )


def report(outcome: Any, display: ProgressDisplay) -> None:
    resumed = sum(1 for h in outcome.history if h.get("resumed_from"))
    display.note(
        f"{'stopped' if outcome.stopped else 'finished'} after {outcome.wall_s / 60:.1f} min: "
        f"{outcome.count('done')} done, {outcome.count('skipped')} already finished (skipped), "
        f"{resumed} attempts resumed from a checkpoint, {len(outcome.failed)} not finished"
    )
    for result in outcome.failed:
        attempts = outcome.attempts.get(result.label, 0)
        log = f"; log {_shown(result.log)}" if result.log else ""
        display.note(f"  {result.status}: {result.label} after {attempts} attempt(s): {result.message}{log}")


def main(argv: Sequence[str] | None = None) -> int:
    from plasticrl.common.files import atomic_write_json

    args = parse_args(argv)
    sweep = load_sweep(args.spec, args.sweep_dir)
    apply_overrides(sweep, args)
    module = load_agent_module(sweep.agent)
    fields = agent_fields(module)
    workers, gpus = plan_resources(sweep, args.backend, fields)
    entries = select(sweep.entries(), sweep, args)
    validate(sweep, module, entries)
    if args.backend == "ray":
        gpu_share = sweep.launch.gpus_per_run or None
    else:
        gpu_share = 1.0 / sweep.launch.runs_per_gpu if gpus else None
    specs = attempt_specs(sweep, entries, gpu_share)
    if args.dry_run:
        dry_run(specs)
        return 0

    display = ProgressDisplay(sweep.name, len(specs), every_s=args.progress_every)
    where = f"{workers} workers" + (f", GPUs {','.join(gpus)} × {sweep.launch.runs_per_gpu}" if gpus else "")
    if args.backend == "ray":
        launch = sweep.launch
        where = (
            f"Ray ({args.address or 'local instance'}), {launch.cpus_per_run:g} CPU / "
            f"{launch.gpus_per_run:g} GPU per run"
        )
    display.note(
        f"{len(specs)} runs into {_shown(str(sweep.sweep_dir))}; backend {args.backend}: {where}; "
        f"--threads {sweep.launch.threads}"
    )
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    plan = {"sweep": sweep.as_dict(), "backend": args.backend, "runs": [s.__dict__ for s in specs]}
    atomic_write_json(sweep.sweep_dir / "sweep.json", plan)

    if args.backend == "ray":
        backend = RayBackend(
            args.address,
            sweep.launch.cpus_per_run,
            sweep.launch.gpus_per_run,
            sweep.launch.max_retries,
            workers,
        )
    else:
        backend = LocalBackend(workers, gpus, sweep.launch.runs_per_gpu)
    outcome = Scheduler(specs, sweep.launch.max_retries, display).run(backend)
    report(outcome, display)
    atomic_write_json(
        sweep.sweep_dir / "sweep_status.json",
        {
            "wall_s": outcome.wall_s,
            "stopped": outcome.stopped,
            "results": {label: r.as_dict() for label, r in outcome.results.items()},
            "attempts": outcome.history,
        },
    )
    if args.aggregate and not outcome.stopped:
        aggregate_sweep(sweep)
    if outcome.stopped:
        return STOPPED_EXIT
    return 1 if outcome.failed else 0


def aggregate_sweep(sweep: Sweep) -> None:
    """Aggregate the sweep directory into ``aggregate.md``, ``aggregate.json`` and ``plots/`` beside it."""
    from plasticrl.benchmarks import aggregate

    suite = sweep.suite or "raw"
    out = sweep.sweep_dir
    aggregate.main(
        [str(out), "--suite", suite, "--markdown", str(out / "aggregate.md"),
         "--json", str(out / "aggregate.json"),
         "--plots", str(out / "plots"), "--title", f"{sweep.name} ({suite})"]
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(run_main(main))
