"""Sweeps (benchmarks/sweep.py): sweep files, flag checks by the agent's own parser, dry runs, and the local
backend's skip / resume / retry with runs that crash and a run killed midway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from plasticrl.benchmarks import sweep
from plasticrl.benchmarks.sweep_cli import InputError
from plasticrl.benchmarks.sweep_exec import inspect_entry
from plasticrl.benchmarks.sweep_spec import load_sweep

REPO = Path(__file__).resolve().parents[1]

# A stand-in agent for the retry logic: a script with a tyro Args and main(args) like the real agents,
# picked up from its file like any agent. Steps sleep; checkpoint.pt holds the step (JSON); SIGTERM writes
# a checkpoint and exits 128 + 15. --crash-at N exits 1 at step N on its first attempt only.
FAKE_AGENT = '''
"""A fake agent for sweep tests."""
from __future__ import annotations

import json, signal, sys, time
from dataclasses import dataclass
from pathlib import Path

import tyro


@dataclass
class Args:
    env_id: str = "task-a"
    seed: int = 1
    total_steps: int = 4
    step_seconds: float = 0.0
    crash_at: int = -1
    always_crash: bool = False
    bad_input: bool = False
    run_dir: str = "runs"
    resume: str | None = None
    threads: int = 0


def main(args: Args) -> int:
    if args.bad_input:
        print("error: --bad-input given", file=sys.stderr)
        return 2
    if args.resume:
        path = Path(args.resume)
        step = json.loads((path / "checkpoint.pt").read_text())["step"]
    else:
        path = Path(args.run_dir) / f"fake__{args.env_id}__seed{args.seed}__{time.time_ns()}"
        path.mkdir(parents=True)
        config = {"agent": "fake", "env_id": args.env_id, "seed": args.seed, "tag": "baseline",
                  "args": {"total_steps": args.total_steps, "device": "cpu"}}
        (path / "config.json").write_text(json.dumps(config))
        step = 0
    stop = {"signal": None}
    signal.signal(signal.SIGTERM, lambda s, f: stop.update(signal=s))
    while step < args.total_steps:
        if stop["signal"]:
            (path / "checkpoint.pt").write_text(json.dumps({"step": step}))
            return 128 + stop["signal"]
        time.sleep(args.step_seconds)
        step += 1
        (path / "checkpoint.pt").write_text(json.dumps({"step": step}))
        marker = path / "crashed-once"
        if args.always_crash or (step == args.crash_at and not marker.exists()):
            marker.touch()
            raise RuntimeError(f"crash at step {step}")
    with open(path / "eval.csv", "w") as f:
        f.write("step,mean_return,normalized_score,returns\\n")
        f.write(f"{step},{10.0 * args.seed},,{10.0 * args.seed}\\n")
    result = {"final_eval_return": 10.0 * args.seed, "steps": step, "wall_time_s": 0.1, "device": "cpu"}
    (path / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args)))
'''


def write_sweep(tmp_path: Path, body: str, agent: str | None = None) -> Path:
    if agent is None:
        agent = str(tmp_path / "fake_agent.py")
        Path(agent).write_text(FAKE_AGENT)
    spec = tmp_path / "spec.toml"
    spec.write_text(f'agent = "{agent}"\n' + textwrap.dedent(body))
    return spec


def records(sweep_dir: Path) -> dict[str, dict]:
    return {
        str(p.parent.relative_to(sweep_dir)): json.loads(p.read_text())
        for p in sorted(sweep_dir.rglob("sweep_entry.json"))
    }


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "sweep.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ----------------------------------------------------------------------------- sweep files and bad input


def test_sweep_file_expands_every_variant_env_and_seed(tmp_path):
    spec = write_sweep(
        tmp_path,
        """
        envs = ["task-a", "task-b"]
        seeds = [1, 2, 3]
        flags = "--total-steps 2"
        [variants]
        base = ""
        slow = ["--step-seconds", "0.01"]
        """,
    )
    loaded = load_sweep(spec, tmp_path / "out")
    entries = loaded.entries()
    assert len(entries) == 2 * 2 * 3
    slow = [e for e in entries if e.variant == "slow"][0]
    assert slow.argv == ("--env-id", "task-a", "--seed", "1", "--total-steps", "2", "--step-seconds", "0.01")
    assert slow.directory == (tmp_path / "out" / "slow" / "task-a__seed1").resolve()


def test_dry_run_lists_every_run_and_launches_nothing(tmp_path, capsys):
    spec = write_sweep(
        tmp_path, 'envs = ["task-a", "task-b"]\nseeds = [1, 2]\n[variants]\nx = ""\ny = "--crash-at 2"\n'
    )
    assert sweep.main([str(spec), "--dry-run", "--sweep-dir", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 9 and lines[-1].startswith("8 runs: 8 to start")
    assert all(line.startswith("[new] ") and "--run-dir" in line for line in lines[:-1])
    assert "--crash-at 2" in lines[-2] and "--threads" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "body,message",
    [
        ('suite = "atari-200m"\nseeds = [1]\n', "unknown suite 'atari-200m'"),
        (
            'envs = ["a"]\nseeds = [1]\n[variants]\nbad = "--no-such-flag 3"\n',
            "Unrecognized options: --no-such-flag",
        ),
        ('envs = ["a"]\nseeds = [1]\n[variants]\nbad = "--total-steps many"\n', "--total-steps"),
        ('envs = ["a"]\nseeds = [1]\n[variants]\nbad = "--total-stps 3"\n', "did you mean --total-steps?"),
        ('envs = ["a"]\nseeds = ["one"]\n', "seeds must be a non-empty list of integers"),
        ('envs = ["a"]\nseeds = [1]\nworkers = 2\n', "unknown key(s) workers"),
        ('envs = ["a"]\nseeds = [1]\n[variants]\n"a/b" = ""\n', "variant name 'a/b'"),
        ("seeds = [1]\n", "give a suite"),
        ('suite = "dmc-primacy"\nenvs = ["cartpole-balance"]\nseeds = [1]\n', "not in the dmc-primacy suite"),
    ],
)
def test_bad_sweep_files_are_refused_before_anything_launches(tmp_path, body, message):
    spec = write_sweep(tmp_path, body)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        sweep.main([str(spec), "--sweep-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_unknown_agent_is_one_error_line_and_exit_2(tmp_path):
    spec = write_sweep(tmp_path, 'envs = ["a"]\nseeds = [1]\n', agent="agents/no_such_agent.py")
    done = run_cli(str(spec), "--sweep-dir", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith(
        "error: unknown agent 'agents/no_such_agent.py'"
    )
    assert not (tmp_path / "out").exists()


def test_a_real_agents_flags_are_checked_by_its_own_parser(tmp_path):
    spec = write_sweep(
        tmp_path,
        'suite = "dmc-planet"\nseeds = [1]\n[variants]\nreset = "--reset.every 100 --reset.unit steps"\n',
        agent="agents/sac.py",
    )
    done = run_cli(str(spec), "--sweep-dir", str(tmp_path / "out"))
    assert done.returncode == 2
    assert (
        "variant 'reset'" in done.stderr
        and "invalid choice 'steps' for argument '--reset.unit'" in done.stderr
    )
    assert not (tmp_path / "out").exists()
    spec.write_text(spec.read_text().replace("--reset.unit steps", "--reset.unit step"))
    ok = run_cli(str(spec), "--dry-run", "--sweep-dir", str(tmp_path / "out"))
    assert ok.returncode == 0 and ok.stdout.count("[new]") == 6  # the six PlaNet tasks


def test_filters_pick_a_subset_and_refuse_unknown_names(tmp_path, capsys):
    spec = write_sweep(tmp_path, 'envs = ["a", "b"]\nseeds = [1, 2]\n[variants]\nx = ""\ny = ""\n')
    assert sweep.main([str(spec), "--dry-run", "--variants", "y", "--seeds", "2"]) == 0
    assert capsys.readouterr().out.count("[new] y ") == 2
    with pytest.raises(InputError, match="--envs c: not in the sweep"):
        sweep.main([str(spec), "--dry-run", "--envs", "c"])


# ----------------------------------------------------------------------------- local backend


def test_local_backend_retries_resumes_skips_and_reports_failures(tmp_path):
    spec = write_sweep(
        tmp_path,
        """
        envs = ["task-a"]
        seeds = [1, 2]
        flags = "--total-steps 4"
        [variants]
        ok = ""
        flaky = "--crash-at 2"
        broken = "--always-crash"
        refused = "--bad-input"
        [launch]
        max_retries = 1
        """,
    )
    out = tmp_path / "out"
    assert (
        sweep.main([str(spec), "--sweep-dir", str(out), "--workers", "2"]) == 1
    )  # broken and refused failed
    rec = records(out)
    assert [a["status"] for a in rec["ok/task-a__seed1"]["attempts"]] == ["done"]
    flaky = rec["flaky/task-a__seed2"]["attempts"]
    assert [a["status"] for a in flaky] == ["failed", "done"] and flaky[0]["exit_code"] == 1
    run_dir = inspect_entry(out / "flaky" / "task-a__seed2").run_dir
    assert flaky[1]["resumed_from"] == str(run_dir) and flaky[1]["command"][-2:] == ["--resume", str(run_dir)]
    assert json.loads((run_dir / "result.json").read_text())["steps"] == 4
    assert [a["status"] for a in rec["broken/task-a__seed1"]["attempts"]] == ["failed", "failed"]  # 1 retry
    assert [a["status"] for a in rec["refused/task-a__seed1"]["attempts"]] == [
        "bad-input"
    ]  # exit 2: no retry
    assert "RuntimeError: crash at step 2" in (out / "broken" / "task-a__seed1" / "attempt2.log").read_text()
    status = json.loads((out / "sweep_status.json").read_text())
    assert status["results"]["broken task-a seed 1"]["status"] == "failed"

    # Re-running skips the finished runs and retries the failed ones from their checkpoints.
    assert sweep.main([str(spec), "--sweep-dir", str(out), "--workers", "2", "--max-retries", "0"]) == 1
    again = json.loads((out / "sweep_status.json").read_text())["results"]
    assert (
        again["ok task-a seed 1"]["status"] == "skipped"
        and again["flaky task-a seed 2"]["status"] == "skipped"
    )
    broken = records(out)["broken/task-a__seed1"]["attempts"]
    assert len(broken) == 3 and broken[2]["resumed_from"] is not None


def test_a_run_that_left_no_checkpoint_is_moved_aside_and_restarted(tmp_path):
    spec = write_sweep(tmp_path, 'envs = ["task-a"]\nseeds = [1]\n')
    entry = tmp_path / "out" / "default" / "task-a__seed1"
    stale = entry / "fake__task-a__seed1__0"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # crashed before its first checkpoint
    assert sweep.main([str(spec), "--sweep-dir", str(tmp_path / "out"), "--workers", "1"]) == 0
    assert (entry / ".stale" / stale.name / "config.json").is_file()
    assert inspect_entry(entry).kind == "done"


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_sac_run_killed_midway_is_resumed_and_finished_runs_are_skipped(tmp_path):
    """Real SAC runs: one is SIGKILLed after its first checkpoint; the sweep's retry resumes it from the
    checkpoint in the same run directory; a second sweep skips both."""
    spec = tmp_path / "sac.toml"
    spec.write_text(
        textwrap.dedent(
            """
            agent = "agents/sac.py"
            suite = "dmc"
            envs = ["cartpole-balance"]
            seeds = [1, 2]
            flags = '''--learning-starts 100 --batch-size 32 --eval-every 200 --eval-episodes 1
                       --hidden-dims 32 32 --diagnostics-every 50'''
            [variants]
            short = "--total-steps 300"
            long = "--total-steps 2000 --checkpoint-every 200"
            [launch]
            max_retries = 1
            threads = 1
            """
        )
    )
    out = tmp_path / "out"
    args = [str(spec), "--sweep-dir", str(out), "--workers", "2", "--seeds", "1", "--progress-every", "5"]
    process = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "sweep.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    long_entry = out / "long" / "cartpole-balance__seed1"
    _wait_for(lambda: list(long_entry.glob("*/checkpoint.pt")), 180, "the long run's first checkpoint")
    first_attempt = lambda: records(out).get("long/cartpole-balance__seed1", {}).get("attempts", [{}])[0]
    pid = _wait_for(lambda: first_attempt().get("pid"), 30, "the agent's pid")
    os.kill(pid, signal.SIGKILL)
    output = process.communicate(timeout=240)[0].decode()
    assert process.returncode == 0, output
    assert "killed by SIGKILL" in output and "retry 1 of 1" in output

    attempts = records(out)["long/cartpole-balance__seed1"]["attempts"]
    assert [a["status"] for a in attempts] == ["failed", "done"] and attempts[0][
        "exit_code"
    ] == -signal.SIGKILL
    run_dirs = [d for d in long_entry.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert len(run_dirs) == 1 and attempts[1]["resumed_from"] == str(run_dirs[0])
    result = json.loads((run_dirs[0] / "result.json").read_text())
    assert result["steps"] == 2000 and result["updates"] == 1900
    steps = [int(line.split(",")[0]) for line in (run_dirs[0] / "eval.csv").read_text().splitlines()[1:]]
    assert steps == list(range(200, 2001, 200))  # no evaluation lost or repeated across the kill

    again = run_cli(*args)
    assert again.returncode == 0 and "0 done, 2 already finished (skipped)" in again.stderr


def test_sigterm_stops_the_sweep_and_its_runs_checkpoint_for_the_next_one(tmp_path):
    spec = write_sweep(
        tmp_path, 'envs = ["task-a"]\nseeds = [1, 2, 3]\nflags = "--total-steps 40 --step-seconds 0.1"\n'
    )
    out = tmp_path / "out"
    args = [str(spec), "--sweep-dir", str(out), "--workers", "2"]
    process = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "sweep.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    _wait_for(lambda: len(list(out.glob("default/*/*/checkpoint.pt"))) == 2, 60, "two runs under way")
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == sweep.STOPPED_EXIT, output
    statuses = {k: [a["status"] for a in r["attempts"]] for k, r in records(out).items()}
    assert sorted(statuses.values()) == [["interrupted"], ["interrupted"]]  # the third never started
    assert sweep.main(args) == 0  # the next sweep resumes both and runs the third
    attempts = [r["attempts"] for r in records(out).values()]
    assert sorted(len(a) for a in attempts) == [1, 2, 2]
    assert all(a[-1]["resumed_from"] for a in attempts if len(a) == 2)
