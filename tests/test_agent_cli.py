"""The agents' command line: bad input is one ``error:`` line and exit status 2 with nothing written,
``--debug`` keeps the traceback, a diverging run stops on the host before a NaN action reaches the env,
checkpoints load with ``weights_only=True`` (a pickled object is refused), and a finished run ends with one
summary line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plasticrl.agents import drq, sac
from plasticrl.common.cli import run_agent

REPO = Path(__file__).resolve().parents[1]

# A valid tiny SAC / DrQ run for the flags that must get past the checks.
SAC_OK = ["--env-id", "cartpole-balance", "--total-steps", "300", "--learning-starts", "100",
          "--batch-size", "32", "--hidden-dims", "16", "16", "--eval-every", "300", "--eval-episodes", "1",
          "--threads", "1"]  # fmt: skip


def _bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    """(flags, a fragment of the expected message) for bad values every agent must refuse."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    (no_checkpoint / "config.json").write_text('{"args": {}}')
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    (not_a_run / "config.json").write_text("{}")
    (not_a_run / "checkpoint.pt").write_bytes(b"")
    return [
        (["--replay-ratio", "0"], "--replay-ratio"),
        (["--replay-ratio", "nan"], "--replay-ratio"),
        (["--learning-starts", "10"], "--learning-starts 10 must be at least --batch-size"),
        (["--total-steps", "0"], "--total-steps must be >= 1"),
        (["--env-id", "nope-run"], "Unknown DMC task 'nope-run'"),
        (["--reset.every", "10", "--reset.modules", "bogus"], "--reset.modules bogus"),
        (["--eval-episodes", "0"], "--eval-episodes must be >= 1"),
        (["--gamma", "1.5"], "--gamma must be in [0, 1]"),
        (["--tau", "0"], "--tau must be in (0, 1]"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
        (["--resume", str(tmp_path / "missing")], "no such run directory"),
        (["--resume", str(no_checkpoint)], "holds no checkpoint.pt"),
        (["--run-dir", str(a_file)], "is a file, not a directory"),
        (["--run-dir", str(a_file / "below")], "which is a file"),
        (["--resume", str(not_a_run)], "is not a plasticrl run config"),
    ]


@pytest.mark.parametrize(
    "agent, base, lr_flag",
    [
        (sac, SAC_OK, "--actor-lr"),
        (drq, [f if f != "cartpole-balance" else "cartpole-swingup" for f in SAC_OK], "--lr"),
    ],
    ids=["sac", "drq"],
)
def test_bad_input_is_one_error_line_and_exit_2_with_nothing_written(tmp_path, capsys, agent, base, lr_flag):
    run_dir = tmp_path / "runs"
    cases = _bad_inputs(tmp_path) + [([lr_flag, "-1"], f"{lr_flag} must be a finite number > 0")]
    for flags, message in cases:
        argv = [*base, "--run-dir", str(run_dir), *flags]
        status = run_agent(agent.main, agent.Args, argv)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert status == 2, (flags, err)
        assert len(errors) == 1 and message in errors[0], (flags, err)
        assert "Traceback" not in err
        assert not run_dir.exists() or not any(run_dir.iterdir()), flags


def test_drq_learning_starts_below_its_default_batch_is_refused(tmp_path, capsys):
    status = run_agent(drq.main, drq.Args, ["--learning-starts", "130", "--run-dir", str(tmp_path)])
    assert status == 2
    assert "--learning-starts 130 must be at least --batch-size 512" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_debug_keeps_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="--gamma must be in"):
        run_agent(sac.main, sac.Args, [*SAC_OK, "--gamma", "2", "--run-dir", str(tmp_path), "--debug"])


def test_a_bug_inside_a_library_keeps_its_traceback(tmp_path, monkeypatch):
    """A ValueError raised by torch (not by plasticrl's checks) is a bug to report, not bad input."""

    def broken_optimizers(nets, args, device):
        return torch.optim.Adam([], lr=1.0)  # torch raises "optimizer got an empty parameter list"

    monkeypatch.setattr(sac, "make_optimizers", broken_optimizers)
    with pytest.raises(ValueError, match="empty parameter list"):
        run_agent(sac.main, sac.Args, [*SAC_OK, "--run-dir", str(tmp_path)])


def test_the_script_prints_one_line_and_exits_2(tmp_path):
    """Through the real script and interpreter: no traceback, status 2, nothing written."""
    run_dir = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, str(REPO / "agents" / "sac.py"), "--replay-ratio", "0", "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --replay-ratio 0.0: replay_ratio must be > 0 (updates per agent step), got 0.0"
    ]
    assert not run_dir.exists()


def test_a_diverging_run_stops_before_a_nan_action_reaches_mujoco(tmp_path, capsys):
    """Learning rates of 1e8 make the actor emit NaN within a few updates; MuJoCo would raise a
    PhysicsError. The run stops with one line naming the first non-finite quantity, status 1."""
    argv = [*SAC_OK, "--total-steps", "2000", "--critic-lr", "1e8", "--actor-lr", "1e8", "--temperature-lr",
            "1e8", "--run-dir", str(tmp_path)]  # fmt: skip
    status = run_agent(sac.main, sac.Args, argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 1, err
    assert len(errors) == 1 and "non-finite" in errors[0] and "update" in errors[0], err
    assert "PhysicsError" not in err and "Traceback" not in err
    [run] = tmp_path.iterdir()
    assert (run / "checkpoint.nonfinite.pt").is_file() and (run / "config.json").is_file()
    assert not (run / "result.json").exists()


def test_a_nan_action_is_caught_even_when_every_loss_is_finite(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sac.torch, "tanh", lambda x: torch.full_like(x, float("nan")))
    status = run_agent(sac.main, sac.Args, [*SAC_OK, "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "non-finite action [nan]" in line and "before agent step 101" in line


def test_checkpoints_load_with_weights_only_and_a_pickled_object_is_refused(tmp_path, capsys):
    argv = [*SAC_OK, "--checkpoint-every", "150", "--diagnostics-every", "50", "--hare-tortoise.enabled",
            "--redo.every", "50", "--run-dir", str(tmp_path)]  # fmt: skip
    assert run_agent(sac.main, sac.Args, argv) == 0
    [run] = tmp_path.iterdir()
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["global_step"] == 300 and checkpoint["probe"]["obs"].shape[0] > 0
    capsys.readouterr()

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    checkpoint["extra"] = Payload()
    with open(run / "checkpoint.pt", "wb") as handle:
        torch.save(checkpoint, handle)
    status = run_agent(sac.main, sac.Args, ["--resume", str(run), "--total-steps", "400"])
    err = capsys.readouterr().err
    assert status == 2
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "refusing to load it" in line
    assert not (tmp_path / "pwned").exists()


def test_a_finished_run_ends_with_one_summary_line(tmp_path, capsys):
    argv = [*SAC_OK, "--eval-every", "150", "--run-dir", str(tmp_path)]
    assert run_agent(sac.main, sac.Args, argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    [run] = tmp_path.iterdir()
    result = json.loads((run / "result.json").read_text())
    assert out[-1].startswith("[sac] cartpole-balance finished: final eval return ")
    assert f"final eval return {result['final_eval_return']:.1f}" in out[-1]
    assert f"best {result['best_eval_return']:.1f}" in out[-1]
    assert f"{result['updates']} updates" in out[-1] and str(run) in out[-1]
    assert result["device"] == "cpu" and result["best_eval_step"] in (150, 300)
