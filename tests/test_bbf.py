"""BBF: C51 projection and double-DQN target against brute force, the dueling head, SPR masking, the n / γ
annealing, resets (timing in agent steps, parameters, target and optimizer state as the reference leaves
them), priorities from the loss, --amp / --compile against the eager fp32 update, smoke runs of the variant
flags, kill-and-resume equality and bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from plasticrl.agents import bbf
from plasticrl.buffers import ReplayBatch, ReplayBuffer
from plasticrl.common.cli import cli, run_agent

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(width_scale=1, num_blocks=1, hidden_dim=32, channels_last=False)


def tiny_flags(run_dir: Path, *extra: str) -> list[str]:
    return [
        "--env-id", "Pong", "--total-steps", "120", "--learning-starts", "60", "--batch-size", "4",
        "--eval-every", "60", "--eval-episodes", "2", "--intermediate-eval-episodes", "1",
        "--max-episode-frames", "200", "--diagnostics-every", "20", "--probe-batch-size", "16",
        "--log-every", "20", "--width-scale", "1", "--num-blocks", "1", "--hidden-dim", "32",
        "--buffer-size", "1000", "--anneal-updates", "50", "--bbf-reset.every", "40",
        "--bbf-reset.no-resets-after", "120", "--threads", "1", "--checkpoint-every", "0",
        "--run-dir", str(run_dir), *extra,
    ]  # fmt: skip


def run_tiny(tmp_path: Path, *extra: str) -> dict:
    return bbf.main(cli(bbf.Args, tiny_flags(tmp_path / "runs", *extra)))


# ----------------------------------------------------------------------------- C51 and double DQN


def _brute_force_projection(target_support, probabilities, support):
    """Bellemare et al. 2017, Algorithm 1, one atom at a time."""
    v_min, v_max = support[0], support[-1]
    delta = support[1] - support[0]
    out = np.zeros_like(probabilities)
    for b in range(len(probabilities)):
        for tz, p in zip(target_support[b], probabilities[b]):
            tz = min(max(tz, v_min), v_max)
            position = (tz - v_min) / delta
            low, high = int(np.floor(position)), int(np.ceil(position))
            if low == high:
                out[b, low] += p
            else:
                out[b, low] += p * (high - position)
                out[b, high] += p * (position - low)
    return out


def test_c51_projection_matches_brute_force_with_clipping_and_terminals():
    torch.manual_seed(0)
    support = torch.linspace(-10, 10, 51, dtype=torch.float64)
    probabilities = torch.softmax(torch.randn(6, 51, dtype=torch.float64), dim=-1)
    reward = torch.tensor([0.37, 3.0, -2.2, 9.5, -9.9, 1.2], dtype=torch.float64)
    discount = torch.tensor([0.997**3, 0.9, 0.0, 0.99, 0.99, 0.0], dtype=torch.float64)  # 2 terminals
    shifted = reward[:, None] + discount[:, None] * support[None]  # rows 3 and 4 run past ±10
    ours = bbf.project_distribution(shifted, probabilities, support).numpy()
    expected = _brute_force_projection(shifted.numpy(), probabilities.numpy(), support.numpy())
    np.testing.assert_allclose(ours, expected, atol=1e-12)
    np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-12)
    # A terminal puts all the mass on the two atoms around the reward (1.2 sits on atom 28: one atom).
    z = support.numpy()
    assert ours[5, 28] == pytest.approx(1.0) and ours[2][(z < -2.5) | (z > -1.9)].sum() == 0


def test_double_dqn_target_selects_with_the_online_network_and_backs_up_the_targets_distribution():
    torch.manual_seed(1)
    args = bbf.Args(**SMALL)
    online, target = bbf.BBFNetwork(3, args), bbf.BBFNetwork(3, args)  # two different draws
    support = torch.linspace(-10, 10, 51)
    next_obs = torch.rand(5, 4, 84, 84)
    batch = ReplayBatch(obs=None, action=None, reward=torch.randn(5), discount=torch.full((5,), 0.9),
                        next_obs=None, n_steps=None, indices=None, weights=None)  # fmt: skip
    ours = bbf.distributional_target(online, target, next_obs, batch, support)
    with torch.no_grad():
        online_probs = torch.softmax(online(next_obs), -1)
        target_probs = torch.softmax(target(next_obs), -1)
    online_choice = (online_probs * support).sum(-1).argmax(1)
    assert not torch.equal(online_choice, (target_probs * support).sum(-1).argmax(1))  # the test can tell
    for b in range(5):
        action = int(online_choice[b])  # the online network selects, the target's distribution backs up
        shifted = (batch.reward[b] + 0.9 * support)[None].double().numpy()
        backup = target_probs[b, action][None].double().numpy()
        expected = _brute_force_projection(shifted, backup, support.numpy())
        np.testing.assert_allclose(ours[b].numpy(), expected[0], atol=1e-5)  # float32 against float64


def test_dueling_head_combines_value_and_centred_advantage_per_atom():
    head = bbf.DistributionalDuelingHead(4, 3, 5, dueling=True)
    features = torch.randn(2, 4)
    advantage = head.advantage(features).view(2, 3, 5)
    value = head.value(features).view(2, 1, 5)
    torch.testing.assert_close(head(features), value + advantage - advantage.mean(1, keepdim=True))
    plain = bbf.DistributionalDuelingHead(4, 3, 5, dueling=False)
    assert plain.value is None and plain(features).shape == (2, 3, 5)


# ----------------------------------------------------------------------------- SPR


def test_spr_loss_is_the_normalised_squared_error_masked_after_the_episode_end():
    predictions = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]])
    targets = torch.tensor([[[3.0, 4.0], [0.0, 5.0], [7.0, 0.0]]])
    # step 0 identical (0), step 1 orthogonal (2), step 2 orthogonal but after the episode's end (masked)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert bbf.spr_loss(predictions, targets, mask).item() == pytest.approx((0 + 2 + 0) / 3)


def test_spr_predictions_roll_the_transition_model_with_the_actions():
    torch.manual_seed(0)
    args = bbf.Args(**SMALL)
    nets = bbf.BBFNetwork(4, args)
    latent = nets.encode(torch.rand(2, 4, 84, 84))
    actions = torch.tensor([[0, 1, 2], [3, 3, 0]])
    predictions = nets.spr_predictions(latent, actions)
    z = latent
    for k in range(3):
        z = nets.transition_model(z, actions[:, k])
        torch.testing.assert_close(predictions[:, k], nets.predictor(nets.projection(z.flatten(1))))
    flat = z.flatten(1)
    # renormalised to [0, 1] per sample
    assert flat.min(1).values.abs().max() < 1e-6 and (flat.max(1).values - 1).abs().max() < 1e-3


# ----------------------------------------------------------------------------- annealing and resets


def test_n_step_and_gamma_anneal_on_a_log_scale_over_10k_updates():
    args = bbf.Args()
    assert bbf.annealed(0, args) == (10, pytest.approx(0.97))
    n, gamma = bbf.annealed(5000, args)
    assert n == round(10 * 0.3**0.5) == 5 and gamma == pytest.approx(1 - 0.03 * 0.1**0.5)
    assert bbf.annealed(10_000, args) == (3, pytest.approx(0.997))
    assert bbf.annealed(50_000, args) == (3, pytest.approx(0.997))


def test_resets_fire_after_agent_steps_20k_40k_60k_80k_and_never_after_100k():
    config = bbf.BBFResetConfig()
    fired = [s for s in range(1, 200_001) if config.fires(s)]
    assert fired == [20_000, 40_000, 60_000, 80_000]
    longer = dataclasses.replace(config, no_resets_after=200_000)
    assert [s for s in range(1, 300_001) if longer.fires(s)] == [
        20_000, 40_000, 60_000, 80_000, 100_000, 120_000, 140_000, 160_000, 180_000,
    ]  # fmt: skip


@pytest.mark.parametrize("replay_ratio", [2, 8])
def test_reset_timing_counts_agent_steps_at_every_replay_ratio(tmp_path, replay_ratio):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_tiny(tmp_path, "--replay-ratio", str(replay_ratio), "--eval-every", "1000",
                      "--eval-episodes", "1", "--diagnostics-every", "0")  # fmt: skip
    assert result["updates"] == (120 - 60) * replay_ratio
    assert result["interventions"] == {"bbf_reset": 2}  # after steps 40 and 80; 120 + 40 > 120
    events = EventAccumulator(result["run_dir"])
    events.Reload()
    assert [e.step for e in events.Scalars("interventions/bbf_reset")] == [40, 80]
    n_steps = events.Scalars("charts/n_step")
    assert max(e.value for e in n_steps) <= 10 and min(e.value for e in n_steps) >= 3


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    args = bbf.Args(**SMALL)
    nets = bbf.BBFNetwork(4, args)
    target = bbf.BBFNetwork(4, args)
    target.load_state_dict(nets.state_dict())
    optimizer = bbf.make_optimizer(nets, args, torch.device("cpu"))
    batch = _batch(6)
    support = torch.linspace(-10, 10, 51)
    for _ in range(3):
        bbf.update(nets, target, optimizer, batch, support, args, {"q": []})
    return args, nets, target, optimizer


def _batch(b: int, k: int = 5) -> ReplayBatch:
    g = torch.Generator().manual_seed(3)
    return ReplayBatch(
        obs=torch.randint(0, 256, (b, 4, 84, 84), generator=g, dtype=torch.uint8),
        action=torch.randint(0, 4, (b,), generator=g),
        reward=torch.randn(b, generator=g),
        discount=torch.full((b,), 0.97**3),
        next_obs=torch.randint(0, 256, (b, 4, 84, 84), generator=g, dtype=torch.uint8),
        n_steps=torch.full((b,), 3),
        indices=torch.arange(b),
        weights=torch.rand(b, generator=g) + 0.5,
        future_obs=torch.randint(0, 256, (b, k, 4, 84, 84), generator=g, dtype=torch.uint8),
        future_action=torch.randint(0, 4, (b, k), generator=g),
        future_reward=torch.zeros(b, k),
        future_mask=(torch.arange(k)[None] < torch.tensor([5, 2, 5, 0, 3, 5])[:b, None]).float(),
    )


def test_a_reset_leaves_parameters_target_and_adam_state_as_the_reference_does():
    args, nets, target, optimizer = _trained()
    before = {k: v.clone() for k, v in nets.state_dict().items()}
    target_before = {k: v.clone() for k, v in target.state_dict().items()}
    moments = {name: optimizer.state[p]["exp_avg"].clone() for name, p in nets.named_parameters()}
    reset = bbf.BBFReset(bbf.BBFResetConfig(), nets, target, optimizer, lambda: 123)
    torch.manual_seed(7)
    reset.apply()
    after, target_after = nets.state_dict(), target.state_dict()
    for name, value in after.items():
        part = name.split(".")[0]
        if part in ("encoder", "transition_model"):
            # 0.5·θ + 0.5·φ: the fresh draw φ = 2·after − before has the initialiser's scale, not θ's
            fresh = 2 * value - before[name]
            assert not torch.equal(value, before[name]) or name.endswith("bias")
            if not name.endswith("bias"):
                assert not torch.allclose(fresh, before[name])
                target_fresh = 2 * target_after[name] - target_before[name]
                assert not torch.allclose(fresh, target_fresh)  # the target draws its own φ
        else:  # projection, predictor, head: re-initialised, the target with another draw
            assert not torch.allclose(value, before[name]) or name.endswith("bias")
            if not name.endswith("bias"):
                assert not torch.allclose(value, target_after[name])
    for name, param in nets.named_parameters():
        state = optimizer.state.get(param, {})
        if name.split(".")[0] in ("encoder", "transition_model"):
            assert int(state["step"]) == 0  # optimizer.init restarts the count
            torch.testing.assert_close(state["exp_avg"], moments[name])  # moments copied back
        else:
            assert state == {}  # dropped with the re-initialised parameters
    assert reset.last_reset_update == 123 and reset.state_dict() == {"last_reset_update": 123}


def test_training_continues_after_a_reset():
    args, nets, target, optimizer = _trained()
    bbf.BBFReset(bbf.BBFResetConfig(), nets, target, optimizer, lambda: 0).apply()
    metrics, priorities = bbf.update(nets, target, optimizer, _batch(6), torch.linspace(-10, 10, 51), args,
                                     {"q": []})  # fmt: skip
    assert torch.isfinite(metrics["losses/total"]) and priorities.shape == (6,)


# ----------------------------------------------------------------------------- priorities, amp, compile


def test_priorities_are_the_square_root_of_each_transitions_cross_entropy():
    from gymnasium import spaces

    buffer = ReplayBuffer(100, spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(4), frame_stack=4,
                          prioritized=True)  # fmt: skip
    rng = np.random.default_rng(0)
    obs = np.zeros((4, 84, 84), np.uint8)
    for t in range(30):
        next_obs = np.concatenate([obs[1:], rng.integers(0, 255, (1, 84, 84), dtype=np.uint8)])
        buffer.add(obs, t % 4, 0.0, next_obs, False, False)
        obs = next_obs
    args, nets, target, optimizer = _trained()
    batch = buffer.sample(8, n_step=3, gamma=0.99, sequence_length=5).to("cpu")
    _, ce, _ = bbf.bbf_loss(nets, target, batch, torch.linspace(-10, 10, 51), args)
    pending = bbf.PendingPriorities()
    pending.hold(batch.indices, ce.detach() + 1e-10)
    pending.flush(buffer)
    rows = batch.indices.numpy() % 100
    last = {int(r): float(c) for r, c in zip(rows, ce.detach())}  # repeated ids: the last one wins
    stored = buffer._tree.get(np.array(list(last)))
    np.testing.assert_allclose(stored, np.sqrt(np.array(list(last.values())) + 1e-10), rtol=1e-6)
    assert buffer.max_priority == pytest.approx(max(1.0, float(ce.detach().max()) + 1e-10))


def _update_with(amp: bool = False, compiled: bool = False, augmented: bool = True) -> tuple[dict, dict]:
    args, nets, target, optimizer = _trained()
    args = dataclasses.replace(args, amp=amp)
    if not augmented:  # compiled code draws its random numbers from its own generator
        args = dataclasses.replace(args, image_pad=0, intensity_scale=0.0)
    loss_fn = torch.compile(bbf.bbf_loss) if compiled else bbf.bbf_loss
    torch.manual_seed(11)
    metrics, _ = bbf.update(nets, target, optimizer, _batch(6), torch.linspace(-10, 10, 51), args, {"q": []},
                            loss_fn)  # fmt: skip
    return metrics, nets.state_dict()


def test_the_amp_update_is_close_to_the_fp32_one():
    eager, eager_params = _update_with()
    amp, amp_params = _update_with(amp=True)
    assert amp["losses/total"].item() == pytest.approx(eager["losses/total"].item(), rel=0.05)
    for name, value in eager_params.items():
        torch.testing.assert_close(amp_params[name], value, atol=2e-3, rtol=0.05)


@pytest.mark.slow  # torch.compile's first compilation takes minutes on two CPU cores
def test_the_compiled_update_equals_the_eager_one():
    eager, eager_params = _update_with(augmented=False)
    compiled, compiled_params = _update_with(compiled=True, augmented=False)
    assert compiled["losses/total"].item() == pytest.approx(eager["losses/total"].item(), rel=1e-4)
    for name, value in eager_params.items():
        torch.testing.assert_close(compiled_params[name], value, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- runs


def _complete(run_dir: Path) -> None:
    for name in ("config.json", "eval.csv", "result.json"):
        assert (run_dir / name).is_file(), name


VARIANTS = {
    "bbf": [],
    "no-spr": ["--spr-weight", "0"],
    "hare-tortoise": ["--hare-tortoise.enabled", "--hare-tortoise.every", "30",
                      "--hare-tortoise.unit", "step"],  # fmt: skip
    "shrink-perturb": ["--shrink-perturb.every", "30", "--shrink-perturb.unit", "step"],
    "reset": ["--reset.every", "50"],
    "uniform-no-resets": ["--no-prioritized", "--bbf-reset.every", "0", "--num-envs", "2"],
    "amp": ["--amp"],
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_flag_runs(tmp_path, name):
    result = run_tiny(tmp_path, *VARIANTS[name], "--eval-every", "1000", "--eval-episodes", "1")
    _complete(Path(result["run_dir"]))
    assert result["updates"] == 120 and result["steps"] == 120
    events = result["interventions"]
    if name not in ("uniform-no-resets",):
        assert events.get("bbf_reset") == 2
    key = {"hare-tortoise": "hare_tortoise", "shrink-perturb": "shrink_perturb", "reset": "reset"}.get(name)
    if key:
        assert events.get(key, 0) >= 1, events


def test_smoke_run_logs_scores_losses_and_plasticity(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_tiny(tmp_path)
    run_dir = Path(result["run_dir"])
    _complete(run_dir)
    rows = list(csv.DictReader((run_dir / "eval.csv").open()))
    assert [int(r["step"]) for r in rows] == [60, 120] and rows[-1]["normalized_score"] != ""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"losses/distributional", "losses/spr", "charts/gamma", "plasticity/dormant_ratio/head",
            "plasticity/srank/encoder", "eval/normalized_score"} <= tags  # fmt: skip


def _command(*flags: str) -> list[str]:
    return [sys.executable, str(REPO / "agents" / "bbf.py"), *flags]


def test_killed_and_resumed_run_gives_the_same_results(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = ["--checkpoint-every", "70", "--num-envs", "2"]
    reference = subprocess.run(_command(*tiny_flags(tmp_path / "reference", *flags)), env=env,
                               capture_output=True, text=True, timeout=900)  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    [reference_dir] = (tmp_path / "reference").iterdir()
    process = subprocess.Popen(_command(*tiny_flags(tmp_path / "killed", *flags)), env=env,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    runs = tmp_path / "killed"
    start = time.time()
    while not (runs.exists() and any(runs.iterdir()) and (next(runs.iterdir()) / "checkpoint.pt").exists()):
        assert process.poll() is None, process.stderr.read()
        assert time.time() - start < 600
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    [run_dir] = runs.iterdir()
    assert not (run_dir / "result.json").exists()
    resumed = subprocess.run(_command("--resume", str(run_dir)), env=env, capture_output=True, text=True,
                             timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    ours, theirs = (json.loads((d / "result.json").read_text()) for d in (run_dir, reference_dir))
    for key in ("updates", "steps", "episodes", "interventions", "final_eval_return"):
        assert ours[key] == theirs[key], key
    assert list(csv.DictReader((run_dir / "eval.csv").open())) == list(
        csv.DictReader((reference_dir / "eval.csv").open())
    )
    a = torch.load(run_dir / "checkpoint.pt", weights_only=True)["agent"]["nets"]
    b = torch.load(reference_dir / "checkpoint.pt", weights_only=True)["agent"]["nets"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--env-id", "Tetris"], "defined for the 26 Atari-100k games"),
        (["--spr-weight", "-1"], "--spr-weight must be >= 0"),
        (["--max-n-step", "2"], "--max-n-step 2 must be >= --n-step 3"),
        (["--min-gamma", "0.999"], "--min-gamma must be in [0, --gamma 0.997]"),
        (["--num-atoms", "1"], "--num-atoms must be at least 2"),
        (["--bbf-reset.shrink-factor", "2"], "--bbf-reset.shrink-factor must be in [0, 1]"),
        (["--bbf-reset.reset-modules", "decoder"], "BBFNetwork has no part named 'decoder'"),
        (["--num-envs", "0"], "--num-envs must be >= 1"),
        (["--weight-decay", "-1"], "--weight-decay >= 0"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, capsys, flags, message):
    run_dir = tmp_path / "runs"
    status = run_agent(bbf.main, bbf.Args, [*tiny_flags(run_dir), *flags])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and message in lines[0], err
    assert not run_dir.exists() or not any(run_dir.iterdir())
