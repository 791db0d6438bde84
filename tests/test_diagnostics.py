"""Plasticity diagnostics: values on constructed networks and matrices, tags, and no side effects."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from plasticrl.interventions import PlasticityMonitor, effective_rank, find_unit_groups, measure, srank
from plasticrl.networks import ImpalaCNN


def constant_mlp() -> nn.Sequential:
    """Two hidden layers whose activations do not depend on the input (zero weights, chosen biases)."""
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([0.0, 1.0, 0.01, 2.0, 0.05]))
        net[2].weight.zero_()
        net[2].bias.copy_(torch.tensor([0.0, 5.0, 5.0, 5.0, 5.0, 5.0]))
    return net


X = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))


def test_dormant_and_dead_ratios_on_a_constructed_mlp():
    # Layer "1": E|h| = [0, 1, 0.01, 2, 0.05], mean 0.612 → scores [0, 1.63, 0.016, 3.27, 0.082].
    # Layer "3": E|h| = [0, 5, 5, 5, 5, 5] → scores [0, 1.2, ...].
    out = measure(constant_mlp(), X, name="q")
    assert out["plasticity/dormant_ratio/q/1"] == pytest.approx(2 / 5)  # units 0 and 2 at τ = 0.025
    assert out["plasticity/dormant_ratio/q/3"] == pytest.approx(1 / 6)
    assert out["plasticity/dead_ratio/q/1"] == pytest.approx(1 / 5)
    assert out["plasticity/dead_ratio/q/3"] == pytest.approx(1 / 6)
    # The network's ratio counts units (3 of 11), not the mean of the layer ratios (peers mistake #6).
    assert out["plasticity/dormant_ratio/q"] == pytest.approx(3 / 11)
    assert out["plasticity/dormant_ratio_layer_mean/q"] == pytest.approx((2 / 5 + 1 / 6) / 2)
    assert out["plasticity/dead_ratio/q"] == pytest.approx(2 / 11)
    assert out["plasticity/dead_ratio_layer_mean/q"] == pytest.approx((1 / 5 + 1 / 6) / 2)
    # τ is a flag: at ReDo's 0.1, unit 4 (score 0.082) is dormant too.
    wide = measure(constant_mlp(), X, name="q", dormant_threshold=0.1)
    assert wide["plasticity/dormant_ratio/q/1"] == pytest.approx(3 / 5)
    assert not any("stable" in tag for tag in out)


def test_dormant_and_dead_ratios_on_a_constructed_conv_net():
    net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.0, -1.0, 1.0, 0.0]).view(4, 1, 1, 1))
        net[0].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.001]))
    x = torch.rand(16, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    # Channel 0: 0; channel 1: relu(−x) = 0 (dead); channel 2: x; channel 3: 0.001 everywhere.
    mean_abs = torch.tensor([0.0, 0.0, x.mean().item(), 0.001])
    scores = mean_abs / (mean_abs.mean() + 1e-9)
    expected_dormant = (scores <= 0.025).float().mean().item()
    out = measure(net, x, name="enc")
    assert expected_dormant == 0.75
    assert out["plasticity/dormant_ratio/enc/1"] == pytest.approx(expected_dormant)
    assert out["plasticity/dead_ratio/enc/1"] == pytest.approx(0.5)


def _matrix_with_singular_values(values: list[float], rows: int = 50, cols: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=torch.float64))
    k = len(values)
    return (u[:, :k] * torch.tensor(values, dtype=torch.float64)) @ v[:, :k].T


def test_srank_and_effective_rank_on_known_singular_values():
    features = _matrix_with_singular_values([4.0, 3.0, 2.0, 1.0, 0.0])
    # Cumulative shares 0.4, 0.7, 0.9, 1.0.
    assert srank(features, delta=0.01) == 4
    assert srank(features, delta=0.15) == 3
    assert srank(features, delta=0.35) == 2
    assert srank(features, delta=0.6) == 1
    p = torch.tensor([0.4, 0.3, 0.2, 0.1])
    assert effective_rank(features) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)
    flat = _matrix_with_singular_values([2.0] * 10)
    assert srank(flat) == 10
    assert effective_rank(flat) == pytest.approx(10.0, rel=1e-5)
    assert srank(torch.zeros(5, 3)) == 0 and effective_rank(torch.zeros(5, 3)) == 0.0


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1, 1.5])
def test_bad_delta(delta):
    with pytest.raises(ValueError, match="rank_delta"):
        srank(torch.eye(3), delta=delta)
    with pytest.raises(ValueError, match="rank_delta"):
        measure(constant_mlp(), X, rank_delta=delta)


def test_bad_threshold_and_name():
    with pytest.raises(ValueError, match="dormant_threshold"):
        measure(constant_mlp(), X, dormant_threshold=-0.01)
    with pytest.raises(ValueError, match="dormant_threshold"):
        PlasticityMonitor(constant_mlp(), X, dormant_threshold=float("nan"))
    with pytest.raises(ValueError, match="name"):
        measure(constant_mlp(), X, name="a/b")


def test_feature_ranks_norms_and_grads_match_brute_force():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 2))
    net(X).sum().backward()
    out = measure(net, X, name="net", rank_delta=0.05)
    with torch.no_grad():
        features = net[3](net[2](net[1](net[0](X))))  # penultimate: output of the last activation
    assert out["plasticity/srank/net"] == srank(features, delta=0.05)
    assert out["plasticity/effective_rank/net"] == pytest.approx(effective_rank(features), rel=1e-5)
    assert out["plasticity/feature_norm/net"] == pytest.approx(features.norm(dim=1).mean().item(), rel=1e-5)
    for i in (0, 2, 4):
        layer = net[i]
        w = torch.cat([layer.weight.detach().flatten(), layer.bias.detach()])
        g = torch.cat([layer.weight.grad.flatten(), layer.bias.grad])
        assert out[f"plasticity/weight_norm/net/{i}"] == pytest.approx(w.norm().item(), rel=1e-5)
        assert out[f"plasticity/grad_norm/net/{i}"] == pytest.approx(g.norm().item(), rel=1e-5)
    all_w = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert out["plasticity/weight_norm/net"] == pytest.approx(all_w.norm().item(), rel=1e-5)
    assert "plasticity/distance_from_init/net" not in out
    fresh = copy.deepcopy(net)
    fresh.zero_grad(set_to_none=True)
    assert not any(k.startswith("plasticity/grad_norm/") for k in measure(fresh, X))
    per_layer = measure(net, X, per_layer_rank=True, rank_delta=0.05)
    assert per_layer["plasticity/srank/network/3"] == out["plasticity/srank/net"]
    assert "plasticity/srank/network/1" in per_layer


def test_measure_changes_nothing():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 8),
        nn.ReLU(),
        nn.Linear(8, 2),
    )
    x = torch.randn(8, 2, 6, 6)
    net.train()
    net[1].eval()  # mixed modes must come back exactly
    net(x).sum().backward()
    state = copy.deepcopy(net.state_dict())
    grads = [p.grad.clone() for p in net.parameters()]
    modes = [m.training for m in net.modules()]
    rng = torch.get_rng_state()
    with torch.no_grad():
        net.eval()
        reference = net(x)
        for m, mode in zip(net.modules(), modes):
            m.training = mode

    monitor = PlasticityMonitor(net, x, name="n")
    monitor.mark_reset()
    out = measure(net, x)
    out.update(monitor.measure())
    find_unit_groups(net, x)

    assert [m.training for m in net.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key  # parameters and BatchNorm statistics
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    with torch.no_grad():
        net.eval()
        torch.testing.assert_close(net(x), reference, rtol=0, atol=0)
    assert out["plasticity/dormant_ratio/network/2"] >= 0


def test_monitor_distance_from_init_overlap_and_checkpoint():
    net = constant_mlp()
    monitor = PlasticityMonitor(net, X, name="critic")
    start = monitor.measure()
    assert start["plasticity/distance_from_init/critic"] == 0.0
    assert "plasticity/dormant_overlap/critic" not in start
    monitor.mark_reset()  # dormant now: layer 1 units {0, 2}, layer 3 unit {0}
    with torch.no_grad():
        net[0].bias[2] = 1.0  # unit 2 revives
        net[4].weight.add_(0.5)
    out = monitor.measure()
    assert out["plasticity/dormant_overlap/critic/1"] == pytest.approx(1 / 2)
    assert out["plasticity/dormant_overlap/critic/3"] == pytest.approx(1.0)
    assert out["plasticity/dormant_overlap/critic"] == pytest.approx(2 / 3)
    expected = math.sqrt(0.99**2 + 12 * 0.5**2)
    assert out["plasticity/distance_from_init/critic"] == pytest.approx(expected, rel=1e-5)
    assert out["plasticity/distance_from_init/critic/4"] == pytest.approx(math.sqrt(12 * 0.25), rel=1e-5)
    restored = PlasticityMonitor(net, X, name="critic")
    restored.load_state_dict(monitor.state_dict())
    assert restored.measure() == out


def test_measure_on_tuple_and_dict_inputs_and_a_residual_net():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
            self.head = nn.Linear(4, 1)

        def forward(self, obs, action):
            return self.head(self.body(torch.cat([obs, action], dim=-1)))

    net = TwoInputs()
    obs, act = torch.randn(6, 3), torch.randn(6, 2)
    a = measure(net, (obs, act))
    b = measure(net, {"obs": obs, "action": act})
    assert a == b and "plasticity/dormant_ratio/network/body.1" in a
    impala = ImpalaCNN(width_scale=1, num_outputs=3, image_size=20, hidden_dim=16)
    out = measure(impala, torch.rand(4, 4, 20, 20), name="bbf")
    layers = [k for k in out if k.startswith("plasticity/dormant_ratio/bbf/")]
    assert len(layers) == 6 * 2 + 1 + 1  # two ReLUs per residual block, after the stages, in the head
    assert out["plasticity/srank/bbf"] <= 4


def test_chunked_probe_gives_the_same_numbers():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ELU(), nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2)
    )
    x = torch.randn(100, 2, 6, 6)
    whole = measure(net, x, chunk_size=None)
    for chunk in (1, 7, 64):
        chunked = measure(net, x, chunk_size=chunk)
        assert chunked.keys() == whole.keys()
        for key, value in whole.items():
            assert chunked[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    with pytest.raises(ValueError, match="chunk_size"):
        measure(net, x, chunk_size=0)


# ---------------------------------------------------------------- call sites


class SharedReLU(nn.Module):
    """One ReLU module reused after two layers (torchvision's BasicBlock style)."""

    def __init__(self, widths: tuple[int, int] = (6, 8)):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2 = nn.Linear(3, widths[0]), nn.Linear(widths[0], widths[1])
        self.relu, self.out = nn.ReLU(), nn.Linear(widths[1], 2)
        with torch.no_grad():
            self.l1.bias[:3] = -100.0  # units 0-2 of the first layer are dead

    def forward(self, x):
        return self.out(self.relu(self.l2(self.relu(self.l1(x)))))


def _brute_ratios(h: torch.Tensor, tau: float) -> tuple[int, int]:
    score = h.abs().mean(0)
    return int((score / (score.mean() + 1e-9) <= tau).sum()), int((h.abs().amax(0) == 0).sum())


@pytest.mark.parametrize("widths", [(6, 8), (6, 6)])
def test_a_shared_activation_is_one_layer_per_call_site(widths):
    net = SharedReLU(widths)
    with torch.no_grad():
        h1 = torch.relu(net.l1(X))
        h2 = torch.relu(net.l2(h1))
    out = measure(net, X, name="n", dormant_threshold=0.1, per_layer_rank=True)
    assert not any(k.endswith("/relu") for k in out)
    total = widths[0] + widths[1]
    counts = [_brute_ratios(h1, 0.1), _brute_ratios(h2, 0.1)]
    assert counts[0] == (3, 3)
    for layer, h, (dormant, dead) in zip(("relu@l1", "relu@l2"), (h1, h2), counts):
        assert out[f"plasticity/dormant_ratio/n/{layer}"] == pytest.approx(dormant / h.shape[1])
        assert out[f"plasticity/dead_ratio/n/{layer}"] == pytest.approx(dead / h.shape[1])
        assert out[f"plasticity/srank/n/{layer}"] == srank(h)
    assert out["plasticity/dead_ratio/n"] == pytest.approx((counts[0][1] + counts[1][1]) / total)
    # The penultimate features are the second call's outputs, not the first's.
    assert out["plasticity/srank/n"] == srank(h2, 0.01)
    assert out["plasticity/feature_norm/n"] == pytest.approx(h2.norm(dim=1).mean().item(), rel=1e-5)
    monitor = PlasticityMonitor(net, X, name="n", dormant_threshold=0.1)
    monitor.mark_reset()
    assert monitor.measure()["plasticity/dormant_overlap/n/relu@l1"] == 1.0


def test_a_network_applied_to_several_inputs_accumulates_at_each_site():
    class Siamese(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(3, 5), nn.ReLU())
            self.head = nn.Linear(10, 1)

        def forward(self, a, b):
            return self.head(torch.cat([self.encoder(a), self.encoder(b)], dim=1))

    torch.manual_seed(0)
    net = Siamese()
    a, b = X[:16], -X[16:] * 2
    with torch.no_grad():
        h = torch.cat([net.encoder(a), net.encoder(b)])  # one layer seen on both inputs
    out = measure(net, (a, b), name="s", dormant_threshold=0.3, chunk_size=5)
    dormant, dead = _brute_ratios(h, 0.3)
    assert out["plasticity/dormant_ratio/s/encoder.1"] == pytest.approx(dormant / 5)
    assert out["plasticity/dead_ratio/s/encoder.1"] == pytest.approx(dead / 5)
    assert out["plasticity/srank/s"] == srank(h)
    assert out["plasticity/feature_norm/s"] == pytest.approx(h.norm(dim=1).mean().item(), rel=1e-5)


def test_call_sites_that_cannot_be_told_apart_are_a_clear_error():
    class Ambiguous(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act, self.out = nn.Linear(3, 4), nn.Linear(3, 6), nn.ReLU(), nn.Linear(10, 1)

        def forward(self, x):
            first, second = self.a(x), self.b(x)  # both activations follow layer b
            return self.out(torch.cat([self.act(first), self.act(second)], dim=1))

    with pytest.raises(ValueError, match="'act' sees 4 and 6 units after the same weight layer \\('b'\\)"):
        measure(Ambiguous(), X)


def test_an_output_activation_is_not_a_hidden_layer():
    from plasticrl.networks import MLP

    torch.manual_seed(0)
    net = MLP(3, (16, 16), out_dim=2, output_activation="tanh")
    with torch.no_grad():
        features = net.encoder(X)  # the penultimate features: the head's input
    out = measure(net, X, name="pi")
    assert not any("output_activation" in k for k in out)
    assert out["plasticity/dormant_ratio/pi"] == pytest.approx(
        sum(_brute_ratios(net.encoder[:i](X), 0.025)[0] for i in (1, 2)) / 32
    )
    assert out["plasticity/srank/pi"] == srank(features)
    assert out["plasticity/feature_norm/pi"] == pytest.approx(features.norm(dim=1).mean().item(), rel=1e-5)
    kept = measure(net, X, name="pi", exclude_output_activation=False)
    assert "plasticity/dormant_ratio/pi/output_activation" in kept
    assert kept["plasticity/feature_norm/pi"] == pytest.approx(net(X).norm(dim=1).mean().item(), rel=1e-5)

    class ReturnsFeatures(nn.Module):  # a returned activation that a layer also reads is hidden
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            features = self.act(self.a(x))
            return self.b(features), features

    assert "plasticity/dormant_ratio/network/act" in measure(ReturnsFeatures(), X)
    # A feature extractor returning its last activation flattened keeps that layer.
    encoder = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten())
    assert "plasticity/dormant_ratio/network/1" in measure(encoder, torch.rand(4, 1, 5, 5))
