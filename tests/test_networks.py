"""Network building blocks: shapes, parameter counts against hand-worked sums, named parts, fresh
initialisation from each module's own initialiser, activation hooks, CReLU, and input errors."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from plasticrl.networks import (
    MLP,
    Conv2dSame,
    CReLU,
    DrQEncoder,
    ImpalaCNN,
    ImpalaStage,
    MaxPool2dSame,
    NatureCNN,
    OrthogonalInit,
    ResNet18,
    XavierUniformInit,
    capture_activations,
    fresh_copy,
    get_initializer,
    mlp_param_count,
    param_matched_hidden_dims,
    reinitialize_,
    same_padding,
    set_initializer,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def is_child(parent: nn.Module, child: nn.Module) -> bool:
    return any(m is child for m in parent.children())


# ----------------------------------------------------------------------------------------------------
# Hand-worked parameter counts (weights + biases, layer by layer).


def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def test_nature_cnn_parameter_count_matches_mnih_layers():
    # 84 → (84-8)/4+1 = 20 → (20-4)/2+1 = 9 → (9-3)/1+1 = 7; 7·7·64 = 3136 features.
    expected = conv(4, 32, 8) + conv(32, 64, 4) + conv(64, 64, 3) + linear(3136, 512) + linear(512, 18)
    assert expected == 1_693_362
    net = NatureCNN(4, 18)
    assert n_params(net) == expected
    assert net.conv_output_dim == 3136 and net.feature_dim == 512 and net.output_dim == 18
    # Flax 'SAME' padding (dopamine): 84 → 21 → 11 → 11, 11·11·64 = 7744 features.
    same = NatureCNN(4, 18, padding="same")
    assert same.conv_output_dim == 7744
    assert n_params(same) == expected - linear(3136, 512) + linear(7744, 512)


def test_impala_parameter_count_matches_bbf_layers():
    def stage(c_in, c, blocks):
        return conv(c_in, c, 3) + blocks * 2 * conv(c, c, 3)

    encoder = stage(4, 64, 2) + stage(64, 128, 2) + stage(128, 128, 2)
    assert encoder == 1_552_192
    net = ImpalaCNN(4, num_outputs=18)  # BBF: (16, 32, 32) × 4, two blocks, dense 2048
    # 84 → 42 → 21 → 11 with 'SAME' max-pooling; 11·11·128 = 15,488 features.
    assert net.latent_shape == (128, 11, 11) and net.feature_dim == 15_488
    assert n_params(net.encoder) == encoder
    assert n_params(net.head) == linear(15_488, 2048) + linear(2048, 18)
    assert n_params(ImpalaCNN(4)) == encoder  # no head
    small = ImpalaCNN(3, width_scale=1, channels=(8, 16), num_blocks=1, image_size=(64, 48))
    assert n_params(small) == stage(3, 8, 1) + stage(8, 16, 1)
    assert small.latent_shape == (16, 16, 12)


def test_drq_encoder_parameter_count_matches_drq_layers():
    # 84 → (84-3)/2+1 = 41 → 39 → 37 → 35; 35·35·32 = 39,200 features.
    expected = conv(9, 32, 3) + 3 * conv(32, 32, 3) + linear(39_200, 50) + 2 * 50  # + LayerNorm
    assert expected == 1_990_518
    enc = DrQEncoder((9, 84, 84), 50)
    assert n_params(enc) == expected
    assert enc.conv_output_dim == 39_200 and enc.feature_dim == 50 and enc.output_dim == 50


def resnet_count(num_classes: int, blocks: tuple[int, ...], w: int, in_channels: int = 3) -> int:
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(in_channels, w, 3, bias=False) + bn(w)
    c_in = w
    for i, n in enumerate(blocks):
        c = w * 2**i
        for j in range(n):
            src = c_in if j == 0 else c
            total += conv(src, c, 3, bias=False) + bn(c) + conv(c, c, 3, bias=False) + bn(c)
            if j == 0 and (i > 0 or src != c):
                total += conv(src, c, 1, bias=False) + bn(c)
        c_in = c
    return total + linear(8 * w, num_classes)


def test_resnet18_parameter_count_is_11_17_million():
    assert resnet_count(10, (2, 2, 2, 2), 64) == 11_173_962
    assert n_params(ResNet18(10)) == 11_173_962
    # The seed paper scales depth and width.
    assert n_params(ResNet18(100, blocks_per_stage=(1, 3, 1, 2), base_width=8)) == resnet_count(
        100, (1, 3, 1, 2), 8
    )
    assert n_params(ResNet18(10, in_channels=1, base_width=4)) == resnet_count(10, (2, 2, 2, 2), 4, 1)


def test_mlp_parameter_count_matches_layers():
    net = MLP(3072, [100, 100], 10)  # Ash & Adams 2020's CIFAR MLP
    assert n_params(net) == linear(3072, 100) + linear(100, 100) + linear(100, 10)
    assert n_params(net) == mlp_param_count(3072, [100, 100], 10)
    ln = MLP(17, [64, 32], 6, layer_norm=True)
    assert n_params(ln) == linear(17, 64) + 128 + linear(64, 32) + 64 + linear(32, 6)
    assert n_params(MLP(5, [], 3)) == linear(5, 3)  # logistic regression


# ----------------------------------------------------------------------------------------------------
# Output shapes and named parts.


def test_mlp_output_activation_follows_the_head():
    torch.manual_seed(9)
    net = MLP(4, [8], 3, output_activation="tanh")
    x = torch.randn(5, 4) * 10
    torch.testing.assert_close(net(x), torch.tanh(net.head(net.encoder(x))))
    assert isinstance(net.output_activation, nn.Tanh) and isinstance(net.head, nn.Linear)
    assert MLP(4, [8], 3, output_activation="crelu").output_dim == 6
    assert MLP(4, [8], 3).output_dim == 3 and MLP(4, [8]).output_dim == 8


def test_numpy_integer_sizes_are_accepted():
    net = MLP(np.int64(4), [np.int32(8)], np.int64(2))
    assert net.hidden_dims == (8,) and type(net.hidden_dims[0]) is int
    assert NatureCNN(np.int64(4), np.int64(6)).output_dim == 6


def test_output_shapes_for_typical_inputs():
    torch.manual_seed(0)
    assert NatureCNN(4, 6)(torch.rand(3, 4, 84, 84)).shape == (3, 6)
    assert NatureCNN(4)(torch.rand(3, 4, 84, 84)).shape == (3, 512)
    assert NatureCNN(4, 6, padding="same")(torch.rand(2, 4, 84, 84)).shape == (2, 6)
    impala = ImpalaCNN(4, width_scale=1, num_outputs=5, hidden_dim=64)
    assert impala(torch.rand(2, 4, 84, 84)).shape == (2, 5)
    assert impala.encode_spatial(torch.rand(2, 4, 84, 84)).shape == (2, 32, 11, 11)
    feats = DrQEncoder()(torch.rand(3, 9, 84, 84))
    assert feats.shape == (3, 50) and feats.abs().max() <= 1.0
    assert ResNet18(10)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert MLP(17, [256, 256], 6)(torch.rand(4, 17)).shape == (4, 6)
    assert MLP(17, [256, 256])(torch.rand(4, 17)).shape == (4, 256)
    assert MLP(17, [8], 2, activation="crelu")(torch.rand(5, 4, 17)).shape == (5, 4, 2)


@pytest.mark.parametrize(
    "make",
    [
        lambda: MLP(4, [8, 8], 2),
        lambda: NatureCNN(4, 3),
        lambda: ImpalaCNN(4, width_scale=1, num_outputs=3, hidden_dim=16),
        lambda: DrQEncoder(),
        lambda: ResNet18(10, base_width=8),
    ],
    ids=["mlp", "nature", "impala", "drq", "resnet"],
)
def test_encoder_and_head_are_named_submodules(make):
    net = make()
    assert is_child(net, net.encoder) and is_child(net, net.head)
    x = {MLP: torch.rand(2, 4), ResNet18: torch.rand(2, 3, 32, 32), DrQEncoder: torch.rand(2, 9, 84, 84)}.get(
        type(net), torch.rand(2, 4, 84, 84)
    )
    torch.testing.assert_close(net(x), net.head(net.encoder(x)))
    # DrQEncoder's feature_dim is its head's width (DrQ's naming); its encoder emits conv_output_dim.
    encoder_width = net.conv_output_dim if isinstance(net, DrQEncoder) else net.feature_dim
    assert net.encoder(x).shape[-1] == encoder_width


def test_impala_stages_are_reachable_by_index():
    net = ImpalaCNN(4, width_scale=1)
    assert [net.encoder[i] for i in range(3)] == net.stages
    assert all(isinstance(s, ImpalaStage) for s in net.stages)
    assert [s.conv.out_channels for s in net.stages] == [16, 32, 32]
    assert [len(s.blocks) for s in net.stages] == [2, 2, 2]


def test_resnet_numbered_modules_follow_the_seed_paper():
    net = ResNet18(10, base_width=8, blocks_per_stage=(3, 1, 2, 1))
    mods = net.numbered_modules()
    assert len(mods) == 6
    assert mods[0] is net.encoder.stem and isinstance(mods[0][0], nn.Conv2d) and mods[0][0].in_channels == 3
    assert mods[1:5] == [net.encoder.layer1, net.encoder.layer2, net.encoder.layer3, net.encoder.layer4]
    assert [len(m) for m in mods[1:5]] == [3, 1, 2, 1]
    assert mods[5] is net.head and net.head.in_features == 64
    assert all(net.numbered_module(k) is mods[k - 1] for k in range(1, 7))
    for bad in (0, 7, -1):
        with pytest.raises(ValueError, match="1..6"):
            net.numbered_module(bad)
    with pytest.raises(TypeError):
        net.numbered_module("2")
    # Resetting module 3 redraws exactly layer2's parameters.
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    reinitialize_(net.numbered_module(3))
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    layer2 = {
        n for n, _ in net.named_parameters() if n.startswith("encoder.layer2.") and n.endswith("weight")
    }
    layer2_convs = {n for n in layer2 if ".bn" not in n and "shortcut.bn" not in n}
    assert layer2_convs <= changed
    assert all(n.startswith("encoder.layer2.") for n in changed)


# ----------------------------------------------------------------------------------------------------
# Fresh initialisation: a different draw from the same distribution.


def assert_same_distribution(
    a: torch.Tensor, b: torch.Tensor, std: float, tol: float = 0.03, decile_tol: float = 0.05
):
    """Both flattened tensors have mean 0 and the given std (relative tol), and their deciles agree
    within ``decile_tol``·std (the deciles of 10⁶ uniform draws vary by ≈ 0.002·std)."""
    for t in (a, b):
        t = t.detach().flatten().double()
        assert abs(t.mean().item()) < 5 * std / math.sqrt(t.numel())
        assert t.std().item() == pytest.approx(std, rel=tol)
    q = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    qa = torch.quantile(a.detach().flatten().double(), q)
    qb = torch.quantile(b.detach().flatten().double(), q)
    assert torch.allclose(qa, qb, atol=decile_tol * std)


def test_fresh_copy_default_init_is_a_new_draw_from_the_same_distribution():
    torch.manual_seed(1)
    net = MLP(512, [1024], 4)
    fresh = fresh_copy(net)
    w, w2 = net.encoder[0].linear.weight, fresh.encoder[0].linear.weight
    assert w2 is not w and not torch.allclose(w, w2)
    # PyTorch's Linear default: U(±1/√fan_in), std 1/√(3·fan_in).
    assert_same_distribution(w, w2, 1 / math.sqrt(3 * 512))
    bound = 1 / math.sqrt(512)
    assert w2.abs().max() <= bound


def test_fresh_copy_xavier_init_of_impala():
    torch.manual_seed(2)
    net = ImpalaCNN(4, width_scale=1, num_outputs=6, hidden_dim=256)
    assert isinstance(get_initializer(net.head.fc), XavierUniformInit)
    assert isinstance(get_initializer(net.encoder[2].blocks[1].conv2), XavierUniformInit)
    fresh = fresh_copy(net)
    fc, fc2 = net.head.fc, fresh.head.fc  # 3872 → 256
    assert not torch.allclose(fc.weight, fc2.weight)
    assert_same_distribution(fc.weight, fc2.weight, math.sqrt(2 / (3872 + 256)))
    assert torch.count_nonzero(fc2.bias) == 0 and torch.count_nonzero(fc.bias) == 0
    c, c2 = net.encoder[2].blocks[1].conv2, fresh.encoder[2].blocks[1].conv2  # 32 → 32, 3×3
    assert not torch.allclose(c.weight, c2.weight)
    # 9,216 draws: deciles vary by ≈ 0.02·std, so a looser decile tolerance.
    assert_same_distribution(c.weight, c2.weight, math.sqrt(2 / (32 * 9 + 32 * 9)), decile_tol=0.15)
    assert torch.count_nonzero(c2.bias) == 0


def assert_orthogonal_rows(w: torch.Tensor, gain: float):
    m = w.detach().flatten(1).double()
    torch.testing.assert_close(
        m @ m.T, gain**2 * torch.eye(m.shape[0], dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_fresh_copy_orthogonal_init_of_drq_encoder():
    torch.manual_seed(3)
    enc = DrQEncoder((9, 84, 84), 50)
    fresh = fresh_copy(enc)
    relu_gain = math.sqrt(2.0)
    for i in range(1, 5):
        conv_a, conv_b = getattr(enc.encoder, f"conv{i}"), getattr(fresh.encoder, f"conv{i}")
        assert not torch.allclose(conv_a.weight, conv_b.weight)
        assert_orthogonal_rows(conv_a.weight, relu_gain)  # (32, c·9) with 32 ≤ c·9
        assert_orthogonal_rows(conv_b.weight, relu_gain)
        assert torch.count_nonzero(conv_b.bias) == 0
    assert not torch.allclose(enc.head.fc.weight, fresh.head.fc.weight)
    assert_orthogonal_rows(enc.head.fc.weight, 1.0)
    assert_orthogonal_rows(fresh.head.fc.weight, 1.0)
    assert get_initializer(enc.head.norm) is None  # LayerNorm keeps its own reset (ones, zeros)


def test_fresh_copy_resets_batchnorm_statistics_and_draws_new_convs():
    torch.manual_seed(4)
    net = ResNet18(10, base_width=32)
    net.train()
    net(torch.rand(8, 3, 16, 16) * 3 + 1)  # moves the running statistics
    bn = net.encoder.stem.bn
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    fresh = fresh_copy(net)
    assert torch.equal(fresh.encoder.stem.bn.running_mean, torch.zeros(32))
    assert torch.equal(fresh.encoder.stem.bn.running_var, torch.ones(32))
    # PyTorch's Conv2d default: U(±1/√fan_in), std 1/√(3·fan_in); layer4's 3×3 conv 256 → 256.
    w, w2 = net.encoder.layer4[1].conv1.weight, fresh.encoder.layer4[1].conv1.weight
    assert not torch.allclose(w, w2)
    assert_same_distribution(w, w2, 1 / math.sqrt(3 * 256 * 9))


def test_reinitialize_keeps_parameter_identity_and_optimizer_binding():
    torch.manual_seed(5)
    net = NatureCNN(4, 3)
    params = list(net.parameters())
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    reinitialize_(net)
    after = list(net.parameters())
    assert all(a is b for a, b in zip(params, after))
    assert all(not torch.equal(b, p) for b, p in zip(before, after))
    snapshot = net.head.weight.detach().clone()
    net(torch.rand(2, 4, 84, 84)).sum().backward()
    opt.step()
    assert not torch.equal(snapshot, net.head.weight)  # the optimizer still updates the same tensors


def test_networks_with_attached_initializers_pickle():
    buf = io.BytesIO()
    torch.save(ImpalaCNN(4, width_scale=1), buf)
    torch.save(DrQEncoder((3, 24, 24)), buf)


def test_initializers_refuse_modules_without_weight_matrix():
    with pytest.raises(TypeError, match="LayerNorm"):
        set_initializer(nn.LayerNorm(4), XavierUniformInit())
    with pytest.raises(TypeError, match="LayerNorm"):
        set_initializer(nn.LayerNorm(4), OrthogonalInit())


# ----------------------------------------------------------------------------------------------------
# Activation hooks.


def test_capture_activations_mlp_sees_every_hidden_layer_with_values():
    torch.manual_seed(6)
    net = MLP(5, [7, 3], 2, layer_norm=True)
    x = torch.randn(4, 5)
    with capture_activations(net) as acts:
        net(x)
    assert list(acts) == ["encoder.0.act", "encoder.1.act"]
    block = net.encoder[0]
    h = torch.relu(nn.functional.layer_norm(x @ block.linear.weight.T + block.linear.bias, (7,)))
    torch.testing.assert_close(acts["encoder.0.act"], h)
    assert acts["encoder.1.act"].shape == (4, 3)


def test_capture_activations_conv_networks_shapes():
    torch.manual_seed(7)
    with capture_activations(nature := NatureCNN(4, 3)) as acts:
        nature(torch.rand(2, 4, 84, 84))
    assert {k: tuple(v.shape) for k, v in acts.items()} == {
        "encoder.act1": (2, 32, 20, 20),
        "encoder.act2": (2, 64, 9, 9),
        "encoder.act3": (2, 64, 7, 7),
        "encoder.act4": (2, 512),
    }

    impala = ImpalaCNN(4, width_scale=1, num_outputs=3, hidden_dim=16)
    x = torch.rand(2, 4, 84, 84)
    with capture_activations(impala) as acts:
        impala(x)
    expected = {}
    for i, (c, size) in enumerate([(16, 42), (32, 21), (32, 11)]):
        for b in range(2):
            for a in (1, 2):
                expected[f"encoder.stage{i}.blocks.{b}.act{a}"] = (2, c, size, size)
    expected["encoder.act"] = (2, 32, 11, 11)
    expected["head.act"] = (2, 16)
    assert {k: tuple(v.shape) for k, v in acts.items()} == expected
    torch.testing.assert_close(acts["encoder.act"].flatten(1), impala.encoder(x))

    drq = DrQEncoder()
    obs = torch.rand(2, 9, 84, 84)
    with capture_activations(drq) as acts:
        out = drq(obs)
    assert {k: tuple(v.shape) for k, v in acts.items()} == {
        "encoder.act1": (2, 32, 41, 41),
        "encoder.act2": (2, 32, 39, 39),
        "encoder.act3": (2, 32, 37, 37),
        "encoder.act4": (2, 32, 35, 35),
        "head.tanh": (2, 50),
    }
    torch.testing.assert_close(acts["head.tanh"], out)


def test_capture_activations_resnet_has_one_module_per_hidden_position():
    net = ResNet18(10, base_width=4)
    with capture_activations(net) as acts:
        net(torch.rand(2, 3, 32, 32))
    assert len(acts) == 1 + 4 * 2 * 2  # stem + two per block
    assert acts["encoder.stem.act"].shape == (2, 4, 32, 32)
    for i, (c, size) in enumerate([(4, 32), (8, 16), (16, 8), (32, 4)], start=1):
        for b in range(2):
            for a in (1, 2):
                assert acts[f"encoder.layer{i}.{b}.act{a}"].shape == (2, c, size, size)
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    assert len({id(m) for m in relus}) == len(relus) == 17  # a separate instance for every position


# ----------------------------------------------------------------------------------------------------
# CReLU.


def test_crelu_doubles_features_of_mlp():
    net = MLP(6, [8, 5], 3, activation="crelu")
    assert net.feature_dim == 10 and net.encoder[1].linear.in_features == 16 and net.head.in_features == 10
    assert isinstance(net.encoder[0].act, CReLU)
    x = torch.randn(4, 6)
    with capture_activations(net) as acts:
        net(x)
    pre = x @ net.encoder[0].linear.weight.T + net.encoder[0].linear.bias
    torch.testing.assert_close(acts["encoder.0.act"], torch.cat([pre.clamp(min=0), (-pre).clamp(min=0)], -1))
    assert n_params(net) == linear(6, 8) + linear(16, 5) + linear(10, 3)


def test_crelu_keep_param_count_matches_relu_budget():
    relu = MLP(10, [256, 256], 5)
    crelu = MLP(10, [256, 256], 5, activation="crelu", keep_param_count=True)
    # 2h² + 22h + 5 ≤ 69,893 (the ReLU count) gives h = 181 (h = 182 would need 70,257).
    assert n_params(relu) == 69_893
    assert crelu.hidden_dims == (181, 181)
    assert n_params(crelu) == 2 * 181**2 + 22 * 181 + 5 == 69_509
    assert MLP(10, [256, 256], 5, keep_param_count=True).hidden_dims == (256, 256)  # no-op for ReLU


@pytest.mark.parametrize(
    "in_dim,width,depth,out_dim,layer_norm", [(3, 64, 1, 2, False), (17, 100, 3, None, True)]
)
def test_param_matched_widths_agree_with_brute_force(in_dim, width, depth, out_dim, layer_norm):
    budget = mlp_param_count(in_dim, [width] * depth, out_dim, layer_norm=layer_norm)
    best = max(
        h
        for h in range(1, width + 1)
        if mlp_param_count(in_dim, [h] * depth, out_dim, width_factor=2, layer_norm=layer_norm) <= budget
    )
    got = param_matched_hidden_dims(in_dim, [width] * depth, out_dim, width_factor=2, layer_norm=layer_norm)
    assert got == (best,) * depth


def test_crelu_nature_cnn_doubles_every_layer_input():
    net = NatureCNN(4, 3, activation="crelu")
    assert net.encoder.conv2.in_channels == 64 and net.encoder.conv3.in_channels == 128
    assert net.encoder.fc.in_features == 2 * 3136 and net.feature_dim == 1024
    assert net(torch.rand(2, 4, 84, 84)).shape == (2, 3)


# ----------------------------------------------------------------------------------------------------
# 'SAME' padding layers.


def test_same_padding_amounts():
    assert same_padding(84, 8, 4) == (2, 2)
    assert same_padding(21, 4, 2) == (1, 2)
    assert same_padding(11, 3, 1) == (1, 1)
    assert same_padding(84, 3, 2) == (0, 1)


def test_maxpool_same_matches_flax_windows():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # Flax 'SAME' 3×3/2 on 4×4 pads one row/column after: windows rows {0,1,2} and {2,3}.
    torch.testing.assert_close(MaxPool2dSame(3, 2)(x), torch.tensor([[[[10.0, 11.0], [14.0, 15.0]]]]))
    neg = -x - 1  # all negative: padding must not win the max
    torch.testing.assert_close(MaxPool2dSame(3, 2)(neg), torch.tensor([[[[-1.0, -3.0], [-9.0, -11.0]]]]))


def test_conv2d_same_matches_brute_force():
    torch.manual_seed(8)
    conv = Conv2dSame(1, 1, 4, stride=2)
    x = torch.randn(1, 1, 5, 5)
    w, b = conv.weight[0, 0].detach().numpy(), conv.bias.item()
    padded = np.zeros((8, 8))  # total pad (3-1)·2+4-5 = 3: one before, two after
    padded[1:6, 1:6] = x[0, 0].numpy()
    expected = np.array(
        [[(padded[2 * i : 2 * i + 4, 2 * j : 2 * j + 4] * w).sum() + b for j in range(3)] for i in range(3)]
    )
    np.testing.assert_allclose(conv(x)[0, 0].detach().numpy(), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# DrQ encoder specifics.


def test_drq_detach_stops_gradients_into_the_convs():
    enc = DrQEncoder((3, 20, 20), 8)
    enc(torch.rand(2, 3, 20, 20), detach=True).sum().backward()
    assert enc.encoder.conv1.weight.grad is None and enc.head.fc.weight.grad is not None
    enc(torch.rand(2, 3, 20, 20)).sum().backward()
    assert enc.encoder.conv1.weight.grad is not None


# ----------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: MLP(4, [8], 2, activation="swish"), ValueError, "unknown activation 'swish'"),
        (lambda: MLP(4, [8, 0], 2), ValueError, r"hidden_dims\[1\]"),
        (lambda: MLP(0, [8], 2), ValueError, "in_dim"),
        (lambda: MLP(4, [8.0], 2), TypeError, r"hidden_dims\[0\]"),
        (lambda: MLP(4, [True], 2), TypeError, r"hidden_dims\[0\]"),
        (lambda: MLP(4, 8, 2), TypeError, "hidden_dims"),
        (lambda: MLP(4, [], None), ValueError, "at least one hidden layer"),
        (lambda: MLP(4, [8], None, output_activation="tanh"), ValueError, "output_activation"),
        (lambda: NatureCNN(0), ValueError, "in_channels"),
        (lambda: NatureCNN(4, activation="nope"), ValueError, "unknown activation"),
        (lambda: NatureCNN(4, padding="full"), ValueError, "padding"),
        (lambda: NatureCNN(4, image_size=16), ValueError, "too small"),
        (lambda: ImpalaCNN(4, width_scale=0), ValueError, "width_scale"),
        (lambda: ImpalaCNN(4, channels=(16, -1)), ValueError, r"channels\[1\]"),
        (lambda: ImpalaCNN(4, num_blocks=-1), ValueError, "num_blocks"),
        (lambda: DrQEncoder((9, 84)), ValueError, "obs_shape"),
        (lambda: DrQEncoder((9, 8, 8)), ValueError, "too small"),
        (lambda: DrQEncoder((9, 84, 84), 0), ValueError, "feature_dim"),
        (lambda: ResNet18(10, blocks_per_stage=(2, 2, 2)), ValueError, "4 entries"),
        (lambda: ResNet18(10, blocks_per_stage=(2, 0, 2, 2)), ValueError, r"blocks_per_stage\[1\]"),
        (lambda: ResNet18(10, base_width=0), ValueError, "base_width"),
        (lambda: ResNet18(10, activation="crelu"), ValueError, "keeps the width"),
    ],
)
def test_bad_constructor_arguments_raise_clearly(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    "net,x",
    [
        (DrQEncoder((9, 84, 84)), torch.rand(2, 9, 64, 64)),
        (DrQEncoder((9, 84, 84)), torch.rand(9, 84, 84)),
        (NatureCNN(4), torch.rand(2, 3, 84, 84)),
        (ImpalaCNN(4, width_scale=1), torch.rand(2, 4, 96, 96)),
        (ResNet18(10, base_width=4), torch.rand(2, 1, 32, 32)),
        (MLP(4, [8], 2), torch.rand(2, 5)),
    ],
    ids=["drq-size", "drq-unbatched", "nature-channels", "impala-size", "resnet-channels", "mlp-width"],
)
def test_wrong_input_shape_raises_clear_error(net, x):
    with pytest.raises(ValueError, match="expects"):
        net(x)
