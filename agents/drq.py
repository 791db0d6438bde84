"""DrQ from pixels on the DeepMind Control suite, as in the primacy-bias study.

DrQ (Kostrikov, Yarats & Fergus 2020, "Image Augmentation Is All You Need: Regularizing Deep
Reinforcement Learning from Pixels"; denisyarats/drq ``drq.py``, ``config.yaml``): SAC on a shared conv
encoder with random-shift augmentation — pad 4 (replicate) and a random 84×84 crop — averaging the
target over K = 2 augmentations of s' and the critic loss over M = 2 augmentations of s. The critic's
gradients train the encoder; the actor sees detached conv features. Actor, temperature and target
critic are updated every second update. 84×84 RGB, frame stack 3, action repeat per task (PlaNet
values: cartpole-swingup 8, reacher-easy / cheetah-run / ball_in_cup-catch 4, others 2).

Networks, as in drq.py: the conv stack (4 conv 3×3, 32 channels, first stride 2) is shared; critic and
actor each have their own projection Linear(39200 → 50) → LayerNorm → tanh (drq ties only the conv
weights between actor and critic) followed by MLPs 1024×2 (twin Q-networks; actor → μ, log σ).

Primacy-bias protocol (Nikishin et al. 2022; rl_with_resets ``train_pixels.py``): every N agent steps
the actor, the critic heads (projection and Q-networks), the target critic's heads (synced to the fresh
ones) and the temperature are re-created with their optimizer state; the conv encoder, its optimizer
state and the target encoder are kept — the reset's default parts here (actor, critic, temperature).
N = 100k / 50k / 25k agent steps for 2M / 1M / 500k env-step budgets, counted in agent steps
(``--reset.unit step``: right after agent step N, 2N, ..., whatever the replay ratio). rl_with_resets trains
jaxrl's DrQ (``drq_learner.py``: Adam 3e-4, MLPs 256×2, τ 0.005 and the actor at every update, one
augmentation of s and of s', batch 512), so its setting is (quadruped-run repeats actions twice: 2M env
steps = 1M agent steps)::

    python agents/drq.py --env-id quadruped-run --total-steps 1000000 --lr 3e-4 --hidden-dims 256 256 \\
        --tau 0.005 --actor-update-every 1 --target-update-every 1 --target-augmentations 1 \\
        --q-augmentations 1 --reset.every 100000 --reset.unit step

The defaults of this file are the DrQ paper's (drq config.yaml); ``--reset.every N --reset.unit step``
alone gives the primacy-bias resets on top of them.

Intervention defaults (each group off until scheduled): reset — actor, critic heads and temperature
(primacy bias; the encoder is kept); shrink & perturb and L2-init — encoder, actor and critic, not the
temperature (one S&P application at the defaults moves α from 0.1 to 0.316, and λ‖log α − log α₀‖² would
dominate the temperature's gradient); plasticity injection — the critic heads (``critic.q.head``, both
Q-networks), as Nikishin et al. 2023 inject into the value head.

Weights are initialised as in drq (orthogonal, gain 1 for Linear layers, √2 for convs); jaxrl uses gain √2
for every layer.

Differences from the references:
- Batch 512, as drq's config.yaml asks for to reproduce the paper (its default file says 128).
- ``--replay-ratio`` counts critic updates per agent step; actor/temperature and target updates run
  on every second critic update (drq counts agent steps for this; the same at replay ratio 1).
- The actor update reuses one no-grad conv pass for actor and critic (drq runs the tied convs twice with
  the same weights: same numbers); the M = 2 (and K = 2) augmented batches run through the encoder
  as one batch of 2B (the loss Σ_m Σ_i mse equals M × the mean over the joint batch).
- Pixels render with ``fast_render`` (no shadows / anti-aliasing, ≈5× faster on CPUs, frames differ
  slightly from the papers'); ``--no-fast-render`` keeps MuJoCo's default look.
- The random shift is an exact gather with clamped indices (identical to replicate-pad + crop).
- Updates start after ``--learning-starts`` = 1000 random steps (drq num_seed_steps) with the exact
  replay-ratio schedule; the eval env is seeded ``seed + 42`` (rl_with_resets) and acts with tanh(μ).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
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
from plasticrl.envs import default_action_repeat, make_dmc
from plasticrl.interventions import CBPConfig, L2InitConfig, ordered_configs, run_tag
from plasticrl.networks import (
    MLP,
    DrQEncoder,
    OrthogonalInit,
    QEnsemble,
    fresh_copy,
    pixels_to_float,
    random_shift,
    set_initializer,
    soft_update_,
)

AGENT = "drq"


@dataclass
class Args:
    """DrQ from pixels (primacy-bias setting); defaults: denisyarats/drq config.yaml and the DrQ paper."""

    env_id: str = "cartpole-swingup"
    """DMC task, 'domain-task'"""
    seed: int = 1
    """random seed (networks, augmentation, replay sampling, warm-up actions, the env; eval env: seed + 42)"""
    total_steps: int = 100_000
    """agent steps (env steps = agent steps × action repeat; PlaNet's 500k env steps = 500000 / repeat)"""
    replay_ratio: float = 1.0  # drq config.yaml num_train_iters 1
    """critic updates per agent step (0.25, 1, 2, 8, 32, ...)"""
    learning_starts: int = 1_000  # drq config.yaml num_seed_steps
    """random-action agent steps before the first update"""
    eval_every: int = 5_000  # drq config.yaml eval_frequency; rl_with_resets eval_interval
    """agent steps between evaluations"""
    eval_episodes: int = 10  # drq config.yaml num_eval_episodes
    """episodes per evaluation (deterministic policy, separate env)"""
    run_dir: str = "runs"
    """parent directory of run directories"""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"""
    diagnostics_every: int = 10_000
    """gradient (critic) updates between plasticity diagnostics (0: off)"""
    checkpoint_every: int = 0
    """agent steps between checkpoints (0: only on SIGTERM/Ctrl-C; a 100k pixel buffer is ~2.2 GB)"""
    resume: str | None = None
    """run directory to continue from its checkpoint.pt"""
    log_every: int = 1_000
    """agent steps between logs of losses, SPS and update counts (one host sync each)"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    debug: bool = False
    """print the full traceback of every error (bad input included), not one 'error:' line"""

    action_repeat: int | None = None  # None -> PlaNet table (plasticrl.envs.PLANET_ACTION_REPEAT), else 2
    """env steps per agent step (None: the PlaNet value of the task)"""
    image_size: int = 84  # drq config.yaml
    """side of the square RGB frames"""
    frame_stack: int = 3  # drq config.yaml
    """frames stacked along channels"""
    fast_render: bool = True
    """faster CPU rendering (no shadows / anti-aliasing; frames differ slightly from the papers')"""
    image_pad: int = 4  # drq config.yaml image_pad
    """random-shift padding in pixels (replicate)"""
    target_augmentations: int = 2  # DrQ paper: K = 2
    """K: augmented next observations averaged in the target"""
    q_augmentations: int = 2  # DrQ paper: M = 2
    """M: augmented observations in the critic loss"""

    batch_size: int = 512  # drq config.yaml: "use a batch size of 512 to reproduce the results in the paper"
    """transitions per gradient update"""
    buffer_size: int = 100_000  # drq config.yaml replay_buffer_capacity
    """replay capacity in transitions (single frames stored)"""
    gamma: float = 0.99  # drq config.yaml discount
    """discount factor"""
    tau: float = 0.01  # drq config.yaml critic_tau
    """target critic (and target encoder) update rate"""
    lr: float = 1e-3  # drq config.yaml lr (actor, critic and temperature)
    """Adam learning rate of actor, critic + encoder and temperature"""
    actor_update_every: int = 2  # drq config.yaml actor_update_frequency
    """critic updates per actor and temperature update"""
    target_update_every: int = 2  # drq config.yaml critic_target_update_frequency
    """critic updates per target update"""
    feature_dim: int = 50  # drq config.yaml encoder feature_dim
    """width of the projection after the convs"""
    hidden_dims: tuple[int, ...] = (1024, 1024)  # drq config.yaml hidden_dim 1024, hidden_depth 2
    """hidden widths of the actor and of each critic MLP"""
    activation: str = "relu"
    """hidden activation of the actor and critic MLPs ('relu', 'crelu', ...)"""
    layer_norm: bool = False
    """LayerNorm after each hidden Linear of the actor and critic MLPs"""
    init_temperature: float = 0.1  # drq config.yaml init_temperature
    """initial entropy temperature α"""
    target_entropy: float | None = None  # drq.py: -action_shape[0]
    """target entropy (None: −|A|)"""
    log_std_min: float = -10.0  # drq config.yaml log_std_bounds
    """lower bound of the actor's log σ"""
    log_std_max: float = 2.0  # drq config.yaml log_std_bounds
    """upper bound of the actor's log σ"""
    channels_last: bool = True
    """feed training batches to the convs in channels-last memory format (faster on CPUs; same numbers)"""
    dormant_threshold: float = 0.025  # Sokar et al. 2023, dormant-count plots
    """τ of the logged dormant ratio"""
    probe_batch_size: int = 256
    """transitions in the fixed diagnostics probe batch (sampled when learning starts)"""
    compile: bool = False
    """torch.compile the encoder, actor and critic forwards (GPU users; off by default)"""
    curvature_every: int = 0
    """gradient updates between curvature diagnostics of the TD loss on the probe batch (sharpness, Hessian
    trace and rank, gradient noise; 0: off, as each costs tens of backward passes)"""

    # rl_with_resets train_pixels.py: the actor, critic heads and temperature are reset, the encoder kept.
    reset: AgentResetConfig = AgentResetConfig(modules=("actor", "critic", "temperature"))
    """reset, default actor + critic heads + temperature (primacy bias: --reset.every N --reset.unit step)"""
    # Not the temperature: θ ← 0.4·θ + 0.1·φ on log α moves α from 0.1 to 0.316 at the first application.
    shrink_perturb: AgentShrinkPerturbConfig = AgentShrinkPerturbConfig(
        modules=("encoder", "actor", "critic")
    )
    """shrink & perturb (default parts: encoder, actor, critic; the temperature is left alone)"""
    hare_tortoise: AgentHareTortoiseConfig = AgentHareTortoiseConfig()
    """hare & tortoise"""
    # Not the temperature: λ‖log α − log α₀‖² would swamp the temperature loss's gradient.
    l2_init: L2InitConfig = L2InitConfig(modules=("encoder", "actor", "critic"))
    """L2-init regularisation (default parts: encoder, actor, critic)"""
    redo: AgentReDoConfig = AgentReDoConfig()
    """ReDo dormant-unit recycling"""
    # Nikishin et al. 2023 inject into the value head; here both Q-networks' output layers.
    injection: AgentInjectionConfig = AgentInjectionConfig(modules=("critic.q.head",))
    """plasticity injection (default part: critic.q.head, the twin critics' output layers)"""
    cbp: CBPConfig = CBPConfig()
    """continual backprop"""


# ----------------------------------------------------------------------------- networks


class Actor(nn.Module):
    """Projection (Linear → LayerNorm → tanh) of the conv features, then MLP → (μ, log σ)."""

    def __init__(self, projection: nn.Module, action_dim: int, args: Args):
        super().__init__()
        self.projection = projection
        self.trunk = MLP(
            args.feature_dim,
            args.hidden_dims,
            2 * action_dim,
            activation=args.activation,
            layer_norm=args.layer_norm,
        )
        set_initializer(self.trunk, OrthogonalInit(1.0), types=(nn.Linear,))  # drq utils.weight_init
        self.log_std_bounds = (args.log_std_min, args.log_std_max)

    def forward(self, conv_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_log_std = self.trunk(self.projection(conv_features)).chunk(2, dim=-1)
        return mean, squash_log_std(raw_log_std, *self.log_std_bounds)


class Critic(nn.Module):
    """Projection of the conv features, then twin Q-networks on [features, action] → (2, batch)."""

    def __init__(self, projection: nn.Module, action_dim: int, args: Args):
        super().__init__()
        self.projection = projection
        self.q = QEnsemble(
            args.feature_dim,
            action_dim,
            args.hidden_dims,
            activation=args.activation,
            layer_norm=args.layer_norm,
        )
        set_initializer(self.q, OrthogonalInit(1.0), types=(nn.Linear,))  # drq utils.weight_init

    def forward(self, conv_features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.q(self.projection(conv_features), action)

    def features(self, conv_features: torch.Tensor, action: torch.Tensor) -> list[torch.Tensor]:
        """Penultimate features of each Q-network (diagnostics)."""
        return self.q.features(self.projection(conv_features), action)


class DrQNetworks(nn.Module):
    """Everything DrQ trains, as one module so interventions address parts by name: ``encoder`` (the
    shared convs), ``critic`` (``critic.projection``, ``critic.q``, ``critic.q.head``), ``actor``
    (``actor.projection``, ``actor.trunk``, ``actor.trunk.head``) and ``temperature``."""

    def __init__(self, obs_shape: Sequence[int], action_dim: int, args: Args):
        super().__init__()
        convs_and_projection = DrQEncoder(tuple(obs_shape), args.feature_dim)
        self.encoder = convs_and_projection.encoder
        self.critic = Critic(convs_and_projection.head, action_dim, args)
        self.actor = Actor(fresh_copy(convs_and_projection.head), action_dim, args)
        self.temperature = Temperature(args.init_temperature)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every part on float pixels in [0, 1] (probes and unit discovery; training detaches the actor)."""
        h = self.encoder(obs)
        mean, log_std = self.actor(h)
        return self.critic(h, action), mean, log_std


def augmented(obs: torch.Tensor, copies: int, args: Args) -> torch.Tensor:
    """``copies`` independent random shifts of ``obs`` stacked along the batch: (copies·B, C, H, W)."""
    shifted = torch.cat([random_shift(obs, args.image_pad) for _ in range(copies)])
    return pixels_to_float(shifted, args.channels_last)


# ----------------------------------------------------------------------------- losses and update


def critic_loss(
    nets: DrQNetworks,
    target: DrQNetworks,
    obs_aug: torch.Tensor,
    next_obs_aug: torch.Tensor,
    batch: ReplayBatch,
    next_noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DrQ critic loss: Σ_{m≤M} Σ_i mean_b (Q_i(aug_m(s), a) − y)², with y the mean over K augmentations
    aug_k(s') of r + γ^k·(1 − done)·(min_i Q'_i(aug_k(s'), a') − α·log π(a'|aug_k(s'))), a' ~ π.

    ``obs_aug`` is (M·B, ...), ``next_obs_aug`` (K·B, ...), ``next_noise`` (K·B, |A|). The encoder gets
    the gradients. Returns (loss, Q-values (2, M·B)).
    """
    batch_size = batch.reward.shape[0]
    target_q = td_target(nets, target, next_obs_aug, batch, next_noise)
    q = nets.critic(nets.encoder(obs_aug), batch.action.repeat(obs_aug.shape[0] // batch_size, 1))
    q_copies = q.shape[1] // batch_size
    errors = (q - target_q.repeat(q_copies)).pow(2)
    return q_copies * errors.mean(dim=1).sum(), q


@torch.no_grad()
def td_target(
    nets: DrQNetworks,
    target: DrQNetworks,
    next_obs_aug: torch.Tensor,
    batch: ReplayBatch,
    next_noise: torch.Tensor,
) -> torch.Tensor:
    """y: the mean over the K augmentations in ``next_obs_aug`` (K·B, ...) of r + γ^k·(1 − done)·
    (min_i Q'_i(aug_k(s'), a') − α·log π(a'|aug_k(s'))), a' = tanh(μ + σ·next_noise)."""
    batch_size = batch.reward.shape[0]
    copies = next_obs_aug.shape[0] // batch_size
    mean, log_std = nets.actor(nets.encoder(next_obs_aug))  # drq: the actor's convs are the critic's
    next_action, next_log_prob = tanh_gaussian_sample(mean, log_std, next_noise)
    next_q = target.critic(target.encoder(next_obs_aug), next_action).amin(dim=0)
    next_v = (next_q - nets.temperature() * next_log_prob).view(copies, batch_size).mean(dim=0)
    return batch.reward + batch.discount * next_v


def actor_loss(
    nets: DrQNetworks, obs_aug: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """mean_b (α·log π(a|s) − min_i Q_i(s, a)) on detached conv features of the first augmentation
    (drq ``update_actor_and_alpha``: actor and critic with ``detach_encoder=True``). Returns (loss, log π)."""
    with torch.no_grad():
        h = nets.encoder(obs_aug)
    mean, log_std = nets.actor(h)
    action, log_prob = tanh_gaussian_sample(mean, log_std, noise)
    with no_weight_grads(nets.critic):
        q = nets.critic(h, action).amin(dim=0)
    return (nets.temperature().detach() * log_prob - q).mean(), log_prob


def temperature_loss(nets: DrQNetworks, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """α·(H − H̄), H = −mean log π (detached) (drq: alpha · (−log π − target_entropy))."""
    entropy = -log_prob.detach().mean()
    return nets.temperature() * (entropy - target_entropy)


@dataclass
class Optimizers:
    """One Adam per loss (each steps the parameters its loss trains)."""

    actor: torch.optim.Optimizer
    critic: torch.optim.Optimizer
    temperature: torch.optim.Optimizer


def update(
    nets: DrQNetworks,
    target: DrQNetworks,
    optimizers: Optimizers,
    batch: ReplayBatch,
    args: Args,
    target_entropy: float,
    penalties: dict[str, list],
    update_index: int,
) -> dict[str, torch.Tensor]:
    """One DrQ update (drq.py ``DRQAgent.update``): the critic (and encoder) step; every
    ``actor_update_every``-th update the actor and temperature steps; every ``target_update_every``-th
    the target critic and target encoder move by τ. ``update_index`` counts updates from 1."""
    batch_size = batch.reward.shape[0]
    obs_aug = augmented(batch.obs, args.q_augmentations, args)
    next_obs_aug = augmented(batch.next_obs, args.target_augmentations, args)
    action_dim = batch.action.shape[1]
    next_noise = torch.randn(next_obs_aug.shape[0], action_dim, device=batch.action.device)
    loss_q, q = critic_loss(nets, target, obs_aug, next_obs_aug, batch, next_noise)
    optimizers.critic.zero_grad(set_to_none=True)
    add_penalties(loss_q, penalties["critic"]).backward()
    optimizers.critic.step()
    metrics = {"losses/critic": loss_q.detach(), "losses/q": q.detach().mean()}

    if update_index % args.actor_update_every == 0:
        # One backward for actor and temperature: each loss detaches the other's parameters (α, log π),
        # so the gradients are exactly those of separate passes (see sac.update).
        loss_pi, log_prob = actor_loss(nets, obs_aug[:batch_size], torch.randn_like(batch.action))
        loss_alpha = temperature_loss(nets, log_prob, target_entropy)
        optimizers.actor.zero_grad(set_to_none=True)
        optimizers.temperature.zero_grad(set_to_none=True)
        total = add_penalties(loss_pi, penalties["actor"])
        (total + add_penalties(loss_alpha, penalties["temperature"])).backward()
        optimizers.actor.step()
        optimizers.temperature.step()
        metrics.update(
            {
                "losses/actor": loss_pi.detach(),
                "losses/temperature": loss_alpha.detach(),
                "losses/alpha": nets.temperature().detach(),
                "losses/entropy": -log_prob.detach().mean(),
            }
        )
    if update_index % args.target_update_every == 0:
        soft_update_(target.encoder, nets.encoder, args.tau)
        soft_update_(target.critic, nets.critic, args.tau)
    return metrics


def make_optimizers(nets: DrQNetworks, args: Args, device: torch.device) -> Optimizers:
    """Adam (drq.py: one lr for all; the critic's optimizer also trains the encoder), fused kernels."""
    fused = device.type in ("cuda", "cpu")
    critic_params = [*nets.encoder.parameters(), *nets.critic.parameters()]
    return Optimizers(
        actor=torch.optim.Adam(nets.actor.parameters(), lr=args.lr, fused=fused),
        critic=torch.optim.Adam(critic_params, lr=args.lr, fused=fused),
        temperature=torch.optim.Adam(nets.temperature.parameters(), lr=args.lr, fused=fused),
    )


def check_args(args: Args) -> None:
    """Errors for bad DrQ-specific values (the common flags are checked by ``check_common_args``)."""
    check_common_args(args)
    for name in ("target_augmentations", "q_augmentations", "actor_update_every", "target_update_every"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an int >= 1, got {value!r}")
    if isinstance(args.image_pad, bool) or not isinstance(args.image_pad, int) or args.image_pad < 0:
        raise ValueError(f"--image-pad must be an int >= 0, got {args.image_pad!r}")


# ----------------------------------------------------------------------------- the loop


def main(args: Args) -> dict[str, Any]:
    """Train DrQ; returns the final summary (eval returns, steps, gradient updates, wall time)."""
    check_args(args)
    device = setup_torch(args)

    def make_env(seed: int):
        return make_dmc(
            args.env_id,
            seed,
            pixels=True,
            action_repeat=args.action_repeat,
            frame_stack=args.frame_stack,
            image_size=args.image_size,
            fast_render=args.fast_render,
        )

    env = make_env(args.seed)
    eval_env = make_env(args.seed + 42)  # rl_with_resets train_pixels.py: eval env seed + 42
    action_repeat = args.action_repeat or default_action_repeat(args.env_id, pixels=True)
    obs_shape = env.observation_space.shape
    action_dim = int(np.prod(env.action_space.shape))
    target_entropy = -float(action_dim) if args.target_entropy is None else float(args.target_entropy)

    nets = DrQNetworks(obs_shape, action_dim, args).to(device)
    target = copy.deepcopy(nets).requires_grad_(False)
    optimizers = make_optimizers(nets, args, device)
    buffer = ReplayBuffer(
        args.buffer_size,
        env.observation_space,
        env.action_space,
        frame_stack=args.frame_stack,
        seed=args.seed,
    )

    def probe_inputs(batch: ReplayBatch | None, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if batch is None:  # before learning starts: the structure is all that matters
            pixels = torch.zeros(size, *obs_shape, dtype=torch.uint8, device=device)
            return pixels_to_float(pixels, channels_last=False), torch.zeros(size, action_dim, device=device)
        batch = batch.to(device)
        # Probes stay in the default memory format: a channels-last conv output is copied, not viewed, by
        # the flatten, which would hide the last conv layer's units from ReDo's unit discovery.
        return pixels_to_float(batch.obs, channels_last=False), batch.action

    def redo_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ready = buffer.num_valid() >= args.redo.batch_size
        return probe_inputs(buffer.sample(args.redo.batch_size) if ready else None, args.redo.batch_size)

    interventions, penalties = build_interventions(
        args,
        nets,
        target,
        {
            "critic": ([nets.encoder, nets.critic], optimizers.critic),
            "actor": ([nets.actor], optimizers.actor),
            "temperature": ([nets.temperature], optimizers.temperature),
        },
        batch_fn=redo_batch,
        example_inputs=probe_inputs(None, 2),
    )
    if args.compile:
        for module in (nets.encoder, nets.actor, nets.critic, target.encoder, target.critic):
            module.compile()
    initial = initial_parameters({"encoder": nets.encoder, "actor": nets.actor, "critic": nets.critic})

    @torch.no_grad()
    def act(obs: np.ndarray, deterministic: bool) -> np.ndarray:
        acting = acting_network(nets, interventions)
        pixels = torch.as_tensor(obs, device=device).unsqueeze(0)
        mean, log_std = acting.actor(acting.encoder(pixels_to_float(pixels, args.channels_last)))
        if deterministic:
            return torch.tanh(mean)[0].cpu().numpy()
        return tanh_gaussian_sample(mean, log_std, torch.randn_like(mean))[0][0].cpu().numpy()

    def diagnostics(probe: ReplayBatch) -> dict[str, float]:
        pixels = pixels_to_float(probe.obs, channels_last=False)
        with torch.no_grad():
            h = nets.encoder(pixels)
            features = nets.critic.features(h, probe.action)
        return measure_parts(
            {
                "encoder": (nets.encoder, pixels),
                "actor": (nets.actor, h),
                "critic": (nets.critic, (h, probe.action)),
            },
            initial,
            dormant_threshold=args.dormant_threshold,
            ensemble_features={"critic": features},
        )

    def curvature_diagnostics(probe: ReplayBatch) -> dict[str, float]:
        # The critic's TD loss on the probe batch without augmentation, with its bootstrap target computed
        # once and held fixed while the Hessian of the encoder and critic parameters is probed.
        obs, next_obs = pixels_to_float(probe.obs, False), pixels_to_float(probe.next_obs, False)
        # a' from a fixed noise draw (own generator: the run's random streams are not touched)
        noise = torch.randn(probe.action.shape, generator=torch.Generator().manual_seed(0)).to(device)
        target_q = td_target(nets, target, next_obs, probe, noise)

        def critic_td_loss(model: DrQNetworks, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
            pixels, action, y = inputs
            return (model.critic(model.encoder(pixels), action) - y).pow(2).mean(dim=1).sum()

        parts = {"encoder": nets.encoder, "critic": nets.critic}
        return probe_curvature(
            nets,
            critic_td_loss,
            (obs, probe.action, target_q),
            name="critic",
            parts=parts,
            batch_size=args.batch_size,
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
    announce(AGENT, args, run, env_steps_per_step=action_repeat)
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
        env_steps_per_step=action_repeat,
    )
    with loop:
        while loop.running:
            action = loop.random_action() if loop.warming_up else act(loop.obs, deterministic=False)
            for _ in range(loop.env_step(action)):
                batch = buffer.sample(args.batch_size, gamma=args.gamma, device=device)
                metrics = update(
                    nets, target, optimizers, batch, args, target_entropy, penalties, loop.updates + 1
                )
                loop.after_update(metrics)
            loop.after_step()
    return loop.summary()


if __name__ == "__main__":
    sys.exit(run_agent(main, Args))
