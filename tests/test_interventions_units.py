"""Unit-level interventions: layer pairing, ReDo and continual backprop."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from plasticrl.interventions import (
    CBPConfig,
    ContinualBackprop,
    ReDo,
    ReDoConfig,
    find_unit_groups,
)
from plasticrl.networks import ImpalaCNN, NatureCNN, set_initializer


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
    torch.testing.assert_close(net(x), out, rtol=0, atol=1e-5)
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
