"""Every agent's --curvature-every: the curvature tags of its TD loss reach TensorBoard, and measuring them
changes nothing in the run (parameters, random streams, evaluations). Both runs of a pair draw the fixed
probe batch (diagnostics on, never due), which the buffer's sampling stream sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plasticrl.common.cli import cli

REPO = Path(__file__).resolve().parents[1]


def _tags(run_dir: str) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _sac(tmp_path: Path, curvature_every: int):
    from plasticrl.agents import sac

    args = sac.Args(env_id="cartpole-balance", total_steps=300, learning_starts=100, batch_size=32,
                    hidden_dims=(16, 16), eval_every=300, eval_episodes=1, diagnostics_every=100_000,
                    probe_batch_size=32, threads=1, curvature_every=curvature_every,
                    run_dir=str(tmp_path / f"sac{curvature_every}"))  # fmt: skip
    return sac.main(args), "critic", ("encoder", "head")


def _drq(tmp_path: Path, curvature_every: int):
    from plasticrl.agents import drq

    args = drq.Args(env_id="cartpole-swingup", total_steps=150, learning_starts=120, image_size=32,
                    batch_size=8, hidden_dims=(16, 16), feature_dim=8, eval_every=150, eval_episodes=1,
                    diagnostics_every=100_000, probe_batch_size=16, threads=1,
                    curvature_every=curvature_every,
                    run_dir=str(tmp_path / f"drq{curvature_every}"))  # fmt: skip
    return drq.main(args), "critic", ("encoder", "critic")


ATARI = ["--env-id", "Pong", "--total-steps", "100", "--learning-starts", "60", "--batch-size", "4",
         "--eval-every", "100", "--eval-episodes", "1", "--max-episode-frames", "200",
         "--diagnostics-every", "100000", "--probe-batch-size", "16", "--threads", "1"]  # fmt: skip


def _drq_atari(tmp_path: Path, curvature_every: int):
    from plasticrl.agents import drq_atari

    flags = [*ATARI, "--hidden-dim", "16", "--padding", "valid", "--curvature-every", str(curvature_every),
             "--run-dir", str(tmp_path / f"drqa{curvature_every}")]  # fmt: skip
    return drq_atari.main(cli(drq_atari.Args, flags)), "q", ("encoder", "head")


def _bbf(tmp_path: Path, curvature_every: int):
    from plasticrl.agents import bbf

    flags = [*ATARI, "--width-scale", "1", "--num-blocks", "1", "--hidden-dim", "16", "--buffer-size", "500",
             "--curvature-every", str(curvature_every), "--run-dir", str(tmp_path / f"bbf{curvature_every}")]
    return bbf.main(cli(bbf.Args, flags)), "q", ("encoder", "projection", "head")


@pytest.mark.parametrize("make", [_sac, _drq, _drq_atari, _bbf], ids=["sac", "drq", "drq_atari", "bbf"])
def test_curvature_tags_are_logged_and_the_run_is_unchanged(tmp_path, make):
    with_curvature, network, parts = make(tmp_path, 20)
    without, _, _ = make(tmp_path, 0)
    tags = _tags(with_curvature["run_dir"])
    for metric in ("sharpness", "hessian_trace", "hessian_rank", "grad_noise_scale"):
        values = tags[f"plasticity/{metric}/{network}"]
        assert len(values) == with_curvature["updates"] // 20 and all(v == v for v in values), metric
    for part in parts:
        assert f"plasticity/sharpness/{network}/{part}" in tags
    assert not any(t.startswith("plasticity/sharpness") for t in _tags(without["run_dir"]))
    same = ("final_eval_return", "updates", "episodes")
    assert {k: with_curvature[k] for k in same} == {k: without[k] for k in same}
    saved = json.loads((Path(with_curvature["run_dir"]) / "result.json").read_text())
    assert saved["final_eval_return"] == without["final_eval_return"]
