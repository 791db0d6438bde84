"""DrQ(ε) on Atari-100k: the data-regularised DQN of the Atari-100k comparisons.

DrQ (Kostrikov, Yarats & Fergus 2020) applied to DQN, with the exploration of Agarwal et al. 2021 ("Deep
Reinforcement Learning at the Edge of the Statistical Precipice", which named it DrQ(ε): ε-greedy decayed to
0.01 in training, 0.001 in evaluation). Defaults are Dopamine's ``labs/atari_100k/configs/DrQ_eps.gin``, the
code behind the published DrQ(ε) numbers (IQM 0.280):

- ``FullRainbowNetwork`` without noise or distribution: Nature CNN convs (32 8×8/4, 64 4×4/2, 64 3×3/1,
  Flax's 'SAME' padding), dense 512, dueling head (value and advantage read the 512 features;
  Q = V + A − mean A); Xavier-uniform kernels, zero biases.
- Double DQN with n-step 10, γ 0.99, Huber loss (δ = 1), batch 32, uniform replay. The target network is
  synced after every update (``target_update_period = 1``), so the bootstrap uses the online network's
  current weights, without gradient: the online network both selects and evaluates the next action.
- Adam, lr 1e-4, ε 1.5e-4 (DER's, van Hasselt et al. 2019). 1,600 warm-up steps of random actions, then one
  update per agent step (``--replay-ratio``: any float).
- ε-greedy: 1 until agent step 1,600, then linearly to 0.01 at step 6,600 (``linearly_decaying_epsilon``);
  evaluation ε 0.001 over 100 whole games (``MaxEpisodeEvalRunner``).
- Augmentation (``atari_100k_rainbow_agent.drq_image_augmentation``), independently on s and s′: pad 4
  (replicate) + random 84×84 crop, then intensity noise x·(1 + 0.05·clip(ε, −2, 2)); ``--intensity-scale 0``
  gives Kostrikov et al.'s shift-only DrQ.
- Atari-100k protocol (``plasticrl.envs``): life loss is the learning terminal, rewards clipped to [−1, 1]
  for learning, returns and scores are whole unclipped games, ≤ 27,000 agent steps per game.

The seed talk's DrQ rows (Lee et al. 2024, Table 1, replay ratio 2) as flags — the README lists the exact
commands. Resets there are "head resets": here ``--reset.modules head`` re-initialises everything after the
convolutions (dense 512 and the dueling outputs) with their Adam state, following Nikishin et al. 2022, who
reset the last layers of their Atari agents; ``--reset.modules head.value head.advantage`` resets only the
output layers and ``last:K`` the last K layers. Under hare & tortoise the tortoise acts and is evaluated
(``--hare-tortoise.act-with hare`` to change; the seed does not say which). Schedules in agent steps
(``--<group>.unit step``) land after the same agent steps at every replay ratio, as BBF's code counts them.

Differences from Dopamine:
- Vector envs (``--num-envs N``) are ale-py's C++ ``AtariVectorEnv``: no-ops are drawn from 0–29 (Dopamine:
  none; Mnih et al.: 1–30), the frame stack carries over a lost life (Dopamine restarts the stack with zeros
  at each life, since its runner begins a new episode there), and the 108k-frame cap counts no-op frames.
- The random crop's offsets are 0–8 (Kostrikov et al.'s ``RandomCrop`` after ``ReplicationPad2d``); Dopamine's
  JAX crop draws 0–7.
- The replay capacity is 100k transitions (every transition of a 100k run; Dopamine's 1M is "a proxy for
  unbounded memory"); frames are stored once (``plasticrl.buffers``).
- Evaluations before the last play ``--intermediate-eval-episodes`` games (10) every ``--eval-every``
  agent steps, for learning curves; the published protocol is the last one (100 games).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
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
from plasticrl.interventions import CBPConfig, L2InitConfig, ordered_configs, run_tag
from plasticrl.networks import (
    NatureCNN,
    XavierUniformInit,
    activation_width_factor,
    augment_pixels,
    make_activation,
    pixels_to_float,
    set_initializer,
)

AGENT = "drq_atari"


@dataclass
class Args:
    """DrQ(ε) on Atari-100k; defaults: Dopamine labs/atari_100k/configs/DrQ_eps.gin."""

    env_id: str = "Pong"
    """Atari-100k game ('Pong', 'MsPacman', 'ms_pacman', 'ALE/Pong-v5')"""
    seed: int = 1
    """random seed (network, replay sampling, exploration, game i of the training envs: seed + i)"""
    total_steps: int = 100_000  # Atari-100k: 100k agent steps = 400k frames
    """agent steps (4 frames each), all envs together"""
    replay_ratio: float = 1.0  # DrQ_eps.gin update_period 1; the seed talk's table runs 2
    """gradient updates per agent step (0.25, 1, 2, 8, ...)"""
    learning_starts: int = 1_600  # DrQ_eps.gin min_replay_history
    """agent steps of random actions before the first update (also the ε warm-up)"""
    num_envs: int = 1
    """Atari games played at once (ale-py vector env); the replay ratio still counts agent steps"""
    eval_every: int = 10_000
    """agent steps between evaluations (the last one is at --total-steps)"""
    eval_episodes: int = 100  # DrQ_eps.gin MaxEpisodeEvalRunner.num_eval_episodes
    """whole games in the final evaluation"""
    intermediate_eval_episodes: int = 10
    """whole games in the evaluations before the last (learning curves)"""
    eval_batch: int = 100
    """games of an evaluation played at once (one batched forward per step; 1 plays them in turn)"""
    run_dir: str = "runs"
    """parent directory of run directories"""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'"""
    diagnostics_every: int = 5_000
    """gradient updates between plasticity diagnostics (0: off)"""
    checkpoint_every: int = 50_000
    """agent steps between checkpoints (0: only on SIGTERM/Ctrl-C); a 100k run's buffer is ~0.7 GB"""
    resume: str | None = None
    """run directory to continue from its checkpoint.pt"""
    log_every: int = 1_000
    """agent steps between logs of losses, SPS and update counts (one host sync each)"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    debug: bool = False
    """print the full traceback of every error (bad input included), not one 'error:' line"""

    batch_size: int = 32  # DrQ_eps.gin OutOfGraphPrioritizedReplayBuffer.batch_size
    """transitions per gradient update"""
    buffer_size: int = 100_000  # every transition of a 100k run (Dopamine: 1M, "a proxy for unbounded")
    """replay capacity in transitions (single frames stored)"""
    gamma: float = 0.99  # DrQ_eps.gin JaxDQNAgent.gamma
    """discount factor"""
    n_step: int = 10  # DrQ_eps.gin update_horizon
    """return horizon of the bootstrapped target"""
    lr: float = 1e-4  # DrQ_eps.gin create_optimizer.learning_rate (DER)
    """Adam learning rate"""
    adam_eps: float = 1.5e-4  # DrQ_eps.gin create_optimizer.eps (DER)
    """Adam ε"""
    epsilon_decay_steps: int = 5_000  # DrQ_eps.gin epsilon_decay_period
    """agent steps over which the training ε falls from 1 (after the warm-up) to --final-epsilon"""
    final_epsilon: float = 0.01  # DrQ_eps.gin epsilon_train
    """training ε after the decay"""
    eval_epsilon: float = 0.001  # DrQ_eps.gin epsilon_eval
    """evaluation ε"""
    dueling: bool = True  # DrQ_eps.gin dueling
    """dueling head (Q = V + A − mean A)"""
    hidden_dim: int = 512  # FullRainbowNetwork: "Single hidden layer of size 512"
    """units of the dense layer after the convolutions"""
    activation: str = "relu"
    """hidden activation ('relu', 'crelu', ...)"""
    padding: str = "same"  # Flax nn.Conv default, as in Dopamine's FullRainbowNetwork
    """conv padding: 'same' (Dopamine, 7,744 conv features) or 'valid' (Mnih et al., 3,136)"""
    image_pad: int = 4  # atari_100k_rainbow_agent.drq_image_augmentation img_pad
    """random-shift padding in pixels (replicate); 0 turns the shift off"""
    intensity_scale: float = 0.05  # atari_100k_rainbow_agent._intensity_aug scale
    """intensity-noise scale (0: Kostrikov et al.'s shift-only DrQ)"""
    clip_rewards: bool = True  # Dopamine run_experiment: np.clip(reward, -1, 1)
    """learn from rewards clipped to [−1, 1] (logged returns are never clipped)"""
    sticky_actions: bool = False  # DrQ_eps.gin: the Atari-100k benchmark doesn't use sticky actions
    """repeat the previous action with probability 0.25 (Machado et al. 2018)"""
    max_episode_frames: int = 108_000  # 27,000 agent steps (Machado et al. 2018; DrQ_eps.gin 27000 steps)
    """emulator frames after which a game is cut, training and evaluation (shorter only for tests)"""
    channels_last: bool = True
    """feed training batches to the convs in channels-last memory format (faster on CPUs; same numbers)"""
    dormant_threshold: float = 0.025  # Sokar et al. 2023, dormant-count plots
    """τ of the logged dormant ratio"""
    probe_batch_size: int = 256
    """transitions in the fixed diagnostics probe batch (sampled when learning starts)"""
    compile: bool = False
    """torch.compile the Q-network's forward (GPU users; off by default)"""
    curvature_every: int = 0
    """gradient updates between curvature diagnostics of the TD loss on the probe batch (sharpness, Hessian
    trace and rank, gradient noise; 0: off, as each costs tens of backward passes)"""

    # Nikishin et al. 2022 reset the last layers of their Atari agents: here everything after the convs.
    reset: AgentResetConfig = AgentResetConfig(modules=("head",))
    """reset, default the head (dense + dueling outputs; seed table: --reset.every 20000 --reset.unit step)"""
    shrink_perturb: AgentShrinkPerturbConfig = AgentShrinkPerturbConfig(modules=("all",))
    """shrink & perturb (default: the whole Q-network)"""
    hare_tortoise: AgentHareTortoiseConfig = AgentHareTortoiseConfig()
    """hare & tortoise (the tortoise acts by default)"""
    l2_init: L2InitConfig = L2InitConfig(modules=("all",))
    """L2-init regularisation"""
    redo: AgentReDoConfig = AgentReDoConfig()
    """ReDo dormant-unit recycling (Sokar et al. 2023 ran it on DQN on Atari)"""
    # Nikishin et al. 2023 inject into the value head: here the dueling output layers.
    injection: AgentInjectionConfig = AgentInjectionConfig(modules=("head.advantage", "head.value"))
    """plasticity injection (default: the dueling output layers)"""
    cbp: CBPConfig = CBPConfig()
    """continual backprop"""


# ----------------------------------------------------------------------------- networks


def dueling_q(value: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """Q(s, a) = V(s) + A(s, a) − mean_a' A(s, a') (Wang et al. 2016, eq. 9)."""
    return value + advantage - advantage.mean(dim=-1, keepdim=True)


class DuelingHead(nn.Module):
    """``hidden`` (dense → activation), then ``value`` and ``advantage`` layers combined by :func:`dueling_q`
    (``advantage`` alone without ``dueling``)."""

    def __init__(self, in_features: int, hidden_dim: int, num_actions: int, activation: str, dueling: bool):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_features, hidden_dim), make_activation(activation))
        width = hidden_dim * activation_width_factor(activation)
        self.advantage = nn.Linear(width, num_actions)
        self.value = nn.Linear(width, 1) if dueling else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.hidden(features)
        advantage = self.advantage(h)
        return advantage if self.value is None else dueling_q(self.value(h), advantage)


class QNetwork(nn.Module):
    """Dopamine's ``FullRainbowNetwork`` (noisy and distributional off): ``encoder`` (the Nature CNN's three
    convs and the flatten) and ``head`` (:class:`DuelingHead`); input float pixels in [0, 1]."""

    def __init__(self, num_actions: int, args: Args):
        super().__init__()
        convs = NatureCNN(4, activation=args.activation, padding=args.padding)
        self.encoder = convs.encoder[:-2]  # conv1 … act3, flatten: the dense layer belongs to the head
        self.head = DuelingHead(
            convs.conv_output_dim, args.hidden_dim, num_actions, args.activation, args.dueling
        )
        # FullRainbowNetwork: nn.initializers.xavier_uniform() kernels, Flax's zero biases.
        set_initializer(self, XavierUniformInit(), types=(nn.Conv2d, nn.Linear))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(obs))


# ----------------------------------------------------------------------------- losses and update


def augment(obs: torch.Tensor, args: Args) -> torch.Tensor:
    """Random shift (pad 4, replicate, crop), then intensity noise on float pixels (Dopamine DrQ)."""
    return augment_pixels(obs, args.image_pad, args.intensity_scale, args.channels_last)


def double_dqn_target(
    next_q_online: torch.Tensor, next_q_target: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor
) -> torch.Tensor:
    """y = R + γ^k·(1 − done)·Q_target(s′, argmax_a Q_online(s′, a)) (van Hasselt et al. 2016); ``reward`` is
    the n-step return and ``discount`` γ^k, already 0 after a terminal (the buffer's). Dopamine's
    ``target_output``: the online network selects, the target network evaluates."""
    next_action = next_q_online.argmax(dim=1, keepdim=True)
    return reward + discount * next_q_target.gather(1, next_action).squeeze(1)


def td_loss(q_net: QNetwork, batch: ReplayBatch, args: Args) -> tuple[torch.Tensor, torch.Tensor]:
    """Huber(Q(aug(s), a) − y) averaged over the batch, y from an independent augmentation of s′ (Dopamine
    ``full_rainbow_agent.train`` with ``losses.huber_loss``, δ = 1). Returns (loss, Q(s, a))."""
    with torch.no_grad():
        # The target network is synced after every update: it is the online network, which therefore
        # both selects and evaluates the next action (Dopamine's double_dqn = True changes nothing here).
        next_q = q_net(augment(batch.next_obs, args))
        target = double_dqn_target(next_q, next_q, batch.reward, batch.discount)
    q = q_net(augment(batch.obs, args)).gather(1, batch.action.long().unsqueeze(1)).squeeze(1)
    return F.smooth_l1_loss(q, target, beta=1.0), q


def update(
    q_net: QNetwork,
    optimizer: torch.optim.Optimizer,
    batch: ReplayBatch,
    args: Args,
    penalties: dict[str, list],
) -> dict[str, torch.Tensor]:
    """One DrQ(ε) update: the TD loss (plus L2-init penalties) and an Adam step."""
    loss, q = td_loss(q_net, batch, args)
    optimizer.zero_grad(set_to_none=True)
    add_penalties(loss, penalties["q"]).backward()
    optimizer.step()
    return {"losses/td": loss.detach(), "losses/q": q.detach().mean()}


def check_args(args: Args) -> None:
    """Errors for bad DrQ(ε) values (the common flags are checked by ``check_common_args``)."""
    check_common_args(args)
    check_atari_args(args)
    for name in ("n_step", "hidden_dim", "epsilon_decay_steps"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an int >= 1, got {value!r}")
    if isinstance(args.image_pad, bool) or not isinstance(args.image_pad, int) or args.image_pad < 0:
        raise ValueError(f"--image-pad must be an int >= 0, got {args.image_pad!r}")
    if not 0.0 <= args.intensity_scale < 0.5:
        raise ValueError(
            f"--intensity-scale must be in [0, 0.5) (the noise is clipped at ±2σ), got {args.intensity_scale}"
        )
    if not 0.0 < args.adam_eps < 1.0:
        raise ValueError(f"--adam-eps must be in (0, 1), got {args.adam_eps}")
    if args.padding not in ("same", "valid"):
        raise ValueError(f"--padding must be 'same' or 'valid', got {args.padding!r}")


# ----------------------------------------------------------------------------- the loop


def main(args: Args) -> dict[str, Any]:
    """Train DrQ(ε); returns the final summary (eval returns, normalised scores, updates, wall time)."""
    check_args(args)
    device = setup_torch(args)
    protocol = {"sticky_actions": args.sticky_actions, "max_episode_frames": args.max_episode_frames}
    envs = AtariEnvs.make(args.env_id, args.num_envs, args.seed, clip_rewards=args.clip_rewards, **protocol)
    num_actions = envs.num_actions

    q_net = QNetwork(num_actions, args).to(device)
    # Fused kernels where torch has them (same arithmetic; the Adam step was 40% of a CPU update unfused).
    fused = device.type in ("cuda", "cpu")
    optimizer = torch.optim.Adam(q_net.parameters(), lr=args.lr, eps=args.adam_eps, fused=fused)
    buffer = ReplayBuffer(
        args.buffer_size,
        envs.env.single_observation_space,
        envs.env.single_action_space,
        frame_stack=4,
        num_envs=args.num_envs,
        seed=args.seed,
    )

    def probe_inputs(batch: ReplayBatch | None, size: int) -> torch.Tensor:
        if batch is None:  # before learning starts: the structure is all that matters
            return torch.zeros(size, 4, 84, 84, device=device)
        # Default memory format: a channels-last conv output would hide the last conv's units from ReDo.
        return pixels_to_float(batch.to(device).obs)

    def redo_batch() -> torch.Tensor:
        ready = buffer.num_valid() >= args.redo.batch_size
        return probe_inputs(buffer.sample(args.redo.batch_size) if ready else None, args.redo.batch_size)

    interventions, penalties = build_interventions(
        args,
        q_net,
        None,  # no target copy: the online network is the target (synced every update)
        {"q": ([q_net], optimizer)},
        batch_fn=redo_batch,
        example_inputs=probe_inputs(None, 2),
    )
    if args.compile:
        q_net.compile()
    initial = initial_parameters({"encoder": q_net.encoder, "head": q_net.head})

    @torch.no_grad()
    def q_values(obs: np.ndarray) -> np.ndarray:
        acting = acting_network(q_net, interventions)
        return acting(pixels_to_float(torch.as_tensor(obs, device=device), args.channels_last)).cpu().numpy()

    def diagnostics(probe: ReplayBatch) -> dict[str, float]:
        pixels = pixels_to_float(probe.obs)
        with torch.no_grad():
            features = q_net.encoder(pixels)
        return measure_parts(
            {"encoder": (q_net.encoder, pixels), "head": (q_net.head, features)},
            initial,
            dormant_threshold=args.dormant_threshold,
        )

    def curvature_diagnostics(probe: ReplayBatch) -> dict[str, float]:
        # The Huber TD loss on the probe batch (1-step returns, no augmentation) with its bootstrap target
        # computed once and held fixed while the Hessian is probed.
        obs, next_obs = pixels_to_float(probe.obs), pixels_to_float(probe.next_obs)
        with torch.no_grad():
            next_q = q_net(next_obs)
            target_q = double_dqn_target(next_q, next_q, probe.reward, probe.discount)

        def huber_td_loss(model: QNetwork, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
            pixels, action, y = inputs
            q = model(pixels).gather(1, action.long().unsqueeze(1)).squeeze(1)
            return F.smooth_l1_loss(q, y, beta=1.0)

        parts = {"encoder": q_net.encoder, "head": q_net.head}
        return probe_curvature(
            q_net,
            huber_td_loss,
            (obs, probe.action, target_q),
            name="q",
            parts=parts,
            batch_size=args.batch_size,
        )

    def agent_state() -> dict:
        return {"q_net": q_net.state_dict(), "optimizer": optimizer.state_dict(), "initial": initial}

    def load_agent_state(state: dict) -> None:
        q_net.load_state_dict(state["q_net"])
        optimizer.load_state_dict(state["optimizer"])
        initial.update(state["initial"])

    tag = run_tag(ordered_configs(args))
    run, checkpoint = open_run(AGENT, args, tag)
    announce(AGENT, args, run, env_steps_per_step=4)
    loop = OffPolicyLoop(
        agent=AGENT,
        args=args,
        run=run,
        env=envs,
        evaluator=AtariEvaluator(
            args.env_id, args.seed, q_values, epsilon=args.eval_epsilon, max_batch=args.eval_batch, **protocol
        ),
        buffer=buffer,
        interventions=interventions,
        networks=q_net,
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
    with loop:
        while loop.running:
            epsilon = linearly_decaying_epsilon(
                loop.global_step, args.learning_starts, args.epsilon_decay_steps, args.final_epsilon
            )
            action = loop.epsilon_greedy(lambda: q_values(loop.obs).argmax(axis=1), epsilon)
            for _ in range(loop.env_step(action)):
                batch = buffer.sample(args.batch_size, n_step=args.n_step, gamma=args.gamma, device=device)
                loop.after_update(update(q_net, optimizer, batch, args, penalties))
            loop.after_step()
    return loop.summary()


if __name__ == "__main__":
    sys.exit(run_agent(main, Args))
