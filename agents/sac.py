"""SAC from states on the DeepMind Control suite, as in the primacy-bias study.

Soft actor-critic (Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and Applications": tanh-squashed
Gaussian actor, twin critics with target copies, learned temperature) with the settings of Nikishin et
al. 2022, "The Primacy Bias in Deep Reinforcement Learning" (evgenii-nikishin/rl_with_resets:
``train_dense.py``, ``configs/sac.py``, ``continuous_control/agents/sac/``). Their headline runs are 2M
steps at 1 and 32 updates per step, with and without resets of the whole agent every 200k steps.

Primacy-bias protocol (one command; ``--reset.unit step`` counts agent steps, so the resets land right
after agent steps 200k, 400k, ... at any replay ratio, as ``train_dense.py``'s ``i % reset_interval == 0``)::

    python agents/sac.py --env-id quadruped-run --replay-ratio 32 --reset.every 200000 --reset.unit step

The reset's default part, ``all``, re-creates the whole agent — actor, critics, target critics (synced to
the fresh critics), temperature — and clears every optimizer state; the replay buffer is kept
(``train_dense.py``: "create a completely new agent"). As there, the evaluation of step 200k sees the
agent before the reset. (With the default ``--reset.unit update`` the interval counts gradient updates,
which start after ``--learning-starts``: ``--reset.every 200000`` at replay ratio 1 resets after agent
steps 210k, 410k, ...)

Intervention defaults (each group off until scheduled): reset — the whole agent (primacy bias); shrink &
perturb and L2-init — actor and critic, not the temperature (shrinking log α moves α toward 1, and the
penalty's pull toward log α₀ would dominate the temperature's own tiny gradient); plasticity injection —
the critic heads (``critic.head``, both Q-networks), as Nikishin et al. 2023 inject into the value head.

Differences from the reference code:
- One update = critic step, target update, actor step, temperature step, as in ``sac_learner.py``;
  ``--replay-ratio`` is updates per agent step (``updates_per_step``), any positive float.
- Updates start after ``--learning-starts`` random steps and follow the exact replay-ratio schedule
  (floor((N − learning_starts)·ratio) updates after N steps); the reference starts at step
  ``start_training`` with one more update. Warm-up actions are uniform in [−1, 1].
- The twin critics run as one batched ensemble (:class:`plasticrl.networks.QEnsemble`); the actor loss
  does not compute weight gradients of the critics (it only needs gradients w.r.t. actions).
- The target entropy is −|A|/2 as in ``sac_learner.py`` (``target_entropy=None`` → ``-action_dim / 2``);
  the DrQ agent uses −|A| as drq does.
- Evaluation runs on an env seeded ``seed + 42`` (``train_dense.py``) with the mean action tanh(μ).
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from plasticrl.agents.sac_parts import Temperature, no_weight_grads, squash_log_std, tanh_gaussian_sample
from plasticrl.buffers import ReplayBatch, ReplayBuffer
from plasticrl.common.agent_diagnostics import initial_parameters, measure_parts, probe_curvature
from plasticrl.common.agent_interventions import (
    AgentHareTortoiseConfig,
    AgentInjectionConfig,
    AgentReDoConfig,
    AgentResetConfig,
    AgentShrinkPerturbConfig,
    acting_network,
    add_penalties,
    build_interventions,
)
from plasticrl.common.cli import announce, check_common_args, open_run, run_agent, setup_torch
from plasticrl.common.evaluation import EpisodeEvaluator
from plasticrl.common.loop import OffPolicyLoop
from plasticrl.common.training_env import SingleEnv
from plasticrl.envs import make_dmc
from plasticrl.interventions import CBPConfig, L2InitConfig, ordered_configs, run_tag
from plasticrl.networks import MLP, OrthogonalInit, QEnsemble, set_initializer, soft_update_

AGENT = "sac"


@dataclass
class Args:
    """SAC from states (primacy-bias setting); defaults: rl_with_resets train_dense.py, configs/sac.py."""

    env_id: str = "cheetah-run"
    """DMC task, 'domain-task'"""
    seed: int = 1
    """random seed (networks, replay sampling, warm-up actions, the training env; eval env: seed + 42)"""
    total_steps: int = 2_000_000  # train_dense.py max_steps
    """agent steps (= env steps: action repeat 1 from states)"""
    replay_ratio: float = 1.0  # configs/sac.py updates_per_step; the primacy-bias study also runs 32
    """gradient updates per agent step (0.25, 1, 2, 8, 32, ...)"""
    learning_starts: int = 10_000  # train_dense.py start_training
    """random-action steps before the first update"""
    eval_every: int = 5_000  # train_dense.py eval_interval
    """agent steps between evaluations"""
    eval_episodes: int = 10  # train_dense.py eval_episodes
    """episodes per evaluation (deterministic policy, separate env)"""
    run_dir: str = "runs"
    """parent directory of run directories"""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"""
    diagnostics_every: int = 10_000
    """gradient updates between plasticity diagnostics (0: off)"""
    checkpoint_every: int = 100_000
    """agent steps between checkpoints (0: only on SIGTERM/Ctrl-C)"""
    resume: str | None = None
    """run directory to continue from its checkpoint.pt"""
    log_every: int = 1_000
    """agent steps between logs of losses, SPS and update counts (one host sync each)"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    debug: bool = False
    """print the full traceback of every error (bad input included), not one 'error:' line"""

    batch_size: int = 256  # train_dense.py batch_size
    """transitions per gradient update"""
    buffer_size: int = 1_000_000  # configs/sac.py replay_buffer_size
    """replay capacity in transitions (the buffer is kept across resets)"""
    gamma: float = 0.99  # configs/sac.py discount
    """discount factor"""
    tau: float = 0.005  # configs/sac.py tau (target_update_period 1)
    """target critic update rate per update"""
    actor_lr: float = 3e-4  # configs/sac.py
    """actor Adam learning rate"""
    critic_lr: float = 3e-4  # configs/sac.py
    """critic Adam learning rate"""
    temperature_lr: float = 3e-4  # configs/sac.py temp_lr
    """temperature Adam learning rate"""
    hidden_dims: tuple[int, ...] = (256, 256)  # configs/sac.py
    """hidden widths of the actor and of each critic"""
    activation: str = "relu"
    """hidden activation of actor and critics ('relu', 'crelu', ...)"""
    layer_norm: bool = False
    """LayerNorm after each hidden Linear of actor and critics"""
    init_temperature: float = 1.0  # configs/sac.py init_temperature
    """initial entropy temperature α"""
    target_entropy: float | None = None  # sac_learner.py: None -> -action_dim / 2
    """target entropy (None: −|A|/2)"""
    log_std_min: float = -10.0  # jaxrl policies.py LOG_STD_MIN
    """lower bound of the actor's log σ"""
    log_std_max: float = 2.0  # jaxrl policies.py LOG_STD_MAX
    """upper bound of the actor's log σ"""
    dormant_threshold: float = 0.025  # Sokar et al. 2023, dormant-count plots
    """τ of the logged dormant ratio"""
    probe_batch_size: int = 256
    """transitions in the fixed diagnostics probe batch (sampled when learning starts)"""
    compile: bool = False
    """torch.compile the actor and critic forwards (GPU users; off by default)"""
    curvature_every: int = 0
    """gradient updates between curvature diagnostics of the TD loss on the probe batch (sharpness, Hessian
    trace and rank, gradient noise; 0: off, as each costs tens of backward passes)"""

    # rl_with_resets train_dense.py: the resets re-create the whole agent (actor, critics, temperature).
    reset: AgentResetConfig = AgentResetConfig(modules=("all",))
    """reset, default the whole agent (primacy bias: --reset.every 200000 --reset.unit step)"""
    # Not the temperature: θ ← 0.4·θ + 0.1·φ on log α would move a trained α = 0.01 to 0.16 at once.
    shrink_perturb: AgentShrinkPerturbConfig = AgentShrinkPerturbConfig(modules=("actor", "critic"))
    """shrink & perturb (default parts: actor, critic; the temperature is left alone)"""
    hare_tortoise: AgentHareTortoiseConfig = AgentHareTortoiseConfig()
    """hare & tortoise"""
    # Not the temperature: λ‖log α − log α₀‖² would swamp the temperature loss's gradient.
    l2_init: L2InitConfig = L2InitConfig(modules=("actor", "critic"))
    """L2-init regularisation (default parts: actor, critic)"""
    redo: AgentReDoConfig = AgentReDoConfig()
    """ReDo dormant-unit recycling"""
    # Nikishin et al. 2023 inject into the value head; here both Q-networks' output layers.
    injection: AgentInjectionConfig = AgentInjectionConfig(modules=("critic.head",))
    """plasticity injection (default part: critic.head, the twin critics' output layers)"""
    cbp: CBPConfig = CBPConfig()
    """continual backprop"""


# ----------------------------------------------------------------------------- networks


class GaussianHeadInit:
    """Orthogonal rows with gain √2 for the means and 1 for the log σ, zero bias (jaxrl ``NormalTanhPolicy``:
    two Dense layers, ``default_init()`` and ``default_init(log_std_scale=1.0)``)."""

    def __init__(self, action_dim: int):
        self.action_dim = int(action_dim)

    def __call__(self, module: nn.Module) -> None:
        nn.init.orthogonal_(module.weight[: self.action_dim], gain=math.sqrt(2.0))
        nn.init.orthogonal_(module.weight[self.action_dim :], gain=1.0)
        nn.init.zeros_(module.bias)


class Actor(MLP):
    """Tanh-squashed Gaussian policy: MLP → (μ, log σ), log σ squashed into [log_std_min, log_std_max]."""

    def __init__(self, obs_dim: int, action_dim: int, args: Args):
        super().__init__(
            obs_dim, args.hidden_dims, 2 * action_dim, activation=args.activation, layer_norm=args.layer_norm
        )
        self.log_std_bounds = (args.log_std_min, args.log_std_max)
        # jaxrl common.py default_init: orthogonal(√2) kernels, zero biases.
        set_initializer(self.encoder, OrthogonalInit(math.sqrt(2.0)), types=(nn.Linear,))
        set_initializer(self.head, GaussianHeadInit(action_dim), types=(nn.Linear,))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_log_std = super().forward(obs).chunk(2, dim=-1)
        return mean, squash_log_std(raw_log_std, *self.log_std_bounds)


class SACNetworks(nn.Module):
    """Everything SAC trains, as one module so interventions address parts by name:
    ``actor`` (``actor.encoder``, ``actor.head``), ``critic`` (twin Q ensemble: ``critic.encoder``,
    ``critic.head``, ``critic.encoder.0.linear.members.1``, ...) and ``temperature``."""

    def __init__(self, obs_dim: int, action_dim: int, args: Args):
        super().__init__()
        self.actor = Actor(obs_dim, action_dim, args)
        self.critic = QEnsemble(
            obs_dim, action_dim, args.hidden_dims, activation=args.activation, layer_norm=args.layer_norm
        )
        # jaxrl critic_net.py: MLP with default_init (orthogonal √2) on every layer, the output included.
        set_initializer(self.critic, OrthogonalInit(math.sqrt(2.0)), types=(nn.Linear,))
        self.temperature = Temperature(args.init_temperature)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Q-values of both critics and the actor's (μ, log σ): every part, for probes and unit discovery."""
        mean, log_std = self.actor(obs)
        return self.critic(obs, action), mean, log_std


# ----------------------------------------------------------------------------- losses and update


def critic_loss(
    nets: SACNetworks, target: SACNetworks, batch: ReplayBatch, next_noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_i mean_b (Q_i(s, a) − y)², y = r + γ^k·(1 − done)·(min_i Q'_i(s', a') − α·log π(a'|s')), a' ~ π(s').

    ``next_noise`` is the standard normal draw of a'. Returns (loss, Q-values (2, batch)).
    """
    return td_loss(nets.critic, (batch.obs, batch.action, td_target(nets, target, batch, next_noise)))


@torch.no_grad()
def td_target(
    nets: SACNetworks, target: SACNetworks, batch: ReplayBatch, next_noise: torch.Tensor
) -> torch.Tensor:
    """y = r + γ^k·(1 − done)·(min_i Q'_i(s', a') − α·log π(a'|s')), a' = tanh(μ + σ·next_noise)."""
    mean, log_std = nets.actor(batch.next_obs)
    next_action, next_log_prob = tanh_gaussian_sample(mean, log_std, next_noise)
    next_q = target.critic(batch.next_obs, next_action).amin(dim=0)
    return batch.reward + batch.discount * (next_q - nets.temperature() * next_log_prob)


def td_loss(critic: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_i mean_b (Q_i(s, a) − y)² for ``inputs = (obs, action, y)``; returns (loss, Q-values)."""
    obs, action, target_q = inputs
    q = critic(obs, action)
    return (q - target_q).pow(2).mean(dim=1).sum(), q


def actor_loss(
    nets: SACNetworks, obs: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """mean_b (α·log π(a|s) − min_i Q_i(s, a)), a = tanh(μ + σ·noise), α fixed. Returns (loss, log π)."""
    mean, log_std = nets.actor(obs)
    action, log_prob = tanh_gaussian_sample(mean, log_std, noise)
    with no_weight_grads(nets.critic):
        q = nets.critic(obs, action).amin(dim=0)
    return (nets.temperature().detach() * log_prob - q).mean(), log_prob


def temperature_loss(nets: SACNetworks, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """α·(H − H̄) with the policy entropy estimate H = −mean log π (detached); its gradient moves α
    up when the entropy is below the target."""
    entropy = -log_prob.detach().mean()
    return nets.temperature() * (entropy - target_entropy)


@dataclass
class Optimizers:
    """One Adam per loss (each steps the parameters its loss trains)."""

    actor: torch.optim.Optimizer
    critic: torch.optim.Optimizer
    temperature: torch.optim.Optimizer


def update(
    nets: SACNetworks,
    target: SACNetworks,
    optimizers: Optimizers,
    batch: ReplayBatch,
    args: Args,
    target_entropy: float,
    penalties: dict[str, list],
) -> dict[str, torch.Tensor]:
    """One SAC update (sac_learner.py ``_update_jit``): critic step, target update, actor step with the
    new critic, temperature step; L2-init penalties are added to the loss of the parameters they cover.

    Actor and temperature share one backward pass: the actor loss uses α detached and the temperature
    loss log π detached, so the summed loss gives each parameter exactly its own loss's gradient (bit for
    bit), and the temperature loss only reads log π and α, which the actor step does not change — the
    same numbers as a backward and a step per loss, with one autograd pass fewer."""
    loss_q, q = critic_loss(nets, target, batch, torch.randn_like(batch.action))
    optimizers.critic.zero_grad(set_to_none=True)
    add_penalties(loss_q, penalties["critic"]).backward()
    optimizers.critic.step()
    soft_update_(target.critic, nets.critic, args.tau)

    loss_pi, log_prob = actor_loss(nets, batch.obs, torch.randn_like(batch.action))
    loss_alpha = temperature_loss(nets, log_prob, target_entropy)  # before the actor step: same value
    optimizers.actor.zero_grad(set_to_none=True)
    optimizers.temperature.zero_grad(set_to_none=True)
    total = add_penalties(loss_pi, penalties["actor"])
    (total + add_penalties(loss_alpha, penalties["temperature"])).backward()
    optimizers.actor.step()
    optimizers.temperature.step()
    return {
        "losses/critic": loss_q.detach(),
        "losses/actor": loss_pi.detach(),
        "losses/temperature": loss_alpha.detach(),
        "losses/alpha": nets.temperature().detach(),
        "losses/entropy": -log_prob.detach().mean(),
        "losses/q": q.detach().mean(),
    }


def make_optimizers(nets: SACNetworks, args: Args, device: torch.device) -> Optimizers:
    """Adam per part (configs/sac.py learning rates), fused kernels where torch has them."""
    fused = device.type in ("cuda", "cpu")
    return Optimizers(
        actor=torch.optim.Adam(nets.actor.parameters(), lr=args.actor_lr, fused=fused),
        critic=torch.optim.Adam(nets.critic.parameters(), lr=args.critic_lr, fused=fused),
        temperature=torch.optim.Adam(nets.temperature.parameters(), lr=args.temperature_lr, fused=fused),
    )


# ----------------------------------------------------------------------------- the loop


def main(args: Args) -> dict[str, Any]:
    """Train SAC; returns the final summary (eval returns, steps, gradient updates, wall time)."""
    check_common_args(args)
    device = setup_torch(args)
    env = make_dmc(args.env_id, args.seed)
    eval_env = make_dmc(args.env_id, args.seed + 42)  # train_dense.py: eval env seed + 42
    obs_dim = int(np.prod(env.observation_space.shape))
    action_dim = int(np.prod(env.action_space.shape))
    target_entropy = -action_dim / 2 if args.target_entropy is None else float(args.target_entropy)

    nets = SACNetworks(obs_dim, action_dim, args).to(device)
    target = copy.deepcopy(nets).requires_grad_(False)
    optimizers = make_optimizers(nets, args, device)
    buffer = ReplayBuffer(args.buffer_size, env.observation_space, env.action_space, seed=args.seed)

    def probe_inputs(batch: ReplayBatch | None, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if batch is None:  # before learning starts: the structure is all that matters
            return torch.zeros(size, obs_dim, device=device), torch.zeros(size, action_dim, device=device)
        batch = batch.to(device)
        return batch.obs, batch.action

    def redo_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ready = buffer.num_valid() >= args.redo.batch_size
        return probe_inputs(buffer.sample(args.redo.batch_size) if ready else None, args.redo.batch_size)

    interventions, penalties = build_interventions(
        args,
        nets,
        target,
        {
            "critic": ([nets.critic], optimizers.critic),
            "actor": ([nets.actor], optimizers.actor),
            "temperature": ([nets.temperature], optimizers.temperature),
        },
        batch_fn=redo_batch,
        example_inputs=probe_inputs(None, 2),
    )
    if args.compile:
        nets.actor.compile()
        nets.critic.compile()
        target.critic.compile()
    initial = initial_parameters({"actor": nets.actor, "critic": nets.critic})

    @torch.no_grad()
    def act(obs: np.ndarray, deterministic: bool) -> np.ndarray:
        actor = acting_network(nets, interventions).actor
        mean, log_std = actor(torch.as_tensor(obs, device=device).unsqueeze(0))
        action = (
            torch.tanh(mean)
            if deterministic
            else tanh_gaussian_sample(mean, log_std, torch.randn_like(mean))[0]
        )
        return action[0].cpu().numpy()

    def diagnostics(probe: ReplayBatch) -> dict[str, float]:
        with torch.no_grad():
            features = nets.critic.features(probe.obs, probe.action)
        return measure_parts(
            {"actor": (nets.actor, probe.obs), "critic": (nets.critic, (probe.obs, probe.action))},
            initial,
            dormant_threshold=args.dormant_threshold,
            ensemble_features={"critic": features},
        )

    def curvature_diagnostics(probe: ReplayBatch) -> dict[str, float]:
        # The critic's TD loss with its bootstrap target computed once and held fixed while the Hessian is
        # probed; a' from a fixed noise draw (own generator: the run's random streams are not touched).
        noise = torch.randn(probe.action.shape, generator=torch.Generator().manual_seed(0)).to(device)
        inputs = (probe.obs, probe.action, td_target(nets, target, probe, noise))
        parts = {"encoder": nets.critic.encoder, "head": nets.critic.head}
        loss = lambda critic, x: td_loss(critic, x)[0]  # noqa: E731
        return probe_curvature(
            nets.critic, loss, inputs, name="critic", parts=parts, batch_size=args.batch_size
        )

    def agent_state() -> dict:
        return {
            "nets": nets.state_dict(),
            "target": target.state_dict(),
            "optimizers": {
                k: getattr(optimizers, k).state_dict() for k in ("actor", "critic", "temperature")
            },
            "initial": initial,
        }

    def load_agent_state(state: dict) -> None:
        nets.load_state_dict(state["nets"])
        target.load_state_dict(state["target"])
        for k in ("actor", "critic", "temperature"):
            getattr(optimizers, k).load_state_dict(state["optimizers"][k])
        initial.update(state["initial"])

    tag = run_tag(ordered_configs(args))
    run, checkpoint = open_run(AGENT, args, tag)
    announce(AGENT, args, run)
    loop = OffPolicyLoop(
        agent=AGENT,
        args=args,
        run=run,
        env=SingleEnv(env),
        evaluator=EpisodeEvaluator(lambda obs: act(obs, deterministic=True), eval_env),
        buffer=buffer,
        interventions=interventions,
        networks=nets,
        agent_state=agent_state,
        load_agent_state=load_agent_state,
        diagnostics=diagnostics,
        curvature=curvature_diagnostics,
        device=device,
        checkpoint=checkpoint,
    )
    with loop:
        while loop.running:
            action = loop.random_action() if loop.warming_up else act(loop.obs, deterministic=False)
            for _ in range(loop.env_step(action)):
                batch = buffer.sample(args.batch_size, gamma=args.gamma, device=device)
                loop.after_update(update(nets, target, optimizers, batch, args, target_entropy, penalties))
            loop.after_step()
    return loop.summary()


if __name__ == "__main__":
    sys.exit(run_agent(main, Args))
