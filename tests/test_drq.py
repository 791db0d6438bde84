"""DrQ from pixels: augmentation against brute force, losses against a hand computation, the primacy-bias
reset (encoder kept), smoke runs of every intervention flag (32×32 frames to stay fast), resume equality
and bad input."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plasticrl.agents import drq
from plasticrl.buffers import ReplayBatch
from plasticrl.common.agent_interventions import build_interventions
from plasticrl.interventions import (
    CBPConfig,
    HareTortoiseConfig,
    InjectionConfig,
    L2InitConfig,
    ReDoConfig,
    ResetConfig,
    ShrinkPerturbConfig,
)


def tiny_args(tmp_path: Path, **overrides) -> drq.Args:
    """cartpole-swingup pixels at 32×32 (action repeat 8: 125-step episodes), 30 updates of a small agent."""
    settings = dict(
        env_id="cartpole-swingup",
        total_steps=150,
        learning_starts=120,
        image_size=32,
        batch_size=8,
        hidden_dims=(16, 16),
        feature_dim=8,
        eval_every=65,
        eval_episodes=1,
        diagnostics_every=10,
        log_every=25,
        probe_batch_size=16,
        threads=1,
        run_dir=str(tmp_path / "runs"),
    )
    settings.update(overrides)
    return drq.Args(**settings)


def scalar_tags(run_dir: str) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir)
    events.Reload()
    return set(events.Tags()["scalars"])


# ----------------------------------------------------------------------------- augmentation


def test_random_shift_is_a_replicate_pad_and_random_crop():
    torch.manual_seed(0)
    obs = torch.randint(0, 256, (6, 9, 20, 20), dtype=torch.uint8)
    torch.manual_seed(1)
    shifted = drq.random_shift(obs, 4)
    torch.manual_seed(1)
    offsets = torch.randint(0, 9, (6, 2))  # the same draw: (row, column) offsets in the padded image
    padded = F.pad(obs.float(), (4, 4, 4, 4), mode="replicate")
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(shifted[i].float(), padded[i, :, dy : dy + 20, dx : dx + 20])
    assert shifted.dtype == torch.uint8 and len({tuple(o) for o in offsets.tolist()}) > 1


# ----------------------------------------------------------------------------- losses by hand


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _projection_np(projection, h: np.ndarray) -> np.ndarray:
    x = h @ _np(projection.fc.weight).T + _np(projection.fc.bias)
    x = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    return np.tanh(x * _np(projection.norm.weight) + _np(projection.norm.bias))


def _mlp(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    for i, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def _actor_np(actor: drq.Actor, h: np.ndarray, noise: np.ndarray):
    z = _projection_np(actor.projection, h)
    layers = [(_np(b.linear.weight), _np(b.linear.bias)) for b in actor.trunk.encoder]
    out = _mlp(z, layers + [(_np(actor.trunk.head.weight), _np(actor.trunk.head.bias))])
    a = noise.shape[1]
    mean, raw = out[:, :a], out[:, a:]
    low, high = actor.log_std_bounds
    log_std = low + 0.5 * (high - low) * (np.tanh(raw) + 1)
    pre = mean + np.exp(log_std) * noise
    log_prob = (-0.5 * noise**2 - log_std - 0.5 * np.log(2 * np.pi) - np.log(1 - np.tanh(pre) ** 2)).sum(1)
    return np.tanh(pre), log_prob


def _critic_np(critic: drq.Critic, h: np.ndarray, action: np.ndarray) -> np.ndarray:
    x = np.concatenate([_projection_np(critic.projection, h), action], axis=1)
    q = critic.q
    values = []
    for m in range(q.num_members):
        layers = [(_np(b.linear.members[m].weight), _np(b.linear.members[m].bias)) for b in q.encoder]
        layers.append((_np(q.head.members[m].weight), _np(q.head.members[m].bias)))
        values.append(_mlp(x, layers)[:, 0])
    return np.stack(values)


def _tiny_problem():
    torch.manual_seed(5)
    args = drq.Args(hidden_dims=(6, 5), feature_dim=4, init_temperature=0.3)
    nets = drq.DrQNetworks((3, 16, 16), 2, args)
    target = copy.deepcopy(nets)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    batch = ReplayBatch(
        obs=torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=g),
        action=torch.rand(3, 2, generator=g) * 2 - 1,
        reward=torch.randn(3, generator=g),
        discount=torch.tensor([0.99, 0.0, 0.99]),
        next_obs=torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=g),
        n_steps=torch.ones(3, dtype=torch.int64),
        indices=torch.arange(3),
        weights=torch.ones(3),
    )
    obs_aug = torch.rand(6, 3, 16, 16, generator=g)  # M = 2 augmented copies of the 3 observations
    next_obs_aug = torch.rand(6, 3, 16, 16, generator=g)  # K = 2
    return args, nets, target, batch, obs_aug, next_obs_aug, torch.randn(6, 2, generator=g)


def test_critic_loss_matches_hand_computation():
    _, nets, target, batch, obs_aug, next_obs_aug, noise = _tiny_problem()
    loss, q = drq.critic_loss(nets, target, obs_aug, next_obs_aug, batch, noise)
    with torch.no_grad():  # conv features from the (separately tested) conv stacks
        h, h_next, h_next_target = (
            nets.encoder(obs_aug),
            nets.encoder(next_obs_aug),
            target.encoder(next_obs_aug),
        )
    next_action, next_log_prob = _actor_np(nets.actor, _np(h_next), _np(noise))
    next_q = _critic_np(target.critic, _np(h_next_target), next_action).min(axis=0)
    values = (next_q - 0.3 * next_log_prob).reshape(2, 3).mean(axis=0)  # average over the K = 2 targets
    y = _np(batch.reward) + _np(batch.discount) * values
    expected = 0.0
    for m in range(2):  # Σ over the M = 2 augmentations and both Q-networks of mean squared errors
        q_m = _critic_np(nets.critic, _np(h[3 * m : 3 * m + 3]), _np(batch.action))
        expected += ((q_m[0] - y) ** 2).mean() + ((q_m[1] - y) ** 2).mean()
    assert q.shape == (2, 6)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert nets.encoder.conv1.weight.grad is not None  # the critic trains the encoder


def test_actor_loss_matches_hand_computation_and_leaves_the_encoder_alone():
    _, nets, _, batch, obs_aug, _, noise = _tiny_problem()
    loss, log_prob = drq.actor_loss(nets, obs_aug[:3], noise[:3])
    with torch.no_grad():
        h = _np(nets.encoder(obs_aug[:3]))
    action, expected_log_prob = _actor_np(nets.actor, h, _np(noise[:3]))
    q = _critic_np(nets.critic, h, action).min(axis=0)
    np.testing.assert_allclose(_np(log_prob), expected_log_prob, rtol=1e-5, atol=1e-5)
    assert loss.item() == pytest.approx((0.3 * expected_log_prob - q).mean(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in [*nets.encoder.parameters(), *nets.critic.parameters()])
    assert nets.actor.projection.fc.weight.grad is not None  # the actor's own projection learns


def test_update_frequencies_of_actor_and_target():
    args, nets, target, batch, *_ = _tiny_problem()
    args = dataclasses.replace(args, image_pad=2)
    optimizers = drq.make_optimizers(nets, args, torch.device("cpu"))
    penalties = {"critic": [], "actor": [], "temperature": []}
    actor_before = nets.actor.trunk.head.weight.clone()
    target_before = target.encoder.conv1.weight.clone()
    metrics = drq.update(nets, target, optimizers, batch, args, -2.0, penalties, update_index=1)
    assert "losses/actor" not in metrics
    assert torch.equal(nets.actor.trunk.head.weight, actor_before)
    assert torch.equal(target.encoder.conv1.weight, target_before)
    metrics = drq.update(nets, target, optimizers, batch, args, -2.0, penalties, update_index=2)
    assert {"losses/actor", "losses/temperature", "losses/critic"} <= set(metrics)
    assert not torch.equal(nets.actor.trunk.head.weight, actor_before)
    torch.testing.assert_close(
        target.encoder.conv1.weight, 0.99 * target_before + 0.01 * nets.encoder.conv1.weight
    )


def test_primacy_bias_reset_keeps_the_encoder_and_its_optimizer_state():
    args, nets, target, batch, *_ = _tiny_problem()
    args = dataclasses.replace(args, reset=ResetConfig(every=1, modules=("actor", "critic", "temperature")))
    optimizers = drq.make_optimizers(nets, args, torch.device("cpu"))
    parts = {
        "critic": ([nets.encoder, nets.critic], optimizers.critic),
        "actor": ([nets.actor], optimizers.actor),
        "temperature": ([nets.temperature], optimizers.temperature),
    }
    inputs = (torch.zeros(2, 3, 16, 16), torch.zeros(2, 2))
    interventions, penalties = build_interventions(args, nets, target, parts, lambda: inputs, inputs)
    for i in (1, 2):
        drq.update(nets, target, optimizers, batch, args, -2.0, penalties, update_index=i)
    encoder = {k: v.clone() for k, v in nets.encoder.state_dict().items()}
    target_encoder = {k: v.clone() for k, v in target.encoder.state_dict().items()}
    encoder_moments = [optimizers.critic.state[p]["exp_avg"].clone() for p in nets.encoder.parameters()]
    critic = {k: v.clone() for k, v in nets.critic.state_dict().items()}
    assert interventions.maybe_apply(1) == {"interventions/reset": 1.0}
    for k, v in nets.encoder.state_dict().items():
        assert torch.equal(v, encoder[k]) and torch.equal(target.encoder.state_dict()[k], target_encoder[k])
    for p, moment in zip(nets.encoder.parameters(), encoder_moments):
        assert torch.equal(optimizers.critic.state[p]["exp_avg"], moment)
    assert all(p not in optimizers.critic.state for p in nets.critic.parameters())
    assert len(optimizers.actor.state) == 0 and len(optimizers.temperature.state) == 0
    assert not torch.equal(nets.critic.q.head.members[0].weight, critic["q.head.members.0.weight"])
    for k, v in nets.critic.state_dict().items():
        assert torch.equal(target.critic.state_dict()[k], v)
    assert nets.temperature().item() == pytest.approx(0.3)


# ----------------------------------------------------------------------------- smoke runs


def test_smoke_run_writes_a_complete_run_directory(tmp_path):
    # The primacy-bias flags: the default parts (actor, critic heads, temperature), in agent steps.
    reset = dataclasses.replace(drq.Args().reset, at=(125, 140, 150), unit="step")
    summary = drq.main(tiny_args(tmp_path, reset=reset))
    assert summary["updates"] == 30 and summary["steps"] == 150 and summary["env_steps"] == 1200
    assert summary["interventions"] == {"reset": 3}
    run_dir = Path(summary["run_dir"])
    assert {p.name for p in run_dir.iterdir() if not p.name.startswith("events")} == {
        "config.json",
        "eval.csv",
        "result.json",
    }
    assert json.loads((run_dir / "result.json").read_text())["updates"] == 30
    tags = scalar_tags(str(run_dir))
    expected = {
        "charts/episodic_return",
        "charts/SPS",
        "charts/updates",
        "losses/critic",
        "losses/actor",
        "eval/episodic_return",
        "interventions/reset",
        "plasticity/dormant_ratio/encoder",
        "plasticity/srank/encoder",
        "plasticity/dormant_ratio/actor",
        "plasticity/dormant_ratio/critic",
        "plasticity/srank/critic/member0",
        "plasticity/dormant_ratio/encoder/act4",
    }
    assert expected <= tags, expected - tags


INTERVENTIONS = {
    "reset": dict(reset=ResetConfig(every=10, modules=("critic.q.head",))),
    "shrink_perturb": dict(shrink_perturb=ShrinkPerturbConfig(every=10, modules=("encoder",))),
    "hare_tortoise": dict(hare_tortoise=HareTortoiseConfig(enabled=True, every=10)),
    "l2_init": dict(l2_init=L2InitConfig(enabled=True)),
    "redo": dict(redo=ReDoConfig(every=10, batch_size=16, modules=("encoder",))),
    "injection": dict(injection=InjectionConfig(at=(10,), modules=("actor.trunk.head", "critic.q.head"))),
    "cbp": dict(
        cbp=CBPConfig(enabled=True, replacement_rate=0.05, maturity_threshold=5, modules=("encoder",))
    ),
}


@pytest.mark.parametrize("name", sorted(INTERVENTIONS))
def test_every_intervention_flag_runs(tmp_path, name):
    summary = drq.main(tiny_args(tmp_path, diagnostics_every=0, eval_every=150, **INTERVENTIONS[name]))
    assert summary["updates"] == 30
    if name != "l2_init":  # L2-init acts through the loss, not as an event
        assert summary["interventions"].get(name, 0) >= 1


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    reference = drq.main(tiny_args(tmp_path / "a", diagnostics_every=0))
    # Stop at step 130, five steps into the second episode, with a checkpoint; continue to 150.
    first = drq.main(tiny_args(tmp_path / "b", diagnostics_every=0, total_steps=130, checkpoint_every=130))
    resumed = drq.main(
        tiny_args(tmp_path / "b", diagnostics_every=0, checkpoint_every=130, resume=first["run_dir"])
    )
    assert resumed["updates"] == reference["updates"] == 30
    read = lambda summary: (Path(summary["run_dir"]) / "eval.csv").read_text()  # noqa: E731
    assert [line.split(",")[0] for line in read(reference).splitlines()[1:]] == ["65", "130", "150"]
    assert read(resumed) == read(reference)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(env_id="cartpole-swingupp"), "Unknown DMC task"),
        (dict(replay_ratio=0.0), "--replay-ratio"),
        (dict(learning_starts=150), "--learning-starts 150 must be below --total-steps 150"),
        (dict(eval_every=-5), "--eval-every must be >= 1"),
        (dict(q_augmentations=0), "--q-augmentations must be an int >= 1"),
        (dict(reset=ResetConfig(every=10, modules=("critic.head",))), "--reset.modules critic.head"),
    ],
)
def test_bad_input_is_refused_before_a_run_directory_is_made(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        drq.main(tiny_args(tmp_path, **overrides))
    assert not (tmp_path / "runs").exists()
