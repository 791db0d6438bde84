"""SAC from states: losses against a hand computation, the update, the primacy-bias reset, smoke runs of
every intervention flag, kill-and-resume equality, non-finite losses and bad input."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from plasticrl.agents import sac
from plasticrl.buffers import ReplayBatch
from plasticrl.common import NonFiniteLossError
from plasticrl.common import evaluation as agent_evaluation
from plasticrl.common.agent_interventions import build_interventions
from plasticrl.common.cli import exit_code
from plasticrl.common.loop import NONFINITE_CHECKPOINT_FILE
from plasticrl.interventions import (
    CBPConfig,
    HareTortoiseConfig,
    InjectionConfig,
    L2InitConfig,
    ReDoConfig,
    Reset,
    ResetConfig,
    ShrinkPerturbConfig,
)
from plasticrl.networks import soft_update_

REPO = Path(__file__).resolve().parents[1]


def tiny_args(tmp_path: Path, **overrides) -> sac.Args:
    """A run of 1200 steps (one full training episode) with 200 updates of small networks."""
    settings = dict(
        env_id="cartpole-swingup",
        total_steps=1200,
        learning_starts=1000,
        batch_size=32,
        hidden_dims=(32, 32),
        eval_every=600,
        eval_episodes=1,
        diagnostics_every=100,
        log_every=100,
        checkpoint_every=0,
        probe_batch_size=64,
        threads=1,
        run_dir=str(tmp_path / "runs"),
    )
    settings.update(overrides)
    return sac.Args(**settings)


def scalar_tags(run_dir: str) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir)
    events.Reload()
    return set(events.Tags()["scalars"])


def eval_rows(run_dir: str | Path) -> list[dict]:
    if not (Path(run_dir) / "eval.csv").is_file():
        return []
    with open(Path(run_dir) / "eval.csv", newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- losses by hand


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _mlp(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    for i, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def _actor_np(actor: sac.Actor, obs: np.ndarray, noise: np.ndarray):
    layers = [(_np(b.linear.weight), _np(b.linear.bias)) for b in actor.encoder]
    layers.append((_np(actor.head.weight), _np(actor.head.bias)))
    out = _mlp(obs, layers)
    action_dim = noise.shape[1]
    mean, raw = out[:, :action_dim], out[:, action_dim:]
    low, high = actor.log_std_bounds
    log_std = low + 0.5 * (high - low) * (np.tanh(raw) + 1)
    pre = mean + np.exp(log_std) * noise
    action = np.tanh(pre)
    log_prob = (-0.5 * noise**2 - log_std - 0.5 * np.log(2 * np.pi) - np.log(1 - np.tanh(pre) ** 2)).sum(1)
    return action, log_prob


def _critic_np(critic, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
    x = np.concatenate([obs, action], axis=1)
    values = []
    for m in range(critic.num_members):
        layers = [(_np(b.linear.members[m].weight), _np(b.linear.members[m].bias)) for b in critic.encoder]
        layers.append((_np(critic.head.members[m].weight), _np(critic.head.members[m].bias)))
        values.append(_mlp(x, layers)[:, 0])
    return np.stack(values)


def _tiny_problem():
    torch.manual_seed(3)
    args = sac.Args(hidden_dims=(5, 4), init_temperature=0.7)
    nets = sac.SACNetworks(3, 2, args)
    target = copy.deepcopy(nets)
    with torch.no_grad():  # a target that differs from the online critic
        for p in target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    batch = ReplayBatch(
        obs=torch.randn(4, 3, generator=g),
        action=torch.rand(4, 2, generator=g) * 2 - 1,
        reward=torch.randn(4, generator=g),
        discount=torch.tensor([0.99, 0.0, 0.99, 0.99]),
        next_obs=torch.randn(4, 3, generator=g),
        n_steps=torch.ones(4, dtype=torch.int64),
        indices=torch.arange(4),
        weights=torch.ones(4),
    )
    return args, nets, target, batch, torch.randn(4, 2, generator=g)


def test_critic_loss_matches_hand_computation():
    _, nets, target, batch, noise = _tiny_problem()
    loss, q = sac.critic_loss(nets, target, batch, noise)
    next_action, next_log_prob = _actor_np(nets.actor, _np(batch.next_obs), _np(noise))
    next_q = _critic_np(target.critic, _np(batch.next_obs), next_action).min(axis=0)
    y = _np(batch.reward) + _np(batch.discount) * (next_q - 0.7 * next_log_prob)
    q_expected = _critic_np(nets.critic, _np(batch.obs), _np(batch.action))
    expected = ((q_expected[0] - y) ** 2).mean() + ((q_expected[1] - y) ** 2).mean()
    np.testing.assert_allclose(_np(q), q_expected, rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_actor_and_temperature_losses_match_hand_computation():
    _, nets, _, batch, noise = _tiny_problem()
    loss, log_prob = sac.actor_loss(nets, batch.obs, noise)
    action, expected_log_prob = _actor_np(nets.actor, _np(batch.obs), _np(noise))
    q = _critic_np(nets.critic, _np(batch.obs), action).min(axis=0)
    np.testing.assert_allclose(_np(log_prob), expected_log_prob, rtol=1e-5, atol=1e-5)
    assert loss.item() == pytest.approx((0.7 * expected_log_prob - q).mean(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in nets.critic.parameters())  # only dQ/da was needed
    assert nets.actor.head.weight.grad is not None
    alpha_loss = sac.temperature_loss(nets, log_prob, target_entropy=-1.0)
    assert alpha_loss.item() == pytest.approx(0.7 * (-expected_log_prob.mean() + 1.0), rel=1e-5)
    alpha_loss.backward()  # d/dlogα [α(H − H̄)] = α(H − H̄)
    assert nets.temperature.log_alpha.grad.item() == pytest.approx(alpha_loss.item(), rel=1e-6)


def test_update_steps_every_part_and_moves_the_target_by_tau():
    args, nets, target, batch, _ = _tiny_problem()
    args = dataclasses.replace(args, tau=0.25)
    optimizers = sac.make_optimizers(nets, args, torch.device("cpu"))
    before = {k: v.clone() for k, v in nets.state_dict().items()}
    target_before = [p.clone() for p in target.critic.parameters()]
    metrics = sac.update(
        nets, target, optimizers, batch, args, -1.0, {"critic": [], "actor": [], "temperature": []}
    )
    assert set(metrics) >= {"losses/critic", "losses/actor", "losses/temperature", "losses/alpha"}
    for name, value in nets.state_dict().items():
        assert not torch.equal(value, before[name]), name
    for old, new, online in zip(target_before, target.critic.parameters(), nets.critic.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * online)
    assert torch.equal(target.actor.head.weight, copy.deepcopy(target).actor.head.weight)


def _two_pass_update(nets, target, optimizers, batch, args, target_entropy):
    """The update with one backward and one step per loss (the order of sac_learner.py)."""
    loss_q, _ = sac.critic_loss(nets, target, batch, torch.randn_like(batch.action))
    optimizers.critic.zero_grad(set_to_none=True)
    loss_q.backward()
    optimizers.critic.step()
    soft_update_(target.critic, nets.critic, args.tau)
    loss_pi, log_prob = sac.actor_loss(nets, batch.obs, torch.randn_like(batch.action))
    optimizers.actor.zero_grad(set_to_none=True)
    loss_pi.backward()
    optimizers.actor.step()
    loss_alpha = sac.temperature_loss(nets, log_prob, target_entropy)
    optimizers.temperature.zero_grad(set_to_none=True)
    loss_alpha.backward()
    optimizers.temperature.step()


def test_shared_actor_and_temperature_backward_gives_the_same_numbers_as_separate_passes():
    args, nets, target, batch, _ = _tiny_problem()
    twin, twin_target = copy.deepcopy(nets), copy.deepcopy(target)
    optimizers = sac.make_optimizers(nets, args, torch.device("cpu"))
    twin_optimizers = sac.make_optimizers(twin, args, torch.device("cpu"))
    no_penalties = {"critic": [], "actor": [], "temperature": []}
    for seed in range(3):
        torch.manual_seed(seed)
        sac.update(nets, target, optimizers, batch, args, -1.0, no_penalties)
        torch.manual_seed(seed)
        _two_pass_update(twin, twin_target, twin_optimizers, batch, args, -1.0)
    for (name, a), b in zip(nets.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(target.state_dict().values(), twin_target.state_dict().values()):
        assert torch.equal(a, b)


def test_primacy_bias_reset_recreates_the_whole_agent_and_syncs_the_target():
    args, nets, target, batch, _ = _tiny_problem()
    args = dataclasses.replace(args, reset=ResetConfig(every=1, modules=("all",)))
    optimizers = sac.make_optimizers(nets, args, torch.device("cpu"))
    parts = {
        "critic": ([nets.critic], optimizers.critic),
        "actor": ([nets.actor], optimizers.actor),
        "temperature": ([nets.temperature], optimizers.temperature),
    }
    interventions, penalties = build_interventions(
        args, nets, target, parts, lambda: None, (batch.obs, batch.action)
    )
    sac.update(nets, target, optimizers, batch, args, -1.0, penalties)
    trained = {k: v.clone() for k, v in nets.state_dict().items()}
    assert interventions.maybe_apply(1) == {"interventions/reset": 1.0}
    assert nets.temperature().item() == pytest.approx(0.7)
    for name, value in nets.state_dict().items():
        assert not torch.equal(value, trained[name]), name
    for opt in (optimizers.actor, optimizers.critic, optimizers.temperature):
        assert len(opt.state) == 0
    for name, value in nets.critic.state_dict().items():
        assert torch.equal(target.critic.state_dict()[name], value)


# ----------------------------------------------------------------------------- smoke runs


def test_smoke_run_writes_a_complete_run_directory(tmp_path):
    args = tiny_args(tmp_path, reset=ResetConfig(every=100, modules=("all",)))
    summary = sac.main(args)
    assert summary["updates"] == 200  # floor((1200 − 1000) · 1)
    assert summary["steps"] == 1200 and summary["episodes"] == 1
    assert summary["interventions"] == {"reset": 2}
    run_dir = Path(summary["run_dir"])
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("events")) == [
        "config.json",
        "eval.csv",
        "result.json",
    ]
    assert json.loads((run_dir / "result.json").read_text())["updates"] == 200
    assert [int(r["step"]) for r in eval_rows(run_dir)] == [600, 1200]
    tags = scalar_tags(str(run_dir))
    expected = {
        "charts/episodic_return",
        "charts/episodic_length",
        "charts/SPS",
        "charts/updates",
        "losses/critic",
        "losses/actor",
        "losses/temperature",
        "eval/episodic_return",
        "interventions/reset",
        "plasticity/dormant_ratio/actor",
        "plasticity/dormant_ratio/critic",
        "plasticity/srank/critic",
        "plasticity/srank/critic/member1",
        "plasticity/distance_from_init/critic",
        "plasticity/dormant_ratio/critic/encoder.0.act.members.1",
    }
    assert expected <= tags, expected - tags


@pytest.mark.parametrize("replay_ratio,updates", [(0.25, 50), (4.0, 800)])
def test_fractional_and_high_replay_ratios_run_the_exact_number_of_updates(tmp_path, replay_ratio, updates):
    args = tiny_args(tmp_path, replay_ratio=replay_ratio, diagnostics_every=0, eval_every=1200)
    assert sac.main(args)["updates"] == updates


INTERVENTIONS = {
    "reset": dict(reset=ResetConfig(every=100, modules=("critic.head", "temperature"))),
    "shrink_perturb": dict(shrink_perturb=ShrinkPerturbConfig(every=100, modules=("actor", "critic"))),
    "hare_tortoise": dict(hare_tortoise=HareTortoiseConfig(enabled=True, every=100)),
    "l2_init": dict(l2_init=L2InitConfig(enabled=True)),
    "redo": dict(redo=ReDoConfig(every=100, batch_size=64)),
    "injection": dict(injection=InjectionConfig(at=(100,), modules=("actor.head", "critic.head"))),
    "cbp": dict(cbp=CBPConfig(enabled=True, replacement_rate=0.01, maturity_threshold=10)),
}


@pytest.mark.parametrize("name", sorted(INTERVENTIONS))
def test_every_intervention_flag_runs(tmp_path, name):
    args = tiny_args(tmp_path, diagnostics_every=0, eval_every=1200, **INTERVENTIONS[name])
    summary = sac.main(args)
    assert summary["updates"] == 200
    if name != "l2_init":  # L2-init acts through the loss, not as an event
        assert summary["interventions"].get(name, 0) >= 1
        assert f"interventions/{name}" in scalar_tags(summary["run_dir"])


def test_hare_tortoise_follows_an_injection_in_the_agent(tmp_path):
    # The tortoise takes the injected structure (interventions.HareTortoise.sync_structure); the acting
    # tortoise then holds the injected critic head, and hare resets after the injection still work.
    args = tiny_args(
        tmp_path,
        diagnostics_every=0,
        eval_every=1200,
        hare_tortoise=HareTortoiseConfig(enabled=True, every=50, act_with="tortoise"),
        injection=InjectionConfig(at=(60,), modules=("critic.head",)),
    )
    summary = sac.main(args)
    assert summary["updates"] == 200
    assert summary["interventions"]["injection"] == 1 and summary["interventions"]["hare_tortoise"] >= 3


def test_a_step_unit_reset_fires_right_after_the_listed_agent_steps(tmp_path, monkeypatch):
    """learning starts 1000, replay ratio 2: update-unit counts would be offset and halved; agent steps
    are not. Each reset comes after the two updates of its step."""
    updates, fired = [0], []
    update = sac.update

    def counting_update(*args, **kwargs):
        updates[0] += 1
        return update(*args, **kwargs)

    apply = Reset.apply

    def recording_apply(self):
        fired.append(updates[0])
        apply(self)

    monkeypatch.setattr(sac, "update", counting_update)
    monkeypatch.setattr(Reset, "apply", recording_apply)
    reset = dataclasses.replace(sac.Args().reset, every=100, at=(1001, 1175), start=1001, unit="step")
    summary = sac.main(
        tiny_args(tmp_path, replay_ratio=2.0, diagnostics_every=0, eval_every=1200, reset=reset)
    )
    steps = [1001, 1100, 1175, 1200]
    assert summary["updates"] == 400 and summary["interventions"] == {"reset": len(steps)}
    assert fired == [2 * (step - 1000) for step in steps]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(summary["run_dir"])
    events.Reload()
    assert [e.step for e in events.Scalars("interventions/reset")] == steps


# ----------------------------------------------------------------------------- resume


def _agent_command(*flags: str) -> list[str]:
    return [sys.executable, str(REPO / "agents" / "sac.py"), *flags]


def _env() -> dict:
    return {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    start = time.time()
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {path.name} appeared: {process.stderr.read()}")
        if time.time() - start > timeout:
            process.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


RESUME_SETTINGS = dict(
    total_steps=1600,
    learning_starts=400,
    eval_every=800,
    diagnostics_every=400,
    log_every=200,
    checkpoint_every=700,
    # Both schedule units, each firing before and after the interruptions: steps 600, 1200 and updates
    # 500, 1000 (agent steps 900, 1400).
    reset=dataclasses.replace(sac.Args().reset, every=600, unit="step"),  # the whole agent
    shrink_perturb=dataclasses.replace(sac.Args().shrink_perturb, every=500),  # actor and critic
)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> dict:
    """The uninterrupted run the resumed ones must reproduce."""
    return sac.main(tiny_args(tmp_path_factory.mktemp("reference"), **RESUME_SETTINGS))


def _flags(args: sac.Args) -> list[str]:
    """The command line of ``args`` (the fields tiny_args and RESUME_SETTINGS set)."""
    flags = []
    for name in (
        "env_id", "total_steps", "learning_starts", "batch_size", "eval_every", "eval_episodes",
        "diagnostics_every", "log_every", "checkpoint_every", "probe_batch_size", "threads", "run_dir",
    ):  # fmt: skip
        flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    flags += ["--hidden-dims", *map(str, args.hidden_dims)]
    flags += ["--reset.every", str(args.reset.every), "--reset.unit", args.reset.unit]
    return flags + ["--shrink-perturb.every", str(args.shrink_perturb.every)]


def eval_scalars(run_dir: str | Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("eval/episodic_return")]


def test_killed_and_resumed_run_gives_the_same_evaluations(tmp_path, reference_run):
    reference = reference_run
    args = tiny_args(tmp_path / "killed", **RESUME_SETTINGS)
    # SIGKILL after the first checkpoint (step 700, mid-episode: resuming replays the episode) and after
    # the evaluation of step 800, which the resumed run must drop from eval.csv and TensorBoard and redo.
    process = subprocess.Popen(_agent_command(*_flags(args)), env=_env(), stderr=subprocess.PIPE, text=True)
    runs = Path(args.run_dir)
    while not runs.exists() or not any(runs.iterdir()):
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.01)
    [run_dir] = runs.iterdir()
    _wait_for(run_dir / "checkpoint.pt", process)
    start = time.time()
    while not eval_rows(run_dir):
        assert process.poll() is None, process.stderr.read()
        assert time.time() - start < 120, "no evaluation row appeared"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (run_dir / "result.json").exists()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["global_step"] == 700
    assert [int(r["step"]) for r in eval_rows(run_dir)] == [800]  # written after the checkpoint
    # --resume alone: the saved config gives every other flag.
    finished = subprocess.run(
        _agent_command("--resume", str(run_dir)), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    assert len(eval_rows(run_dir)) == 2
    assert eval_rows(run_dir) == eval_rows(reference["run_dir"])
    assert eval_scalars(run_dir) == eval_scalars(reference["run_dir"])  # step 800 once, the new value
    result = json.loads((run_dir / "result.json").read_text())
    assert result["updates"] == reference["updates"] == 1200
    expected = {"reset": 2, "shrink_perturb": 2}
    assert result["interventions"] == reference["interventions"] == expected
    assert result["final_eval_return"] == reference["final_eval_return"]


def test_sigterm_writes_a_checkpoint_and_the_resumed_run_matches(tmp_path, reference_run):
    reference = reference_run
    args = tiny_args(tmp_path / "stopped", **dict(RESUME_SETTINGS, checkpoint_every=0))
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        stopped = sac.main(args)
    finally:
        timer.cancel()
    assert stopped["interrupted"] == "SIGTERM" and exit_code(stopped) == 143
    run_dir = Path(stopped["run_dir"])
    assert not (run_dir / "result.json").exists()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["global_step"] == stopped["steps"]
    assert 0 < stopped["steps"] < 1600
    resumed = sac.main(dataclasses.replace(args, resume=str(run_dir)))
    assert resumed["updates"] == 1200
    assert eval_rows(run_dir) == eval_rows(reference["run_dir"])


def test_non_finite_loss_stops_the_run_with_a_checkpoint_and_a_message(tmp_path):
    args = tiny_args(tmp_path, critic_lr=1e38, log_every=1, diagnostics_every=0)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss losses/\w+ = .* first at update \d+"):
        sac.main(args)
    [run_dir] = (tmp_path / "runs").iterdir()
    assert (run_dir / NONFINITE_CHECKPOINT_FILE).is_file()
    assert not (run_dir / "result.json").exists()


def test_the_first_non_finite_update_is_named_even_when_detected_later(tmp_path, monkeypatch):
    """One NaN actor loss at update 37 (agent step 1019 at replay ratio 2), finite before and after: the
    log step 1100 names that update, its step and the loss."""
    calls = [0]
    update = sac.update

    def update_with_one_nan(*args, **kwargs):
        calls[0] += 1
        metrics = update(*args, **kwargs)
        if calls[0] == 37:
            metrics["losses/actor"] = metrics["losses/actor"] * float("nan")
        return metrics

    monkeypatch.setattr(sac, "update", update_with_one_nan)
    args = tiny_args(tmp_path, replay_ratio=2.0, diagnostics_every=0, eval_every=1200)
    with pytest.raises(NonFiniteLossError) as error:
        sac.main(args)
    message = str(error.value)
    assert message.startswith(
        "non-finite loss losses/actor = nan first at update 37 (agent step 1019); detected at step 1100 "
        "(update 200)"
    ), message
    assert calls[0] == 200  # the run went on to the log step, without a host sync per update


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (dict(env_id="cheetah-runn"), ValueError, "Unknown DMC task 'cheetah-runn'.*cheetah-run"),
        (dict(replay_ratio=0.0), ValueError, "--replay-ratio"),
        (dict(replay_ratio=-2.0), ValueError, "--replay-ratio"),
        (dict(learning_starts=1200), ValueError, "--learning-starts 1200 must be below --total-steps 1200"),
        (dict(eval_every=0), ValueError, "--eval-every must be >= 1"),
        (dict(batch_size=2000), ValueError, "--learning-starts 1000 must be at least --batch-size 2000"),
        (dict(reset=ResetConfig(every=10, modules=("encoder",))), ValueError, "--reset.modules encoder"),
        (dict(redo=ReDoConfig(every=10, modules=("temperature",))), ValueError, "no recyclable hidden layer"),
    ],
)
def test_bad_input_is_refused_before_a_run_directory_is_made(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        sac.main(tiny_args(tmp_path, **overrides))
    assert not (tmp_path / "runs").exists()


def test_resume_needs_a_checkpoint_and_matching_flags(tmp_path):
    summary = sac.main(tiny_args(tmp_path, diagnostics_every=0))
    with pytest.raises(FileNotFoundError, match="holds no checkpoint.pt"):
        sac.main(tiny_args(tmp_path, resume=summary["run_dir"]))
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        sac.main(tiny_args(tmp_path, resume=str(tmp_path / "missing")))
    finished = sac.main(tiny_args(tmp_path, diagnostics_every=0, checkpoint_every=600))
    with pytest.raises(
        ValueError, match="conflict with the saved config.json: batch_size: saved 32, given 64"
    ):
        sac.main(
            tiny_args(
                tmp_path, diagnostics_every=0, checkpoint_every=600, batch_size=64, resume=finished["run_dir"]
            )
        )
    run_dir = Path(finished["run_dir"])
    files = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()}
    with pytest.raises(ValueError, match="already reached step 1200"):
        sac.main(tiny_args(tmp_path, diagnostics_every=0, checkpoint_every=600, resume=finished["run_dir"]))
    # Refused before anything in the run directory was touched: no new events file, eval.csv as it was.
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()} == files


def _signal_during_evaluation(monkeypatch, at_call: int) -> list:
    """Make the ``at_call``-th evaluation receive SIGTERM just before its first env step."""
    calls = []
    evaluate = agent_evaluation.evaluate

    def evaluate_then_signal(policy, env, episodes, should_stop=None):
        calls.append(episodes)
        if len(calls) == at_call:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(policy, env, episodes, should_stop)

    monkeypatch.setattr(agent_evaluation, "evaluate", evaluate_then_signal)
    return calls


def test_sigterm_during_an_evaluation_stops_at_once_and_the_resumed_run_redoes_it(
    tmp_path, monkeypatch, reference_run
):
    reference = reference_run
    args = tiny_args(tmp_path, **dict(RESUME_SETTINGS, checkpoint_every=0))
    calls = _signal_during_evaluation(monkeypatch, at_call=1)  # the evaluation of step 800
    stopped = sac.main(args)
    assert stopped["interrupted"] == "SIGTERM" and stopped["steps"] == 800 and len(calls) == 1
    run_dir = Path(stopped["run_dir"])
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["global_step"] == 800 and checkpoint["step_pending"]
    assert eval_rows(run_dir) == []  # the abandoned evaluation wrote nothing
    monkeypatch.undo()
    resumed = sac.main(dataclasses.replace(args, resume=str(run_dir)))
    assert resumed["updates"] == 1200
    assert resumed["interventions"] == reference["interventions"] == {"reset": 2, "shrink_perturb": 2}
    assert eval_rows(run_dir) == eval_rows(reference["run_dir"])


def test_resuming_a_finished_run_deletes_its_stale_result(tmp_path, monkeypatch):
    settings = dict(diagnostics_every=0, checkpoint_every=600, eval_every=600)
    finished = sac.main(tiny_args(tmp_path, **settings))
    run_dir = Path(finished["run_dir"])
    assert (run_dir / "result.json").is_file()
    _signal_during_evaluation(monkeypatch, at_call=1)  # stop the continued run at its evaluation of 1800
    stopped = sac.main(tiny_args(tmp_path, **settings, total_steps=2400, resume=str(run_dir)))
    assert stopped["interrupted"] == "SIGTERM" and stopped["steps"] == 1800
    assert not (run_dir / "result.json").exists()  # the run has not finished any more
    monkeypatch.undo()
    done = sac.main(tiny_args(tmp_path, **settings, total_steps=2400, resume=str(run_dir)))
    assert json.loads((run_dir / "result.json").read_text())["steps"] == done["steps"] == 2400
    assert [int(r["step"]) for r in eval_rows(run_dir)] == [600, 1200, 1800, 2400]


def test_a_run_killed_before_its_result_was_written_resumes_to_write_it(tmp_path):
    """The last checkpoint is written just before result.json; a run killed in between resumes, writes the
    result from its eval.csv and trains no further (a sweep's retry can then finish it)."""
    settings = dict(diagnostics_every=0, checkpoint_every=600)
    finished = sac.main(tiny_args(tmp_path, **settings))
    run_dir = Path(finished["run_dir"])
    (run_dir / "result.json").unlink()
    checkpoint_time = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    done = sac.main(tiny_args(tmp_path, **settings, resume=str(run_dir)))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == done["steps"] == 1200 and result["updates"] == finished["updates"]
    assert result["final_eval_return"] == finished["final_eval_return"]
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == checkpoint_time  # nothing to add to it
    assert [int(r["step"]) for r in eval_rows(run_dir)] == [600, 1200]


def test_progress_lines_show_the_current_update_count(tmp_path, monkeypatch):
    """Every progress line's ``updates=`` is the count at that step, not the last log's or episode's."""
    import io
    import re

    from plasticrl.common import loop as loop_module

    stream = io.StringIO()

    class EveryStepProgress(loop_module.Progress):
        def __init__(self, total, desc, **kwargs):
            super().__init__(total, desc, **kwargs, every_s=0.0, stream=stream)

    monkeypatch.setattr(loop_module, "Progress", EveryStepProgress)
    summary = sac.main(tiny_args(tmp_path, total_steps=1100, log_every=10_000, eval_every=1100))
    lines = re.findall(r"\] (\d+)/1100 steps .*updates=(\d+)", stream.getvalue())
    assert len(lines) >= 1000
    for step, updates in ((int(s), int(u)) for s, u in lines):
        # the line is printed after the env step, before that step's update
        assert max(0, step - 1 - 1000) <= updates <= max(0, step - 1000), (step, updates)
    assert summary["updates"] == 100
