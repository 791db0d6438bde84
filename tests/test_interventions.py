"""Reset, shrink & perturb, hare & tortoise, L2-init, plasticity injection and running them together."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from plasticrl.interventions import (
    HareTortoise,
    HareTortoiseConfig,
    InjectedHead,
    InjectionConfig,
    InterventionSet,
    L2Init,
    L2InitConfig,
    PlasticityInjection,
    Reset,
    ResetConfig,
    ShrinkPerturb,
    ShrinkPerturbConfig,
    apply_all,
)
from plasticrl.networks import MLP, fresh_state, set_initializer


def make_net(seed: int = 0, **kwargs) -> MLP:
    torch.manual_seed(seed)
    return MLP(4, [16, 16], 3, **kwargs)


def train_steps(net: nn.Module, opt: torch.optim.Optimizer, steps: int = 3, seed: int = 7) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 4, generator=g)
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()


def params_of(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


X = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))


# ---------------------------------------------------------------- reset


def test_reset_redraws_clears_state_and_trains():
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    train_steps(net, opt)
    head_before, encoder_before = params_of(net.head), params_of(net.encoder)
    encoder_state = {k: v.clone() for k, v in opt.state[net.encoder[0].linear.weight].items()}
    reset = Reset(ResetConfig(every=5), net, [opt])
    assert reset.maybe_apply(4) == {}
    assert same(params_of(net.head), head_before)
    assert reset.maybe_apply(5) == {"interventions/reset": 1.0}
    assert not same(params_of(net.head), head_before)
    assert same(params_of(net.encoder), encoder_before)
    # Moments of the reset entries are gone (zero and step 0 on the next step); the encoder's are kept.
    assert all(p not in opt.state for p in net.head.parameters())
    for key, value in encoder_state.items():
        assert torch.equal(opt.state[net.encoder[0].linear.weight][key], value)
    # The reset parameters are (still) in the optimizer and change after one step.
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in held for p in net.head.parameters())
    after_reset = params_of(net.head)
    train_steps(net, opt, steps=1)
    assert all(not torch.equal(a, b) for a, b in zip(after_reset, params_of(net.head)))
    assert float(opt.state[net.head.weight]["step"]) == 1.0


def test_reset_uses_each_modules_own_initializer():
    net = make_net()
    opt = torch.optim.Adam(net.parameters())

    def constant_init(module: nn.Module) -> None:
        nn.init.constant_(module.weight, 0.25)
        nn.init.constant_(module.bias, -0.5)

    set_initializer(net.head, constant_init, types=(nn.Linear,))
    with torch.no_grad():
        net.head.weight.add_(1.0)
    Reset(ResetConfig(every=1), net, [opt]).apply()
    assert torch.all(net.head.weight == 0.25) and torch.all(net.head.bias == -0.5)


def test_reset_target_sync_follows_fresh_weights_not_an_independent_draw():
    # peers mistake #1: a target re-drawn independently differs from the reset online network.
    net = make_net()
    target = copy.deepcopy(net)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.3)  # a lagging target
    encoder_target = params_of(target.encoder)
    opt = torch.optim.Adam(net.parameters())
    Reset(ResetConfig(every=1, modules=("head",)), net, [opt], targets=[target]).apply()
    assert same(params_of(target.head), params_of(net.head))
    assert same(params_of(target.encoder), encoder_target)

    kept = copy.deepcopy(target)
    Reset(ResetConfig(every=1, target_rule="keep"), net, [opt], targets=[target]).apply()
    assert same(params_of(target), params_of(kept))
    assert not same(params_of(target.head), params_of(net.head))


def test_reset_last_k_and_all():
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    before = params_of(net)
    Reset(ResetConfig(every=1, modules=("last:2",)), net, [opt]).apply()
    after = params_of(net)
    changed = [not torch.equal(a, b) for a, b in zip(before, after)]
    # encoder.0 (linear w, b), encoder.1 (linear w, b), head (w, b): the last two weight layers change.
    assert changed == [False, False, True, True, True, True]
    Reset(ResetConfig(every=1, modules=("all",)), net, [opt]).apply()
    assert all(not torch.equal(a, b) for a, b in zip(after[:2], params_of(net)[:2]))


# ---------------------------------------------------------------- shrink & perturb


def test_shrink_perturb_identity():
    net = make_net()
    opt = torch.optim.Adam(net.parameters())
    train_steps(net, opt)
    before = params_of(net)
    state = {k: v.clone() for k, v in opt.state[net.head.weight].items()}
    ShrinkPerturb(ShrinkPerturbConfig(every=1, shrink_factor=1.0, perturb_factor=0.0), net, [opt]).apply()
    assert same(params_of(net), before)
    for key, value in state.items():
        assert torch.equal(opt.state[net.head.weight][key], value)


def test_shrink_perturb_exact_formula_with_fixed_seed():
    net = make_net()
    theta = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(11)
    phi = fresh_state(net)
    alpha, sigma = 0.3, 0.6
    opt = torch.optim.Adam(net.parameters())
    sp = ShrinkPerturb(ShrinkPerturbConfig(every=1, shrink_factor=alpha, perturb_factor=sigma), net, [opt])
    torch.manual_seed(11)
    sp.apply()
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, alpha * theta[name] + sigma * phi[name], rtol=1e-6, atol=1e-7)


def test_shrink_perturb_zero_one_is_a_fresh_draw_from_the_initializer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 256))
    initial = net[0].weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    with torch.no_grad():
        net[0].weight.mul_(5.0).add_(2.0)  # far from its initial distribution
    ShrinkPerturb(ShrinkPerturbConfig(every=1, shrink_factor=0.0, perturb_factor=1.0), net, [opt]).apply()
    w = net[0].weight.detach()
    bound = 1 / 16  # PyTorch's Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert w.abs().max() <= bound
    assert abs(w.mean().item()) < 0.002
    assert abs(w.std().item() - bound / 3**0.5) < 0.001
    # A fresh draw, not a pull back to the initial weights (peers mistake #4).
    assert not torch.allclose(w, initial)


def test_shrink_perturb_bbf_interpolation_targets_and_optimizer():
    net = make_net()
    opt = torch.optim.Adam(net.parameters())
    train_steps(net, opt)
    target = copy.deepcopy(net)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.1)
    theta, theta_target = params_of(net.encoder), params_of(target.encoder)
    cfg = ShrinkPerturbConfig(every=1, shrink_factor=0.5, perturb_factor=0.5, modules=("encoder",))
    sp = ShrinkPerturb(cfg, net, [opt], targets=[target])
    torch.manual_seed(5)
    sp.apply()
    torch.manual_seed(5)
    phi = [p for p in fresh_state(net.encoder).values()]
    for new, old, f in zip(params_of(net.encoder), theta, phi):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * f)
    # 'same': the target gets α·θ' + σ·φ with the same φ.
    for new, old, f in zip(params_of(target.encoder), theta_target, phi):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * f)
    # BBF keeps the optimizer state of shrink-perturbed modules by default.
    assert net.encoder[0].linear.weight in opt.state
    ShrinkPerturb(
        ShrinkPerturbConfig(every=1, reset_optimizer=True, target_rule="sync"), net, [opt], [target]
    ).apply()
    assert not opt.state
    assert same(params_of(target), params_of(net))


def test_shrink_perturb_parameters_stay_in_the_optimizer_and_train():
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    train_steps(net, opt)
    held = [p for g in opt.param_groups for p in g["params"]]
    ShrinkPerturb(ShrinkPerturbConfig(every=1, shrink_factor=0.5, perturb_factor=0.5), net, [opt]).apply()
    # The same parameter objects, still held (in place), and they change after one optimizer step.
    assert all(any(p is q for q in held) for p in net.parameters())
    assert len(held) == len(list(net.parameters()))
    after = params_of(net)
    train_steps(net, opt, steps=1)
    assert all(not torch.equal(a, b) for a, b in zip(params_of(net), after))


def test_shrink_perturb_per_module_factors_and_buffers_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    net(torch.randn(16, 4))  # running statistics move away from their initial values
    running = net[1].running_mean.clone()
    first, last = params_of(net[0]), params_of(net[3])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    cfg = ShrinkPerturbConfig(every=1, shrink_factor=0.5, perturb_factor=0.0)
    ShrinkPerturb(cfg, net, [opt], modules=[net[0], net[1], net[3]], factors={net[3]: (1.0, 0.0)}).apply()
    for new, old in zip(params_of(net[0]), first):
        torch.testing.assert_close(new, 0.5 * old)
    assert same(params_of(net[3]), last)
    assert torch.equal(net[1].running_mean, running)


# ---------------------------------------------------------------- hare & tortoise


def test_hare_tortoise_ema_numerics_and_reset():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    m = 0.9
    ht = HareTortoise(HareTortoiseConfig(enabled=True, momentum=m, every=4), net, [opt])
    expected = {k: v.clone().double() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    for step in range(1, 4):
        opt.zero_grad()
        net(torch.randn(16, 4, generator=g)).pow(2).mean().backward()
        opt.step()
        assert ht.maybe_apply(step) == {}
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                expected[k] = m * expected[k] + (1 - m) * v.double()
            else:
                expected[k] = v.clone().double()
    for k, v in ht.tortoise.state_dict().items():
        torch.testing.assert_close(v.double(), expected[k], rtol=1e-6, atol=1e-7)
    assert not any(p.requires_grad for p in ht.tortoise.parameters())
    assert ht.acting_network is ht.tortoise
    # Update 4: EMA, then hare ← tortoise.
    assert ht.maybe_apply(4) == {"interventions/hare_tortoise": 1.0}
    for (k, h), t in zip(net.state_dict().items(), ht.tortoise.state_dict().values()):
        assert torch.equal(h, t), k
    # Optimizer state is kept by default (the authors' trainer), and the hare still trains.
    hare_before = params_of(net)
    opt.zero_grad()
    net(torch.randn(16, 4)).pow(2).mean().backward()
    opt.step()
    assert not same(params_of(net), hare_before)


def test_hare_tortoise_targets_optimizer_acting_and_checkpoint():
    net = make_net()
    opt = torch.optim.Adam(net.parameters())
    train_steps(net, opt)
    target = copy.deepcopy(net)
    cfg = HareTortoiseConfig(enabled=True, every=2, act_with="hare", reset_optimizer=True)
    ht = HareTortoise(cfg, net, [opt], targets=[target])
    assert ht.acting_network is net
    train_steps(net, opt, steps=1)
    ht.maybe_apply(1)
    train_steps(net, opt, steps=1)
    ht.maybe_apply(2)
    assert not opt.state
    assert same(params_of(target), params_of(net))
    other = make_net(5)
    restored = HareTortoise(cfg, other, [torch.optim.Adam(other.parameters())])
    restored.load_state_dict(ht.state_dict())
    assert same(params_of(restored.tortoise), params_of(ht.tortoise))


def test_hare_tortoise_disabled_does_nothing():
    net = make_net()
    ht = HareTortoise(HareTortoiseConfig(every=1), net, [torch.optim.Adam(net.parameters())])
    before = params_of(ht.tortoise)
    with torch.no_grad():
        net.head.weight.add_(1.0)
    assert ht.maybe_apply(1) == {}
    assert same(params_of(ht.tortoise), before)


def test_hare_tortoise_follows_plasticity_injection():
    """H&T + injection used to crash at the next update (the tortoise kept the old structure)."""
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    target = copy.deepcopy(net).requires_grad_(False)
    m = 0.9
    ht = HareTortoise(HareTortoiseConfig(enabled=True, momentum=m, every=4), net, [opt], [target])
    inj = PlasticityInjection(InjectionConfig(at=(2,)), net, [opt], [target])
    tortoise = ht.tortoise
    train_steps(net, opt, steps=1)
    InterventionSet([ht, inj]).maybe_apply(1)
    train_steps(net, opt, steps=1)
    ht.maybe_apply(2)
    tortoise_head, tortoise_out = tortoise.head, tortoise(X).detach()
    frozen_values = params_of(tortoise_head)
    inj.maybe_apply(2)
    # Right at the injection the tortoise gets the same structure, in place, and keeps its outputs.
    assert ht.tortoise is tortoise and ht.acting_network is tortoise
    assert isinstance(tortoise.head, InjectedHead) and tortoise.head.frozen is tortoise_head
    assert same(params_of(tortoise.head.frozen), frozen_values)
    assert [n for n, _ in tortoise.named_parameters()] == [n for n, _ in net.named_parameters()]
    assert same(params_of(tortoise.head.trainable), params_of(net.head.trainable))
    assert not any(p is q for p in tortoise.parameters() for q in net.parameters())
    assert not any(p.requires_grad for p in tortoise.parameters())
    torch.testing.assert_close(tortoise(X), tortoise_out, rtol=0, atol=1e-6)
    # The EMA then runs over every parameter of the new structure.
    train_steps(net, opt, steps=1)
    expected = {
        k: m * v.double() + (1 - m) * net.state_dict()[k].double() for k, v in tortoise.state_dict().items()
    }
    ht.maybe_apply(3)
    for k, v in tortoise.state_dict().items():
        torch.testing.assert_close(v.double(), expected[k], rtol=1e-6, atol=1e-7)
    assert not torch.equal(tortoise.head.trainable.weight, tortoise.head.anchor.weight)
    # Hare reset: hare == tortoise, the target follows (it got the injection too), the hare still trains.
    train_steps(net, opt, steps=1)
    assert ht.maybe_apply(4) == {"interventions/hare_tortoise": 1.0}
    assert same(params_of(net), params_of(tortoise)) and same(params_of(target), params_of(net))
    trainable = params_of(net.head.trainable)
    train_steps(net, opt, steps=1)
    assert not same(params_of(net.head.trainable), trainable)
    # Resume: the injection is re-created first, whatever the list order, then the tortoise loads.
    state = InterventionSet([ht, inj]).state_dict()
    net2 = make_net(seed=4)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-2)
    ht2 = HareTortoise(HareTortoiseConfig(enabled=True, momentum=m, every=4), net2, [opt2])
    InterventionSet([ht2, PlasticityInjection(InjectionConfig(at=(2,)), net2, [opt2])]).load_state_dict(state)
    assert same(params_of(ht2.tortoise), params_of(tortoise))
    fresh = make_net()
    plain = HareTortoise(HareTortoiseConfig(enabled=True), fresh, [torch.optim.Adam(fresh.parameters())])
    with pytest.raises(ValueError, match="load the injection's state first"):
        plain.load_state_dict(state["hare_tortoise"])


def test_hare_tortoise_follows_other_structural_changes_at_the_next_update():
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ht = HareTortoise(HareTortoiseConfig(enabled=True, momentum=0.5), net, [opt])
    train_steps(net, opt, steps=1)
    ht.maybe_apply(1)
    encoder = params_of(ht.tortoise.encoder)
    net.head = nn.Sequential(nn.Linear(16, 3), nn.Tanh())  # by hand: no notification
    new_head = params_of(net.head)
    ht.maybe_apply(2)  # found by comparing the structure; the new part starts as a copy of the hare's
    assert isinstance(ht.tortoise.head, nn.Sequential) and ht.tortoise.head is not net.head
    assert same(params_of(ht.tortoise.head), new_head)
    for t, e, h in zip(params_of(ht.tortoise.encoder), encoder, params_of(net.encoder)):
        torch.testing.assert_close(t, 0.5 * e + 0.5 * h)
    # A target that did not get the change is a clear error at a hare reset with target sync.
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    other = HareTortoise(
        HareTortoiseConfig(enabled=True, every=1), net, [opt], [copy.deepcopy(net)], name="b"
    )
    net.head = nn.Linear(16, 3)
    with pytest.raises(ValueError, match="pass the target to that intervention"):
        other.maybe_apply(1)


# ---------------------------------------------------------------- L2-init (Regen)


def test_l2_init_penalty_and_gradient():
    net = make_net()
    theta0 = params_of(net)
    reg = L2Init(L2InitConfig(enabled=True, coef=0.05), net)
    assert reg.penalty().item() == 0.0
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    net.zero_grad()
    value = reg.penalty()
    value.backward()
    expected = 0.05 * sum(((p.detach() - p0) ** 2).sum() for p, p0 in zip(net.parameters(), theta0))
    torch.testing.assert_close(value.detach(), expected)
    for p, p0 in zip(net.parameters(), theta0):
        # squared norm (Kumar et al. 2023), not ‖θ − θ₀‖ (peers mistake #5)
        torch.testing.assert_close(p.grad, 2 * 0.05 * (p.detach() - p0))
    assert L2Init(L2InitConfig(enabled=False), net).penalty().item() == 0.0
    assert reg.maybe_apply(1) == {}


def test_l2_init_modules_and_checkpoint():
    net = make_net()
    reg = L2Init(L2InitConfig(enabled=True, modules=("head",)), net)
    assert len(reg.params) == 2
    state = reg.state_dict()
    with torch.no_grad():
        net.head.weight.add_(1.0)
    other = L2Init(L2InitConfig(enabled=True, modules=("head",)), net)
    assert other.penalty().item() == 0.0
    other.load_state_dict(state)
    torch.testing.assert_close(other.penalty(), reg.penalty())


# ---------------------------------------------------------------- plasticity injection


def test_injection_keeps_outputs_trains_new_copy_and_freezes_the_rest():
    net = make_net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    train_steps(net, opt)
    old_head = net.head
    before = net(X).detach()
    inj = PlasticityInjection(InjectionConfig(at=(3,)), net, [opt])
    assert inj.maybe_apply(2) == {}
    assert inj.maybe_apply(3) == {"interventions/injection": 1.0}
    assert isinstance(net.head, InjectedHead) and net.head.frozen is old_head
    torch.testing.assert_close(net(X), before, rtol=0, atol=1e-6)
    head = net.head
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in held for p in head.trainable.parameters())
    assert all(id(p) not in held for p in head.anchor.parameters())
    assert opt.param_groups[-1]["weight_decay"] == 0.1 and opt.param_groups[-1]["lr"] == 1e-2
    assert not any(p.requires_grad for p in head.frozen.parameters())
    assert not any(p.requires_grad for p in head.anchor.parameters())
    assert all(p not in opt.state for p in old_head.parameters())
    frozen, anchor, trainable = params_of(head.frozen), params_of(head.anchor), params_of(head.trainable)
    train_steps(net, opt, steps=2)
    assert same(params_of(head.frozen), frozen)
    # peers mistake #2: the subtracted copy stays frozen while the added one learns.
    assert same(params_of(head.anchor), anchor)
    assert all(not torch.equal(a, b) for a, b in zip(params_of(head.trainable), trainable))
    assert not torch.allclose(net(X), before)


def test_injection_target_gets_the_same_structure_and_keeps_its_outputs():
    net = make_net()
    opt = torch.optim.Adam(net.parameters())
    target = copy.deepcopy(net).requires_grad_(False)
    with torch.no_grad():
        target.head.weight.add_(0.2)
    target_before = target(X)
    PlasticityInjection(InjectionConfig(at=(1,)), net, [opt], targets=[target]).apply()
    assert isinstance(target.head, InjectedHead)
    assert [n for n, _ in target.named_parameters()] == [n for n, _ in net.named_parameters()]
    torch.testing.assert_close(target(X), target_before, rtol=0, atol=1e-6)
    assert same(params_of(target.head.trainable), params_of(net.head.trainable))
    assert not any(p.requires_grad for p in target.parameters())
    # A target tracking by EMA keeps working over the same parameter list.
    with torch.no_grad():
        for t, o in zip(target.parameters(), net.parameters()):
            t.lerp_(o, 0.005)


def test_injection_checkpoint_resume():
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    inj = PlasticityInjection(InjectionConfig(at=(1,)), net, [opt])
    inj.apply()
    train_steps(net, opt, steps=2)
    checkpoint = {
        "net": copy.deepcopy(net.state_dict()),
        "opt": copy.deepcopy(opt.state_dict()),
        "interventions": InterventionSet([inj]).state_dict(),
    }
    net2 = make_net(seed=9)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-2)
    resumed = InterventionSet([PlasticityInjection(InjectionConfig(at=(1,)), net2, [opt2])])
    resumed.load_state_dict(checkpoint["interventions"])  # before the network and optimizer
    net2.load_state_dict(checkpoint["net"])
    opt2.load_state_dict(checkpoint["opt"])
    torch.testing.assert_close(net2(X), net(X))
    train_steps(net, opt, steps=1, seed=3)
    train_steps(net2, opt2, steps=1, seed=3)
    torch.testing.assert_close(net2(X), net(X))


def test_injection_twice_nests_and_still_trains():
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    inj = PlasticityInjection(InjectionConfig(at=(1, 2)), net, [opt])
    inj.maybe_apply(1)
    train_steps(net, opt, steps=1)
    before = net(X).detach()
    inj.maybe_apply(2)
    torch.testing.assert_close(net(X), before, rtol=0, atol=1e-6)
    assert isinstance(net.head.frozen, InjectedHead)
    assert not any(p.requires_grad for p in net.head.frozen.parameters())
    assert isinstance(net.head.trainable, nn.Linear)
    trainable = params_of(net.head.trainable)
    train_steps(net, opt, steps=1)
    assert not same(params_of(net.head.trainable), trainable)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
        lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=0.1),
    ],
    ids=["adamw", "sgd"],
)
def test_injection_frozen_head_never_moves_with_dense_zero_grad_and_weight_decay(make_optimizer):
    net = make_net()
    opt = make_optimizer(net.parameters())

    def dense_steps(steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad(set_to_none=False)  # leaves zero tensors, not None: decay would still apply
            net(X).pow(2).mean().backward()
            opt.step()

    dense_steps(3)
    old_head = net.head
    frozen_before = params_of(old_head)
    PlasticityInjection(InjectionConfig(at=(1,)), net, [opt]).apply()
    assert all(p.grad is None and not p.requires_grad for p in old_head.parameters())
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in held for p in old_head.parameters())
    anchor_before, trainable_before = params_of(net.head.anchor), params_of(net.head.trainable)
    dense_steps(5)
    assert same(params_of(old_head), frozen_before)
    assert same(params_of(net.head.anchor), anchor_before)
    assert all(not torch.equal(a, b) for a, b in zip(params_of(net.head.trainable), trainable_before))


def test_injection_fresh_parameters_keep_their_counterparts_groups():
    # BBF-style groups: weights decay, biases do not (and train at another learning rate).
    net = make_net()
    weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in net.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": weights, "weight_decay": 0.1}, {"params": biases, "weight_decay": 0.0, "lr": 3e-3}],
        lr=1e-2,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    train_steps(net, opt, steps=1)
    PlasticityInjection(InjectionConfig(at=(1,)), net, [opt]).apply()
    assert len(opt.param_groups) == 2
    decay, no_decay = opt.param_groups
    assert any(p is net.head.trainable.weight for p in decay["params"])
    assert any(p is net.head.trainable.bias for p in no_decay["params"])
    assert (decay["weight_decay"], no_decay["weight_decay"], no_decay["lr"]) == (0.1, 0.0, 3e-3)
    assert len(decay["params"]) == len(weights) and len(no_decay["params"]) == len(biases)
    scheduler.step()  # the scheduler still drives the groups the fresh parameters train in
    assert no_decay["lr"] == pytest.approx(1.5e-3)
    train_steps(net, opt, steps=1)
    assert net.head.trainable.bias in opt.state


def test_injection_bad_bindings():
    net = make_net()
    opt = torch.optim.Adam(net.parameters())
    with pytest.raises(ValueError, match="part of the network"):
        PlasticityInjection(InjectionConfig(at=(1,), modules=("all",)), net, [opt])
    net.head.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        PlasticityInjection(InjectionConfig(at=(1,)), net, [opt])


# ---------------------------------------------------------------- several at once


def test_intervention_set_applies_in_order_and_merges_logs():
    def run(order: list[str]) -> list[torch.Tensor]:
        net = make_net()
        opt = torch.optim.Adam(net.parameters())
        made = {
            "reset": Reset(ResetConfig(every=2), net, [opt]),
            "shrink_perturb": ShrinkPerturb(ShrinkPerturbConfig(every=2, shrink_factor=0.5), net, [opt]),
        }
        interventions = InterventionSet([made[k] for k in order])
        torch.manual_seed(0)
        assert interventions.maybe_apply(1) == {}
        logs = interventions.maybe_apply(2)
        assert logs == {"interventions/reset": 1.0, "interventions/shrink_perturb": 1.0}
        return params_of(net.head)

    assert not same(run(["reset", "shrink_perturb"]), run(["shrink_perturb", "reset"]))


def test_intervention_set_penalty_state_and_names():
    net = make_net()
    opt = torch.optim.Adam(net.parameters())
    reg = L2Init(L2InitConfig(enabled=True), net)
    reset = Reset(ResetConfig(every=3), net, [opt])
    interventions = InterventionSet([reset, reg])
    assert interventions.penalty().item() == 0.0
    with torch.no_grad():
        net.head.weight.add_(1.0)
    torch.testing.assert_close(interventions.penalty(), reg.penalty())
    assert InterventionSet([reset]).penalty() == 0.0
    state = interventions.state_dict()
    assert set(state) == {"reset", "l2_init"}
    interventions.load_state_dict(state)
    with pytest.raises(ValueError, match="checkpoint has interventions"):
        interventions.load_state_dict({"reset": {}})
    with pytest.raises(ValueError, match="unique"):
        InterventionSet([reset, Reset(ResetConfig(every=3), net, [opt])])
    two = InterventionSet([reset, Reset(ResetConfig(every=3), net, [opt], name="reset_encoder")])
    assert len(two) == 2
    with pytest.raises(ValueError, match="update_step"):
        apply_all([reset], -1)
