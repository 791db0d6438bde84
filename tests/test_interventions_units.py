"""Unit-level interventions: layer pairing, ReDo and continual backprop."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from plasticrl.interventions import (
    CBPConfig,
    ContinualBackprop,
    InjectedHead,
    InjectionConfig,
    PlasticityInjection,
    ReDo,
    ReDoConfig,
    find_unit_groups,
)
from plasticrl.networks import (
    ImpalaCNN,
    NatureCNN,
    OrthogonalInit,
    XavierUniformInit,
    fresh_state,
    set_initializer,
)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def conv_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 6),
        nn.ReLU(),
        nn.Linear(6, 2),
    )


def adam_trained(net: nn.Module, x: torch.Tensor, steps: int = 3) -> torch.optim.Adam:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    return opt


def kill(layer: nn.Module, units: list[int]) -> None:
    """Make units dead: a large negative bias keeps their ReLU at zero for these inputs."""
    with torch.no_grad():
        layer.bias[units] = -100.0


def expected_mask(h: torch.Tensor, tau: float) -> torch.Tensor:
    dims = [d for d in range(h.dim()) if d != 1]
    score = h.abs().mean(dim=dims)
    return score / (score.mean() + 1e-9) <= tau


X = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
XC = torch.randn(32, 2, 8, 8, generator=torch.Generator().manual_seed(2))


# ---------------------------------------------------------------- pairing


def test_groups_of_mlp_conv_flatten_and_residual_networks():
    groups, skipped = find_unit_groups(mlp(), X)
    assert [(g.name, g.incoming, [o.layer for o in g.outgoing]) for g in groups] == [
        ("1", groups[0].incoming, [groups[0].outgoing[0].layer]),
        ("3", groups[1].incoming, [groups[1].outgoing[0].layer]),
    ]
    net = conv_net()
    groups, _ = find_unit_groups(net, XC)
    assert [(g.incoming, [(o.layer, o.columns_per_unit) for o in g.outgoing]) for g in groups] == [
        (net[0], [(net[2], 1)]),
        (net[2], [(net[5], 16)]),  # conv → flatten → linear: 4×4 columns per channel
        (net[5], [(net[7], 1)]),
    ]
    # Residual network: the inner unit of each block and the dense layer; the rest is skipped with a reason.
    impala = ImpalaCNN(width_scale=1, num_outputs=3, image_size=20, hidden_dim=32)
    groups, skipped = find_unit_groups(impala, torch.rand(2, 4, 20, 20))
    assert [g.name for g in groups] == [
        f"encoder.stage{s}.blocks.{b}.act2" for s in range(3) for b in range(2)
    ] + ["head.act"]
    assert "residual" in skipped["encoder.stage0.blocks.0.act1"]
    assert "not the output of a Linear/Conv2d" in skipped["encoder.act"]


def test_groups_skip_output_activation_crelu_and_shared_modules():
    torch.manual_seed(0)
    out_act = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Tanh())
    groups, skipped = find_unit_groups(out_act, X)
    assert [g.name for g in groups] == ["1"] and "no Linear/Conv2d layer reads" in skipped["3"]

    from plasticrl.networks import CReLU

    crelu = nn.Sequential(nn.Linear(4, 8), CReLU(), nn.Linear(16, 2))
    groups, skipped = find_unit_groups(crelu, X)
    assert not groups and "number of features" in skipped["1"]

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.act(self.a(self.act(self.a(x)))))

    groups, skipped = find_unit_groups(Shared(), X)
    assert not groups and "more than once" in skipped["act"]

    class ReturnsFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            features = self.act(self.a(x))
            return self.b(features), features  # the features leave the model: not output-neutral

    groups, skipped = find_unit_groups(ReturnsFeatures(), X)
    assert not groups and "also used outside" in skipped["act"]


# ---------------------------------------------------------------- ReDo


def test_redo_recycles_exactly_the_dormant_units_of_an_mlp():
    net = mlp()
    const = 0.3
    drawn = copy.deepcopy(net[0].state_dict())
    set_initializer(net[0], lambda m: (nn.init.constant_(m.weight, const), nn.init.constant_(m.bias, 1.0)))
    net[0].load_state_dict(drawn)  # keep the random weights; only fresh draws use the constant initialiser
    kill(net[0], [2, 5, 7])
    kill(net[2], [1, 9])
    opt = adam_trained(net, X)
    for state in opt.state.values():  # dead units get no gradient: make every moment non-zero first
        state["exp_avg"].uniform_(0.1, 1.0)
        state["exp_avg_sq"].uniform_(0.1, 1.0)
    with torch.no_grad():
        h1 = net[1](net[0](X))
        h2 = net[3](net[2](h1))
    mask1, mask2 = expected_mask(h1, 0.1), expected_mask(h2, 0.1)
    assert mask1[[2, 5, 7]].all() and mask2[[1, 9]].all()
    # Layer 1's dormant units are all dead; layer 2 also has τ-dormant units that are still (barely) active.
    assert torch.equal(mask1, (h1 == 0).all(0))
    assert (mask2 & (h2 != 0).any(0)).any()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    moments = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in net.parameters()}
    out_before = net(X).detach()

    redo = ReDo(ReDoConfig(every=10), net, lambda: X, [opt])
    assert redo.maybe_apply(9) == {}
    logs = redo.maybe_apply(10)
    n = int(mask1.sum() + mask2.sum())
    assert logs["interventions/redo"] == 1.0 and logs["interventions/redo/recycled_units"] == n
    assert logs["interventions/redo/recycled_fraction"] == pytest.approx(n / 32)

    # Zero outgoing weights make the recycled units output-neutral from now on; the output changes only
    # by the small contribution the τ-dormant units still made before (exactly that, nothing else).
    removed = h2[:, mask2] @ before["4.weight"][:, mask2].T
    torch.testing.assert_close(net(X), out_before - removed, rtol=0, atol=1e-6)
    # Incoming rows: from the layer's own initialiser (the constant), bias zero; others untouched.
    assert torch.all(net[0].weight[mask1] == const) and torch.all(net[0].bias[mask1] == 0)
    assert torch.equal(net[0].weight[~mask1], before["0.weight"][~mask1])
    assert torch.equal(net[0].bias[~mask1], before["0.bias"][~mask1])
    assert torch.all(net[2].bias[mask2] == 0) and not torch.equal(
        net[2].weight[mask2], before["2.weight"][mask2]
    )
    # Outgoing columns zero; the output layer's rows are never recycled.
    assert torch.all(net[2].weight[~mask2][:, mask1] == 0)
    assert torch.all(net[4].weight[:, mask2] == 0)
    assert torch.equal(net[4].weight[:, ~mask2], before["4.weight"][:, ~mask2])
    assert torch.equal(net[4].bias, before["4.bias"])

    # Exactly the right Adam moments are zero (peers mistake #3); all others untouched, steps kept.
    def check(param, index, dim):
        for key, value in opt.state[param].items():
            old = moments[id(param)][key]
            if key == "step":
                assert torch.equal(value, old)
                continue
            zeroed = torch.zeros(param.shape[dim], dtype=torch.bool)
            zeroed[index] = True
            sel = (slice(None),) * dim + (zeroed,)
            rest = (slice(None),) * dim + (~zeroed,)
            assert torch.all(value[sel] == 0) and torch.equal(value[rest], old[rest])
            assert torch.all(old[sel] != 0)

    check(net[0].weight, mask1, 0)
    check(net[0].bias, mask1, 0)
    check(net[4].weight, mask2, 1)
    state = opt.state[net[2].weight]["exp_avg"]
    assert torch.all(state[mask2] == 0) and torch.all(state[:, mask1] == 0)
    assert torch.equal(state[~mask2][:, ~mask1], moments[id(net[2].weight)]["exp_avg"][~mask2][:, ~mask1])


def test_redo_conv_flatten_linear_boundary_and_targets():
    net = conv_net()
    kill(net[0], [1])
    kill(net[2], [3])
    opt = adam_trained(net, XC)
    target = copy.deepcopy(net)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.01 * torch.randn_like(p))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    moments = {
        (i, k): opt.state[p][k].clone()
        for i, p in enumerate(net.parameters())
        for k in ("exp_avg", "exp_avg_sq")
    }
    out, target_out = net(XC).detach(), target(XC).detach()
    with torch.no_grad():
        h1 = net[1](net[0](XC))
        h2 = net[3](net[2](h1))
        h3 = net[6](net[5](net[4](h2)))
    # τ = 0: only units with zero activity on the batch (dead) are recycled, so outputs stay exactly the same.
    masks = [expected_mask(h, 0.0) for h in (h1, h2, h3)]
    assert masks[0][1] and masks[1][3]

    ReDo(ReDoConfig(every=1, threshold=0.0), net, lambda: XC, [opt], targets=[target]).recycle(XC)
    torch.testing.assert_close(net(XC), out, rtol=0, atol=1e-6)
    torch.testing.assert_close(target(XC), target_out, rtol=0, atol=1e-6)
    assert torch.all(net[2].weight[:, masks[0]] == 0)
    columns = masks[1].repeat_interleave(16)  # channel c ↔ columns c·16 … c·16+15
    assert torch.all(net[5].weight[:, columns] == 0)
    kept_cols = ~columns
    assert torch.equal(net[5].weight[~masks[2]][:, kept_cols], before["5.weight"][~masks[2]][:, kept_cols])
    assert torch.all(opt.state[net[5].weight]["exp_avg"][:, columns] == 0)
    assert torch.all(opt.state[net[2].weight]["exp_avg_sq"][masks[1]] == 0)
    assert not torch.equal(net[2].weight[masks[1]], before["2.weight"][masks[1]])
    # 'same': the target's recycled rows are the online network's fresh rows; its other rows keep their lag.
    assert torch.equal(target[2].weight[masks[1]], net[2].weight[masks[1]])
    assert not torch.equal(target[2].weight[~masks[1]], net[2].weight[~masks[1]])
    assert torch.all(target[5].weight[:, columns] == 0)
    # The moments of every entry that was not recycled are left exactly as they were.
    kept = {  # parameter index in net.parameters() → mask of the entries that must not change
        0: ~masks[0][:, None, None, None].expand_as(net[0].weight),
        1: ~masks[0],
        2: (~masks[1][:, None, None, None] & ~masks[0][None, :, None, None]).expand_as(net[2].weight),
        3: ~masks[1],
        4: (~masks[2][:, None] & kept_cols[None, :]).expand_as(net[5].weight),
        5: ~masks[2],
        6: ~masks[2][None, :].expand_as(net[7].weight),
        7: torch.ones_like(net[7].bias, dtype=torch.bool),
    }
    params = list(net.parameters())
    for (i, key), value in moments.items():
        state = opt.state[params[i]][key]
        assert torch.equal(state[kept[i]], value[kept[i]]), (i, key)
        assert torch.all(state[~kept[i]] == 0), (i, key)


def test_redo_on_residual_network_keeps_outputs():
    torch.manual_seed(0)
    net = ImpalaCNN(width_scale=1, num_outputs=3, image_size=20, hidden_dim=32)
    x = torch.rand(16, 4, 20, 20)
    kill(net.encoder.stage1.blocks[0].conv1, [0, 4])
    kill(net.head.fc, [3])
    opt = adam_trained(net, x, steps=1)
    out = net(x).detach()
    redo = ReDo(ReDoConfig(every=1, threshold=0.0), net, lambda: x, [opt])
    logs = redo.recycle(x)
    assert logs["recycled_units"] >= 3
    torch.testing.assert_close(net(x), out, rtol=0, atol=1e-6)
    assert torch.all(net.encoder.stage1.blocks[0].conv2.weight[:, [0, 4]] == 0)
    assert torch.all(net.head.out.weight[:, 3] == 0)


def test_redo_batchnorm_entries_modules_and_overlap():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)
    )
    net(torch.randn(32, 4))  # move the running statistics
    net.eval()
    with torch.no_grad():
        net[1].bias[[0, 6]] = -100.0
        net[1].weight[[0, 6]] = 0.5
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    out = net(X).detach()
    redo = ReDo(ReDoConfig(every=1, threshold=0.0, modules=("0",)), net, lambda: X, [opt])
    assert [g.name for g in redo.groups] == ["2"]
    redo.recycle(X)
    torch.testing.assert_close(net(X), out, rtol=0, atol=1e-6)
    assert torch.all(net[1].weight[[0, 6]] == 1) and torch.all(net[1].bias[[0, 6]] == 0)
    assert torch.all(net[1].running_mean[[0, 6]] == 0) and torch.all(net[1].running_var[[0, 6]] == 1)
    assert not net.training
    # Units dormant at the previous recycling step and dormant again now.
    with torch.no_grad():
        net[1].bias[[0]] = -100.0
        net[0].bias[[6]] = 0.0
    logs = redo.recycle(X)
    masks = redo.previous_masks["2"]
    assert logs["dormant_overlap"] == pytest.approx(1 / 2) and masks[0]


def test_redo_without_recyclable_layers_is_an_error():
    net = nn.Sequential(nn.Linear(4, 2), nn.Tanh())
    with pytest.raises(ValueError, match="no recyclable hidden layer.*1: no Linear/Conv2d"):
        ReDo(ReDoConfig(every=1), net, lambda: X, [torch.optim.Adam(net.parameters())])
    with pytest.raises(TypeError, match="batch_fn"):
        ReDo(ReDoConfig(every=1), mlp(), X, [torch.optim.Adam(mlp().parameters())])


def test_redo_on_nature_cnn_via_config_names():
    torch.manual_seed(0)
    net = NatureCNN(4, 3, image_size=44)
    x = torch.rand(8, 4, 44, 44)
    opt = torch.optim.Adam(net.parameters())
    redo = ReDo(ReDoConfig(every=1, threshold=0.0, modules=("encoder",)), net, lambda: x, [opt])
    assert [g.name for g in redo.groups] == ["encoder.act1", "encoder.act2", "encoder.act3", "encoder.act4"]
    kill(net.encoder.fc, [0, 1, 2])
    out = net(x).detach()
    assert redo.maybe_apply(1)["interventions/redo/recycled_units"] >= 3
    torch.testing.assert_close(net(x), out, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- continual backprop


def tiny(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_cbp_utility_numerics_with_bias_correction():
    net = tiny()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    cbp = ContinualBackprop(
        CBPConfig(enabled=True, replacement_rate=0.0, decay_rate=0.5), net, X[:, :3], [opt]
    )
    g = torch.Generator().manual_seed(4)
    utility = torch.zeros(4)
    for step in range(1, 5):
        x = torch.randn(8, 3, generator=g)
        opt.zero_grad()
        h = net[1](net[0](x))
        net[2](h).pow(2).mean().backward()
        opt.step()
        contribution = h.detach().abs().mean(0) * net[2].weight.detach().abs().mean(0)
        utility = 0.5 * utility + 0.5 * contribution
        assert cbp.maybe_apply(step) == {}
        torch.testing.assert_close(cbp.utility["1"], utility)
        assert torch.all(cbp.age["1"] == step)
    corrected = utility / (1 - 0.5**4)
    torch.testing.assert_close(cbp.utility["1"] / (1 - 0.5 ** cbp.age["1"].double()).float(), corrected)


def test_cbp_replaces_the_lowest_utility_mature_unit():
    net = tiny()
    opt = adam_trained(net, X[:, :3])
    with torch.no_grad():
        net[2].weight[:, 2] = 0.0  # unit 2 contributes nothing: the lowest utility
    cfg = CBPConfig(enabled=True, replacement_rate=0.25, decay_rate=0.9, maturity_threshold=2)
    cbp = ContinualBackprop(cfg, net, X[:, :3], [opt])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    logs = {}
    for step in range(1, 4):
        out = net(X[:, :3]).detach()  # a forward with gradients enabled, as in training
        logs = cbp.maybe_apply(step)
        if step < 3:
            assert logs == {}  # no unit is mature yet (age must exceed 2)
    assert logs == {"interventions/cbp": 1.0, "interventions/cbp/replaced_units": 1.0}
    torch.testing.assert_close(net(X[:, :3]), out, rtol=0, atol=1e-6)
    assert not torch.equal(net[0].weight[2], before["0.weight"][2]) and net[0].bias[2] == 0
    assert torch.equal(net[0].weight[[0, 1, 3]], before["0.weight"][[0, 1, 3]])
    assert torch.all(net[2].weight[:, 2] == 0)
    assert cbp.age["1"].tolist() == [3, 3, 0, 3] and cbp.utility["1"][2] == 0
    assert torch.all(opt.state[net[0].weight]["exp_avg"][2] == 0)
    assert torch.all(opt.state[net[0].weight]["exp_avg"][[0, 1, 3]] != 0)
    assert cbp.accumulated["1"] == pytest.approx(0.0)


def test_cbp_ignores_no_grad_forwards_and_checkpoints():
    net = tiny()
    opt = torch.optim.Adam(net.parameters())
    cfg = CBPConfig(enabled=True, maturity_threshold=0)
    cbp = ContinualBackprop(cfg, net, X[:, :3], [opt], targets=[copy.deepcopy(net)])
    with torch.no_grad():
        net(X[:, :3])
    assert cbp.maybe_apply(1) == {} and torch.all(cbp.age["1"] == 0)
    net(X[:, :3])
    cbp.maybe_apply(2)
    assert torch.all(cbp.age["1"] == 1)
    state = cbp.state_dict()
    other = ContinualBackprop(cfg, net, X[:, :3], [opt])
    other.load_state_dict(state)
    assert torch.equal(other.utility["1"], cbp.utility["1"]) and torch.equal(other.age["1"], cbp.age["1"])
    cbp.remove_hooks()
    other.remove_hooks()
    net(X[:, :3])
    assert cbp.maybe_apply(3) == {}


@pytest.mark.parametrize("rule", ["sync", "keep"])
def test_redo_target_rules_sync_and_keep(rule):
    net = mlp()
    kill(net[0], [3])
    opt = torch.optim.Adam(net.parameters())
    target = copy.deepcopy(net)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.05)
    target_before = copy.deepcopy(target.state_dict())
    redo = ReDo(ReDoConfig(every=1, threshold=0.0, target_rule=rule), net, lambda: X, [opt], [target])
    second_layer_recycles = bool(redo.dormant_masks(X)["3"].any())
    redo.recycle(X)
    if rule == "sync":  # the layers around recycled units are copied whole
        for key in ("0.weight", "0.bias", "2.weight", "2.bias"):
            assert torch.equal(target.state_dict()[key], net.state_dict()[key])
        assert torch.equal(target[4].weight, net[4].weight) == second_layer_recycles
    else:
        for key, value in target.state_dict().items():
            assert torch.equal(value, target_before[key])


def test_cbp_target_same_gets_the_same_fresh_weights():
    net = tiny()
    opt = adam_trained(net, X[:, :3])
    target = copy.deepcopy(net)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.05)
    cfg = CBPConfig(enabled=True, replacement_rate=0.5, maturity_threshold=0)
    cbp = ContinualBackprop(cfg, net, X[:, :3], [opt], [target])
    net(X[:, :3])
    assert cbp.maybe_apply(1)["interventions/cbp/replaced_units"] == 2
    replaced = (cbp.age["1"] == 0).nonzero().flatten()
    assert torch.equal(target[0].weight[replaced], net[0].weight[replaced])
    assert torch.all(target[2].weight[:, replaced] == 0)
    kept = (cbp.age["1"] == 1).nonzero().flatten()
    assert not torch.equal(target[0].weight[kept], net[0].weight[kept])


# ---------------------------------------------------------------- optimizers of the layers reading the units


class BodyHead(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.extra = nn.Linear(1, 1)  # trained by its own optimizer, untouched by ReDo on "body"

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("kind", ["redo", "cbp"])
def test_unit_interventions_need_the_optimizer_of_the_layer_reading_the_units(kind):
    # peers mistake #3: the head reads the body's units; without its optimizer its moments go stale.
    net = BodyHead()
    kill(net.body[0], [1, 4, 6])
    opt_body = torch.optim.Adam(net.body.parameters())
    opt_head = torch.optim.Adam(net.head.parameters())
    opt_extra = torch.optim.Adam(net.extra.parameters())
    opt_foreign = torch.optim.Adam(BodyHead(1).parameters())

    def bind(optimizers):
        if kind == "redo":
            cfg = ReDoConfig(every=1, threshold=0.0, modules=("body",))
            return ReDo(cfg, net, lambda: X, optimizers)
        cfg = CBPConfig(enabled=True, replacement_rate=0.4, maturity_threshold=0, modules=("body",))
        return ContinualBackprop(cfg, net, X, optimizers)

    with pytest.raises(ValueError, match=r"head\.weight is not held.*reads unit group 'body\.1'"):
        bind([opt_body])
    with pytest.raises(ValueError, match="holds none of the parameters of the bound network"):
        bind([opt_body, opt_head, opt_foreign])
    intervention = bind([opt_body, opt_head, opt_extra])  # every optimizer of the network is accepted

    net(X).pow(2).mean().backward()
    opt_body.step()
    opt_head.step()
    for opt in (opt_body, opt_head):
        for state in opt.state.values():
            state["exp_avg"].fill_(1.0)
            state["exp_avg_sq"].fill_(1.0)
    if kind == "redo":
        intervention.maybe_apply(1)
        units = torch.tensor([1, 4, 6])
    else:
        net(X)  # the training forward CBP reads
        intervention.maybe_apply(1)
        intervention.remove_hooks()
        units = (intervention.age["body.1"] == 0).nonzero().flatten()
        assert units.numel() == 3
    rest = torch.ones(8, dtype=torch.bool)
    rest[units] = False
    assert torch.all(net.head.weight[:, units] == 0)
    for key in ("exp_avg", "exp_avg_sq"):
        moments = opt_head.state[net.head.weight][key]
        assert torch.all(moments[:, units] == 0) and torch.all(moments[:, rest] == 1)
        assert torch.all(opt_body.state[net.body[0].weight][key][units] == 0)


# ---------------------------------------------------------------- continual backprop bias correction


def _cbp_replacing(net: nn.Module, x: torch.Tensor, rate: float, *, correction: bool = True, targets=()):
    """CBP after three identical training forwards on ``x`` (no optimizer step): the running mean of a
    constant activation is, bias-corrected, exactly that activation's mean."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    cfg = CBPConfig(
        enabled=True, replacement_rate=rate, decay_rate=0.5, maturity_threshold=2, bias_correction=correction
    )
    cbp = ContinualBackprop(cfg, net, x, [opt], targets)
    for step in (1, 2, 3):
        net(x)
        logs = cbp.maybe_apply(step)
    cbp.remove_hooks()
    return cbp, logs


def test_cbp_bias_correction_keeps_the_mean_output():
    net = tiny()
    with torch.no_grad():
        net[0].bias.add_(0.5)  # every unit active on some inputs
        net[2].weight[:, 1] *= 0.01  # unit 1: the lowest utility, yet a non-zero contribution
    x = X[:, :3]
    target = copy.deepcopy(net)
    with torch.no_grad():
        target[2].weight.add_(0.1)  # a lagging target: corrected with its own outgoing weights
    with torch.no_grad():
        h = net[1](net[0](x))
        out, target_out = net(x), target(x)
    w, w_target, bias = net[2].weight[:, 1].clone(), target[2].weight[:, 1].clone(), net[2].bias.clone()
    assert h[:, 1].abs().sum() > 0

    cbp, logs = _cbp_replacing(net, x, 0.25, targets=[target])
    assert logs["interventions/cbp/replaced_units"] == 1 and cbp.age["1"].tolist() == [3, 0, 3, 3]
    mean = h[:, 1].mean()
    # gnt.py: b ← b + w_out · m̂ before w_out ← 0; on each input the output changes by w_out·(m̂ − h).
    torch.testing.assert_close(net[2].bias, bias + w * mean)
    torch.testing.assert_close(net(x), out + (mean - h[:, 1:2]) * w, rtol=0, atol=1e-5)
    torch.testing.assert_close(net(x).mean(0), out.mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(target(x), target_out + (mean - h[:, 1:2]) * w_target, rtol=0, atol=1e-5)
    assert torch.all(cbp.mean_activation["1"][1] == 0) and torch.all(cbp.mean_activation["1"][[0, 2, 3]] != 0)
    assert set(cbp.state_dict()) == {"utility", "age", "mean_activation", "accumulated"}

    plain = tiny()
    with torch.no_grad():
        plain[0].bias.add_(0.5)
        plain[2].weight[:, 1] *= 0.01
        plain_out = plain(x)
    bias = plain[2].bias.clone()
    _cbp_replacing(plain, x, 0.25, correction=False)
    assert torch.equal(plain[2].bias, bias)
    torch.testing.assert_close(plain(x), plain_out - h[:, 1:2] * w, rtol=0, atol=1e-5)


def test_cbp_bias_correction_for_conv_and_flatten_readers():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)
    )
    with torch.no_grad():
        net[0].bias.add_(0.2)
        net[2].bias.add_(0.2)
        h1 = net[1](net[0](XC))
        h3 = net[3](net[2](h1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cbp, logs = _cbp_replacing(net, XC, 0.34)
    assert logs["interventions/cbp/replaced_units"] == 2
    (c1,) = (cbp.age["1"] == 0).nonzero().flatten().tolist()
    (c3,) = (cbp.age["3"] == 0).nonzero().flatten().tolist()
    # Conv reader: the channel's mean over samples and positions times the kernel's sum per output channel.
    conv_shift = before["2.weight"][:, c1].sum(dim=(1, 2)) * h1[:, c1].mean()
    expected = before["2.bias"] + conv_shift
    expected[c3] = 0.0  # conv2 also writes group "3": its replaced unit's own bias is zeroed
    torch.testing.assert_close(net[2].bias, expected)
    # Flattening Linear reader: every column (channel c3 at one position) with its own mean.
    columns = before["5.weight"][:, c3 * 16 : (c3 + 1) * 16]
    torch.testing.assert_close(net[5].bias, before["5.bias"] + columns @ h3[:, c3].flatten(1).mean(0))
    assert cbp.mean_activation["3"].shape == (3, 16) and cbp.mean_activation["1"].shape == (4, 1)


# ---------------------------------------------------------------- continual backprop: bias correction by age


def test_cbp_bias_correction_by_age_changes_which_unit_is_replaced():
    """û = u / (1 − η^age): a young unit's running utility is still small, its corrected one is not.

    Unit 0 is young (age 1), unit 1 old (age 50) with half unit 0's contribution: by the raw utility unit 0
    would be replaced, by the corrected one unit 1 is. The mean activation moved into the next layer's bias
    (``bias_correction=True``) is corrected with the replaced unit's own age too.
    """
    net = tiny()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]))  # every unit outputs 1 on every input
        net[2].weight.copy_(torch.tensor([[1.0, 0.5, 4.0, 4.0], [1.0, 0.5, 4.0, 4.0]]))
    x = X[:, :3]
    eta = 0.9
    cfg = CBPConfig(
        enabled=True, replacement_rate=0.25, decay_rate=eta, maturity_threshold=1, bias_correction=True
    )
    cbp = ContinualBackprop(cfg, net, x, [torch.optim.SGD(net.parameters(), lr=0.1)])
    contribution = torch.tensor([1.0, 0.5, 4.0, 4.0])  # E|h| · mean|w_out| per unit
    age = torch.tensor([1, 50, 50, 50])
    utility = contribution * (1 - eta ** age.double()).float()  # as after `age` updates at this contribution
    mean = 1 - eta ** age.double()  # running mean of h = 1, uncorrected
    cbp.load_state_dict(
        {
            "utility": {"1": utility.clone()},
            "age": {"1": age.clone()},
            "mean_activation": {"1": mean.float()[:, None].clone()},
            "accumulated": {"1": 0.0},
        }
    )
    new_utility = eta * utility + (1 - eta) * contribution
    new_age = age + 1
    corrected = new_utility / (1 - eta ** new_age.double()).float()
    # The test separates the two rules: the raw minimum is unit 0, the corrected minimum unit 1.
    assert int(new_utility.argmin()) == 0 and int(corrected.argmin()) == 1
    bias, w_out = net[2].bias.clone(), net[2].weight[:, 1].clone()
    net(x)
    logs = cbp.maybe_apply(1)
    assert logs["interventions/cbp/replaced_units"] == 1
    assert cbp.age["1"].tolist() == [2, 0, 51, 51]
    assert torch.all(net[2].weight[:, 1] == 0) and torch.all(net[2].weight[:, 0] == 1)
    # b ← b + w_out · m̂ with m̂ = m / (1 − η^age) = 1 exactly for the constant activation.
    torch.testing.assert_close(net[2].bias, bias + w_out * 1.0)


# ---------------------------------------------------------------- unit interventions after injection


def body_head(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            body=nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU()),
            head=nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)),
        )
    )


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: int = 2) -> None:
    for _ in range(steps):
        opt.zero_grad()
        net(X).pow(2).mean().backward()
        opt.step()


def test_redo_after_injection_recycles_into_the_trainable_copy():
    net = body_head()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    target = copy.deepcopy(net).requires_grad_(False)
    redo = ReDo(ReDoConfig(every=1, threshold=0.0), net, lambda: X, [opt], targets=[target])
    PlasticityInjection(InjectionConfig(at=(1,)), net, [opt], targets=[target]).apply()
    head = net.head
    assert isinstance(head, InjectedHead)
    # Found again at the injection: the trainable copy's units, not the frozen head's or the anchor's.
    assert [g.name for g in redo.groups] == ["body.1", "body.3", "head.trainable.1"]
    assert "frozen" in redo.skipped["head.frozen.1"] and "frozen" in redo.skipped["head.anchor.1"]
    readers = {g.name: [o.layer for o in g.outgoing] for g in redo.groups}["body.3"]
    assert readers == [head.frozen[0], head.trainable[0], head.anchor[0]]
    _train(net, opt)  # the trainable copy moves away from its anchor
    assert not torch.equal(head.trainable[0].weight, head.anchor[0].weight)
    kill(net.body[2], [1, 5])
    kill(head.trainable[0], [2])
    frozen = {k: v.clone() for k, v in head.frozen.state_dict().items()}
    moments = opt.state[head.trainable[0].weight]["exp_avg"].clone()
    out = net(X).detach()
    logs = redo.maybe_apply(1)
    assert logs["interventions/redo/recycled_units"] >= 3
    torch.testing.assert_close(net(X), out, rtol=0, atol=1e-6)
    cols, rows = redo.previous_masks["body.3"], redo.previous_masks["head.trainable.1"]
    assert cols[[1, 5]].all() and rows[2] and not cols.all()
    for layer in (head.frozen[0], head.trainable[0], head.anchor[0]):  # every reader of body.3's units
        assert torch.all(layer.weight[:, cols] == 0)
    assert torch.all(target.head.trainable[0].weight[:, cols] == 0)
    # The trainable copy's moments: zero at recycled columns (body.3) and rows (its own units), else kept.
    state = opt.state[head.trainable[0].weight]["exp_avg"]
    recycled = cols[None, :] | rows[:, None]
    assert torch.all(state[recycled] == 0) and torch.equal(state[~recycled], moments[~recycled])
    # The trainable copy's own dead unit: fresh incoming row, zero bias, zero outgoing column.
    assert head.trainable[0].bias[2] == 0 and torch.all(head.trainable[2].weight[:, 2] == 0)
    # The frozen head only lost the columns reading recycled units; nothing else of it moved.
    for key, value in head.frozen.state_dict().items():
        if key == "0.weight":
            assert torch.equal(value[:, ~cols], frozen[key][:, ~cols])
        else:
            assert torch.equal(value, frozen[key]), key
    assert not redo.sync_structure()  # already found again when the injection happened


def test_cbp_after_injection_replaces_units_of_the_trainable_copy():
    net = body_head()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    target = copy.deepcopy(net).requires_grad_(False)
    cfg = CBPConfig(enabled=True, replacement_rate=0.25, decay_rate=0.5, maturity_threshold=1)
    cbp = ContinualBackprop(cfg, net, X, [opt], targets=[target])
    for step in (1, 2):
        _train(net, opt, steps=1)
        cbp.maybe_apply(step)
    ages = {k: v.clone() for k, v in cbp.age.items()}
    old_relu = net.head[1]
    PlasticityInjection(InjectionConfig(at=(1,)), net, [opt], targets=[target]).apply()
    head = net.head
    assert [g.name for g in cbp.groups] == ["body.1", "body.3", "head.trainable.1"]
    # Unchanged groups keep their state; the trainable copy's units start at age 0; hooks moved.
    assert torch.equal(cbp.age["body.1"], ages["body.1"]) and torch.equal(cbp.age["body.3"], ages["body.3"])
    assert torch.all(cbp.age["head.trainable.1"] == 0)
    assert old_relu is head.frozen[1] and not old_relu._forward_hooks
    net(X)  # hooks copied with the head into its fresh copy and anchor remove themselves there
    assert len(head.trainable[1]._forward_hooks) == 1 and not head.anchor[1]._forward_hooks
    assert set(cbp._seen) == {"body.1", "body.3", "head.trainable.1"}
    frozen = [p.detach().clone() for p in head.frozen.parameters()]
    anchor_rows = head.anchor[0].weight.detach().clone()
    replaced_trainable = 0
    for step in range(3, 9):
        _train(net, opt, steps=1)
        cbp.maybe_apply(step)
        # Right after replacement, the replaced units' outgoing columns are zero in every reader, except
        # in rows re-drawn in the same step for the trainable copy's own replaced units (groups are
        # replaced in order, as in the authors' gnt.py).
        redrawn = cbp.age["head.trainable.1"] == 0
        for unit in (cbp.age["body.3"] == 0).nonzero().flatten().tolist():
            for layer in (head.frozen[0], head.anchor[0]):
                assert torch.all(layer.weight[:, unit] == 0)
            for layer in (head.trainable[0], target.head.trainable[0]):
                assert torch.all(layer.weight[~redrawn, unit] == 0)
        for unit in redrawn.nonzero().flatten().tolist():
            assert torch.all(head.trainable[2].weight[:, unit] == 0) and head.trainable[0].bias[unit] == 0
            replaced_trainable += 1
    assert replaced_trainable > 0
    # Frozen head and anchor: no unit of theirs replaced (only columns reading body.3 units zeroed).
    zeroed = head.frozen[0].weight == 0
    for now, before in zip(head.frozen.parameters(), frozen):
        assert torch.equal(now[now != 0], before[now != 0])
    assert torch.equal(head.anchor[0].weight[~zeroed], anchor_rows[~zeroed])
    assert torch.equal(head.frozen[2].weight, frozen[2])
    cbp.remove_hooks()


def test_redo_finds_groups_again_after_other_structural_changes():
    net = body_head()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    redo = ReDo(ReDoConfig(every=1, threshold=0.0), net, lambda: X, [opt])
    torch.manual_seed(3)
    net.head = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))  # by hand: found at the next call
    with pytest.raises(
        ValueError, match="after a change of the network's structure.*head.0.weight is not held"
    ):
        redo.maybe_apply(1)
    opt.add_param_group({"params": list(net.head.parameters())})
    kill(net.head[0], [1])
    out = net(X).detach()
    assert redo.maybe_apply(1)["interventions/redo/recycled_units"] >= 1
    assert [g.name for g in redo.groups] == ["body.1", "body.3", "head.1"] and redo.groups[
        2
    ].incoming is net.head[0]
    assert torch.all(net.head[2].weight[:, 1] == 0)
    torch.testing.assert_close(net(X), out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("init", [None, XavierUniformInit(gain=2.0), OrthogonalInit(1.0)], ids=str)
def test_recycled_rows_come_from_the_layers_own_initializer(init):
    """Rows of i.i.d. initialisers are drawn alone (fast path); others from a full draw. Same distribution."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 256), nn.ReLU(), nn.Linear(256, 3))
    if init is not None:
        set_initializer(net[0], init)
    dead = list(range(0, 256, 2))
    kill(net[0], dead)
    reference = torch.stack([fresh_state(net[0])["weight"][dead] for _ in range(4)])
    ReDo(ReDoConfig(every=1, threshold=0.0), net, lambda: X, [torch.optim.Adam(net.parameters())]).recycle(X)
    rows = net[0].weight.detach()[dead]
    assert rows.abs().max() <= reference.abs().max() * 1.05
    assert rows.std() == pytest.approx(reference.std().item(), rel=0.1)
    assert rows.abs().mean() == pytest.approx(reference.abs().mean().item(), rel=0.1)
