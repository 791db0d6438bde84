"""Cost of the plasticity diagnostics and of each intervention on a BBF-size network (prints figures).

Network: ``ImpalaCNN(width_scale=4)`` (channels 64-128-128, 15,488 latent features, dense 2048) with a
head of 18 × 51 outputs (C51 over 18 actions, as BBF's distributional head), a target copy and AdamW
(lr 1e-4, eps 1.5e-4, weight decay 0.1; BBF). Probe batch (256, 4, 84, 84) as dopamine's ReDo
statistics batch.

Reported, as the median of ``--repeats`` runs after one warm-up:

- one full diagnostics pass (:func:`plasticrl.interventions.measure` on the probe batch);
- one update (forward + backward + AdamW step at batch 32; cross-entropy on the C51 logits);
- each intervention applied once (ReDo with and without its scoring forward on the probe batch);
- the diagnostics' overhead at several intervals: pass time / (interval × update time). Goal ≤ 2 %.

    python benchmarks/intervention_benchmark.py                  # about 3 minutes on 2 CPU cores
    python benchmarks/intervention_benchmark.py --repeats 5 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from plasticrl.interventions import (
    CBPConfig,
    ContinualBackprop,
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
    measure,
)
from plasticrl.networks import ImpalaCNN

ACTIONS, ATOMS = 18, 51  # BBF: C51 with 51 atoms; 18 is the full Atari action set


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` calls, after one warm-up call."""
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe-batch", type=int, default=256)
    parser.add_argument("--update-batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    reps = args.repeats

    net, target, opt = build(device)
    probe = torch.rand(
        args.probe_batch, 4, 84, 84, device=device, generator=torch.Generator(device).manual_seed(2)
    )
    update = make_update(net, opt, args.update_batch, device)
    params = sum(p.numel() for p in net.parameters())
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, network parameters {params / 1e6:.1f} M"
    )
    head = sum(p.numel() for p in net.head.parameters()) / 1e6
    print(f"  (head: {head:.1f} M, mostly the 15488→2048 dense layer)")

    results: dict[str, float] = {}
    results["update (fwd+bwd+AdamW, batch 32)"] = update_ms = median_ms(update, reps, device)
    results[f"diagnostics pass (measure, probe {args.probe_batch})"] = diag_ms = median_ms(
        lambda: measure(net, probe), reps, device
    )

    cfg_every = dict(every=1)
    reset_head = Reset(ResetConfig(**cfg_every, modules=("head",)), net, [opt], [target])
    reset_out = Reset(ResetConfig(**cfg_every, modules=("head.out",)), net, [opt], [target])
    sp_encoder = ShrinkPerturb(
        ShrinkPerturbConfig(**cfg_every, shrink_factor=0.5, perturb_factor=0.5, modules=("encoder",)),
        net,
        [opt],
        [target],
    )
    sp_all = ShrinkPerturb(ShrinkPerturbConfig(**cfg_every, modules=("all",)), net, [opt], [target])
    results["reset head (fc 2048 + out) + target sync"] = median_ms(reset_head.apply, reps, device)
    results["reset last layer (head.out) + target sync"] = median_ms(reset_out.apply, reps, device)
    results["shrink & perturb encoder (BBF 0.5/0.5) + target"] = median_ms(sp_encoder.apply, reps, device)
    results["shrink & perturb whole network + target"] = median_ms(sp_all.apply, reps, device)

    ht = HareTortoise(HareTortoiseConfig(enabled=True, every=1), net, [opt], [target])
    results["hare & tortoise: EMA (every update)"] = median_ms(ht.update_tortoise, reps, device)
    results["hare & tortoise: hare reset + target sync"] = median_ms(ht.reset_hare, reps, device)

    l2 = L2Init(L2InitConfig(enabled=True), net)
    results["L2-init penalty, forward + backward"] = median_ms(lambda: l2.penalty().backward(), reps, device)
    net.zero_grad(set_to_none=True)

    redo = ReDo(ReDoConfig(**cfg_every), net, lambda: probe, [opt], [target])
    with torch.no_grad():  # make ~10% of the dense units and of one block's units dead, so there is work
        net.head.fc.bias[::10] = -1e3
        net.encoder.stage1.blocks[0].conv1.bias[::10] = -1e3
    masks = redo.dormant_masks(probe)
    dormant = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    results[f"ReDo scoring forward only (probe {args.probe_batch}, {dormant}/{total} dormant)"] = median_ms(
        lambda: redo.dormant_masks(probe), reps, device
    )

    def redo_recycle_only() -> None:
        with torch.no_grad():
            net.head.fc.bias[::10] = -1e3
            net.encoder.stage1.blocks[0].conv1.bias[::10] = -1e3
        redo.recycle_masks(masks)

    results["ReDo recycle given the masks (weights + moments + target)"] = median_ms(
        redo_recycle_only, reps, device
    )
    results["ReDo full step (scoring forward + recycle)"] = median_ms(
        lambda: redo.recycle(probe), reps, device
    )

    cbp = ContinualBackprop(CBPConfig(enabled=True, maturity_threshold=0), net, probe[:2], [opt], [target])
    x_train = probe[: args.update_batch]

    def cbp_step() -> float:
        net(x_train)  # a training forward (with gradients) feeds the utilities; not timed
        sync(device)
        start = time.perf_counter()
        cbp.generate_and_test()
        sync(device)
        return (time.perf_counter() - start) * 1e3

    cbp_step()
    results["continual backprop, per update (excl. the forward)"] = statistics.median(
        cbp_step() for _ in range(reps)
    )
    cbp.remove_hooks()

    inj_net, inj_target = copy.deepcopy(net), copy.deepcopy(target)
    inj_opt = torch.optim.AdamW(inj_net.parameters(), lr=1e-4, eps=1.5e-4, weight_decay=0.1)
    injection = PlasticityInjection(InjectionConfig(at=(1,)), inj_net, [inj_opt], [inj_target])
    sync(device)
    start = time.perf_counter()
    injection.apply()
    sync(device)
    results["plasticity injection into head (once) + target"] = (time.perf_counter() - start) * 1e3

    width = max(len(k) for k in results) + 2
    print("\nmedian ms")
    for key, value in results.items():
        print(f"  {key:<{width}} {value:10.1f}")
    print(
        f"\ndiagnostics overhead = pass / (interval × update); pass {diag_ms:.0f}, update {update_ms:.0f} ms"
    )
    for interval in (100, 1000, 5000, 10000):
        print(f"  every {interval:>6} updates: {100 * diag_ms / (interval * update_ms):6.2f} %")
    print(f"  smallest interval within 2 %: {int(diag_ms / (0.02 * update_ms)) + 1} updates")


if __name__ == "__main__":
    main()
