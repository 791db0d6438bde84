import csv
import json
import os
import signal
from dataclasses import dataclass, field

import pytest
import torch

from plasticrl.common import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    EVAL_FILE,
    RESULT_FILE,
    NonFiniteLossError,
    Progress,
    Run,
    atomic_write_json,
    check_finite,
    rng_states,
    run_name,
    seed_everything,
    select_device,
    set_rng_states,
    stop_on_signals,
)


@dataclass
class _Nested:
    every: int = 0


@dataclass
class _Args:
    seed: int = 1
    total_steps: int = 100
    lr: float = 3e-4
    reset: _Nested = field(default_factory=_Nested)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert sorted(os.listdir(tmp_path)) == ["a.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # like open(), not mkstemp's 0o600


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})

    class Unwritable:
        def __repr__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_json(target, {"x": Unwritable()})
    assert json.loads(target.read_text()) == {"x": 1}


def test_run_name_format_and_sanitising():
    name = run_name("sac", "dm/cheetah run", "reset-head+sp", 3, timestamp="20260101-000000")
    assert name == "sac__dm-cheetah-run__reset-head+sp__seed3__20260101-000000"
    assert run_name("sac", "x", "", 0, timestamp="t").split("__")[2] == "base"


def test_run_directory_lifecycle_and_resume(tmp_path):
    args = _Args()
    run = Run.create(tmp_path, "sac", "cheetah-run", "base", args.seed, args)
    config = json.loads((run.path / CONFIG_FILE).read_text())
    assert config["args"]["reset"]["every"] == 0 and "torch" in config["versions"]
    run.log_scalars({"charts/episodic_return": 1.0}, 10)
    run.log_eval(10, [1.0, 3.0])
    run.log_eval(20, [2.0, 2.0], normalized_score=0.5)
    run.save_checkpoint({"global_step": 10, "weights": torch.ones(2)})
    run.log_eval(30, [5.0])  # happens after the checkpoint: discarded on resume
    run.close()

    rows = list(csv.DictReader((run.path / EVAL_FILE).open()))
    assert [r["step"] for r in rows] == ["10", "20", "30"]
    assert float(rows[0]["mean_return"]) == 2.0 and rows[0]["returns"] == "1 3"

    resumed, ckpt = Run.resume(run.path, _Args(total_steps=500), ignore=("total_steps",))
    assert ckpt["global_step"] == 10 and torch.equal(ckpt["weights"], torch.ones(2))
    assert [int(r["step"]) for r in resumed.eval_rows] == [10]
    resumed.write_result({"steps": 10})
    resumed.close()
    assert json.loads((run.path / RESULT_FILE).read_text()) == {"steps": 10}


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        Run.resume(tmp_path / "missing", _Args())
    run = Run.create(tmp_path, "sac", "cheetah-run", "base", 1, _Args())
    run.close()
    with pytest.raises(FileNotFoundError, match=CHECKPOINT_FILE):
        Run.resume(run.path, _Args())
    run = Run(run.path, run.config)
    run.save_checkpoint({"global_step": 0})
    run.close()
    with pytest.raises(ValueError, match=r"reset\.every: saved 0, given 5"):
        Run.resume(run.path, _Args(reset=_Nested(every=5)))


def test_resume_deletes_a_stale_result_and_refuses_before_touching_anything(tmp_path):
    run = Run.create(tmp_path, "sac", "cheetah-run", "base", 1, _Args())
    run.log_eval(4, [1.0])
    run.save_checkpoint({"global_step": 5})
    run.log_eval(20, [2.0])
    run.write_result({"steps": 20})
    run.close()
    files = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.path.iterdir()}

    def refuse(checkpoint):
        raise ValueError(f"no: step {checkpoint['global_step']}")

    with pytest.raises(ValueError, match="no: step 5"):
        Run.resume(run.path, _Args(), check=refuse)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.path.iterdir()} == files
    resumed, _ = Run.resume(run.path, _Args(), check=lambda checkpoint: None)
    resumed.close()
    assert not (run.path / RESULT_FILE).exists()
    assert [int(r["step"]) for r in resumed.eval_rows] == [4]


def test_resume_counts_fields_missing_from_an_older_config_as_their_defaults(tmp_path):
    run = Run.create(tmp_path, "sac", "cheetah-run", "base", 1, {"seed": 1, "reset": {"every": 0}})
    run.save_checkpoint({"global_step": 0})
    run.close()
    given = {"seed": 1, "reset": {"every": 0, "unit": "update"}}
    defaults = {"seed": 1, "reset": {"every": 0, "unit": "update"}}
    with pytest.raises(ValueError, match=r"reset\.unit: saved None, given 'update'"):
        Run.resume(run.path, given)
    Run.resume(run.path, given, defaults=defaults)[0].close()
    with pytest.raises(ValueError, match=r"reset\.unit: saved 'update', given 'step'"):
        Run.resume(run.path, {"seed": 1, "reset": {"every": 0, "unit": "step"}}, defaults=defaults)


def test_check_finite_names_the_loss():
    check_finite({"a": torch.tensor(1.0), "b": 2.0}, step=3)
    with pytest.raises(NonFiniteLossError, match=r"critic_loss.*step 7"):
        check_finite({"actor_loss": torch.tensor(0.5), "critic_loss": torch.tensor(float("nan"))}, step=7)


def test_rng_state_round_trip():
    seed_everything(0)
    state = rng_states()
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    set_rng_states(state)
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_select_device():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="'auto', 'cpu'"):
        select_device("gpu")


def test_sigterm_becomes_a_flag():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert stop["signal"] is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop["signal"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_progress_prints_summary_lines_when_not_a_terminal(capsys):
    import sys

    progress = Progress(100, "sac", every_s=0.0, stream=sys.stdout)
    progress.update(10, ret=1.5)
    progress.close()
    out = capsys.readouterr().out
    assert "[sac] 10/100 steps" in out and "ret=1.5" in out
