"""BBF on Atari-100k: "Bigger, Better, Faster: Human-level Atari with human-level efficiency".

Schwarzer, Obando-Ceron, Courville, Bellemare, Agarwal & Castro (ICML 2023). Every default below is the
public code's (google-research ``bigger_better_faster``: ``bbf/configs/BBF.gin``, ``bbf/agents/spr_agent.py``,
``bbf/spr_networks.py``), which is the authority where the paper is less precise:

- Network (``RainbowDQNNetwork`` with ``encoder_type="impala"``): Impala CNN, stages (16, 32, 32) × width 4,
  each conv 3×3 → max-pool 3×3/2 → 2 residual blocks, no normalisation, ReLU at the end; the spatial latent
  is renormalised per sample to [0, 1] (min-max); ``projection`` Linear(15,488 → 2048) → ReLU → dueling C51
  ``head`` (51 atoms on [−10, 10]); Xavier-uniform kernels, zero biases.
- Self-predictive representations (SPR, Schwarzer et al. 2021): a ``transition_model`` (conv 3×3 on the
  latent with the one-hot action broadcast over space, ReLU, conv 3×3, ReLU, renormalised) rolled 5 steps;
  each predicted latent goes through ``projection`` (no ReLU) and ``predictor`` Linear(2048 → 2048); the
  targets are the target network's projections of the next 5 observations. Loss per step: ‖p/‖p‖ − z/‖z‖‖²,
  masked after the episode's end, averaged over the 5 steps, weight 5.
- Q-learning: C51 cross-entropy against the projected double-DQN target (the online network selects a′, the
  target network's distribution is the backup), n-step returns with prioritized replay: priority
  √(CE + 1e-10), loss weights 1/√P normalised by the batch maximum, new transitions at the maximum priority.
- Target network: EMA, τ = 0.005 after every update. **Actions, in training and evaluation, are chosen by
  the target network** (``target_action_selection = True``).
- After every reset (and at the start), over 10,000 gradient updates, log-scale annealing: n-step 10 → 3
  (rounded) and γ 0.97 → 0.997 (1 − γ from 0.03 to 0.003); each batch is sampled with the current n and γ.
- AdamW, lr 1e-4, ε 1.5e-4, weight decay 0.1 on every parameter with more than one dimension (the reference
  masks rank-1 parameters, the biases, out of the decay).
- Replay ratio 2 (the gin file's ``replay_ratio = 64`` samples per step at batch 32 = 2 updates per step;
  the paper's headline is 8: ``--replay-ratio 8``), 2,000 random warm-up steps, capacity 200,000.
- Exploration: ε 1 until step 2,000, then linearly to 0 over 2,001 steps; evaluation ε 0.001 over 100
  whole games (``DataEfficientAtariRunner``). Augmentation: pad 4 (replicate) + random crop and intensity
  noise (scale 0.05), independently on s, s′ and each future frame.

**Resets** (``reset_weights`` / ``jit_reset``; ``--bbf-reset.*``): every 20,000 *agent* steps (the reference
counts ``training_steps``, so the interval in updates grows with the replay ratio: 40,000 updates at RR 2,
160,000 at RR 8), and only while another full interval fits before step 100,000 (resets after agent steps
20k, 40k, 60k and 80k). At a reset the encoder and transition model are shrink-and-perturbed
θ ← 0.5·θ + 0.5·φ, the projection, predictor and Q head are re-initialised, and the target network is
treated the same way with its own fresh draws (not the online network's); the optimizer keeps the Adam
moments of the parts that are not re-initialised, drops those of the re-initialised ones, and restarts the
step counter of both (``optimizer.init`` then copying back only the kept parts' moments). In terms of the
shared interventions this is :class:`~plasticrl.interventions.ShrinkPerturb` (α = σ = 0.5 on ``encoder``
and ``transition_model``, optimizer kept) followed by :class:`~plasticrl.interventions.Reset` (``projection``,
``predictor``, ``head``); it is written out here (:class:`BBFReset`) because the shared classes give the
target the online network's draw (or sync it) and leave the Adam step counter alone, where the reference
draws the target afresh and restarts the counter. The generic ``--reset.*``, ``--shrink-perturb.*``,
``--hare-tortoise.*``, ... groups work on top, for the seed talk's variants (the README lists the commands).

Differences from the reference:
- The two batches the gin file groups into one jitted call (``batches_to_group = 2``) are sampled one at a
  time; a batch's priorities are written back after the next batch is sampled (as the reference's
  prefetching orders them), so their device-to-host copy overlaps with sampling on a GPU.
- SPR masks keep the target of the step that ends an episode (this buffer stores the true final
  observation; Dopamine's replay does not and masks it too: see ``plasticrl.buffers``).
- Vector envs, no-op starts and the frame stack across lost lives as in ``agents/drq_atari.py``.
- The priorities are set from each transition's cross-entropy, as the issue and Dopamine's Rainbow do; the
  reference passes its per-batch mean loss (``aux_losses["DQNLoss"]``).

GPU path: ``--amp`` (bf16 autocast; losses in fp32), channels-last convolutions, ``--compile`` (the loss
function under ``torch.compile``), batches staged through pinned host memory into pre-allocated device
tensors, no host synchronisation inside an update. A full-size update took 4.3 s on this project's 2-core CPU
(1 thread; ``benchmarks/agent_throughput.py --part bbf``); the CPU-sized ``--width-scale 1 --hidden-dim 256``
runs at 3.4 updates per second there, for tests and quick experiments.
"""

from __future__ import annotations

import copy
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plasticrl.buffers import ReplayBatch, ReplayBuffer
from plasticrl.common.agent_diagnostics import initial_parameters, measure_parts, probe_curvature
from plasticrl.common.agent_interventions import (
    AgentHareTortoiseConfig,
    AgentInjectionConfig,
    AgentInterventions,
    AgentReDoConfig,
    AgentResetConfig,
    AgentShrinkPerturbConfig,
    acting_network,
    add_penalties,
    build_interventions,
)
from plasticrl.common.cli import (
    announce,
    check_atari_args,
    check_common_args,
    open_run,
    run_agent,
    setup_torch,
)
from plasticrl.common.evaluation import AtariEvaluator
from plasticrl.common.exploration import linearly_decaying_epsilon
from plasticrl.common.loop import OffPolicyLoop
from plasticrl.common.training_env import AtariEnvs
from plasticrl.envs import atari_human_normalized_score
from plasticrl.interventions import (
    CBPConfig,
    Intervention,
    L2InitConfig,
    ordered_configs,
    resolve_modules,
    run_tag,
)
from plasticrl.interventions.binding import mirror_module
from plasticrl.networks import (
    ImpalaCNN,
    XavierUniformInit,
    augment_pixels,
    pixels_to_float,
    reinitialize_,
    set_initializer,
    soft_update_,
)

AGENT = "bbf"


@dataclass(frozen=True)
class BBFResetConfig:
    """BBF's periodic resets (spr_agent.py reset_weights / jit_reset), in agent steps."""

    every: int = 20_000  # BBF.gin reset_every (counted in training_steps = agent steps)
    """agent steps between resets (0: none)"""
    no_resets_after: int = 100_000  # BBF.gin no_resets_after
    """reset after step s only if s + every <= this (a full interval to recover before it)"""
    shrink_modules: tuple[str, ...] = ("encoder", "transition_model")  # BBF.gin shrink_perturb_keys
    """parts shrink-and-perturbed (their Adam moments kept)"""
    shrink_factor: float = 0.5  # BBF.gin shrink_factor
    """α in θ ← α·θ + σ·φ"""
    perturb_factor: float = 0.5  # BBF.gin perturb_factor
    """σ in θ ← α·θ + σ·φ"""
    reset_modules: tuple[str, ...] = ("projection", "predictor", "head")  # reset_projection, reset_head
    """parts re-initialised (their Adam moments dropped)"""
    reset_target: bool = True  # spr_agent.py reset_target
    """treat the target network the same way, with its own fresh draws"""

    unit = "step"  # what `every` counts (plasticrl.common.agent_interventions: acts after agent steps)

    def check(self) -> None:
        """ValueError naming the flag for a bad value (called by check_args, so that it is one line)."""
        for name in ("every", "no_resets_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"--bbf-reset.{name.replace('_', '-')} must be an int >= 0, got {value!r}")
        for name in ("shrink_factor", "perturb_factor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                flag = f"--bbf-reset.{name.replace('_', '-')}"
                raise ValueError(f"{flag} must be in [0, 1], got {getattr(self, name)}")

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def fires(self, step: int) -> bool:
        """After agent step ``step``: a multiple of ``every`` with a whole interval left before the cutoff."""
        return self.enabled and step % self.every == 0 and step + self.every <= self.no_resets_after

    def tag(self) -> str:
        return f"bbfreset-e{self.every}-u{self.no_resets_after}"


@dataclass
class Args:
    """BBF on Atari-100k; defaults: google-research bigger_better_faster bbf/configs/BBF.gin."""

    env_id: str = "Pong"
    """Atari-100k game ('Pong', 'MsPacman', 'ms_pacman', 'ALE/Pong-v5')"""
    seed: int = 1
    """random seed (network, replay sampling, exploration, game i of the training envs: seed + i)"""
    total_steps: int = 100_000  # BBF.gin Runner.training_steps
    """agent steps (4 frames each), all envs together"""
    replay_ratio: float = 2.0  # BBF.gin replay_ratio 64 samples per step / batch 32; the paper's headline: 8
    """gradient updates per agent step (2; the paper's headline 8)"""
    learning_starts: int = 2_000  # BBF.gin min_replay_history
    """agent steps of random actions before the first update (also the ε warm-up)"""
    num_envs: int = 1  # BBF.gin num_train_envs
    """Atari games played at once (ale-py vector env); the replay ratio still counts agent steps"""
    eval_every: int = 10_000
    """agent steps between evaluations (the last one is at --total-steps)"""
    eval_episodes: int = 100  # BBF.gin DataEfficientAtariRunner.num_eval_episodes
    """whole games in the final evaluation"""
    intermediate_eval_episodes: int = 10
    """whole games in the evaluations before the last (learning curves)"""
    eval_batch: int = 100  # BBF.gin num_eval_envs
    """games of an evaluation played at once (one batched forward per step; 1 plays them in turn)"""
    run_dir: str = "runs"
    """parent directory of run directories"""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"""
    diagnostics_every: int = 10_000
    """gradient updates between plasticity diagnostics (0: off)"""
    checkpoint_every: int = 50_000
    """agent steps between checkpoints (0: only on SIGTERM/Ctrl-C)"""
    resume: str | None = None
    """run directory to continue from its checkpoint.pt"""
    log_every: int = 1_000
    """agent steps between logs of losses, SPS and update counts (one host sync each)"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    debug: bool = False
    """print the full traceback of every error (bad input included), not one 'error:' line"""

    batch_size: int = 32  # BBF.gin batch_size
    """transitions per gradient update"""
    buffer_size: int = 200_000  # BBF.gin replay_capacity
    """replay capacity in transitions (single frames stored)"""
    gamma: float = 0.997  # BBF.gin JaxDQNAgent.gamma (the annealing's end)
    """discount after the annealing"""
    min_gamma: float = 0.97  # BBF.gin min_gamma (the annealing's start)
    """discount right after a reset"""
    n_step: int = 3  # BBF.gin update_horizon (the annealing's end)
    """return horizon after the annealing"""
    max_n_step: int = 10  # BBF.gin max_update_horizon (the annealing's start)
    """return horizon right after a reset"""
    anneal_updates: int = 10_000  # BBF.gin cycle_steps (gradient updates)
    """gradient updates over which n and γ are annealed after each reset (0: none)"""
    num_atoms: int = 51  # BBF.gin num_atoms
    """C51 atoms"""
    v_max: float = 10.0  # JaxFullRainbowAgent vmax default (vmin = −vmax)
    """support of the return distribution: [−v_max, v_max]"""
    spr_weight: float = 5.0  # BBF.gin spr_weight (0: BBF without self-prediction)
    """weight of the SPR loss (0 turns SPR off)"""
    spr_steps: int = 5  # BBF.gin jumps
    """future steps the transition model predicts"""
    target_tau: float = 0.005  # BBF.gin target_update_tau
    """EMA rate of the target network per update"""
    target_action_selection: bool = True  # BBF.gin target_action_selection
    """act (and evaluate) with the target network"""
    lr: float = 1e-4  # BBF.gin learning_rate = encoder_learning_rate
    """AdamW learning rate"""
    adam_eps: float = 1.5e-4  # BBF.gin create_scaling_optimizer.eps (DER)
    """AdamW ε"""
    weight_decay: float = 0.1  # BBF.gin create_scaling_optimizer.weight_decay (biases not decayed)
    """AdamW weight decay (parameters with more than one dimension)"""
    epsilon_decay_steps: int = 2_001  # BBF.gin epsilon_decay_period
    """agent steps over which the training ε falls from 1 (after the warm-up) to --final-epsilon"""
    final_epsilon: float = 0.0  # BBF.gin epsilon_train
    """training ε after the decay"""
    eval_epsilon: float = 0.001  # BBF.gin epsilon_eval
    """evaluation ε"""
    width_scale: int = 4  # BBF.gin RainbowDQNNetwork.width_scale
    """Impala channel multiplier (1 for CPU-sized runs)"""
    num_blocks: int = 2  # BBF.gin ImpalaCNN.num_blocks
    """residual blocks per Impala stage"""
    hidden_dim: int = 2048  # BBF.gin RainbowDQNNetwork.hidden_dim
    """width of the projection (and predictor)"""
    dueling: bool = True  # BBF.gin dueling
    """dueling head"""
    renormalize: bool = True  # BBF.gin RainbowDQNNetwork.renormalize
    """min-max renormalise the latent (and the transition model's output) per sample"""
    prioritized: bool = True  # BBF.gin replay_scheme 'prioritized'
    """prioritized replay (priority √loss, weights 1/√P); off: uniform"""
    image_pad: int = 4  # spr_networks.drq_image_aug img_pad
    """random-shift padding in pixels (replicate); 0 turns the shift off"""
    intensity_scale: float = 0.05  # spr_networks._intensity_aug scale
    """intensity-noise scale (0: off)"""
    clip_rewards: bool = True  # Dopamine's runner clips training rewards to [−1, 1]
    """learn from rewards clipped to [−1, 1] (logged returns are never clipped)"""
    sticky_actions: bool = False  # BBF.gin: the Atari-100k benchmark doesn't use sticky actions
    """repeat the previous action with probability 0.25 (Machado et al. 2018)"""
    max_episode_frames: int = 108_000  # BBF.gin Runner.max_steps_per_episode 27000 agent steps
    """emulator frames after which a game is cut, training and evaluation (shorter only for tests)"""
    amp: bool = False
    """bf16 autocast for the networks (GPU speed; the losses stay fp32)"""
    compile: bool = False
    """torch.compile the loss computation (GPU users; off by default)"""
    channels_last: bool = True
    """channels-last convolutions (faster on GPUs and CPUs; same numbers)"""
    curvature_every: int = 0
    """gradient updates between curvature diagnostics of the distributional loss on the probe batch
    (sharpness, Hessian trace and rank, gradient noise; 0: off, as each costs tens of backward passes)"""
    dormant_threshold: float = 0.025  # Sokar et al. 2023, dormant-count plots
    """τ of the logged dormant ratio"""
    probe_batch_size: int = 256
    """transitions in the fixed diagnostics probe batch (sampled when learning starts)"""

    bbf_reset: BBFResetConfig = BBFResetConfig()
    """BBF's own resets (--bbf-reset.every 0 turns them off)"""
    reset: AgentResetConfig = AgentResetConfig(modules=("head",))
    """an extra reset (off; default part the Q head)"""
    shrink_perturb: AgentShrinkPerturbConfig = AgentShrinkPerturbConfig(modules=("encoder",))
    """an extra shrink & perturb (off; default part the encoder)"""
    hare_tortoise: AgentHareTortoiseConfig = AgentHareTortoiseConfig()
    """hare & tortoise (Lee et al. 2024; the tortoise acts instead of the target network by default)"""
    l2_init: L2InitConfig = L2InitConfig(modules=("all",))
    """L2-init regularisation"""
    redo: AgentReDoConfig = AgentReDoConfig()
    """ReDo dormant-unit recycling"""
    injection: AgentInjectionConfig = AgentInjectionConfig(modules=("head.advantage", "head.value"))
    """plasticity injection (default: the dueling output layers)"""
    cbp: CBPConfig = CBPConfig()
    """continual backprop"""


# ----------------------------------------------------------------------------- networks


def renormalize(latent: torch.Tensor) -> torch.Tensor:
    """Per sample, (x − min) / (max − min + 1e-5) over all of its latent (spr_networks.renormalize)."""
    flat = latent.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low + 1e-5)).view_as(latent)


class TransitionModel(nn.Module):
    """SPR's action-conditioned latent dynamics (spr_networks.ConvTMCell): [latent; one-hot action broadcast
    over space] → conv 3×3 → ReLU → conv 3×3 → ReLU (→ renormalised)."""

    def __init__(self, channels: int, num_actions: int, renormalized: bool):
        super().__init__()
        self.num_actions = num_actions
        self.renormalized = renormalized
        self.conv1 = nn.Conv2d(channels + num_actions, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, latent: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(action.long(), self.num_actions).to(latent.dtype)
        onehot = onehot[:, :, None, None].expand(-1, -1, *latent.shape[-2:])
        x = F.relu(self.conv2(F.relu(self.conv1(torch.cat([latent, onehot], dim=1)))))
        return renormalize(x) if self.renormalized else x


class DistributionalDuelingHead(nn.Module):
    """C51 logits (B, actions, atoms): value + advantage − mean_a advantage, per atom, before the softmax
    (spr_networks.LinearHead)."""

    def __init__(self, in_features: int, num_actions: int, num_atoms: int, dueling: bool):
        super().__init__()
        self.num_actions, self.num_atoms = num_actions, num_atoms
        self.advantage = nn.Linear(in_features, num_actions * num_atoms)
        self.value = nn.Linear(in_features, num_atoms) if dueling else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        advantage = self.advantage(features).view(-1, self.num_actions, self.num_atoms)
        if self.value is None:
            return advantage
        value = self.value(features).view(-1, 1, self.num_atoms)
        return value + advantage - advantage.mean(dim=1, keepdim=True)


class BBFNetwork(nn.Module):
    """``encoder`` (Impala CNN to the spatial latent), ``transition_model``, ``projection``, ``predictor``
    and ``head``, as spr_networks.RainbowDQNNetwork names them; input float pixels in [0, 1]."""

    def __init__(self, num_actions: int, args: Args):
        super().__init__()
        impala = ImpalaCNN(4, width_scale=args.width_scale, num_blocks=args.num_blocks)
        self.encoder = impala.encoder[:-1]  # the stages and the final ReLU; the flatten is ours
        channels, height, width = impala.latent_shape
        self.renormalized = args.renormalize
        self.transition_model = TransitionModel(channels, num_actions, args.renormalize)
        self.projection = nn.Linear(channels * height * width, args.hidden_dim)
        self.predictor = nn.Linear(args.hidden_dim, args.hidden_dim)
        self.head = DistributionalDuelingHead(args.hidden_dim, num_actions, args.num_atoms, args.dueling)
        # RainbowDQNNetwork: initializer_type xavier_uniform for every conv and dense; Flax's zero biases.
        set_initializer(self, XavierUniformInit(), types=(nn.Conv2d, nn.Linear))

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        latent = self.encoder(obs)
        return renormalize(latent) if self.renormalized else latent

    def logits(self, latent: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.projection(latent.flatten(1))))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """C51 logits (B, actions, atoms)."""
        return self.logits(self.encode(obs))

    def spr_predictions(self, latent: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B, K, hidden): predictor(projection(latent after k + 1 steps of the transition model))."""
        predictions = []
        for k in range(actions.shape[1]):
            latent = self.transition_model(latent, actions[:, k])
            predictions.append(self.predictor(self.projection(latent.flatten(1))))
        return torch.stack(predictions, dim=1)

    def spr_targets(self, obs: torch.Tensor) -> torch.Tensor:
        """projection(latent) without the ReLU (spr_networks.encode_project): what the predictions match."""
        return self.projection(self.encode(obs).flatten(1))


def q_values(nets: BBFNetwork, obs: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """E[Z(s, a)] = Σ_i softmax(logits)_i · z_i, (B, actions)."""
    return (F.softmax(nets(obs).float(), dim=-1) * support).sum(-1)


# ----------------------------------------------------------------------------- losses and update


def augment(obs: torch.Tensor, args: Args) -> torch.Tensor:
    """Random shift then intensity noise, each image its own draw (spr_networks.drq_image_aug)."""
    return augment_pixels(obs, args.image_pad, args.intensity_scale, args.channels_last)


def project_distribution(
    target_support: torch.Tensor, probabilities: torch.Tensor, support: torch.Tensor
) -> torch.Tensor:
    """Dopamine's ``project_distribution`` (C51, Bellemare et al. 2017): the mass p_j at the shifted atom
    Tz_j, clipped to [z_0, z_N−1], goes to its two neighbours on ``support`` in proportion to closeness:
    m_i = Σ_j clip(1 − |clip(Tz_j) − z_i| / Δz, 0, 1) · p_j. (B, atoms) in, (B, atoms) out."""
    delta = support[1] - support[0]
    clipped = target_support.clamp(float(support[0]), float(support[-1]))
    closeness = (1 - (clipped[:, None, :] - support[None, :, None]).abs() / delta).clamp(0, 1)
    return (closeness * probabilities[:, None, :]).sum(-1)


@torch.no_grad()
def distributional_target(
    online: BBFNetwork, target: BBFNetwork, next_obs: torch.Tensor, batch: ReplayBatch, support: torch.Tensor
) -> torch.Tensor:
    """The projected double-DQN target distribution: a′ = argmax_a E[Z_online(s′, a)], backup
    Z_target(s′, a′) shifted by R + γ^k·z (γ^k = 0 after a terminal; spr_agent.target_output)."""
    next_action = q_values(online, next_obs, support).argmax(dim=1)
    probabilities = F.softmax(target(next_obs).float(), dim=-1)
    chosen = probabilities[torch.arange(len(next_action), device=next_action.device), next_action]
    shifted = batch.reward[:, None] + batch.discount[:, None] * support[None, :]
    return project_distribution(shifted, chosen, support)


def spr_loss(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample, mean over the K steps of mask·‖p/‖p‖ − z/‖z‖‖² (spr_agent.train loss_fn)."""
    error = (F.normalize(predictions.float(), dim=-1) - F.normalize(targets.float(), dim=-1)).pow(2).sum(-1)
    return (error * mask).mean(dim=1)


def bbf_loss(
    nets: BBFNetwork, target: BBFNetwork, batch: ReplayBatch, support: torch.Tensor, args: Args
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mean_b w_b·(CE_b + spr_weight·SPR_b); returns (loss, CE per sample, SPR per sample)."""
    obs, next_obs = augment(batch.obs, args), augment(batch.next_obs, args)
    target_distribution = distributional_target(nets, target, next_obs, batch, support)
    latent = nets.encode(obs)
    logits = nets.logits(latent).float()
    chosen = logits[torch.arange(len(batch.action), device=logits.device), batch.action.long()]
    cross_entropy = -(target_distribution * F.log_softmax(chosen, dim=-1)).sum(-1)
    if args.spr_weight > 0:
        future = augment(batch.future_obs.flatten(0, 1), args)
        with torch.no_grad():
            spr_targets = target.spr_targets(future).view(*batch.future_obs.shape[:2], -1)
        predictions = nets.spr_predictions(latent, batch.future_action)
        spr = spr_loss(predictions, spr_targets, batch.future_mask)
    else:
        spr = torch.zeros_like(cross_entropy)
    loss = (batch.weights * (cross_entropy + args.spr_weight * spr)).mean()
    return loss, cross_entropy, spr


def update(
    nets: BBFNetwork,
    target: BBFNetwork,
    optimizer: torch.optim.Optimizer,
    batch: ReplayBatch,
    support: torch.Tensor,
    args: Args,
    penalties: dict[str, list],
    loss_fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = bbf_loss,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One BBF update: the loss, an AdamW step, the target EMA. Returns (metrics, raw priorities CE + 1e-10
    on the device; the buffer raises them to α = 0.5)."""
    with torch.autocast(support.device.type, dtype=torch.bfloat16, enabled=args.amp):
        loss, cross_entropy, spr = loss_fn(nets, target, batch, support, args)
    optimizer.zero_grad(set_to_none=True)
    add_penalties(loss, penalties["q"]).backward()
    optimizer.step()
    soft_update_(target, nets, args.target_tau)
    metrics = {
        "losses/total": loss.detach(),
        "losses/distributional": cross_entropy.detach().mean(),
        "losses/spr": spr.detach().mean(),
    }
    return metrics, cross_entropy.detach() + 1e-10


def annealed(updates_since_reset: int, args: Args) -> tuple[int, float]:
    """(n, γ) after ``updates_since_reset`` updates: log-scale from (max_n_step, min_gamma) to (n_step,
    gamma) over ``anneal_updates`` (spr_agent.exponential_decay_scheduler; 1 − γ is the annealed quantity)."""
    progress = 1.0 if args.anneal_updates == 0 else min(updates_since_reset / args.anneal_updates, 1.0)
    n = int(np.round(args.max_n_step * (args.n_step / args.max_n_step) ** progress))
    gamma = 1.0 - (1.0 - args.min_gamma) * ((1.0 - args.gamma) / (1.0 - args.min_gamma)) ** progress
    return n, gamma


def make_optimizer(nets: BBFNetwork, args: Args, device: torch.device) -> torch.optim.AdamW:
    """AdamW (BBF.gin create_scaling_optimizer); like the reference's mask, no decay on 1-D parameters."""
    decayed = [p for p in nets.parameters() if p.ndim > 1]
    plain = [p for p in nets.parameters() if p.ndim <= 1]
    groups = [{"params": decayed, "weight_decay": args.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=args.lr, eps=args.adam_eps, fused=fused)


class BBFReset(Intervention):
    """BBF's reset (module docstring): shrink & perturb the ``shrink_modules``, re-initialise the
    ``reset_modules``, the target likewise with its own draws, Adam moments kept only for what is not
    re-initialised and every step counter restarted. Acts after agent steps (``unit = "step"``)."""

    name = "bbf_reset"

    def __init__(
        self,
        config: BBFResetConfig,
        network: BBFNetwork,
        target: BBFNetwork,
        optimizer: torch.optim.Optimizer,
        updates_done: Callable[[], int],
    ):
        self.config = config
        self.network, self.target, self.optimizer = network, target, optimizer
        self.updates_done = updates_done
        self.shrink = resolve_modules(network, config.shrink_modules) if config.shrink_modules else []
        self.reset = resolve_modules(network, config.reset_modules) if config.reset_modules else []
        self.last_reset_update = 0  # the annealing of n and γ restarts here

    def _twin(self, module: nn.Module) -> nn.Module:
        name = next(n for n, m in self.network.named_modules() if m is module)
        return mirror_module(self.target, name, module)

    @torch.no_grad()
    def apply(self) -> None:
        copies = [self.network, self.target] if self.config.reset_target else [self.network]
        for network in copies:  # jit_reset draws online_rng and target_rng apart
            for module in self.shrink:
                module = module if network is self.network else self._twin(module)
                current = [p.detach().clone() for p in module.parameters()]
                reinitialize_(module)
                for param, old in zip(module.parameters(), current):
                    param.mul_(self.config.perturb_factor).add_(old, alpha=self.config.shrink_factor)
            for module in self.reset:
                reinitialize_(module if network is self.network else self._twin(module))
        dropped = {id(p) for m in self.reset for p in m.parameters()}
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                if id(param) in dropped:
                    self.optimizer.state.pop(param, None)
                elif "step" in self.optimizer.state.get(param, {}):
                    self.optimizer.state[param]["step"].zero_()  # optimizer.init: count 0
        self.last_reset_update = self.updates_done()

    def maybe_apply(self, update_step: int) -> dict[str, float]:
        """Called with the agent step (a step-unit schedule, see AgentInterventions.at_step)."""
        if not self.config.fires(update_step):
            return {}
        self.apply()
        return self._fired()

    def state_dict(self) -> dict[str, Any]:
        return {"last_reset_update": self.last_reset_update}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_reset_update = int(state["last_reset_update"])


class PendingPriorities:
    """A batch's new priorities, kept on the device until the next batch has been sampled (the reference's
    prefetch order), then written to the buffer in one transfer; part of the checkpoint."""

    def __init__(self) -> None:
        self.indices: torch.Tensor | None = None
        self.priorities: torch.Tensor | None = None

    def hold(self, indices: torch.Tensor, priorities: torch.Tensor) -> None:
        self.indices, self.priorities = indices, priorities

    def flush(self, buffer: ReplayBuffer) -> None:
        if self.indices is None:
            return
        priorities = self.priorities.float().cpu()
        # A non-finite loss leaves the priorities as they were: the loop's NaN guard stops the run at the
        # next log step, naming the loss and the first update where it went non-finite.
        if bool(torch.isfinite(priorities).all()):
            buffer.update_priorities(self.indices.cpu(), priorities)
        self.indices = self.priorities = None

    def state_dict(self) -> dict[str, Any]:
        if self.indices is None:
            return {}
        return {"indices": self.indices.cpu(), "priorities": self.priorities.float().cpu()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        if state:
            self.hold(state["indices"].to(device), state["priorities"].to(device))


class DeviceBatches:
    """Replay batches copied into pre-allocated device tensors through pinned host memory (CUDA), so the
    host-to-device copy is asynchronous and no allocation happens per update. On the CPU: plain tensors."""

    def __init__(self, device: torch.device):
        self.device = device
        self.staging: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch: ReplayBatch) -> ReplayBatch:
        if self.device.type != "cuda":
            return batch.to(self.device)
        out = {}
        for field in fields(batch):
            value = getattr(batch, field.name)
            if value is None:
                out[field.name] = None
                continue
            host_array = torch.from_numpy(np.ascontiguousarray(value))
            staged = self.staging.get(field.name)
            if staged is None or staged[0].shape != host_array.shape or staged[0].dtype != host_array.dtype:
                pinned = torch.empty(host_array.shape, dtype=host_array.dtype).pin_memory()
                staged = (pinned, torch.empty_like(pinned, device=self.device))
                self.staging[field.name] = staged
            staged[0].copy_(host_array)
            staged[1].copy_(staged[0], non_blocking=True)
            out[field.name] = staged[1]
        return ReplayBatch(**out)


def check_args(args: Args) -> None:
    """Errors for bad BBF values (the common flags are checked by ``check_common_args``)."""
    check_common_args(args)
    check_atari_args(args)
    args.bbf_reset.check()
    for name in ("n_step", "max_n_step", "num_atoms", "width_scale", "hidden_dim", "epsilon_decay_steps"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an int >= 1, got {value!r}")
    for name in ("num_blocks", "anneal_updates", "image_pad", "spr_steps"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be an int >= 0, got {value!r}")
    if args.num_atoms < 2:
        raise ValueError(f"--num-atoms must be at least 2 (a support), got {args.num_atoms}")
    if args.max_n_step < args.n_step:
        raise ValueError(f"--max-n-step {args.max_n_step} must be >= --n-step {args.n_step} (annealed to it)")
    if not 0.0 <= args.min_gamma <= args.gamma:
        raise ValueError(f"--min-gamma must be in [0, --gamma {args.gamma}], got {args.min_gamma}")
    if args.spr_weight < 0 or (args.spr_weight > 0 and args.spr_steps < 1):
        raise ValueError(
            f"--spr-weight must be >= 0 (0 turns SPR off) and SPR needs --spr-steps >= 1, "
            f"got --spr-weight {args.spr_weight} --spr-steps {args.spr_steps}"
        )
    for name, low, high in (("v_max", 0.0, float("inf")), ("intensity_scale", 0.0, 0.5)):
        value = getattr(args, name)
        if not (low < value < high if name == "v_max" else low <= value < high):
            raise ValueError(f"--{name.replace('_', '-')} out of range, got {value}")
    if not 0.0 < args.adam_eps < 1.0 or args.weight_decay < 0:
        raise ValueError(
            f"--adam-eps must be in (0, 1) and --weight-decay >= 0, got {args.adam_eps}, {args.weight_decay}"
        )


# ----------------------------------------------------------------------------- the loop


def main(args: Args) -> dict[str, Any]:
    """Train BBF; returns the final summary (eval returns, normalised scores, updates, wall time)."""
    check_args(args)
    device = setup_torch(args)
    protocol = {"sticky_actions": args.sticky_actions, "max_episode_frames": args.max_episode_frames}
    envs = AtariEnvs.make(args.env_id, args.num_envs, args.seed, clip_rewards=args.clip_rewards, **protocol)
    num_actions = envs.num_actions
    support = torch.linspace(-args.v_max, args.v_max, args.num_atoms, device=device)

    nets = BBFNetwork(num_actions, args).to(device)
    if args.channels_last:
        nets = nets.to(memory_format=torch.channels_last)
    target = copy.deepcopy(nets).requires_grad_(False)
    optimizer = make_optimizer(nets, args, device)
    buffer = ReplayBuffer(
        args.buffer_size,
        envs.env.single_observation_space,
        envs.env.single_action_space,
        frame_stack=4,
        num_envs=args.num_envs,
        prioritized=args.prioritized,
        seed=args.seed,
    )
    loss_fn = torch.compile(bbf_loss) if args.compile else bbf_loss
    to_device = DeviceBatches(device)
    pending = PendingPriorities()

    def probe_inputs(batch: ReplayBatch | None, size: int) -> torch.Tensor:
        if batch is None:  # before learning starts: the structure is all that matters
            return torch.zeros(size, 4, 84, 84, device=device)
        return pixels_to_float(batch.to(device).obs)

    def redo_batch() -> torch.Tensor:
        ready = buffer.num_valid() >= args.redo.batch_size
        return probe_inputs(buffer.sample(args.redo.batch_size) if ready else None, args.redo.batch_size)

    generic, penalties = build_interventions(
        args,
        nets,
        target,
        {"q": ([nets], optimizer)},
        batch_fn=redo_batch,
        example_inputs=probe_inputs(None, 2),
    )
    bbf_reset = BBFReset(args.bbf_reset, nets, target, optimizer, lambda: loop.updates)
    interventions = AgentInterventions([*generic, bbf_reset] if args.bbf_reset.enabled else list(generic))
    q_head = nn.Sequential(OrderedDict(projection=nets.projection, act=nn.ReLU(), head=nets.head))
    initial = initial_parameters({"encoder": nets.encoder, "head": q_head})

    @torch.no_grad()
    def act_q_values(obs: np.ndarray) -> np.ndarray:
        acting = acting_network(nets, interventions)
        if acting is nets and args.target_action_selection:
            acting = target  # BBF.gin target_action_selection: the EMA network acts
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            pixels = pixels_to_float(torch.as_tensor(obs, device=device), args.channels_last)
            return q_values(acting, pixels, support).float().cpu().numpy()

    def diagnostics(probe: ReplayBatch) -> dict[str, float]:
        pixels = pixels_to_float(probe.obs)
        with torch.no_grad():
            flat = nets.encode(pixels).flatten(1)
        return measure_parts(
            {"encoder": (nets.encoder, pixels), "head": (q_head, flat)},
            initial,
            dormant_threshold=args.dormant_threshold,
        )

    def curvature_diagnostics(probe: ReplayBatch) -> dict[str, float]:
        # The C51 cross-entropy on the probe batch (1-step returns, no augmentation, no SPR term) against
        # its target distribution computed once and held fixed while the Hessian is probed.
        obs, next_obs = pixels_to_float(probe.obs), pixels_to_float(probe.next_obs)
        target_distribution = distributional_target(nets, target, next_obs, probe, support)

        def cross_entropy(model: BBFNetwork, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
            pixels, action, distribution = inputs
            logits = model(pixels).float()
            chosen = logits[torch.arange(len(action), device=logits.device), action.long()]
            return -(distribution * F.log_softmax(chosen, dim=-1)).sum(-1).mean()

        parts = {"encoder": nets.encoder, "projection": nets.projection, "head": nets.head}
        return probe_curvature(
            nets,
            cross_entropy,
            (obs, probe.action, target_distribution),
            name="q",
            parts=parts,
            batch_size=args.batch_size,
        )

    def agent_state() -> dict:
        return {
            "nets": nets.state_dict(),
            "target": target.state_dict(),
            "optimizer": optimizer.state_dict(),
            "initial": initial,
            "pending_priorities": pending.state_dict(),
        }

    def load_agent_state(state: dict) -> None:
        nets.load_state_dict(state["nets"])
        target.load_state_dict(state["target"])
        optimizer.load_state_dict(state["optimizer"])
        initial.update(state["initial"])
        pending.load_state_dict(state["pending_priorities"], device)

    tag = run_tag([*ordered_configs(args), *([args.bbf_reset] if args.bbf_reset.enabled else [])])
    run, checkpoint = open_run(AGENT, args, tag)
    announce(AGENT, args, run, env_steps_per_step=4)
    loop = OffPolicyLoop(
        agent=AGENT,
        args=args,
        run=run,
        env=envs,
        evaluator=AtariEvaluator(
            args.env_id,
            args.seed,
            act_q_values,
            epsilon=args.eval_epsilon,
            max_batch=args.eval_batch,
            **protocol,
        ),
        buffer=buffer,
        interventions=interventions,
        networks=nets,
        agent_state=agent_state,
        load_agent_state=load_agent_state,
        diagnostics=diagnostics,
        curvature=curvature_diagnostics,
        device=device,
        checkpoint=checkpoint,
        env_steps_per_step=4,
        normalize_score=lambda mean: atari_human_normalized_score(args.env_id, mean),
        intermediate_eval_episodes=args.intermediate_eval_episodes,
    )
    sequence = args.spr_steps if args.spr_weight > 0 else 0
    with loop:
        while loop.running:
            epsilon = linearly_decaying_epsilon(
                loop.global_step, args.learning_starts, args.epsilon_decay_steps, args.final_epsilon
            )
            action = loop.epsilon_greedy(lambda: act_q_values(loop.obs).argmax(axis=1), epsilon)
            for _ in range(loop.env_step(action)):
                n, gamma = annealed(loop.updates - bbf_reset.last_reset_update, args)
                sample = buffer.sample(args.batch_size, n_step=n, gamma=gamma, sequence_length=sequence)
                batch = to_device(sample)
                if args.prioritized:
                    pending.flush(buffer)  # the previous batch's priorities, after this batch was drawn
                metrics, priorities = update(
                    nets, target, optimizer, batch, support, args, penalties, loss_fn
                )
                if args.prioritized:
                    pending.hold(batch.indices, priorities)
                metrics["charts/n_step"] = torch.tensor(float(n))
                metrics["charts/gamma"] = torch.tensor(gamma)
                loop.after_update(metrics)
            loop.after_step()
    return loop.summary()


if __name__ == "__main__":
    sys.exit(run_agent(main, Args))
