"""benchmarks/aggregate.py end to end: the BBF score files, run directories of a sweep (final scores,
eval.csv curves, TensorBoard plasticity tags, the sweep's cost records), plots, and bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plasticrl.benchmarks import aggregate, sweep_cli
from plasticrl.benchmarks.sweep_results import DataError

REPO = Path(__file__).resolve().parents[1]
SCORES = REPO / "benchmarks" / "reference_scores"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "aggregate.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_main(capsys, *args: str) -> tuple[int, str]:
    """The command line run in this process, as the script runs it: (exit status, stderr)."""
    status = sweep_cli.run_main(aggregate.main, list(args))
    return status, capsys.readouterr().err


# ----------------------------------------------------------------------------- the BBF score files


def test_bbf_files_aggregate_to_the_published_iqms(tmp_path):
    files = [str(SCORES / f) for f in ("RR2_BBF.csv", "RR2_BBF-SPR.csv", "RR8_BBF.csv")]
    out = tmp_path / "bbf.json"
    report = aggregate.main(
        [*files, "--suite", "atari100k", "--reps", "500", "--json", str(out), "--no-plasticity"]
    )
    iqm = {v: e["aggregates"]["IQM"]["point"] for v, e in report["variants"].items()}
    assert iqm["RR2_BBF"] == pytest.approx(0.940, abs=5e-4)
    assert iqm["RR2_BBF-SPR"] == pytest.approx(0.826, abs=5e-4)
    assert iqm["RR8_BBF"] == pytest.approx(1.023, abs=5e-4)  # every run pooled
    rr8 = report["variants"]["RR8_BBF"]
    assert (rr8["runs"], rr8["tasks"], rr8["runs_per_task"]) == (1508, 26, {"min": 52, "max": 60})
    notes = "\n".join(report["notes"])
    assert "RR2_BBF.csv: dropped 403 rows of 29 tasks outside the atari100k suite" in notes
    assert "RR8_BBF.csv: its GameScoreNormalized column agrees" in notes
    assert "RR8_BBF: 52–60 runs per task" in notes
    assert json.loads(out.read_text())["variants"]["RR2_BBF"]["per_task"]["Pong"]["runs"] == 14


def test_runs_per_task_cuts_each_game_to_its_first_runs():
    report = aggregate.main(
        [str(SCORES / "RR8_BBF.csv"), "--suite", "atari100k", "--runs-per-task", "52", "--reps", "100"]
    )
    entry = report["variants"]["RR8_BBF"]
    assert entry["runs"] == 52 * 26 and entry["aggregates"]["IQM"]["point"] == pytest.approx(1.033, abs=5e-4)


def test_normalised_column_that_disagrees_is_an_error(tmp_path):
    rows = (SCORES / "RR2_BBF.csv").read_text().splitlines()
    header, first = rows[0], rows[1].split(",")
    assert first[2] == "alien"
    first[4] = "0.5"  # the file says 0.5, the human-normalised GameScoreAverage is 0.15
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([header, ",".join(first), *rows[2:]]) + "\n")
    with pytest.raises(DataError, match="GameScoreNormalized 0.5 disagrees"):
        aggregate.main([str(bad), "--suite", "atari100k", "--reps", "10"])


@pytest.mark.parametrize(
    "content,suite,message",
    [
        ("game,seed\npong,1\n", "atari100k", "no raw score column"),
        ("seed,score\n1,3\n", "atari100k", "no task column"),
        (
            "game,seed,score\npitfall,1,0\n",
            "atari",
            "No human/random reference score for Atari game 'pitfall'",
        ),
        ("game,seed,score\npong,1,abc\n", "atari100k", "score 'abc' is not a number"),
        ("game,seed,score\npitfall,1,0\n", "atari100k", "no rows of a atari100k task"),
    ],
)
def test_bad_score_csvs_are_one_error_line(tmp_path, capsys, content, suite, message):
    path = tmp_path / "scores.csv"
    path.write_text(content)
    status, err = run_main(capsys, str(path), "--suite", suite)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_bad_input_through_the_command_line(tmp_path):
    done = run_cli(str(SCORES / "RR2_BBF.csv"), "--suite", "atari57")
    assert (
        done.returncode == 2 and done.stderr.count("\n") == 1 and "invalid choice: 'atari57'" in done.stderr
    )


# ----------------------------------------------------------------------------- run directories


def make_run(
    root: Path,
    variant: str,
    env: str,
    seed: int,
    final: float,
    *,
    steps=(100, 200),
    plasticity: dict | None = None,
    resets=(),
    attempts=(),
    device="cpu",
    gpu_share=None,
    total_steps=200,
    finished=True,
) -> Path:
    """A run directory as an agent writes it, inside a sweep entry directory with the sweep's record."""
    from torch.utils.tensorboard import SummaryWriter

    entry = root / variant / f"{env}__seed{seed}"
    run = entry / f"sac__{env}__tag__seed{seed}__0"
    run.mkdir(parents=True)
    config = {"agent": "sac", "env_id": env, "seed": seed, "tag": "tag", "args": {"total_steps": total_steps}}
    (run / "config.json").write_text(json.dumps(config))
    with (run / "eval.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "mean_return", "normalized_score", "returns"])
        for i, step in enumerate(steps):
            value = final * (i + 1) / len(steps)
            writer.writerow([step, value, "", f"{value:g}"])
    writer = SummaryWriter(str(run))
    for tag, values in (plasticity or {}).items():
        for step, value in zip(steps, values):
            writer.add_scalar(tag, value, step)
    for step in resets:
        writer.add_scalar("interventions/reset", 1.0, step)
    writer.close()
    record = {"variant": variant, "runs_per_entry": "one", "gpu_share": gpu_share, "attempts": list(attempts)}
    (entry / "sweep_entry.json").write_text(json.dumps(record))
    if finished:
        result = {"final_eval_return": final, "wall_time_s": 50.0, "device": device, "steps": total_steps}
        (run / "result.json").write_text(json.dumps(result))
    return run


FINALS = {  # variant -> env -> returns of seeds 1, 2, 3
    "base": {"cheetah-run": [100, 200, 300], "walker-walk": [400, 500, 600]},
    "reset": {"cheetah-run": [150, 250, 350], "walker-walk": [700, 900, 950]},
}


# The sweep's record of each run's attempts: the reset runs were resumed once (100 s + 260 s).
ATTEMPTS = {"base": [{"wall_s": 36.0}], "reset": [{"wall_s": 100.0}, {"wall_s": 260.0}]}


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for variant, per_env in FINALS.items():
        for env, finals in per_env.items():
            for seed, final in enumerate(finals, start=1):
                make_run(
                    root, variant, env, seed, final,
                    plasticity={
                        "plasticity/dormant_ratio/critic": [0.1 * seed, 0.2 * seed],
                        "plasticity/dormant_ratio/critic/layer0": [9.0, 9.0],  # per layer: not aggregated
                        "plasticity/srank/critic": [10.0 + seed, 20.0 + seed],
                        "plasticity/weight_norm/actor": [1.0, 2.0],
                    },
                    resets=(150,) if variant == "reset" else (),
                    attempts=ATTEMPTS[variant],
                    device="cuda" if variant == "reset" else "cpu",
                    gpu_share=0.5 if variant == "reset" else None,
                )  # fmt: skip
    # An extra evaluation point that not every run has, and an unfinished run: both left out and stated.
    make_run(root, "base", "cheetah-run", 9, 0.0, steps=(100, 200, 300), finished=False)
    return root


def test_run_directories_aggregate_by_hand(sweep_dir, tmp_path):
    plots = tmp_path / "plots"
    report = aggregate.main(
        [str(sweep_dir), "--suite", "dmc", "--reps", "300", "--curve-reps", "200", "--plots", str(plots),
         "--json", str(tmp_path / "a.json"), "--markdown", str(tmp_path / "a.md")]
    )  # fmt: skip
    base, reset = report["variants"]["base"], report["variants"]["reset"]
    # base: .1 .2 .3 | .4 .5 .6 -> IQM (cut 1 of 6) = mean(.2 .3 .4 .5) = .35; task means .2, .5
    assert base["aggregates"]["IQM"]["point"] == pytest.approx(0.35)
    assert base["aggregates"]["Mean"]["point"] == pytest.approx(0.35)
    assert base["aggregates"]["Optimality Gap"]["point"] == pytest.approx(0.65)
    # reset: .15 .25 .35 | .7 .9 .95 -> IQM = mean(.25 .35 .7 .9) = .55; median of (.25, .85) = .55
    assert reset["aggregates"]["IQM"]["point"] == pytest.approx(0.55)
    assert reset["aggregates"]["Median"]["point"] == pytest.approx(0.55)
    assert reset["per_task"]["walker-walk"] == {
        "runs": 3, "mean_score": pytest.approx(0.85), "mean_raw": pytest.approx(850.0),
        "min_score": pytest.approx(0.7), "max_score": pytest.approx(0.95),
    }  # fmt: skip
    # Compute: the sweep's attempts (100 + 260 s) cover a resumed run, not result.json's last session (50 s).
    assert reset["cost"]["wall_hours_total"] == pytest.approx(6 * 360 / 3600)
    assert reset["cost"]["gpu_hours_per_run"] == pytest.approx(0.5 * 360 / 3600)
    assert base["cost"]["gpu_hours_total"] == 0.0 and base["cost"]["wall_hours_per_run"] == pytest.approx(
        0.01
    )
    assert any("1 unfinished run directories" in note for note in report["notes"])

    curve = base["sample_efficiency"]
    assert curve["steps"] == [100, 200]
    assert curve["point"][1] == pytest.approx(0.35)  # the last evaluation is the final score
    assert curve["point"][0] == pytest.approx(0.175)  # every run at half its final return

    plasticity = reset["plasticity"]
    assert set(plasticity["curves"]) == {"dormant_ratio/critic", "srank/critic", "weight_norm/actor"}
    dormant = plasticity["curves"]["dormant_ratio/critic"]
    assert dormant["steps"] == [100, 200] and dormant["point"] == pytest.approx([0.2, 0.4])  # mean over seeds
    assert dormant["low"][0] <= 0.2 <= dormant["high"][0]
    assert plasticity["events"] == {"reset": [150]} and base["plasticity"]["events"] == {}

    table = (tmp_path / "a.md").read_text()
    assert "| base | 6 | 2 | 3 | 0.010 | 0.000 | 0.060 | 0.350 [" in table
    assert json.loads((tmp_path / "a.json").read_text())["variants"]["reset"]["runs"] == 6

    from matplotlib.image import imread

    names = {p.name for p in plots.iterdir()}
    assert names == {"aggregates.png", "performance_profiles.png", "sample_efficiency.png", "plasticity.png"}
    for path in plots.iterdir():
        image = imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 300 and np.std(image[..., :3]) > 0.05, path.name


def test_mixed_or_empty_sweep_directories_are_refused(tmp_path):
    with pytest.raises(DataError, match="no run directories"):
        aggregate.main([str(tmp_path), "--suite", "dmc"])
    make_run(tmp_path / "a", "base", "cheetah-run", 1, 100.0, finished=False)
    with pytest.raises(DataError, match="no finished runs .* 1 run directories have not finished"):
        aggregate.main([str(tmp_path / "a"), "--suite", "dmc"])
    make_run(tmp_path / "b", "base", "cheetah-run", 1, 100.0, total_steps=200)
    make_run(tmp_path / "b", "base", "walker-walk", 1, 100.0, total_steps=400)
    with pytest.raises(DataError, match="different --total-steps"):
        aggregate.main([str(tmp_path / "b"), "--suite", "dmc"])
    make_run(tmp_path / "c", "base", "cheetah-run", 1, 100.0)
    make_run(tmp_path / "c", "base", "Pong", 1, 10.0)
    with pytest.raises(DataError, match="mixed sweep directory: 1 finished runs are not dmc tasks: .*Pong"):
        aggregate.main([str(tmp_path / "c"), "--suite", "dmc"])
    make_run(tmp_path / "d", "base", "hopper-hop", 1, 100.0)
    with pytest.raises(DataError, match="1 finished runs are not dmc-planet tasks: .*hopper-hop"):
        aggregate.main([str(tmp_path / "d"), "--suite", "dmc-planet"])
    done = run_cli(str(tmp_path / "nowhere"), "--suite", "dmc")
    assert (
        done.returncode == 2
        and done.stderr.startswith("error: ")
        and "no such file or directory" in done.stderr
    )
