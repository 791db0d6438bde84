"""Gradient-update throughput of the SAC and DrQ agents (prints its figures; not a timed test).

SAC (256×2 actor and critics, batch 256, cheetah-run sizes: 17 state dims, 6 actions): the full update
of ``agents/sac.py`` (critics, target, actor, temperature) against a straightforward CleanRL-style
PyTorch implementation at identical settings (cleanrl ``sac_continuous_action.py``: two separate
``SoftQNetwork`` critics and target critics, ``torch.distributions.Normal`` actor, plain ``Adam``
(default implementation), a per-parameter Python loop for the target update, ``alpha = log_alpha.exp()
.item()`` after every temperature step, the critics' weight gradients computed in the actor loss and
an extra actor forward for the temperature loss). The baseline updates the actor at every update
(cleanrl's ``policy_frequency=1``) so that both do the same updates; both draw the same random batches.
Their ratio is measured in one run from many short interleaved blocks (20 updates of one, then 20 of the
other, the order alternating), so that load from other processes on a shared machine hits both alike;
the script prints the median and interquartile range of the per-pair ratios.

It also prints the compute-bound ceiling of that ratio: the matrix-multiply work of each update (counted
by ``torch.utils.flop_counter`` over one update, forward and backward) in units of one 256×256×batch
product. At identical maths ours does about 17.3 units (the actor loss skips the critics' weight
gradients) and the baseline about 20.6 (those gradients plus the extra actor forward for the temperature),
so where both are bound by fp32 matmul throughput — large batches, several threads, a GPU — the ratio
cannot exceed ≈ 1.19×; above that, the gain comes from removed overheads (kernel launches, Python, host
syncs), which dominate at small batches and on one thread.

DrQ (batch 512, K = M = 2 augmentations, 1024×2 MLPs, cartpole sizes: 9×84×84 pixels, 1 action): the
full update of ``agents/drq.py`` (critic + encoder, actor and temperature every second update, target
every second update), a few updates only (seconds each on a CPU).

DrQ(ε) on Atari-100k (``--part drq_atari``), three measurements:

- ``update``: updates/s at batch 32 of four updates, interleaved as for SAC (one block of each per round, the
  order rotating): ``ours`` (``drq_atari.update`` with default Args: 'same' padding, dueling, augmentation,
  fused Adam, channels-last batches, one forward of s′ since the target is the online network), ``ours-valid``
  (the same with ``--padding valid``), ``plain-ddqn`` (the same maths written plainly: a target copy synced
  every update and forwarded on s′ too, a per-sample crop loop, default Adam) and ``cleanrl`` (the update of
  cleanrl ``dqn_atari.py``: valid padding, PyTorch init, no augmentation, one-step target network max, MSE).
  The FLOP counts show why ours cannot reach a CleanRL-style update's rate on a compute-bound CPU: 'same'
  padding gives conv3 and the dense layer ≈ 2.5× the work (11×11 vs 7×7 positions, 7,744 vs 3,136 inputs),
  so one update is ≈ 1.8× the FLOPs; at equal maths compare ours with plain-ddqn, at equal FLOPs ours-valid
  with cleanrl.
- ``run``: agent steps/s of full short DrQ(ε) runs (``agents/drq_atari.py`` main, whole protocol) at each
  ``--atari-run-ratios`` × ``--atari-run-envs``, before and after learning starts (from ``charts/SPS``).
- ``eval``: wall time of a ``--eval-games`` evaluation of an untrained network, all games batched
  (``AtariEvaluator(max_batch=games)``) vs one at a time (``max_batch=1``), and whether the scores agree.

    python benchmarks/agent_throughput.py                       # everything (about 25 minutes on 2 CPU cores)
    python benchmarks/agent_throughput.py --part drq_atari --threads 1
    python benchmarks/agent_throughput.py --part drq_atari --threads 1 --atari-parts update
    python benchmarks/agent_throughput.py --part sac --threads 1
    python benchmarks/agent_throughput.py --part sac --threads 1 --sac-batch 32   # overhead-bound regime
    python benchmarks/agent_throughput.py --part drq --drq-batch 128
    python benchmarks/agent_throughput.py --part sac --device cuda --compile   # torch.compile path
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from plasticrl.agents import bbf, drq, drq_atari, sac
from plasticrl.buffers import ReplayBatch

OBS_DIM, ACTION_DIM = 17, 6  # cheetah-run


def random_batch(
    batch_size: int,
    obs_shape: tuple[int, ...],
    action_dim: int,
    device,
    pixels: bool = False,
    discrete: bool = False,
    discount: float = 0.99,
):
    """A replay batch of random values (uint8 pixels or float states; ``discrete``: int64 actions below
    ``action_dim``, as the buffer returns them for a Discrete space; else actions in [-1, 1])."""
    if pixels:
        obs = torch.randint(0, 256, (batch_size, *obs_shape), dtype=torch.uint8, device=device)
        next_obs = torch.randint(0, 256, (batch_size, *obs_shape), dtype=torch.uint8, device=device)
    else:
        obs = torch.randn(batch_size, *obs_shape, device=device)
        next_obs = torch.randn(batch_size, *obs_shape, device=device)
    if discrete:
        action = torch.randint(0, action_dim, (batch_size,), dtype=torch.int64, device=device)
    else:
        action = torch.rand(batch_size, action_dim, device=device) * 2 - 1
    return ReplayBatch(
        obs=obs,
        action=action,
        reward=torch.randn(batch_size, device=device),
        discount=torch.full((batch_size,), discount, device=device),
        next_obs=next_obs,
        n_steps=torch.ones(batch_size, dtype=torch.int64, device=device),
        indices=torch.arange(batch_size, device=device),
        weights=torch.ones(batch_size, device=device),
    )


# ----------------------------------------------------------------------------- CleanRL-style baseline


class SoftQNetwork(nn.Module):
    """cleanrl sac_continuous_action.py ``SoftQNetwork``."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim + action_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)

    def forward(self, x, a):
        x = torch.cat([x, a], 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


LOG_STD_MAX, LOG_STD_MIN = 2.0, -10.0  # the agent's bounds (cleanrl uses -5)


class CleanRLActor(nn.Module):
    """cleanrl sac_continuous_action.py ``Actor`` (action scale 1, bias 0 for DMC's [-1, 1] actions)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(obs_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc_mean = nn.Linear(hidden, action_dim)
        self.fc_logstd = nn.Linear(hidden, action_dim)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        mean = self.fc_mean(x)
        log_std = torch.tanh(self.fc_logstd(x))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
        return mean, log_std

    def get_action(self, x):
        mean, log_std = self(x)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x_t = normal.rsample()
        y_t = torch.tanh(x_t)
        log_prob = normal.log_prob(x_t)
        log_prob -= torch.log(1 - y_t.pow(2) + 1e-6)
        return y_t, log_prob.sum(1, keepdim=True), torch.tanh(mean)


class CleanRLSAC:
    """The update loop body of cleanrl sac_continuous_action.py (autotune on, policy_frequency 1)."""

    def __init__(self, device, lr: float = 3e-4, gamma: float = 0.99, tau: float = 0.005):
        self.actor = CleanRLActor(OBS_DIM, ACTION_DIM).to(device)
        self.qf1 = SoftQNetwork(OBS_DIM, ACTION_DIM).to(device)
        self.qf2 = SoftQNetwork(OBS_DIM, ACTION_DIM).to(device)
        self.qf1_target = copy.deepcopy(self.qf1)
        self.qf2_target = copy.deepcopy(self.qf2)
        self.q_optimizer = torch.optim.Adam(list(self.qf1.parameters()) + list(self.qf2.parameters()), lr=lr)
        self.actor_optimizer = torch.optim.Adam(list(self.actor.parameters()), lr=lr)
        self.target_entropy = -ACTION_DIM / 2
        self.log_alpha = torch.zeros(1, requires_grad=True, device=device)
        self.alpha = self.log_alpha.exp().item()
        self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=lr)
        self.gamma, self.tau = gamma, tau

    def update(self, data: ReplayBatch) -> None:
        rewards, dones = data.reward.unsqueeze(1), (data.discount == 0).float().unsqueeze(1)
        with torch.no_grad():
            next_state_actions, next_state_log_pi, _ = self.actor.get_action(data.next_obs)
            qf1_next_target = self.qf1_target(data.next_obs, next_state_actions)
            qf2_next_target = self.qf2_target(data.next_obs, next_state_actions)
            min_qf_next_target = torch.min(qf1_next_target, qf2_next_target) - self.alpha * next_state_log_pi
            next_q_value = rewards + (1 - dones) * self.gamma * min_qf_next_target
        qf1_a_values = self.qf1(data.obs, data.action)
        qf2_a_values = self.qf2(data.obs, data.action)
        qf_loss = F.mse_loss(qf1_a_values, next_q_value) + F.mse_loss(qf2_a_values, next_q_value)
        self.q_optimizer.zero_grad()
        qf_loss.backward()
        self.q_optimizer.step()

        pi, log_pi, _ = self.actor.get_action(data.obs)
        min_qf_pi = torch.min(self.qf1(data.obs, pi), self.qf2(data.obs, pi))
        actor_loss = ((self.alpha * log_pi) - min_qf_pi).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        with torch.no_grad():
            _, log_pi, _ = self.actor.get_action(data.obs)
        alpha_loss = (-self.log_alpha.exp() * (log_pi + self.target_entropy)).mean()
        self.a_optimizer.zero_grad()
        alpha_loss.backward()
        self.a_optimizer.step()
        self.alpha = self.log_alpha.exp().item()

        for param, target_param in zip(self.qf1.parameters(), self.qf1_target.parameters()):
            target_param.data.copy_(self.tau * param.data + (1 - self.tau) * target_param.data)
        for param, target_param in zip(self.qf2.parameters(), self.qf2_target.parameters()):
            target_param.data.copy_(self.tau * param.data + (1 - self.tau) * target_param.data)


# ----------------------------------------------------------------------------- ours


class OurSAC:
    """``agents/sac.py``'s update on its networks."""

    def __init__(self, device, compile_: bool = False):
        self.args = sac.Args()
        self.nets = sac.SACNetworks(OBS_DIM, ACTION_DIM, self.args).to(device)
        self.target = copy.deepcopy(self.nets).requires_grad_(False)
        self.optimizers = sac.make_optimizers(self.nets, self.args, torch.device(device))
        self.penalties = {"critic": [], "actor": [], "temperature": []}
        if compile_:
            self.nets.actor.compile()
            self.nets.critic.compile()
            self.target.critic.compile()

    def update(self, data: ReplayBatch) -> None:
        sac.update(self.nets, self.target, self.optimizers, data, self.args, -ACTION_DIM / 2, self.penalties)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_updates(agent, batches: list[ReplayBatch], device) -> float:
    """Updates per second over ``batches``."""
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        agent.update(batch)
    _sync(device)
    return len(batches) / (time.perf_counter() - start)


def update_flops(update: Callable[[], None]) -> int:
    """Matrix-multiply and convolution FLOPs of one call of ``update``, forward and backward, as
    ``torch.utils.flop_counter`` counts them (elementwise work, augmentation and Adam are not counted)."""
    with FlopCounterMode(display=False) as counter:
        update()
    return counter.get_total_flops()


def matmul_units(update: Callable[[], None], batch_size: int) -> float:
    """Matrix-multiply work of one call of ``update`` in units of one 256×256×batch product."""
    return update_flops(update) / (2 * batch_size * 256 * 256)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def interleaved_rates(
    agents: dict[str, Any], batches: list[ReplayBatch], rounds: int, device, warmup_updates: int = 100
) -> dict[str, list[float]]:
    """Updates/s of each agent in ``rounds`` rounds of one ``len(batches)``-update block per agent, the order
    rotating every round, so that load from other processes on a shared machine hits every agent alike and
    each round's ratios compare blocks timed seconds apart."""
    block = len(batches)
    for agent in agents.values():  # warm-up (compilation, allocator, lazy optimizer state)
        for _ in range(max(1, warmup_updates // block)):
            time_updates(agent, batches, device)
    names = list(agents)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(time_updates(agents[name], batches, device))
    return rates


def print_rates(rates: dict[str, list[float]], ratios: list[tuple[str, str]]) -> None:
    """Median and IQR of each agent's updates/s, and of the per-round ratios ``a/b`` for each pair."""
    width = max(len(name) for name in rates)
    for name, values in rates.items():
        q1, median, q3 = _quartiles(values)
        print(f"  {name:{width}s} median {median:7.1f} updates/s  (IQR {q1:.1f} – {q3:.1f})")
    for a, b in ratios:
        per_round = [x / y for x, y in zip(rates[a], rates[b])]
        q1, median, q3 = _quartiles(per_round)
        print(f"  ratio {a}/{b}: median {median:.2f}  (IQR {q1:.2f} – {q3:.2f}, {len(per_round)} rounds)")


def bench_sac(args: argparse.Namespace) -> None:
    device = args.device
    torch.manual_seed(0)
    ours, baseline = OurSAC(device, args.compile), CleanRLSAC(device)
    block = args.sac_updates
    batches = [random_batch(args.sac_batch, (OBS_DIM,), ACTION_DIM, device) for _ in range(block)]
    rates = interleaved_rates({"ours": ours, "cleanrl": baseline}, batches, args.rounds, device)
    print(
        f"SAC update, 256x2, batch {args.sac_batch}, {device}, {torch.get_num_threads()} thread(s), "
        f"{args.rounds} interleaved pairs of {block}-update blocks:"
    )
    print_rates(rates, [("ours", "cleanrl")])
    batch = batches[0]
    units = {
        "ours": matmul_units(lambda: ours.update(batch), args.sac_batch),
        "cleanrl": matmul_units(lambda: baseline.update(batch), args.sac_batch),
    }
    print(
        f"  compute-bound ceiling: matmul work per update {units['ours']:.1f} (ours) vs "
        f"{units['cleanrl']:.1f} (cleanrl) units of one 256x256x{args.sac_batch} product -> at most "
        f"{units['cleanrl'] / units['ours']:.2f}x at identical fp32 maths when both are matmul-bound; "
        "the rest of the ratio is removed overhead"
    )


def bench_drq(args: argparse.Namespace) -> None:
    device = args.device
    torch.manual_seed(0)
    drq_args = drq.Args(batch_size=args.drq_batch)
    obs_shape = (9, 84, 84)
    nets = drq.DrQNetworks(obs_shape, 1, drq_args).to(device)
    target = copy.deepcopy(nets).requires_grad_(False)
    optimizers = drq.make_optimizers(nets, drq_args, torch.device(device))
    penalties = {"critic": [], "actor": [], "temperature": []}
    batch = random_batch(args.drq_batch, obs_shape, 1, device, pixels=True)
    drq.update(nets, target, optimizers, batch, drq_args, -1.0, penalties, 1)  # warm-up
    times = []
    for i in range(args.drq_updates):
        _sync(device)
        start = time.perf_counter()
        drq.update(nets, target, optimizers, batch, drq_args, -1.0, penalties, i + 2)
        _sync(device)
        times.append(time.perf_counter() - start)
    mean = statistics.mean(times)
    print(
        f"DrQ update, batch {args.drq_batch}, K=M=2, {device}, {torch.get_num_threads()} thread(s): "
        f"{1 / mean:.3f} updates/s ({mean:.2f} s per update, mean of {len(times)}: "
        + ", ".join(f"{t:.2f}" for t in times)
        + ")"
    )
    steps = 100_000 // 8
    print(
        f"  → 100k env steps of cartpole-swingup (action repeat 8, {steps - drq_args.learning_starts} "
        f"updates at replay ratio 1) ≈ {(steps - drq_args.learning_starts) * mean / 3600:.1f} h of updates"
    )


# ----------------------------------------------------------------------------- DrQ(ε) on Atari-100k

ATARI_OBS = (4, 84, 84)


class CleanRLQNetwork(nn.Module):
    """The Q-network of cleanrl's ``dqn_atari.py``: Nature CNN with PyTorch's 'valid' padding (3,136 conv
    features), dense 512, one linear output per action, PyTorch's default initialisation; it scales the
    uint8 frames itself."""

    def __init__(self, num_actions: int):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512),
            nn.ReLU(),
            nn.Linear(512, num_actions),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x / 255.0)


class CleanRLDQN:
    """The update of cleanrl ``dqn_atari.py``: one-step DQN, the target network's max over actions at s′
    under no_grad, MSE loss, plain Adam (lr 1e-4), batch 32, no augmentation. cleanrl copies the online
    weights into the target every 1,000 env steps with one update per 4 (``target_network_frequency`` /
    ``train_frequency``): every 250 updates here."""

    def __init__(
        self, device, num_actions: int, lr: float = 1e-4, gamma: float = 0.99, target_every: int = 250
    ):
        self.q_network = CleanRLQNetwork(num_actions).to(device)
        self.target_network = CleanRLQNetwork(num_actions).to(device)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.optimizer = torch.optim.Adam(self.q_network.parameters(), lr=lr)
        self.gamma, self.target_every, self.updates = gamma, target_every, 0

    def update(self, data: ReplayBatch) -> None:
        dones = (data.discount == 0).float()
        with torch.no_grad():
            target_max, _ = self.target_network(data.next_obs).max(dim=1)
            td_target = data.reward + self.gamma * target_max * (1 - dones)
        old_val = self.q_network(data.obs).gather(1, data.action.unsqueeze(1)).squeeze()
        loss = F.mse_loss(td_target, old_val)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        if self.updates % self.target_every == 0:
            self.target_network.load_state_dict(self.q_network.state_dict())


def plain_shift_and_scale(obs: torch.Tensor, pad: int, scale: float) -> torch.Tensor:
    """DrQ(ε)'s augmentation written the usual way: float pixels, ``ReplicationPad2d``, one crop per sample
    in a Python loop (offsets 0 … 2·pad, as ours), then x·(1 + scale·clip(ε, −2, 2)) per sample."""
    x = F.pad(obs.float() / 255.0, (pad, pad, pad, pad), mode="replicate")
    height, width = obs.shape[-2:]
    offsets = torch.randint(0, 2 * pad + 1, (len(obs), 2)).tolist()
    x = torch.stack([x[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)])
    noise = torch.randn(len(obs), 1, 1, 1, device=obs.device).clamp(-2.0, 2.0)
    return x * (1.0 + scale * noise)


class PlainDoubleDQN:
    """DrQ(ε)'s maths without our implementation choices: the same network (``drq_atari.QNetwork``, default
    Args) and initialisation, augmentation, n-step double-DQN target and Huber loss, written plainly — a
    separate target network copied from the online one after every update (Dopamine's
    ``target_update_period = 1``), so s′ goes through the online network (argmax) and the target network
    (evaluation); augmentation by :func:`plain_shift_and_scale`; PyTorch's default Adam (not fused);
    contiguous NCHW batches."""

    def __init__(self, device, num_actions: int):
        self.args = drq_atari.Args()
        self.q_network = drq_atari.QNetwork(num_actions, self.args).to(device)
        self.target_network = copy.deepcopy(self.q_network).requires_grad_(False)
        self.optimizer = torch.optim.Adam(
            self.q_network.parameters(), lr=self.args.lr, eps=self.args.adam_eps
        )

    def update(self, data: ReplayBatch) -> None:
        pad, scale = self.args.image_pad, self.args.intensity_scale
        with torch.no_grad():
            next_obs = plain_shift_and_scale(data.next_obs, pad, scale)
            next_action = self.q_network(next_obs).argmax(dim=1, keepdim=True)
            next_q = self.target_network(next_obs).gather(1, next_action).squeeze(1)
            target = data.reward + data.discount * next_q
        q = self.q_network(plain_shift_and_scale(data.obs, pad, scale)).gather(1, data.action.unsqueeze(1))
        loss = F.smooth_l1_loss(q.squeeze(1), target, beta=1.0)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.target_network.load_state_dict(self.q_network.state_dict())


class OurDrQAtari:
    """``agents/drq_atari.py``'s update on its Q-network and optimizer, built as its ``main`` builds them."""

    def __init__(self, device, num_actions: int, **overrides: Any):
        self.args = drq_atari.Args(**overrides)
        self.q_net = drq_atari.QNetwork(num_actions, self.args).to(device)
        fused = torch.device(device).type in ("cuda", "cpu")  # drq_atari.main's choice
        self.optimizer = torch.optim.Adam(
            self.q_net.parameters(), lr=self.args.lr, eps=self.args.adam_eps, fused=fused
        )
        self.penalties: dict[str, list] = {"q": []}

    def update(self, data: ReplayBatch) -> None:
        drq_atari.update(self.q_net, self.optimizer, data, self.args, self.penalties)


def bench_drq_atari_update(args: argparse.Namespace) -> None:
    """Updates/s of ours, ours with Mnih et al.'s 'valid' padding, the plain double-DQN update and the
    cleanrl-style update, interleaved; then the FLOPs of one update of each."""
    device = args.device
    torch.manual_seed(0)
    actions = args.atari_actions
    agents = {
        "ours": OurDrQAtari(device, actions),
        "ours-valid": OurDrQAtari(device, actions, padding="valid"),
        "plain-ddqn": PlainDoubleDQN(device, actions),
        "cleanrl": CleanRLDQN(device, actions),
    }
    discount = drq_atari.Args().gamma ** drq_atari.Args().n_step
    batches = [
        random_batch(
            args.atari_batch, ATARI_OBS, actions, device, pixels=True, discrete=True, discount=discount
        )
        for _ in range(args.atari_updates)
    ]
    rates = interleaved_rates(agents, batches, args.atari_rounds, device, warmup_updates=20)
    print(
        f"DrQ(eps) update, batch {args.atari_batch}, {actions} actions, {device}, "
        f"{torch.get_num_threads()} thread(s), {args.atari_rounds} interleaved rounds of "
        f"{args.atari_updates}-update blocks:"
    )
    print_rates(rates, [("ours", "cleanrl"), ("ours", "plain-ddqn"), ("ours-valid", "cleanrl")])
    flops = {
        name: update_flops(lambda agent=agent: agent.update(batches[0])) for name, agent in agents.items()
    }
    print(
        "  FLOPs per update (convolutions and matmuls, forward and backward): "
        + ", ".join(f"{name} {value / 1e9:.2f} G" for name, value in flops.items())
    )
    print(
        f"  compute-bound ceilings: ours/cleanrl {flops['cleanrl'] / flops['ours']:.2f}x (different maths: "
        f"'same' padding, dueling, double DQN, augmentation), ours/plain-ddqn "
        f"{flops['plain-ddqn'] / flops['ours']:.2f}x (same maths; the plain update's s′ also goes through "
        f"the target copy), ours-valid/cleanrl {flops['cleanrl'] / flops['ours-valid']:.2f}x"
    )


def bench_drq_atari_run(args: argparse.Namespace) -> None:
    """Agent steps/s of short full DrQ(ε) runs: before learning starts (random acting, env and buffer only)
    and after (acting, buffer, sampling and updates), from the run's ``charts/SPS`` log."""
    import tempfile

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from plasticrl.common.cli import cli

    total, starts = args.atari_run_steps, args.atari_run_learning_starts
    print(
        f"DrQ(eps) runs on {args.atari_game}, {total} agent steps (learning starts {starts}), "
        f"{args.device}, {torch.get_num_threads()} thread(s):"
    )
    for ratio in args.atari_run_ratios:
        for num_envs in args.atari_run_envs:
            with tempfile.TemporaryDirectory() as run_dir:
                flags = [
                    "--env-id", args.atari_game, "--total-steps", str(total),
                    "--learning-starts", str(starts),
                    "--replay-ratio", str(ratio), "--num-envs", str(num_envs), "--eval-every", str(total),
                    "--eval-episodes", "1", "--log-every", str(args.atari_run_log_every),
                    "--threads", str(torch.get_num_threads()), "--device", args.device, "--run-dir", run_dir,
                    "--max-episode-frames", str(args.atari_run_max_frames),
                ]  # fmt: skip
                result = drq_atari.main(cli(drq_atari.Args, flags))
                accumulator = EventAccumulator(result["run_dir"], size_guidance={"scalars": 0})
                accumulator.Reload()
                # charts/SPS at step s is s / (seconds since the loop started): invert it to get the time.
                seconds = {p.step: p.step / p.value for p in accumulator.Scalars("charts/SPS")}
            after = [s for s in seconds if s >= starts]
            first, last = min(after), max(after)
            warmup = first / seconds[first]
            learning = (last - first) / (seconds[last] - seconds[first])
            print(
                f"  replay ratio {ratio:g}, --num-envs {num_envs}: {learning:7.1f} agent steps/s after "
                f"learning starts (steps {first}–{last}, {learning * ratio:.1f} updates/s), "
                f"{warmup:7.1f} before; {result['updates']} updates"
            )


def bench_drq_atari_eval(args: argparse.Namespace) -> None:
    """Wall time of one evaluation of an untrained DrQ(ε) network, all games batched vs one at a time."""
    from plasticrl.common.evaluation import AtariEvaluator
    from plasticrl.envs import make_atari_vector

    torch.manual_seed(0)
    device = torch.device(args.device)
    net_args = drq_atari.Args()
    env = make_atari_vector(args.atari_game, 1, 0)
    num_actions = int(env.single_action_space.n)
    env.close()
    q_net = drq_atari.QNetwork(num_actions, net_args).to(device)

    @torch.no_grad()
    def q_values(obs: np.ndarray) -> np.ndarray:  # as drq_atari.main acts
        return (
            q_net(drq_atari.pixels_to_float(torch.as_tensor(obs, device=device), net_args.channels_last))
            .cpu()
            .numpy()
        )

    games, frames = args.eval_games, args.eval_max_frames
    cut = "whole games" if frames >= 108_000 else f"games cut at {frames} frames"
    print(
        f"DrQ(eps) evaluation, {games} games of {args.atari_game} ({cut}), untrained network, eps 0.001, "
        f"{device}, {torch.get_num_threads()} thread(s):"
    )
    scores = {}
    for batch in (games, 1):
        evaluator = AtariEvaluator(
            args.atari_game,
            1,
            q_values,
            epsilon=net_args.eval_epsilon,
            max_batch=batch,
            max_episode_frames=frames,
        )
        start = time.perf_counter()
        scores[batch] = evaluator(100_000, games)
        seconds = time.perf_counter() - start
        print(f"  max_batch {batch:3d}: {seconds:7.1f} s (mean score {np.mean(scores[batch]):.2f})")
    print(f"  scores identical batched and sequential: {scores[games] == scores[1]}")


def bench_drq_atari(args: argparse.Namespace) -> None:
    if "update" in args.atari_parts:
        bench_drq_atari_update(args)
    if "run" in args.atari_parts:
        bench_drq_atari_run(args)
    if "eval" in args.atari_parts:
        bench_drq_atari_eval(args)


# ----------------------------------------------------------------------------- BBF

# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets: A100 SXM 312 TFLOP/s,
# H100 SXM 989 TFLOP/s.
GPU_PEAKS_TFLOPS = {"A100": 312.0, "H100": 989.0}


def bbf_batch(batch_size: int, num_actions: int, spr_steps: int, device) -> ReplayBatch:
    """A random BBF batch: pixels, n-step fields and the SPR sequence (future frames, actions, mask)."""
    batch = random_batch(
        batch_size, (4, 84, 84), num_actions, device, pixels=True, discrete=True, discount=0.97**10
    )
    frames = (batch_size, spr_steps, 4, 84, 84)
    return dataclasses.replace(
        batch,
        weights=torch.rand(batch_size, device=device) + 0.5,
        future_obs=torch.randint(0, 256, frames, dtype=torch.uint8, device=device),
        future_action=torch.randint(0, num_actions, (batch_size, spr_steps), device=device),
        future_reward=torch.zeros(batch_size, spr_steps, device=device),
        future_mask=torch.ones(batch_size, spr_steps, device=device),
    )


class BBFUpdate:
    """BBF's update (``bbf.update``: C51 + SPR, AdamW, target EMA) at a given network size."""

    def __init__(self, device, num_actions: int, **sizes: Any):
        self.args = bbf.Args(**sizes)
        self.support = torch.linspace(-self.args.v_max, self.args.v_max, self.args.num_atoms, device=device)
        self.nets = bbf.BBFNetwork(num_actions, self.args).to(device)
        if self.args.channels_last:
            self.nets = self.nets.to(memory_format=torch.channels_last)
        self.target = copy.deepcopy(self.nets).requires_grad_(False)
        self.optimizer = bbf.make_optimizer(self.nets, self.args, torch.device(device))

    def update(self, batch: ReplayBatch) -> None:
        bbf.update(self.nets, self.target, self.optimizer, batch, self.support, self.args, {"q": []})


def bench_bbf(args: argparse.Namespace) -> None:
    """Updates/s of BBF's update at full size and at the CPU-sized quick-test size, the FLOPs of one update,
    and the GPU-hours those FLOPs imply for a 100k-step run at a stated utilisation of the bf16 peak."""
    device = args.device
    sizes = {
        "full (width 4, hidden 2048)": dict(width_scale=4, hidden_dim=2048),
        "quick (width 1, hidden 256)": dict(width_scale=1, hidden_dim=256),
    }
    print(f"BBF update, batch {args.atari_batch}, {args.bbf_actions} actions, SPR {5} steps, device {device}")
    flops = {}
    for label, size in sizes.items():
        if label.split()[0] not in args.bbf_sizes:
            continue
        torch.manual_seed(0)
        agent = BBFUpdate(device, args.bbf_actions, batch_size=args.atari_batch, **size)
        batches = [bbf_batch(args.atari_batch, args.bbf_actions, agent.args.spr_steps, device)]
        flops[label] = update_flops(lambda: agent.update(batches[0]))  # noqa: B023
        updates = args.bbf_full_updates if size["width_scale"] == 4 else args.bbf_quick_updates
        time_updates(agent, batches * 2, device)  # warm-up: lazy optimizer state, allocator
        rates = [time_updates(agent, batches, device) for _ in range(updates)]
        q1, median, q3 = _quartiles(rates)
        print(
            f"  {label}: {median:.3f} updates/s (IQR {q1:.3f} – {q3:.3f}, {updates} updates), "
            f"{flops[label] / 1e9:.1f} GFLOP per update (matmuls and convolutions, forward and backward)"
        )
    full = flops.get("full (width 4, hidden 2048)")
    if full is None:
        return
    print(
        f"  GPU-hours for the updates of a 100k-step run (98,000 agent steps after the 2,000 warm-up), "
        f"at {args.bbf_utilization:.0%} of the dense bf16 peak:"
    )
    for ratio in (2, 8):
        total = 98_000 * ratio * full
        estimates = ", ".join(
            f"{gpu} {total / (peak * 1e12 * args.bbf_utilization) / 3600:.2f} h"
            for gpu, peak in GPU_PEAKS_TFLOPS.items()
        )
        print(f"    RR {ratio}: {total / 1e15:.1f} PFLOP -> {estimates}")
    low, high = (98_000 * 8 * full / (hours * 3600) / (GPU_PEAKS_TFLOPS["A100"] * 1e12) for hours in (10, 6))
    print(
        f"  The paper's 6–10 GPU-hours at RR 8 (A100-class) correspond to {low:.1%}–{high:.1%} of the A100's "
        "bf16 peak on these FLOPs (batch-32 updates are bound by kernel launches and memory traffic)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("sac", "drq", "drq_atari", "bbf", "all"), default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--rounds", type=int, default=100, help="interleaved pairs of SAC timing blocks")
    parser.add_argument("--sac-updates", type=int, default=20, help="SAC updates per timing block")
    parser.add_argument("--sac-batch", type=int, default=256, help="SAC batch size (256: the agent's)")
    parser.add_argument("--drq-batch", type=int, default=512)
    parser.add_argument("--drq-updates", type=int, default=4)
    parser.add_argument("--compile", action="store_true", help="torch.compile our SAC networks")
    atari = parser.add_argument_group("DrQ(eps) on Atari-100k (--part drq_atari)")
    atari.add_argument(
        "--atari-parts",
        nargs="+",
        choices=("update", "run", "eval"),
        default=["update", "run", "eval"],
        help="which DrQ(eps) measurements",
    )
    atari.add_argument(
        "--atari-batch", type=int, default=32, help="update batch (32: DrQ(eps)'s and cleanrl's)"
    )
    atari.add_argument(
        "--atari-actions", type=int, default=6, help="actions (6: Pong, the agent's default game)"
    )
    atari.add_argument("--atari-updates", type=int, default=10, help="updates per timing block")
    atari.add_argument("--atari-rounds", type=int, default=40, help="interleaved rounds of update blocks")
    atari.add_argument("--atari-game", default="Boxing", help="game of the full runs and the evaluation")
    atari.add_argument("--atari-run-steps", type=int, default=3000, help="agent steps of each full run")
    atari.add_argument("--atari-run-learning-starts", type=int, default=1600)
    atari.add_argument("--atari-run-ratios", type=float, nargs="+", default=[1.0, 2.0])
    atari.add_argument("--atari-run-envs", type=int, nargs="+", default=[1, 4], help="--num-envs of the runs")
    atari.add_argument("--atari-run-log-every", type=int, default=100, help="agent steps between SPS logs")
    atari.add_argument(
        "--atari-run-max-frames",
        type=int,
        default=108_000,
        help="frame cap of the runs' games (108,000: the protocol's; less only for smoke tests)",
    )
    atari.add_argument(
        "--eval-games", type=int, default=100, help="games of the evaluation (100: the final one)"
    )
    atari.add_argument(
        "--eval-max-frames",
        type=int,
        default=108_000,
        help="frame cap per evaluation game (108,000: whole games; less keeps the sequential case short)",
    )
    bbf_group = parser.add_argument_group("BBF (--part bbf; the batch is --atari-batch)")
    bbf_group.add_argument("--bbf-actions", type=int, default=18, help="actions (18: the full set, the most)")
    bbf_group.add_argument("--bbf-sizes", nargs="+", choices=("full", "quick"), default=["full", "quick"])
    bbf_group.add_argument("--bbf-full-updates", type=int, default=5, help="timed full-size updates")
    bbf_group.add_argument("--bbf-quick-updates", type=int, default=30, help="timed quick-size updates")
    bbf_group.add_argument(
        "--bbf-utilization", type=float, default=0.4, help="fraction of the bf16 peak assumed for GPU-hours"
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    np.random.seed(0)
    if args.part in ("sac", "all"):
        bench_sac(args)
    if args.part in ("drq", "all"):
        bench_drq(args)
    if args.part in ("drq_atari", "all"):
        bench_drq_atari(args)
    if args.part in ("bbf", "all"):
        bench_bbf(args)


if __name__ == "__main__":
    main()
