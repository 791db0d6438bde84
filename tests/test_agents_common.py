"""Pieces shared by the SAC and DrQ agents: the batched critic ensemble, SAC math, resumable envs, CLI."""

from __future__ import annotations

import copy
import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from plasticrl.agents import drq, sac
from plasticrl.agents.sac_parts import Temperature, no_weight_grads, squash_log_std, tanh_gaussian_sample
from plasticrl.common.agent_interventions import (
    AgentHareTortoiseConfig,
    AgentInjectionConfig,
    AgentResetConfig,
    AgentShrinkPerturbConfig,
    build_interventions,
    l2_penalty,
    schedule_lines,
)
from plasticrl.common.cli import cli, dataclass_from_dict, exit_code
from plasticrl.common.env_state import ResumableEnv
from plasticrl.common.evaluation import evaluate
from plasticrl.envs import make_dmc
from plasticrl.interventions import (
    CBPConfig,
    ContinualBackprop,
    InjectionConfig,
    L2InitConfig,
    PlasticityInjection,
    ReDo,
    ReDoConfig,
    ResetConfig,
    ShrinkPerturbConfig,
    find_unit_groups,
)
from plasticrl.networks import EnsembleMLP, QEnsemble, capture_activations, reinitialize_, soft_update_

# ----------------------------------------------------------------------------- ensemble


def _per_member_reference(net: EnsembleMLP, x: torch.Tensor) -> torch.Tensor:
    """The ensemble computed by hand from each member's own Linear/LayerNorm weights."""
    outputs = []
    for m in range(net.num_members):
        h = x if x.dim() == 2 else x[m]
        for block in net.encoder:
            linear = block.linear.members[m]
            h = h @ linear.weight.T + linear.bias
            if block.norm is not None:
                norm = block.norm.members[m]
                h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(
                    h.var(-1, unbiased=False, keepdim=True) + 1e-5
                )
                h = h * norm.weight + norm.bias
            h = (
                torch.relu(h)
                if isinstance(block.act.members[m], nn.ReLU)
                else torch.cat([h.relu(), (-h).relu()], -1)
            )
        head = net.head.members[m]
        outputs.append(h @ head.weight.T + head.bias)
    return torch.stack(outputs)


@pytest.mark.parametrize("activation,layer_norm", [("relu", False), ("relu", True), ("crelu", False)])
@pytest.mark.parametrize("shared_input", [True, False])
def test_ensemble_batched_path_matches_members(activation, layer_norm, shared_input):
    torch.manual_seed(0)
    net = EnsembleMLP(5, (7, 6), 3, num_members=3, activation=activation, layer_norm=layer_norm)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(4, 5) if shared_input else torch.randn(3, 4, 5)
    expected = _per_member_reference(net, x)
    batched = net(x)
    net.eval()
    one_by_one = net(x)
    assert batched.shape == (3, 4, 3)
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one_by_one, expected, rtol=1e-5, atol=1e-5)


def test_ensemble_gradients_reach_each_member_as_for_separate_networks():
    torch.manual_seed(0)
    net = EnsembleMLP(4, (8,), 1, num_members=2)
    separate = copy.deepcopy(net).eval()  # member-by-member path: ordinary nn.Linear calls
    x = torch.randn(6, 4)
    net(x).pow(2).sum().backward()
    separate(x).pow(2).sum().backward()
    for (name, a), (_, b) in zip(net.named_parameters(), separate.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_ensemble_activation_hooks_see_each_members_units_in_training_mode():
    torch.manual_seed(0)
    net = EnsembleMLP(4, (8, 5), 1, num_members=2)
    x = torch.randn(3, 4)
    with capture_activations(net) as acts:
        net(x)
    assert set(acts) == {f"encoder.{i}.act.members.{m}" for i in range(2) for m in range(2)}
    assert acts["encoder.1.act.members.1"].shape == (3, 5)
    expected = torch.relu(net.encoder[0].linear.members[1](x))
    torch.testing.assert_close(acts["encoder.0.act.members.1"], expected)


def test_ensemble_units_are_found_and_redo_keeps_the_function():
    torch.manual_seed(0)
    net = QEnsemble(3, 2, (16, 16))
    obs, action = torch.randn(32, 3), torch.randn(32, 2)
    groups, skipped = find_unit_groups(net, (obs, action))
    assert {g.name for g in groups} == {f"encoder.{i}.act.members.{m}" for i in range(2) for m in range(2)}
    assert skipped == {}
    dead = net.encoder[0].linear.members[1]
    with torch.no_grad():  # four dead units in member 1's first layer
        dead.weight[:4] = 0.0
        dead.bias[:4] = -1.0
    opt = torch.optim.Adam(net.parameters())
    redo = ReDo(ReDoConfig(every=1, threshold=0.0), net, lambda: (obs, action), [opt])
    before = net(obs, action).detach()
    out = redo.maybe_apply(1)
    assert out["interventions/redo/recycled_units"] >= 4  # (and any unit dead by chance)
    assert torch.all(dead.weight[:4] != 0) and torch.all(dead.bias[:4] == 0)  # fresh incoming weights
    assert torch.all(net.encoder[1].linear.members[1].weight[:, :4] == 0)  # zero outgoing weights
    torch.testing.assert_close(net(obs, action), before)  # the units were silent: same function


def test_injection_into_an_ensemble_head_keeps_outputs_and_trains_the_new_copy():
    torch.manual_seed(0)
    net = QEnsemble(3, 1, (8,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    obs, action = torch.randn(5, 3), torch.randn(5, 1)
    before = net(obs, action).detach()
    PlasticityInjection(InjectionConfig(at=(1,)), net, [opt]).maybe_apply(1)
    torch.testing.assert_close(net(obs, action), before)
    net.eval()
    torch.testing.assert_close(net(obs, action), before)
    net.train()
    trainable = net.head.trainable.members[0].weight.detach().clone()
    opt.zero_grad()
    net(obs, action).sum().backward()
    opt.step()
    assert not torch.equal(net.head.trainable.members[0].weight, trainable)


def test_continual_backprop_sees_ensemble_activations_during_training():
    torch.manual_seed(0)
    net = QEnsemble(3, 1, (8,))
    opt = torch.optim.Adam(net.parameters())
    obs, action = torch.randn(16, 3), torch.randn(16, 1)
    cbp = ContinualBackprop(
        CBPConfig(enabled=True, replacement_rate=0.5, maturity_threshold=0), net, (obs, action), [opt]
    )
    opt.zero_grad()
    net(obs, action).pow(2).mean().backward()
    opt.step()
    out = cbp.maybe_apply(1)
    assert out["interventions/cbp/replaced_units"] == 8  # 0.5 × 8 units in each member's layer


# ----------------------------------------------------------------------------- SAC pieces


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    torch.manual_seed(0)
    mean, log_std, noise = torch.randn(64, 3), torch.rand(64, 3) - 1.5, torch.randn(64, 3)
    action, log_prob = tanh_gaussian_sample(mean, log_std, noise)
    pre = mean.double() + log_std.double().exp() * noise.double()
    density = torch.distributions.Normal(mean.double(), log_std.double().exp()).log_prob(pre)
    expected = (density - torch.log1p(-(torch.tanh(pre) ** 2))).sum(-1)
    torch.testing.assert_close(action, torch.tanh(pre).float())
    torch.testing.assert_close(log_prob.double(), expected, rtol=1e-5, atol=1e-4)


def test_squash_log_std_maps_into_the_bounds():
    raw = torch.tensor([-1e4, 0.0, 1e4])
    assert squash_log_std(raw, -10.0, 2.0).tolist() == [-10.0, -4.0, 2.0]


def test_soft_update_is_a_lerp_toward_the_online_weights():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = [
        (1 - 0.1) * t.detach() + 0.1 * o.detach() for t, o in zip(target.parameters(), online.parameters())
    ]
    soft_update_(target, online, 0.1)
    for value, want in zip(target.parameters(), expected):
        torch.testing.assert_close(value, want)


def test_temperature_starts_and_resets_at_its_initial_value():
    temperature = Temperature(0.1)
    assert temperature().item() == pytest.approx(0.1)
    with torch.no_grad():
        temperature.log_alpha.add_(3.0)
    reinitialize_(temperature)
    assert temperature().item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="initial temperature"):
        Temperature(0.0)


def test_no_weight_grads_keeps_input_gradients_and_frozen_parameters_frozen():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    net[1].bias.requires_grad_(False)
    x = torch.randn(4, 2, requires_grad=True)
    with no_weight_grads(net):
        net(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in net.parameters())
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, False]


# ----------------------------------------------------------------------------- envs and evaluation


def test_resumable_env_replays_to_the_same_state():
    env = ResumableEnv(make_dmc("cartpole-swingup", 3))
    rng = np.random.default_rng(0)
    env.reset()
    for _ in range(1000):  # finish a first episode so the task RNG has moved
        _, _, _, truncated, _ = env.step(rng.uniform(-1, 1, 1).astype(np.float32))
    assert truncated
    env.reset()
    for _ in range(37):
        env.step(rng.uniform(-1, 1, 1).astype(np.float32))
    state = env.state_dict()
    assert state["actions"].shape == (37, 1)
    copy_env = ResumableEnv(make_dmc("cartpole-swingup", 3))
    copy_env.load_state_dict(state)
    np.testing.assert_array_equal(copy_env.obs, env.obs)
    action = np.array([0.3], dtype=np.float32)
    a, b = env.step(action), copy_env.step(action)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


class _CountingEnv(gym.Env):
    """Episodes of ``length`` steps with reward = step index; action ignored."""

    observation_space = gym.spaces.Box(-1, 1, (1,))
    action_space = gym.spaces.Box(-1, 1, (1,))

    def __init__(self, length: int):
        self.length = length

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, dtype=np.float32), float(self.t), False, self.t == self.length, {}


def test_evaluate_returns_one_total_per_episode():
    calls = []
    returns = evaluate(lambda obs: calls.append(obs) or np.zeros(1), _CountingEnv(4), 3)
    assert returns == [10.0, 10.0, 10.0]
    assert len(calls) == 12


# ----------------------------------------------------------------------------- command line and binding


def test_args_round_trip_through_the_saved_config():
    reset = AgentResetConfig(every=5, modules=("actor", "critic.head"), unit="step")
    args = sac.Args(hidden_dims=(8, 4), reset=reset)
    saved = json.loads(json.dumps(dataclasses.asdict(args)))
    assert dataclass_from_dict(sac.Args, saved) == args


def test_cli_resume_takes_defaults_from_the_saved_config(tmp_path):
    args = sac.Args(env_id="walker-walk", replay_ratio=4.0, reset=AgentResetConfig(every=7, unit="step"))
    (tmp_path / "config.json").write_text(json.dumps({"args": dataclasses.asdict(args)}))
    parsed = cli(sac.Args, ["--resume", str(tmp_path), "--total-steps", "99"])
    assert parsed == dataclasses.replace(args, resume=str(tmp_path), total_steps=99)


def test_cli_spells_the_schedule_unit_per_flag_group():
    args = cli(sac.Args, ["--reset.every", "200000", "--reset.unit", "step"])
    assert args.reset == AgentResetConfig(every=200000, modules=("all",), unit="step")
    assert args.reset.tag() == "reset-all-e200000-step" and sac.Args().shrink_perturb.unit == "update"
    with pytest.raises(ValueError, match="unit must be 'update'"):
        AgentResetConfig(every=1, unit="epoch")


def _sac_parts(args: sac.Args):
    nets = sac.SACNetworks(4, 2, args)
    target = copy.deepcopy(nets).requires_grad_(False)
    opts = sac.make_optimizers(nets, args, torch.device("cpu"))
    parts = {
        "critic": ([nets.critic], opts.critic),
        "actor": ([nets.actor], opts.actor),
        "temperature": ([nets.temperature], opts.temperature),
    }
    inputs = (torch.zeros(2, 4), torch.zeros(2, 2))
    return nets, target, opts, parts, inputs


def test_unknown_part_is_a_clear_error_naming_the_flag_and_the_parts():
    args = sac.Args(hidden_dims=(256, 256), shrink_perturb=ShrinkPerturbConfig(every=3, modules=("encoder",)))
    nets, target, _, parts, inputs = _sac_parts(args)
    with pytest.raises(ValueError) as error:
        build_interventions(args, nets, target, parts, lambda: inputs, inputs)
    message = str(error.value)
    assert message == (
        "--shrink-perturb.modules encoder: SACNetworks has no part named 'encoder'. This agent's parts: "
        "actor, critic, temperature; or a sub-module by dotted path (e.g. actor.encoder), 'last:K' (the "
        "last K weight layers), 'all'"
    )


def _bound(args, nets, target, parts, inputs):
    interventions, penalties = build_interventions(args, nets, target, parts, lambda: inputs, inputs)
    return {i.name: i for i in interventions}, penalties


def test_sac_intervention_defaults_leave_the_temperature_alone_except_the_reset():
    base = sac.Args(hidden_dims=(8,))
    args = dataclasses.replace(
        base,
        reset=dataclasses.replace(base.reset, every=1),
        shrink_perturb=dataclasses.replace(base.shrink_perturb, every=1),
        l2_init=dataclasses.replace(base.l2_init, enabled=True),
        injection=dataclasses.replace(base.injection, at=(1,)),
    )
    nets, target, _, parts, inputs = _sac_parts(args)
    bound, penalties = _bound(args, nets, target, parts, inputs)
    assert bound["reset"].modules == [nets]  # the whole agent (primacy bias)
    assert bound["shrink_perturb"].modules == [nets.actor, nets.critic]
    assert bound["injection"].modules == [nets.critic.head]
    assert penalties["temperature"] == [] and penalties["actor"] and penalties["critic"]
    with torch.no_grad():
        nets.temperature.log_alpha.fill_(np.log(0.01))
    bound["shrink_perturb"].apply()
    assert nets.temperature().item() == pytest.approx(0.01)


def test_drq_intervention_defaults_are_the_primacy_bias_reset_and_no_temperature_elsewhere():
    base = drq.Args(hidden_dims=(8,), feature_dim=4, image_size=16)
    args = dataclasses.replace(
        base,
        reset=dataclasses.replace(base.reset, every=1),
        shrink_perturb=dataclasses.replace(base.shrink_perturb, every=1),
        l2_init=dataclasses.replace(base.l2_init, enabled=True),
        injection=dataclasses.replace(base.injection, at=(1,)),
    )
    nets = drq.DrQNetworks((3, 16, 16), 2, args)
    target = copy.deepcopy(nets).requires_grad_(False)
    opts = drq.make_optimizers(nets, args, torch.device("cpu"))
    parts = {
        "critic": ([nets.encoder, nets.critic], opts.critic),
        "actor": ([nets.actor], opts.actor),
        "temperature": ([nets.temperature], opts.temperature),
    }
    inputs = (torch.zeros(2, 3, 16, 16), torch.zeros(2, 2))
    bound, penalties = _bound(args, nets, target, parts, inputs)
    assert bound["reset"].modules == [nets.actor, nets.critic, nets.temperature]  # encoder kept
    assert bound["shrink_perturb"].modules == [nets.encoder, nets.actor, nets.critic]
    assert bound["injection"].modules == [nets.critic.q.head]
    assert penalties["temperature"] == []
    bound["shrink_perturb"].apply()
    assert nets.temperature().item() == pytest.approx(0.1)  # (α would be 0.316 with the temperature)


def test_step_unit_schedules_act_at_agent_steps_and_the_ema_runs_every_update():
    args = sac.Args(
        hidden_dims=(8,),
        hare_tortoise=AgentHareTortoiseConfig(enabled=True, every=3, unit="step", momentum=0.5),
        shrink_perturb=AgentShrinkPerturbConfig(every=2, modules=("actor",)),  # update unit
        reset=AgentResetConfig(at=(2,), modules=("critic.head",), unit="step"),
    )
    nets, target, opts, parts, inputs = _sac_parts(args)
    interventions, _ = build_interventions(args, nets, target, parts, lambda: inputs, inputs)
    assert interventions.step_unit == {"hare_tortoise", "reset"}
    ht = next(i for i in interventions if i.name == "hare_tortoise")
    tortoise = ht.tortoise.actor.head.weight
    for update in (1, 2, 3):
        with torch.no_grad():
            nets.actor.head.weight.add_(1.0)
        before = tortoise.clone()
        events = interventions.maybe_apply(update)
        assert events == ({"interventions/shrink_perturb": 1.0} if update == 2 else {})
        if update != 2:  # (S&P changes the hare after the EMA)
            torch.testing.assert_close(tortoise, 0.5 * before + 0.5 * nets.actor.head.weight)
    assert interventions.at_step(1) == {}
    assert interventions.at_step(2) == {"interventions/reset": 1.0}
    assert interventions.at_step(3) == {"interventions/hare_tortoise": 1.0}
    assert torch.equal(nets.actor.head.weight, tortoise)  # hare ← tortoise


def test_l2_init_is_split_by_the_loss_that_trains_each_part():
    args = sac.Args(hidden_dims=(8,), l2_init=L2InitConfig(enabled=True, modules=("actor.head", "critic")))
    nets, target, _, parts, inputs = _sac_parts(args)
    interventions, penalties = build_interventions(args, nets, target, parts, lambda: inputs, inputs)
    assert [i.name for i in interventions] == ["l2_init_critic", "l2_init_actor"]
    assert penalties["temperature"] == []
    assert {id(p) for p in penalties["actor"][0].params} == {id(p) for p in nets.actor.head.parameters()}
    with torch.no_grad():
        nets.actor.head.weight.add_(1.0)
    expected = 1e-2 * nets.actor.head.weight.numel()
    assert float(l2_penalty(penalties["actor"]).detach()) == pytest.approx(expected, rel=1e-5)


def test_schedule_lines_give_both_units_with_the_learning_starts_offset():
    args = sac.Args(replay_ratio=32.0, reset=AgentResetConfig(every=6_400_000))
    assert schedule_lines(args) == [
        "--reset: every 6400000 updates = after agent steps 210000, 410000, 610000, ... "
        "(learning starts 10000, replay ratio 32)"
    ]
    args = dataclasses.replace(args, reset=AgentResetConfig(every=200_000, unit="step"))
    assert schedule_lines(args) == [
        "--reset: every 200000 agent steps = after agent steps 200000, 400000, 600000, ... "
        "(after updates 6080000, 12480000, 18880000, ...) (learning starts 10000, replay ratio 32)"
    ]
    args = drq.Args(
        total_steps=250_000,
        replay_ratio=0.5,
        reset=AgentResetConfig(every=100_000, unit="step"),
        injection=AgentInjectionConfig(at=(3000, 999_999)),
    )
    assert schedule_lines(args, env_steps_per_step=8) == [
        "--reset: every 100000 agent steps = after agent steps 100000, 200000 = env steps 800000, 1600000 "
        "(after updates 49500, 99500) (learning starts 1000, replay ratio 0.5)",
        "--injection: at updates 3000, 999999 = after agent steps 7000 = env steps 56000 "
        "(learning starts 1000, replay ratio 0.5)",
    ]
    late = dataclasses.replace(args, injection=AgentInjectionConfig(at=(999_999,)), reset=ResetConfig())
    assert schedule_lines(late) == [
        "--injection: at updates 999999: never within --total-steps 250000 "
        "(learning starts 1000, replay ratio 0.5)"
    ]


def test_exit_code():
    assert exit_code({"interrupted": None}) == 0
    assert exit_code({"interrupted": "SIGTERM"}) == 143
    assert exit_code({"interrupted": "SIGINT"}) == 130
