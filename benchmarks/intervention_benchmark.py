"""Cost of the plasticity diagnostics and of each intervention on a BBF-size network (prints figures).

Network: ``ImpalaCNN(width_scale=4)`` (channels 64-128-128, 15,488 latent features, dense 2048) with a
head of 18 × 51 outputs (C51 over 18 actions, as BBF's distributional head), a target copy and AdamW
(lr 1e-4, eps 1.5e-4, weight decay 0.1; BBF). Probe batch (256, 4, 84, 84) as dopamine's ReDo
statistics batch.

Reported, as the median of ``--repeats`` runs after one warm-up, in one table:

- one update (forward + backward + AdamW step at batch 32; cross-entropy on the C51 logits), for scale;
- one full diagnostics pass (:func:`plasticrl.interventions.measure` on the probe batch);
- each intervention once: reset (head, all) with target sync; shrink & perturb (head, encoder, all) with
  the target's 'same' rule; hare & tortoise's EMA step and hare reset (+ target sync); L2-init penalty +
  its backward; ReDo's scoring forward on the probe batch, its recycling given the masks, and both;
  plasticity injection (once, + target); continual backprop's per-update step (utility update only, and
  with one replacement in every layer) and its forward hooks' cost per training forward;
- which exceed the 10 ms goal, and why;
- the diagnostics' overhead at several intervals: pass time / (interval × update time). Goal ≤ 2 %.

Curvature (``--part curvature``; issue 16): the cost of each quantity of
:func:`plasticrl.interventions.curvature` at its default settings — sharpness (every Lanczos step taken:
tolerance 0, the worst case; also with per-part values), Hutchinson trace, SLQ rank, gradient noise scale
and cosine — as a multiple of one training update of the same network, and λ_max after the default steps
as a share of λ_max after 24 steps, on

- the SAC critic: ``QEnsemble`` 2 × (256, 256) on cheetah-run states (17 + 6 inputs), batch 256 (the SAC
  defaults), MSE against a fixed target; update = the critic update as the agent does it (bootstrap target
  from an actor MLP and a target critic without gradients, TD loss, backward, Adam step);
- the DrQ critic: the ``DrQEncoder`` convs + projection and ``QEnsemble`` 2 × (1024, 1024) on (9, 84, 84)
  pixels, as ``agents/drq.py`` builds it, batch ``--drq-batch`` (32 by default: the paper's 512 takes
  ~10 s per update on a CPU; the multiple barely depends on the batch); update = its critic update with
  K = M = 2 copies of the observations (augmentations are not applied: their cost is small);
- the supervised ResNet-18 (width 64, CIFAR-10 shapes), batch 128 (Ash & Adams; Berariu et al.),
  cross-entropy, Adam.

The probe batch is the training batch (the harness measures ``--curvature.probe-size`` examples; costs
scale with it). One Hessian-vector product (HVP) is also timed on its own.

    python benchmarks/intervention_benchmark.py --threads 1      # a few minutes on a CPU
    python benchmarks/intervention_benchmark.py --part curvature --threads 1
    python benchmarks/intervention_benchmark.py --repeats 5 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from plasticrl.interventions import (
    CURVATURE_QUANTITIES,
    CBPConfig,
    ContinualBackprop,
    CurvatureConfig,
    HareTortoise,
    HareTortoiseConfig,
    InjectionConfig,
    L2Init,
    L2InitConfig,
    PlasticityInjection,
    ReDo,
    ReDoConfig,
    Reset,
    ResetConfig,
    ShrinkPerturb,
    ShrinkPerturbConfig,
    curvature,
    measure,
)
from plasticrl.interventions.curvature import _Hessian, _LossCall, _select_params
from plasticrl.networks import MLP, DrQEncoder, ImpalaCNN, QEnsemble, ResNet18

ACTIONS, ATOMS = 18, 51  # BBF: C51 with 51 atoms; 18 is the full Atari action set


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device, warmup: bool = True) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` calls, after one warm-up call (if ``warmup``)."""
    if warmup:
        fn()
        sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def build(device: torch.device) -> tuple[ImpalaCNN, ImpalaCNN, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = ImpalaCNN(4, width_scale=4, num_outputs=ACTIONS * ATOMS).to(device)
    target = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, eps=1.5e-4, weight_decay=0.1)
    return net, target, opt


def make_update(net: ImpalaCNN, opt: torch.optim.Optimizer, batch: int, device: torch.device, extra=None):
    g = torch.Generator(device=device).manual_seed(1)
    obs = torch.rand(batch, 4, 84, 84, device=device, generator=g)
    target_dist = torch.softmax(torch.randn(batch, ACTIONS, ATOMS, device=device, generator=g), -1)

    def update() -> None:
        opt.zero_grad(set_to_none=True)
        logits = net(obs).view(batch, ACTIONS, ATOMS)
        loss = -(target_dist * F.log_softmax(logits, -1)).sum(-1).mean()
        if extra is not None:
            loss = loss + extra()
        loss.backward()
        opt.step()

    return update


GOAL_MS = 10.0
SHARPNESS_BUDGET = 20.0  # issue 16: sharpness at its default iterations within ~20 updates' time
CURVATURE_NETS = ("sac", "drq", "resnet")


# ----------------------------------------------------------------------------- curvature costs


class DrQCritic(nn.Module):
    """The DrQ critic path of ``agents/drq.py``: shared convs → projection (Linear, LayerNorm, tanh) →
    twin Q-networks on [features, action]."""

    def __init__(self, action_dim: int, hidden: int = 1024, feature_dim: int = 50):
        super().__init__()
        convs_and_projection = DrQEncoder((9, 84, 84), feature_dim)
        self.encoder = convs_and_projection.encoder
        self.projection = convs_and_projection.head
        self.q = QEnsemble(feature_dim, action_dim, (hidden, hidden))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.q(self.projection(self.encoder(obs)), action)


def td_loss(critic: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Σ_members mean_batch (Q(s, a) − y)², y a fixed bootstrap target (SAC / DrQ critic loss)."""
    obs, action, target = batch
    return (critic(obs, action) - target).pow(2).mean(dim=1).sum()


def cross_entropy(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(net(x), y)


def _critic_update(critic, actor_features, actor, obs, next_obs, action, reward, copies):
    """One critic update as the agents do it: a bootstrap target from the actor and a target copy of the
    critic on ``copies`` copies of the next observations (no gradients), then the TD loss on ``copies``
    copies of the observations (DrQ's K = M = 2 augmentations; SAC: 1), backward and an Adam step."""
    target_critic = copy.deepcopy(critic).requires_grad_(False)
    opt = torch.optim.Adam(critic.parameters(), lr=3e-4)
    obs_m, next_k = torch.cat([obs] * copies), torch.cat([next_obs] * copies)

    def update() -> None:
        with torch.no_grad():
            mean, _ = actor(actor_features(next_k)).chunk(2, dim=-1)
            next_q = target_critic(next_k, torch.tanh(mean)).amin(dim=0)
            y = reward.repeat(copies) + 0.99 * next_q
        opt.zero_grad(set_to_none=True)
        td_loss(critic, (obs_m, action.repeat(copies, 1), y)).backward()
        opt.step()

    return update


def curvature_cases(device: torch.device, drq_batch: int, names=CURVATURE_NETS) -> list[tuple]:
    """(label, network, loss_fn, probe batch, parts, one training update) of issue 16's networks ``names``
    (``sac``, ``drq``, ``resnet``)."""
    g = torch.Generator(device=device).manual_seed(3)
    torch.manual_seed(0)
    obs_dim, action_dim = 17, 6  # DMC cheetah-run

    def uniform(*shape):
        return torch.rand(*shape, device=device, generator=g)

    sac = QEnsemble(obs_dim, action_dim, (256, 256)).to(device)
    sac_actor = MLP(obs_dim, (256, 256), 2 * action_dim).to(device)
    obs, next_obs = torch.randn(2, 256, obs_dim, device=device, generator=g)
    action, reward = uniform(256, action_dim) * 2 - 1, torch.randn(256, device=device, generator=g)
    sac_update = _critic_update(sac, nn.Identity(), sac_actor, obs, next_obs, action, reward, 1)
    sac_probe = (obs, action, torch.randn(256, device=device, generator=g))

    drq = DrQCritic(action_dim).to(device)
    drq_actor = nn.Sequential(copy.deepcopy(drq.projection), MLP(50, (1024, 1024), 2 * action_dim)).to(device)
    pixels, next_pixels = uniform(2, drq_batch, 9, 84, 84)
    action, reward = (
        uniform(drq_batch, action_dim) * 2 - 1,
        torch.randn(drq_batch, device=device, generator=g),
    )
    drq_update = _critic_update(drq, drq.encoder, drq_actor, pixels, next_pixels, action, reward, 2)
    drq_probe = (pixels, action, torch.randn(drq_batch, device=device, generator=g))

    resnet = ResNet18(10).to(device)
    images = torch.randn(128, 3, 32, 32, device=device, generator=g)
    labels = torch.randint(0, 10, (128,), device=device, generator=g)
    resnet_opt = torch.optim.Adam(resnet.parameters(), lr=1e-3)

    def resnet_update() -> None:
        resnet.train()
        resnet_opt.zero_grad(set_to_none=True)
        cross_entropy(resnet, (images, labels)).backward()
        resnet_opt.step()

    cases = [
        (
            "SAC critic 2x(256,256), cheetah-run states, batch 256",
            sac, td_loss, sac_probe, {"encoder": sac.encoder, "head": sac.head}, sac_update,
        ),
        (
            f"DrQ critic (convs + 2x(1024,1024)), 84x84x9 pixels, batch {drq_batch}",
            drq, td_loss, drq_probe, {"encoder": drq.encoder, "head": drq.q}, drq_update,
        ),
        (
            "ResNet-18 (w 64), CIFAR-10 shapes, batch 128",
            resnet, cross_entropy, (images, labels), {"encoder": resnet.encoder, "head": resnet.head},
            resnet_update,
        ),
    ]  # fmt: skip
    return [case for case, name in zip(cases, CURVATURE_NETS) if name in names]


def _curvature_case(args, device, label, net, loss_fn, batch, parts, update, defaults):
    """[(quantity, ms, update ms)] of one network: every cost is divided by the median of updates timed
    right before and after it, so that a shared machine's changing load cancels out."""
    params = sum(p.numel() for p in net.parameters())
    update()  # warm-up (allocator, lazy optimizer state)
    print(f"  ... {label}: {params / 1e6:.2f} M parameters", flush=True)

    def timed(fn, repeats: int, warmup: bool, prepare=None) -> tuple[float, float]:
        before = median_ms(update, 1, device, warmup=False)
        if prepare is not None:
            prepare()
        ms = median_ms(fn, repeats, device, warmup)
        after = median_ms(update, 1, device, warmup=False)
        return ms, statistics.median([before, after])

    def graph() -> _Hessian:
        return _Hessian(_LossCall(net, loss_fn), batch, _select_params(net, None, "trainable"))

    net.eval()
    kept: dict[str, _Hessian] = {}  # the graph aliases the parameters: rebuilt after each update

    def build() -> None:
        kept["graph"] = graph()

    def hvp() -> torch.Tensor:
        h = kept["graph"]
        every = list(range(len(h.leaves)))
        return h.hvp(torch.ones(h.dim(every), device=device), every)

    rows = [
        ("one update", *timed(update, args.repeats, False)),
        ("graph (forward + backward with create_graph)", *timed(graph, args.repeats, False)),
        ("one Hessian-vector product", *timed(hvp, args.repeats, False, prepare=build)),
    ]
    kept.clear()  # free the kept graph before the next measurements
    settings = dict(tolerance=0.0, minibatch_size=min(defaults.minibatch_size, batch[0].shape[0] // 2))
    # Whole calls of seconds to minutes: one warm-up only when more than one timed repeat is asked for.
    repeats, warmup = max(1, args.repeats - 1), args.repeats > 1
    for name, quantity, extra in (
        (f"sharpness ({defaults.iterations} steps)", "sharpness", {}),
        ("sharpness + encoder + head", "sharpness", {"parts": parts}),
        (f"trace ({defaults.trace_probes} probes)", "trace", {}),
        (f"rank ({defaults.density_probes} x {defaults.lanczos_steps} steps)", "rank", {}),
        ("noise scale + cosine", "noise", {}),
    ):
        if (name.startswith("sharpness +") and not args.curvature_parts) or (
            quantity not in args.curvature_quantities
        ):
            continue
        ms, update_ms = timed(
            lambda q=quantity, e=extra: curvature(net, loss_fn, batch, quantities=(q,), **settings, **e),
            repeats,
            warmup,
        )
        rows.append((name, ms, update_ms))
        print(f"      {name}: {ms:.0f} ms = {ms / update_ms:.1f} updates", flush=True)
    if not args.curvature_accuracy:
        return rows, (math.nan, math.nan)
    # Accuracy of the default step count: λ_max after the default steps (two start vectors) vs 24 steps.
    reference = curvature(net, loss_fn, batch, quantities=("sharpness",), iterations=24, tolerance=1e-7)
    ratios = [
        curvature(net, loss_fn, batch, quantities=("sharpness",), tolerance=0.0, seed=seed)[
            "plasticity/sharpness/network"
        ]
        / reference["plasticity/sharpness/network"]
        for seed in range(1, 3)
    ]
    return rows, (min(ratios), reference["plasticity/sharpness/network"])


def curvature_costs(args: argparse.Namespace, device: torch.device) -> None:
    """Print the cost of each curvature quantity on the three networks as multiples of one update."""
    defaults = CurvatureConfig()
    print(
        f"curvature costs at the defaults (sharpness: every one of the {defaults.iterations} steps taken, "
        f"tolerance 0); {args.repeats} repeats; probe batch = training batch; eval mode"
    )
    table = []
    for label, net, loss_fn, batch, parts, update in curvature_cases(
        device, args.drq_batch, args.curvature_nets
    ):
        rows, accuracy = _curvature_case(args, device, label, net, loss_fn, batch, parts, update, defaults)
        table.append((label, sum(p.numel() for p in net.parameters()), rows, accuracy))

    print("\ncurvature cost as a multiple of one training update of the network (median ms in brackets)")
    print(
        "update: SAC / DrQ critic update with its bootstrap target (actor + target critic, no gradients; DrQ "
        "with K = M = 2 copies) and an Adam step; ResNet-18: cross-entropy step, Adam"
    )
    for label, params, rows, (ratio, reference) in table:
        print(f"  {label} ({params / 1e6:.2f} M parameters)")
        for name, ms, update_ms in rows:
            flag = ""
            if name.startswith("sharpness (") and ms / update_ms > SHARPNESS_BUDGET:
                flag = f"  > {SHARPNESS_BUDGET:g} updates"
            print(f"    {name:<48} {ms / update_ms:7.1f}  ({ms:.0f} ms; update {update_ms:.0f} ms){flag}")
        if not math.isnan(ratio):
            print(
                f"    sharpness after {defaults.iterations} steps / after 24 steps: >= {ratio:.4f} "
                f"(2 start vectors; lambda_max {reference:.4g})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part", choices=("interventions", "curvature", "all"), default="interventions",
        help="the per-intervention table, the curvature costs (issue 16), or both",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe-batch", type=int, default=256)
    parser.add_argument("--update-batch", type=int, default=32)
    parser.add_argument("--drq-batch", type=int, default=32, help="DrQ critic batch of the curvature costs")
    parser.add_argument(
        "--curvature-nets", nargs="+", choices=CURVATURE_NETS, default=list(CURVATURE_NETS),
        help="networks of the curvature costs",
    )  # fmt: skip
    parser.add_argument(
        "--curvature-parts", action=argparse.BooleanOptionalAction, default=True,
        help="also time sharpness with per-part values (encoder, head)",
    )  # fmt: skip
    parser.add_argument(
        "--curvature-quantities", nargs="+", choices=CURVATURE_QUANTITIES, default=list(CURVATURE_QUANTITIES),
        help="quantities of the curvature costs",
    )  # fmt: skip
    parser.add_argument(
        "--curvature-accuracy", action=argparse.BooleanOptionalAction, default=True,
        help="also compare lambda_max after the default steps with 24 steps",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.part in ("all", "interventions"):
        intervention_costs(args, device)
    if args.part in ("all", "curvature"):
        if args.part == "all":
            print()
        curvature_costs(args, device)


def intervention_costs(args: argparse.Namespace, device: torch.device) -> None:
    """The per-intervention table on the BBF-size network (see the module docstring)."""
    reps = args.repeats

    net, target, opt = build(device)
    probe = torch.rand(
        args.probe_batch, 4, 84, 84, device=device, generator=torch.Generator(device).manual_seed(2)
    )
    update = make_update(net, opt, args.update_batch, device)
    params = sum(p.numel() for p in net.parameters())
    head = sum(p.numel() for p in net.head.parameters())
    dense = net.head.fc.weight
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, ImpalaCNN x4: {params / 1e6:.1f} M "
        f"parameters ({head / 1e6:.1f} M in the head, {dense.numel() / 1e6:.1f} M in head.fc "
        f"{dense.shape[1]}->{dense.shape[0]}), probe batch {args.probe_batch}, {reps} repeats"
    )

    # (section, row) -> ms
    rows: list[tuple[str, str, float]] = []

    def add(section: str, row: str, ms: float) -> None:
        rows.append((section, row, ms))
        print(f"  ... {section} {row}: {ms:.1f} ms", flush=True)

    update_ms = median_ms(update, reps, device)
    add("reference", f"one update (fwd+bwd+AdamW, batch {args.update_batch})", update_ms)
    diag_ms = median_ms(lambda: measure(net, probe), reps, device)
    add("diagnostics", f"pass (measure, probe {args.probe_batch})", diag_ms)

    every = dict(every=1)
    for label, modules in (("head (fc + out)", ("head",)), ("all", ("all",))):
        reset = Reset(ResetConfig(**every, modules=modules), net, [opt], [target])
        add("reset", f"{label} + target sync", median_ms(reset.apply, reps, device))
    for label, modules, factors in (
        ("head", ("head",), (0.4, 0.1)),
        ("encoder (BBF 0.5/0.5)", ("encoder",), (0.5, 0.5)),
        ("all", ("all",), (0.4, 0.1)),
    ):
        cfg = ShrinkPerturbConfig(
            **every, shrink_factor=factors[0], perturb_factor=factors[1], modules=modules
        )
        sp = ShrinkPerturb(cfg, net, [opt], [target])
        add("shrink & perturb", f"{label} + target 'same'", median_ms(sp.apply, reps, device))

    ht = HareTortoise(HareTortoiseConfig(enabled=True, every=1), net, [opt], [target])
    add("hare & tortoise", "EMA step (every update)", median_ms(ht.update_tortoise, reps, device))
    add("hare & tortoise", "hare reset + target sync", median_ms(ht.reset_hare, reps, device))

    l2 = L2Init(L2InitConfig(enabled=True), net)
    add("L2-init", "penalty + its backward", median_ms(lambda: l2.penalty().backward(), reps, device))
    net.zero_grad(set_to_none=True)

    redo = ReDo(ReDoConfig(**every), net, lambda: probe, [opt], [target])
    with torch.no_grad():  # make ~10% of the dense units and of one block's units dead, so there is work
        net.head.fc.bias[::10] = -1e3
        net.encoder.stage1.blocks[0].conv1.bias[::10] = -1e3
    masks = redo.dormant_masks(probe)
    dormant = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    drawn = sum(int(masks[g.name].sum()) * g.incoming.weight[0].numel() for g in redo.groups)
    add(
        "ReDo",
        f"scoring forward (probe {args.probe_batch}; {dormant}/{total} dormant)",
        median_ms(lambda: redo.dormant_masks(probe), reps, device),
    )

    def redo_recycle_only() -> None:
        with torch.no_grad():
            net.head.fc.bias[::10] = -1e3
            net.encoder.stage1.blocks[0].conv1.bias[::10] = -1e3
        redo.recycle_masks(masks)

    add(
        "ReDo",
        f"recycling {dormant} units given the masks (+ moments, target)",
        median_ms(redo_recycle_only, reps, device),
    )
    add("ReDo", "full step (scoring + recycling)", median_ms(lambda: redo.recycle(probe), reps, device))

    cbp = ContinualBackprop(CBPConfig(enabled=True, maturity_threshold=0), net, probe[:2], [opt], [target])
    x_train = probe[: args.update_batch]

    def cbp_step(replace: bool) -> float:
        net(x_train)  # a training forward (with gradients) feeds the utilities; not timed
        if replace:
            for name in cbp.accumulated:
                cbp.accumulated[name] = 1.0  # one unit due in every layer
        sync(device)
        start = time.perf_counter()
        cbp.generate_and_test()
        sync(device)
        return (time.perf_counter() - start) * 1e3

    for replace, label in (
        (False, "step, utilities only"),
        (True, f"step, 1 unit replaced in each of {len(cbp.groups)} layers"),
    ):
        cbp_step(replace)
        add("continual backprop", label, statistics.median(cbp_step(replace) for _ in range(reps)))
    # The hooks' own cost per training forward: call them on the activations of one forward.
    outputs: dict[nn.Module, torch.Tensor] = {}
    capture = [
        g.activation.register_forward_hook(lambda m, _i, out: outputs.__setitem__(m, out)) for g in cbp.groups
    ]
    net(x_train)
    for handle in capture:
        handle.remove()
    hooks = [(g.activation, g.activation._forward_hooks[h.id]) for g, h in zip(cbp.groups, cbp._handles)]

    def run_hooks() -> None:
        for module, hook in hooks:
            hook(module, (), outputs[module])

    add(
        "continual backprop",
        f"forward hooks, per training forward (batch {args.update_batch})",
        median_ms(run_hooks, reps, device),
    )
    cbp.remove_hooks()

    inj_net, inj_target = copy.deepcopy(net), copy.deepcopy(target)
    inj_opt = torch.optim.AdamW(inj_net.parameters(), lr=1e-4, eps=1.5e-4, weight_decay=0.1)
    injection = PlasticityInjection(InjectionConfig(at=(1,)), inj_net, [inj_opt], [inj_target])
    sync(device)
    start = time.perf_counter()
    injection.apply()
    sync(device)
    add("plasticity injection", "into the head, once (+ target)", (time.perf_counter() - start) * 1e3)

    why = {
        "reset": "re-draws head.fc's {fc:.1f} M weights with the RNG (bound by the RNG on a CPU) and copies "
        "them into the target",
        "shrink & perturb": "draws a fresh {n} with the RNG (RNG-bound), into a parameter-sized copy of θ "
        "(a fresh allocation, page faults on a CPU), then mixes θ and φ in place (and into the target)",
        "hare & tortoise": "touches every one of the {all:.1f} M parameters (lerp: read 2, write 1; reset: "
        "copy into hare and target): bound by memory bandwidth",
        "L2-init": "reads θ and θ0 and writes the gradient for all {all:.1f} M parameters: memory bandwidth",
        "ReDo": "a forward pass of the CNN on the {probe} probe frames (compute-bound, like the diagnostics)",
        "plasticity injection": "once per run: creates four head-sized tensors ({head:.1f} M each: the "
        "trainable copy drawn with the RNG, the anchor, and their twins in the target; fresh allocations "
        "dominate on a CPU)",
        "continual backprop": "the per-update utility reads every outgoing weight of the units (head.out: "
        "{head_out:.1f} M)",
        "diagnostics": "forward passes on the probe batch and SVDs of the feature matrices",
    }
    width = max(len(f"{sec} {row}") for sec, row, _ in rows) + 2
    print(f"\nper-intervention cost, median ms (goal <= {GOAL_MS:g} ms each)")
    print(f"  {'what':<{width}} {'ms':>10}")
    for section, row, ms in rows:
        flag = "  > goal" if ms > GOAL_MS and section != "reference" else ""
        print(f"  {section + ' ' + row:<{width}} {ms:10.1f}{flag}")
    slow = [(sec, row, ms) for sec, row, ms in rows if ms > GOAL_MS and sec != "reference"]
    print(f"\nover {GOAL_MS:g} ms: " + ("; ".join(f"{sec} {row}" for sec, row, _ in slow) or "none"))
    for section, row, ms in slow:
        reason = why.get(section, "")
        if section == "shrink & perturb":
            part = row.split(" ")[0]
            size = {"head": head, "all": params}.get(part, params - head)
            reason = reason.format(n=f"initialisation of {part} ({size / 1e6:.1f} M weights)")
        elif section == "ReDo" and row.startswith("recycling"):
            reason = (
                f"draws {drawn / 1e6:.1f} M fresh incoming weights with the RNG (a dormant head.fc unit's "
                f"row has {dense.shape[1]:,} of them), copies them into the online and target layers, "
                "zeroes the outgoing columns and the moments of those entries"
            )
        elif section == "continual backprop" and "replaced" in row:
            reason = "per replaced unit: fresh rows, zeroed columns and moments in every layer and the target"
        reason = reason.format(
            fc=dense.numel() / 1e6,
            all=params / 1e6,
            head=head / 1e6,
            probe=args.probe_batch,
            head_out=net.head.out.weight.numel() / 1e6,
        )
        print(f"  - {section} {row} ({ms:.0f} ms): {reason}")
    print(
        f"\ndiagnostics overhead = pass / (interval × update); pass {diag_ms:.0f}, update {update_ms:.0f} ms"
    )
    for interval in (100, 1000, 5000, 10000):
        print(f"  every {interval:>6} updates: {100 * diag_ms / (interval * update_ms):6.2f} %")
    print(f"  smallest interval within 2 %: {int(diag_ms / (0.02 * update_ms)) + 1} updates")


if __name__ == "__main__":
    main()
