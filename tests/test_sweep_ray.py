"""The Ray backend end to end on a local Ray instance this test starts itself (no mocks): two tiny real SAC
runs, a retried crash, and a re-run that skips finished runs."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

from plasticrl.benchmarks import sweep
from plasticrl.benchmarks.sweep_exec import inspect_entry

ray = pytest.importorskip("ray")


def _load_sweep_helpers():
    """tests/test_sweep.py's fake agent and sweep-file writer (tests are not a package)."""
    spec = importlib.util.spec_from_file_location(
        "_sweep_test_helpers", Path(__file__).with_name("test_sweep.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_sweep = _load_sweep_helpers().write_sweep


@pytest.fixture
def local_ray():
    # One test holds the instance: under pytest -n 2 two tests could otherwise start two instances at once.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_sweeps_on_a_local_ray_instance(tmp_path, local_ray):
    sac_runs_on_ray(tmp_path / "sac")
    retried_crash_on_ray(tmp_path / "fake")


def sac_runs_on_ray(tmp_path: Path) -> None:
    """Two tiny real SAC runs, each a Ray task running the agent script; aggregated from the directories."""
    tmp_path.mkdir()
    spec = tmp_path / "sac.toml"
    spec.write_text(
        textwrap.dedent(
            """
            agent = "agents/sac.py"
            suite = "dmc"
            envs = ["cartpole-balance"]
            seeds = [1, 2]
            flags = '''--total-steps 300 --learning-starts 100 --batch-size 32 --eval-every 300
                       --eval-episodes 1 --hidden-dims 32 32'''
            [launch]
            cpus_per_run = 1
            """
        )
    )
    out = tmp_path / "out"
    assert sweep.main([str(spec), "--backend", "ray", "--sweep-dir", str(out)]) == 0
    for seed in (1, 2):
        entry = out / "default" / f"cartpole-balance__seed{seed}"
        state = inspect_entry(entry)
        assert state.kind == "done"
        result = json.loads((state.run_dir / "result.json").read_text())
        assert result["steps"] == 300 and result["updates"] == 200 and result["seed"] == seed
        record = json.loads((entry / "sweep_entry.json").read_text())
        assert [a["status"] for a in record["attempts"]] == ["done"] and "--threads" in record["argv"]
    # The sweep writes nothing the aggregate needs outside the run directories.
    from plasticrl.benchmarks import aggregate

    report = aggregate.main([str(out), "--suite", "dmc", "--reps", "100", "--no-plasticity"])
    assert report["variants"]["default"]["runs"] == 2


def retried_crash_on_ray(tmp_path: Path) -> None:
    """A crash is retried as a new task that resumes from the checkpoint; a re-run skips finished runs."""
    tmp_path.mkdir()
    spec = write_sweep(
        tmp_path,
        'envs = ["task-a"]\nseeds = [1, 2]\nflags = "--total-steps 3 --crash-at 2"\n'
        "[launch]\nmax_retries = 1\n",
    )
    out = tmp_path / "out"
    assert sweep.main([str(spec), "--backend", "ray", "--sweep-dir", str(out)]) == 0
    for seed in (1, 2):
        attempts = json.loads((out / "default" / f"task-a__seed{seed}" / "sweep_entry.json").read_text())[
            "attempts"
        ]
        assert [a["status"] for a in attempts] == ["failed", "done"] and attempts[1]["resumed_from"]
    assert sweep.main([str(spec), "--backend", "ray", "--sweep-dir", str(out)]) == 0
    results = json.loads((out / "sweep_status.json").read_text())["results"]
    assert {r["status"] for r in results.values()} == {"skipped"}
    assert Path(out / "default" / "task-a__seed1" / "attempt3.log").exists() is False
