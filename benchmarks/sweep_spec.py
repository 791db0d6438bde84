"""Sweep files: which agent, which tasks, seeds and variants, and how to launch them.

A sweep file is TOML::

    name = "sac-primacy"                  # default: the file's stem
    agent = "agents/sac.py"               # a script with a tyro ``Args`` dataclass and ``main(args)``
    suite = "dmc-primacy"                 # or: envs = ["cheetah-run", "quadruped-run"]
    seeds = [1, 2, 3, 4, 5]
    flags = "--total-steps 2000000 --replay-ratio 32"        # shared by every run (string or list)

    [variants]                            # name -> flags added after the shared ones (later flags win)
    sac = ""
    "sac+reset" = "--reset.every 200000 --reset.unit step"

    [launch]                              # defaults for the command line's options
    workers = 2                           # local backend: runs at once
    max_retries = 2                       # failed attempts retried (resuming from a checkpoint)
    threads = 1                           # --threads given to every run whose agent has the flag
    runs_per_gpu = 1                      # local backend: runs sharing one GPU
    gpus_per_run = 0.5                    # ray backend: fractional GPUs per run
    cpus_per_run = 1                      # ray backend
    env = { MUJOCO_GL = "egl" }           # environment variables of every run

Scripts that do not follow the agents' flag names say so: ``env_flag`` (default ``--env-id``), ``seed_flag``
(``--seed``); ``resume`` is ``"run-dir"`` (agents: ``--resume RUN_DIR`` of the entry's run directory),
``"flag"`` (a bare ``--resume`` with the same flags: the warm-start study reuses its finished arms) or
``"none"``; ``runs_per_entry = "many"`` when one invocation writes several run directories (a warm-start
study writes one per arm). An agent is found by asking its script, never a registry: the sweep loads the
file, and every run's flags are parsed by the script's own ``parse_args(argv)`` when it defines one, else
by ``tyro.cli(Args, args=argv)``; an unknown agent, suite or flag is an error before anything launches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from plasticrl.benchmarks.sweep_cli import InputError
from plasticrl.benchmarks.sweep_suites import get_suite

REPO_ROOT = Path(__file__).resolve().parents[1]
RESUME_STYLES = ("run-dir", "flag", "none")
ENTRY_STYLES = ("one", "many")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
_TOP_KEYS = {
    "name", "agent", "suite", "envs", "seeds", "flags", "variants", "launch", "env_flag", "seed_flag",
    "resume", "runs_per_entry", "description", "compute",
}  # fmt: skip
_LAUNCH_KEYS = {
    "workers",
    "max_retries",
    "threads",
    "runs_per_gpu",
    "gpus_per_run",
    "cpus_per_run",
    "env",
    "sweep_dir",
}


@dataclass
class Launch:
    """How runs are launched; the command line overrides each field."""

    workers: int | None = None
    max_retries: int = 2
    threads: int | None = None
    runs_per_gpu: int = 1
    gpus_per_run: float = 0.0
    cpus_per_run: float = 1.0
    env: dict[str, str] = field(default_factory=dict)
    sweep_dir: str | None = None


@dataclass(frozen=True)
class Entry:
    """One run of the sweep: variant × env × seed, in its own directory."""

    variant: str
    env: str
    seed: int
    argv: tuple[str, ...]  # the agent's flags (the executor adds --run-dir and --resume)
    directory: Path

    @property
    def label(self) -> str:
        return f"{self.variant} {self.env} seed {self.seed}"


@dataclass
class Sweep:
    name: str
    spec_path: Path | None
    agent: Path
    suite: str | None
    envs: tuple[str, ...]
    seeds: tuple[int, ...]
    flags: tuple[str, ...]
    variants: dict[str, tuple[str, ...]]
    extra_flags: tuple[str, ...] = ()
    """flags from the command line, after the variant's (they win)"""
    env_flag: str = "--env-id"
    seed_flag: str = "--seed"
    resume: str = "run-dir"
    runs_per_entry: str = "one"
    launch: Launch = field(default_factory=Launch)
    sweep_dir: Path = Path("runs/sweeps")
    description: str = ""
    compute: str = ""

    def entries(self) -> list[Entry]:
        """Every run, variant-major (a partial sweep still has every variant on the first envs and seeds)."""
        out = []
        for variant, variant_flags in self.variants.items():
            for env in self.envs:
                for seed in self.seeds:
                    where = (self.env_flag, env, self.seed_flag, str(seed))
                    argv = (*where, *self.flags, *variant_flags, *self.extra_flags)
                    directory = self.sweep_dir / variant / f"{safe_name(env)}__seed{seed}"
                    out.append(Entry(variant, env, seed, argv, directory))
        return out

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["agent"] = str(self.agent)
        data["spec_path"] = None if self.spec_path is None else str(self.spec_path)
        data["sweep_dir"] = str(self.sweep_dir)
        return data


def safe_name(text: str) -> str:
    """A directory-name-safe spelling of an env id ('ALE/Pong-v5' -> 'ALE-Pong-v5')."""
    return re.sub(r"[^A-Za-z0-9._+=-]+", "-", text).strip("-") or "none"


# ----------------------------------------------------------------------------- reading a sweep file


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise InputError("sweep files are TOML: Python 3.11+ reads them (or pip install tomli)") from None
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: no such sweep file") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: not valid TOML ({error})") from None


def split_flags(value: Any, where: str) -> tuple[str, ...]:
    """Flags given as one string (shell quoting) or a list of strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as error:
            raise InputError(f"{where}: {error}") from None
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return tuple(str(v) for v in value)
    raise InputError(f"{where}: flags must be a string or a list of strings, got {value!r}")


def resolve_agent(name: str, spec_dir: Path | None) -> Path:
    """A script path: a bare name is ``agents/<name>.py``; a relative path is tried against the repository
    root, the sweep file's folder and the working directory."""
    if not isinstance(name, str) or not name:
        raise InputError('agent: give the agent\'s script, e.g. agent = "agents/sac.py"')
    candidates = []
    path = Path(name)
    if path.is_absolute():
        candidates.append(path)
    elif "/" not in name and not name.endswith(".py"):
        candidates.append(REPO_ROOT / "agents" / f"{name}.py")
    else:
        candidates += [REPO_ROOT / path] + ([spec_dir / path] if spec_dir else []) + [Path.cwd() / path]
    candidates = list(dict.fromkeys(c.resolve() for c in candidates))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InputError(
        f"unknown agent {name!r}: no script at {', '.join(str(c) for c in candidates)} "
        f"(agents here: {', '.join(agent_scripts())})"
    )


def agent_scripts() -> list[str]:
    """Names of the scripts in agents/ that define an Args class and a main function."""
    found = []
    for path in sorted((REPO_ROOT / "agents").glob("*.py")):
        text = path.read_text(errors="replace")
        if "class Args" in text and "def main(" in text:
            found.append(path.stem)
    return found


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})"
        )


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _launch(table: dict[str, Any], where: str) -> Launch:
    _check_keys(table, _LAUNCH_KEYS, f"{where} [launch]")
    launch = Launch()
    for key, value in table.items():
        setattr(launch, key, value)
    env = launch.env
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise InputError(f'{where} [launch] env: a table of strings, e.g. env = {{ MUJOCO_GL = "egl" }}')
    return launch


def check_launch(launch: Launch) -> None:
    """Launch numbers in range (after the command line's overrides)."""
    if launch.workers is not None:
        _positive_int(launch.workers, "workers")
    _positive_int(launch.max_retries, "max_retries", minimum=0)
    if launch.threads is not None:
        _positive_int(launch.threads, "threads")
    _positive_int(launch.runs_per_gpu, "runs_per_gpu")
    for name in ("gpus_per_run", "cpus_per_run"):
        value = getattr(launch, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise InputError(f"{name} must be a number >= 0, got {value!r}")


def load_sweep(path: str | Path, sweep_dir: str | Path | None = None) -> Sweep:
    """Read and check a sweep file (agent script found, suite known, names safe); flags are checked later
    against the agent's parser by :func:`validate`."""
    path = Path(path)
    data = _load_toml(path)
    where = str(path)
    _check_keys(data, _TOP_KEYS, where)
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise InputError(f"{where}: name {name!r} must be letters, digits and ._+=- (it names a directory)")
    agent = resolve_agent(data.get("agent", ""), path.parent)

    suite_name = data.get("suite")
    suite = get_suite(suite_name) if suite_name is not None else None
    envs = data.get("envs")
    if envs is not None:
        if not isinstance(envs, list) or not envs or not all(isinstance(e, str) and e for e in envs):
            raise InputError(f"{where}: envs must be a non-empty list of names")
        envs = tuple(envs)
    elif suite is not None:
        if suite.envs is None:
            raise InputError(
                f"{where}: suite {suite.name!r} has no fixed task list; list the envs (envs = [...])"
            )
        envs = suite.envs
    else:
        raise InputError(
            f"{where}: give a suite (atari100k, dmc-primacy, dmc-planet, warmstart) or envs = [...]"
        )
    if suite is not None and suite.tasks is not None:
        outside = [e for e in envs if suite.canonical(e) is None]
        if outside:
            raise InputError(f"{where}: envs {', '.join(outside)} are not in the {suite.name} suite")
    if len(set(envs)) != len(envs):
        raise InputError(f"{where}: envs list a task twice")

    seeds = data.get("seeds")
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise InputError(f"{where}: seeds must be a non-empty list of integers, e.g. seeds = [1, 2, 3]")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"{where}: seeds list a seed twice")

    raw_variants = data.get("variants", {"default": ""})
    if not isinstance(raw_variants, dict) or not raw_variants:
        raise InputError(f"{where}: [variants] must map names to flags")
    variants = {}
    for variant, flags in raw_variants.items():
        if not _SAFE_NAME.match(variant):
            raise InputError(
                f"{where}: variant name {variant!r} must be letters, digits and ._+=- (it names a directory)"
            )
        variants[variant] = split_flags(flags, f"{where} variant {variant!r}")

    resume = data.get("resume", "run-dir")
    if resume not in RESUME_STYLES:
        raise InputError(f"{where}: resume must be one of {', '.join(RESUME_STYLES)}, got {resume!r}")
    runs_per_entry = data.get("runs_per_entry", "one")
    if runs_per_entry not in ENTRY_STYLES:
        raise InputError(
            f"{where}: runs_per_entry must be one of {', '.join(ENTRY_STYLES)}, got {runs_per_entry!r}"
        )
    launch = _launch(data.get("launch", {}), where)
    default_env_flag = suite.env_flag if suite is not None else "--env-id"
    directory = Path(sweep_dir or launch.sweep_dir or Path("runs") / "sweeps" / name).resolve()
    return Sweep(
        name=name,
        spec_path=path.resolve(),
        agent=agent,
        suite=suite_name,
        envs=envs,
        seeds=tuple(seeds),
        flags=split_flags(data.get("flags"), f"{where} flags"),
        variants=variants,
        env_flag=data.get("env_flag", default_env_flag),
        seed_flag=data.get("seed_flag", "--seed"),
        resume=resume,
        runs_per_entry=runs_per_entry,
        launch=launch,
        sweep_dir=directory,
        description=str(data.get("description", "")),
        compute=str(data.get("compute", "")),
    )


# ----------------------------------------------------------------------------- asking the agent's parser


def load_agent_module(path: Path) -> ModuleType:
    """Import an agent script from its file (its ``if __name__ == "__main__"`` block does not run)."""
    name = f"_plasticrl_sweep_agent_{safe_name(path.stem).replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"agent {path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise InputError(f"agent {path}: importing it failed: {type(error).__name__}: {error}") from None
    if not dataclasses.is_dataclass(getattr(module, "Args", None)) or not callable(
        getattr(module, "main", None)
    ):
        raise InputError(f"agent {path}: not an agent script (it needs a dataclass Args and a main(args))")
    return module


def _one_line(text: str) -> str:
    """tyro's boxed error as one line: its title, its message, and the closest flag when it suggests one.

    tyro prints sections separated by rules of dashes (title / message / suggestions / help hint),
    wrapped at the terminal width."""
    sections: list[list[str]] = [[]]
    for raw in text.splitlines():
        line = re.sub(r"[│╭╮╰╯─┃━]+", " ", raw).strip()
        if line and set(line) <= set("-=_ "):
            sections.append([])
        elif line:
            sections[-1].append(line)
    sections = [" ".join(lines) for lines in sections if lines]
    sections = [s for s in sections if not s.startswith("For full helptext")]
    if not sections:
        return "the agent's parser refused the flags"
    title, message = sections[0], " ".join(sections[1:2])
    line = (
        message if message.lower().startswith(title.lower()) else f"{title}: {message}" if message else title
    )
    for section in sections[2:]:
        if section.startswith(("Arguments similar to", "Perhaps you meant")):
            similar = re.findall(r"(--[A-Za-z0-9][\w.-]*)", section.split(":", 1)[-1])
            if similar:
                line += f" (did you mean {similar[0]}?)"
    return re.sub(r"\s+", " ", line)


def parse_agent_flags(module: ModuleType, argv: Sequence[str]) -> Any:
    """The agent's own parse of ``argv``: ``module.parse_args(argv)`` if the script defines it, else
    ``tyro.cli(module.Args, args=argv)``. A refusal becomes an InputError with tyro's message in one line."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            parse = getattr(module, "parse_args", None)
            if callable(parse):
                return parse(list(argv))
            import tyro

            return tyro.cli(module.Args, args=list(argv))
    except SystemExit:
        raise InputError(_one_line(captured.getvalue())) from None
    except (ValueError, TypeError) as error:  # checks in the Args' __post_init__
        raise InputError(str(error)) from None


def agent_fields(module: ModuleType) -> set[str]:
    return {f.name for f in dataclasses.fields(module.Args)}


def validate(sweep: Sweep, module: ModuleType, entries: list[Entry]) -> None:
    """Ask the agent's parser about the flags before anything launches: each variant once (with its first
    env and seed) and each env once (with the first variant), which covers every flag of every entry
    (seeds are integers already)."""
    fields = agent_fields(module)
    if "run_dir" not in fields:
        raise InputError(
            f"agent {sweep.agent}: has no --run-dir flag; the sweep puts each run in its own directory"
        )
    if sweep.resume != "none" and "resume" not in fields:
        raise InputError(f'agent {sweep.agent}: has no --resume flag; set resume = "none" in the sweep file')
    chosen: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        chosen.setdefault(("variant", entry.variant), entry)
        chosen.setdefault(("env", entry.env), entry)
    for entry in chosen.values():
        try:
            parse_agent_flags(module, (*entry.argv, "--run-dir", str(entry.directory)))
        except InputError as error:
            raise InputError(f"variant {entry.variant!r} ({entry.env}, seed {entry.seed}): {error}") from None
