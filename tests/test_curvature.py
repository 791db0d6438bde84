"""Curvature and gradient-noise diagnostics against exact references on networks small enough for the
full Hessian (``torch.autograd.functional.hessian``) and explicit per-example gradients."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from plasticrl.interventions import CurvatureConfig, PlasticityMonitor, curvature
from plasticrl.networks import MLP, QEnsemble, ResNet18

TAGS = ("sharpness", "hessian_trace", "hessian_rank", "grad_noise_scale", "grad_cosine")


def cross_entropy(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def small_problem(seed=0, n=24, width=6):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 3))
    x = torch.randn(n, 4)
    y = torch.randint(0, 3, (n,))
    return net, (x, y)


def exact_hessian(model, loss_fn, inputs, params=None):
    """The full Hessian of the loss w.r.t. ``params`` (default: all of ``model``'s), as a matrix."""
    named = dict(model.named_parameters())
    names = list(named) if params is None else params
    flat = torch.cat([named[n].detach().reshape(-1) for n in names]).double()
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]
    model64 = copy.deepcopy(model).double()
    inputs64 = tuple(t.double() if t.is_floating_point() else t for t in inputs)

    def f(vector):
        pieces = {n: v.view(s) for n, v, s in zip(names, vector.split(sizes), shapes)}
        return loss_fn(_Call(model64, pieces), inputs64)

    return torch.autograd.functional.hessian(f, flat)


class _Call(nn.Module):
    """``model`` with some parameters substituted, callable like the model (for the exact references)."""

    def __init__(self, model, params):
        super().__init__()
        self.model = model
        self.params = params

    def forward(self, *args):
        return functional_call(self.model, self.params, args)


def explicit_per_example_grads(model, loss_fn, inputs):
    """(n, P) matrix of per-example gradients by one backward per example."""
    n = inputs[0].shape[0]
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(n):
        example = tuple(t[i : i + 1] for t in inputs)
        grads = torch.autograd.grad(loss_fn(model, example), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]).double())
    return torch.stack(rows)


# ----------------------------------------------------------------------------- sharpness


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_sharpness_matches_the_exact_top_eigenvalue(method):
    net, batch = small_problem()
    exact = torch.linalg.eigvalsh(exact_hessian(net, cross_entropy, batch))
    iterations = 30 if method == "lanczos" else 500
    out = curvature(
        net,
        cross_entropy,
        batch,
        quantities=("sharpness",),
        method=method,
        iterations=iterations,
        tolerance=1e-6,
    )
    assert out["plasticity/sharpness/network"] == pytest.approx(float(exact[-1]), rel=0.01)
    assert set(out) == {"plasticity/sharpness/network"}


def test_sharpness_per_part_is_the_top_eigenvalue_of_its_diagonal_block():
    net, batch = small_problem(seed=1)
    names = [n for n, _ in net.named_parameters()]
    full = exact_hessian(net, cross_entropy, batch)
    sizes = [p.numel() for p in net.parameters()]
    split = sum(sizes[:2])  # net[0]'s weight and bias come first
    out = curvature(
        net,
        cross_entropy,
        batch,
        quantities=("sharpness",),
        parts={"first": net[0], "last": net[2]},
        iterations=40,
        tolerance=1e-7,
        name="q",
    )
    assert names[:2] == ["0.weight", "0.bias"]
    first = torch.linalg.eigvalsh(full[:split, :split])[-1]
    last = torch.linalg.eigvalsh(full[split:, split:])[-1]
    assert out["plasticity/sharpness/q/first"] == pytest.approx(float(first), rel=0.01)
    assert out["plasticity/sharpness/q/last"] == pytest.approx(float(last), rel=0.01)
    assert out["plasticity/sharpness/q"] == pytest.approx(float(torch.linalg.eigvalsh(full)[-1]), rel=0.01)


def test_parts_restrict_the_hessian_to_their_parameters():
    net, batch = small_problem(seed=2)
    block = exact_hessian(net, cross_entropy, batch, params=["2.weight", "2.bias"])
    out = curvature(
        net, cross_entropy, batch, quantities=("sharpness",), parts={"head": net[2]}, tolerance=1e-7
    )
    top = float(torch.linalg.eigvalsh(block)[-1])
    assert out["plasticity/sharpness/network"] == pytest.approx(top, rel=0.01)
    assert out["plasticity/sharpness/network/head"] == pytest.approx(top, rel=0.01)


class Quadratic(nn.Module):
    """L(w) = ½ Σ_i c_i w_i² + Σ_i b_i w_i: Hessian diag(c), exactly."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("c", torch.as_tensor(c, dtype=torch.float32))
        self.w = nn.Parameter(torch.randn(len(c)))

    def forward(self, b):
        return 0.5 * (self.c * self.w**2).sum() + (b * self.w).sum()


def quadratic_loss(model, b):
    return model(b.mean(0))


def test_lanczos_finds_the_algebraically_largest_power_the_largest_magnitude():
    model = Quadratic([-5.0, 2.0, 1.0, 0.5, 0.0, 0.0])
    b = torch.zeros(4, 6)
    lanczos = curvature(model, quadratic_loss, b, quantities=("sharpness",), tolerance=1e-8)
    power = curvature(
        model, quadratic_loss, b, quantities=("sharpness",), method="power", iterations=300, tolerance=1e-9
    )
    assert lanczos["plasticity/sharpness/network"] == pytest.approx(2.0, rel=1e-4)
    assert power["plasticity/sharpness/network"] == pytest.approx(-5.0, rel=1e-3)


# ----------------------------------------------------------------------------- trace


def test_hutchinson_trace_within_its_stated_standard_error():
    net, batch = small_problem(seed=3, width=8)
    h = exact_hessian(net, cross_entropy, batch)
    probes = 10
    # Rademacher probes: Var(zᵀHz) = 2(‖H‖_F² − Σ H_ii²) (Avron & Toledo 2011), the docstring's figure.
    stated = math.sqrt(2 * (float((h**2).sum()) - float((h.diagonal() ** 2).sum())) / probes)
    errors = []
    for seed in range(5):
        out = curvature(net, cross_entropy, batch, quantities=("trace",), trace_probes=probes, seed=seed)
        errors.append(out["plasticity/hessian_trace/network"] - float(h.trace()))
        assert abs(errors[-1]) <= 3 * stated
        assert 0 < out["plasticity/hessian_trace_stderr/network"] < 4 * stated
    assert max(abs(e) for e in errors) > 0  # an estimate, not the exact trace
    # and the estimator is consistent: 400 probes land within 3 of their own standard errors
    many = curvature(net, cross_entropy, batch, quantities=("trace",), trace_probes=400)
    assert many["plasticity/hessian_trace/network"] == pytest.approx(
        float(h.trace()), abs=3 * stated * math.sqrt(probes / 400)
    )


def test_trace_of_a_diagonal_hessian_is_exact_with_rademacher_probes():
    c = [3.0, -1.0, 0.25, 0.0, 7.0]
    out = curvature(Quadratic(c), quadratic_loss, torch.zeros(2, 5), quantities=("trace",), trace_probes=3)
    assert out["plasticity/hessian_trace/network"] == pytest.approx(sum(c), abs=1e-5)
    assert out["plasticity/hessian_trace_stderr/network"] == pytest.approx(0.0, abs=1e-5)


# ----------------------------------------------------------------------------- rank


@pytest.mark.parametrize("probes", [1, 3])
def test_rank_is_exact_for_a_known_number_of_nonzero_eigenvalues(probes):
    # 7 distinct non-zero eigenvalues (two negative) among 40, diagonal in the parameter basis: Lanczos
    # ends on an invariant subspace after 8 steps and every Rademacher probe has weight 1/40 on each axis.
    c = [4.0, 2.5, -1.5, 1.0, 0.6, -0.3, 0.2] + [0.0] * 33
    torch.manual_seed(0)
    out = curvature(
        Quadratic(c), quadratic_loss, torch.zeros(3, 40), quantities=("rank",), lanczos_steps=12,
        density_probes=probes, rank_threshold=1e-3,
    )  # fmt: skip
    assert out["plasticity/hessian_rank/network"] == pytest.approx(7.0, abs=1e-6)
    # eigenvalues below the relative threshold are not counted
    out = curvature(
        Quadratic(c), quadratic_loss, torch.zeros(3, 40), quantities=("rank",), lanczos_steps=12,
        rank_threshold=0.1,
    )  # fmt: skip
    assert out["plasticity/hessian_rank/network"] == pytest.approx(5.0, abs=1e-6)


def mse(model, batch):
    x, y = batch
    return 0.5 * (model(x).squeeze(-1) - y).pow(2).mean()


def test_rank_of_a_rotated_low_rank_hessian_within_the_stated_error():
    # Linear least squares with 10 examples and 30 weights: H = XᵀX / n has rank 10 in a random basis.
    torch.manual_seed(4)
    model = nn.Linear(30, 1, bias=False)
    batch = (torch.randn(10, 30), torch.randn(10))
    h = exact_hessian(model, mse, batch)
    eigenvalues, vectors = torch.linalg.eigh(h)
    above = eigenvalues.abs() > 1e-3 * eigenvalues.abs().max()
    rank = int(above.sum())
    projector = vectors[:, above] @ vectors[:, above].T
    probes = 4
    stated = math.sqrt(2 * (rank - float((projector.diagonal() ** 2).sum())) / probes)
    out = curvature(model, mse, batch, quantities=("rank",), lanczos_steps=15, density_probes=probes)
    assert rank == 10
    assert abs(out["plasticity/hessian_rank/network"] - rank) <= 3 * stated


# ----------------------------------------------------------------------------- gradient noise


def explicit_noise(model, loss_fn, inputs, minibatch_size, seed):
    g = explicit_per_example_grads(model, loss_fn, inputs)
    n = g.shape[0]
    mean = g.mean(0)
    sigma = (g - mean).T @ (g - mean) / n  # the per-example covariance over the probe batch
    scale = float(sigma.trace() / mean.pow(2).sum())
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cosines = [
        F.cosine_similarity(g[order[k * minibatch_size : (k + 1) * minibatch_size]].mean(0), mean, dim=0)
        for k in range(n // minibatch_size)
    ]
    return scale, float(torch.stack(cosines).mean())


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_noise_scale_and_cosine_match_the_explicit_per_example_covariance(chunk_size):
    net, batch = small_problem(seed=5, n=30)
    out = curvature(
        net, cross_entropy, batch, quantities=("noise",), minibatch_size=8, chunk_size=chunk_size, seed=3
    )
    scale, cosine = explicit_noise(net, cross_entropy, batch, 8, seed=3)
    assert out["plasticity/grad_noise_scale/network"] == pytest.approx(scale, rel=1e-4)
    assert out["plasticity/grad_cosine/network"] == pytest.approx(cosine, rel=1e-4)
    assert set(out) == {"plasticity/grad_noise_scale/network", "plasticity/grad_cosine/network"}


def test_noise_scale_is_zero_without_noise_and_inf_at_a_stationary_point():
    model = nn.Linear(3, 1)
    x = torch.ones(6, 3)  # identical examples: identical gradients, Σ = 0
    out = curvature(model, mse, (x, torch.full((6,), 5.0)), quantities=("noise",), minibatch_size=2)
    assert out["plasticity/grad_noise_scale/network"] == pytest.approx(0.0, abs=1e-9)
    assert out["plasticity/grad_cosine/network"] == pytest.approx(1.0, abs=1e-6)
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    x = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]])  # per-example gradients -e1 and +e1: their mean is 0
    out = curvature(model, mse, (x, torch.ones(2)), quantities=("noise",), minibatch_size=1)
    assert math.isinf(out["plasticity/grad_noise_scale/network"])


def td_loss(critic, batch):
    """SAC-style critic loss against a fixed target: Σ_members mean_batch (Q − y)²."""
    obs, action, target = batch
    return (critic(obs, action) - target).pow(2).mean(dim=1).sum()


def test_noise_on_the_batched_q_ensemble_with_a_fixed_target():
    torch.manual_seed(6)
    critic = QEnsemble(5, 2, (8, 8))
    batch = (torch.randn(20, 5), torch.rand(20, 2) * 2 - 1, torch.randn(20))
    for mode in ("eval", "train"):  # member-by-member and batched paths
        out = curvature(critic, td_loss, batch, quantities=("noise",), minibatch_size=4, mode=mode, seed=1)
        scale, cosine = explicit_noise(critic, td_loss, batch, 4, seed=1)
        assert out["plasticity/grad_noise_scale/network"] == pytest.approx(scale, rel=1e-4)
        assert out["plasticity/grad_cosine/network"] == pytest.approx(cosine, rel=1e-4)
    h = exact_hessian(critic, td_loss, batch)
    out = curvature(critic, td_loss, batch, quantities=("sharpness",), iterations=60, tolerance=1e-7)
    assert out["plasticity/sharpness/network"] == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=0.01)


def tiny_resnet():
    torch.manual_seed(7)
    net = ResNet18(3, in_channels=1, base_width=2, blocks_per_stage=(1, 1, 1, 1))
    net.train()
    with torch.no_grad():  # running statistics away from their initial 0 / 1
        for _ in range(3):
            net(torch.randn(16, 1, 8, 8))
    return net


def test_batchnorm_network_in_eval_mode_noise_and_train_mode_hessian():
    net = tiny_resnet()
    batch = (torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,)))
    net.eval()
    scale, cosine = explicit_noise(net, cross_entropy, batch, 4, seed=0)
    net.train()
    out = curvature(net, cross_entropy, batch, quantities=("noise", "sharpness"), minibatch_size=4)
    assert out["plasticity/grad_noise_scale/network"] == pytest.approx(scale, rel=1e-3)
    assert out["plasticity/grad_cosine/network"] == pytest.approx(cosine, rel=1e-3)
    # train mode: the Hessian of the loss with batch statistics, against the exact one
    names = [n for n, _ in net.named_parameters()]
    head = names[-2:]
    train = curvature(
        net, cross_entropy, batch, quantities=("sharpness",), mode="train", parts={"head": net.head},
        iterations=40, tolerance=1e-7,
    )  # fmt: skip
    block = exact_hessian(net, cross_entropy, batch, params=head)  # net is in train mode
    assert train["plasticity/sharpness/network/head"] == pytest.approx(
        float(torch.linalg.eigvalsh(block)[-1]), rel=0.01
    )
    with pytest.raises(ValueError, match="BatchNorm"):
        curvature(net, cross_entropy, batch, quantities=("noise",), mode="train", minibatch_size=4)


# ----------------------------------------------------------------------------- nothing changes


def snapshot(model, optimizer):
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
    }


def assert_same(a, b):
    for key in ("params", "buffers"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key} {name}"
    assert a["requires_grad"] == b["requires_grad"]
    assert a["modes"] == b["modes"]
    for name in a["grads"]:
        assert (a["grads"][name] is None) == (b["grads"][name] is None), name
        if a["grads"][name] is not None:
            assert torch.equal(a["grads"][name], b["grads"][name]), name
    sa, sb = a["optimizer"], b["optimizer"]
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for field in sa["state"][k]:
            assert torch.equal(torch.as_tensor(sa["state"][k][field]), torch.as_tensor(sb["state"][k][field]))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_model_optimizer_modes_grads_and_rng_are_untouched(mode):
    net = tiny_resnet()
    net.add_module("dropout", nn.Dropout(0.3))  # never called: the mode is still restored
    net.encoder.layer1.eval()  # a mixed state to restore
    net.encoder.stem.conv.weight.requires_grad_(False)  # a frozen parameter stays frozen
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    batch = (torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,)))
    cross_entropy(net, batch).backward()
    optimizer.step()
    cross_entropy(net, batch).backward()  # .grad set, and different from the optimizer's step
    before = snapshot(net, optimizer)
    rng = torch.get_rng_state()
    quantities = (
        ("sharpness", "trace", "rank") if mode == "train" else ("sharpness", "trace", "rank", "noise")
    )

    def loss_with_dropout(model, batch):  # draws from the global RNG in train mode
        x, y = batch
        return F.cross_entropy(F.dropout(model(x), 0.3, training=model.training), y)

    out = curvature(
        net, loss_with_dropout, batch, mode=mode, quantities=quantities, minibatch_size=4, iterations=3,
        trace_probes=2, lanczos_steps=3,
    )  # fmt: skip
    assert all(math.isfinite(v) for v in out.values())
    assert torch.equal(torch.get_rng_state(), rng)
    assert_same(before, snapshot(net, optimizer))


def test_forward_hooks_are_muted_and_kept():
    net, batch = small_problem(seed=12)
    calls = []
    handle = net[1].register_forward_hook(lambda m, i, o: calls.append(o.shape))  # an observer (like CBP's)
    curvature(net, cross_entropy, batch, minibatch_size=8, iterations=3, trace_probes=2, lanczos_steps=3)
    assert calls == []
    net(batch[0])
    assert calls == [(24, 6)]
    handle.remove()


def test_train_mode_noise_draws_dropout_masks_per_example():
    torch.manual_seed(11)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    batch = (torch.randn(16, 4), torch.randint(0, 3, (16,)))
    a = curvature(net, cross_entropy, batch, quantities=("noise",), mode="train", minibatch_size=4)
    b = curvature(net, cross_entropy, batch, quantities=("noise",), mode="eval", minibatch_size=4)
    assert math.isfinite(a["plasticity/grad_noise_scale/network"])
    assert a["plasticity/grad_noise_scale/network"] != b["plasticity/grad_noise_scale/network"]
    assert net.training


def test_frozen_copies_are_measured_with_parameters_all():
    net, batch = small_problem(seed=8)
    frozen = copy.deepcopy(net).requires_grad_(False)  # a hare & tortoise tortoise
    with pytest.raises(ValueError, match="no trainable parameters"):
        curvature(frozen, cross_entropy, batch)
    a = curvature(net, cross_entropy, batch, minibatch_size=8)
    b = curvature(frozen, cross_entropy, batch, minibatch_size=8, parameters="all")
    assert a == pytest.approx(b, rel=1e-6)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_no_grad_context_and_same_seed_same_values():
    net, batch = small_problem(seed=9)
    with torch.no_grad():
        a = curvature(net, cross_entropy, batch, minibatch_size=8)
    b = curvature(net, cross_entropy, batch, minibatch_size=8)
    assert a == b
    assert {tag.split("/")[1] for tag in a} >= set(TAGS)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_one_clear_error():
    net, batch = small_problem()
    with pytest.raises(ValueError, match=r"scalar.*\(24, 3\)"):
        curvature(net, lambda m, b: m(b[0]), batch)
    with pytest.raises(TypeError, match="scalar tensor, got float"):
        curvature(net, lambda m, b: 1.0, batch)
    with pytest.raises(ValueError, match="no trainable parameters"):
        curvature(copy.deepcopy(net).requires_grad_(False), cross_entropy, batch)
    with pytest.raises(ValueError, match="part 'head' has no trainable parameters"):
        curvature(net, cross_entropy, batch, parts={"head": nn.Sequential()})
    for field in ("iterations", "trace_probes", "lanczos_steps", "density_probes", "minibatch_size"):
        with pytest.raises(ValueError, match=f"{field} must be >= 1, got 0"):
            curvature(net, cross_entropy, batch, **{field: 0})
    with pytest.raises(TypeError, match="iterations must be an int"):
        curvature(net, cross_entropy, batch, iterations=2.5)
    with pytest.raises(ValueError, match="quantities must name at least one of sharpness"):
        curvature(net, cross_entropy, batch, quantities=("hessian",))
    with pytest.raises(ValueError, match="mode must be 'eval' or 'train', got 'test'"):
        curvature(net, cross_entropy, batch, mode="test")
    with pytest.raises(ValueError, match=r"rank_threshold .* \(0, 1\), got 2"):
        curvature(net, cross_entropy, batch, rank_threshold=2)
    with pytest.raises(ValueError, match="tolerance must be a finite number >= 0"):
        curvature(net, cross_entropy, batch, tolerance=-1.0)
    with pytest.raises(ValueError, match="minibatch_size 64 is larger than the probe batch \\(24"):
        curvature(net, cross_entropy, batch, quantities=("noise",), minibatch_size=64)
    with pytest.raises(ValueError, match="example dimension first"):
        curvature(net, cross_entropy, (batch[0], batch[1][:5]), quantities=("noise",))
    with pytest.raises(ValueError, match="finite loss"):
        curvature(net, lambda m, b: cross_entropy(m, b) * math.inf, batch)
    with pytest.raises(ValueError, match="name must be"):
        curvature(net, cross_entropy, batch, name="a/b")
    with pytest.raises(ValueError, match="must be >= 1"):
        CurvatureConfig(iterations=0)


# ----------------------------------------------------------------------------- the monitor


def test_plasticity_monitor_adds_curvature_when_given_a_loss():
    torch.manual_seed(10)
    net = MLP(4, (8,), 3)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    config = CurvatureConfig(iterations=5, trace_probes=2, lanczos_steps=5, minibatch_size=8)
    monitor = PlasticityMonitor(
        net, x, name="clf", loss_fn=cross_entropy, loss_inputs=(x, y), curvature_config=config,
        curvature_parts={"encoder": net.encoder, "head": net.head},
    )  # fmt: skip
    out = monitor.measure()
    for tag in TAGS:
        assert f"plasticity/{tag}/clf" in out
    assert "plasticity/sharpness/clf/head" in out and "plasticity/dormant_ratio/clf" in out
    direct = curvature(
        net, cross_entropy, (x, y), name="clf", parts={"encoder": net.encoder, "head": net.head},
        **config.kwargs(),
    )  # fmt: skip
    assert {k: v for k, v in out.items() if k in direct} == direct
    assert "plasticity/sharpness/clf" not in monitor.measure(curvature=False)
    plain = PlasticityMonitor(net, x, name="clf")
    assert "plasticity/sharpness/clf" not in plain.measure()
    with pytest.raises(ValueError, match="loss_fn"):
        plain.curvature()


# ----------------------------------------------------------------------------- the supervised harness


def scalar_tags(run_dir) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


@pytest.fixture(scope="module")
def digits():
    from plasticrl.supervised import load_dataset

    return load_dataset("digits", normalize="unit")


def harness_config(tmp_path, **overrides):
    from plasticrl.supervised import WarmStartConfig
    from plasticrl.supervised.config import SupervisedCurvatureConfig

    values = dict(
        dataset="digits", hidden_dims=(16,), batch_size=64, lr=1e-2, progress=False, probe_size=64,
        log_every=5, run_dir=str(tmp_path / "runs"), phase1_epochs=2, phase2_epochs=2, diagnostics_every=1,
        curvature=SupervisedCurvatureConfig(iterations=8, trace_probes=3, lanczos_steps=8, probe_size=96),
    )  # fmt: skip
    values.update(overrides)
    return WarmStartConfig(**values)


def test_supervised_harness_logs_curvature_at_phase_ends_and_of_the_tortoise(digits, tmp_path):
    import dataclasses
    import json
    from pathlib import Path

    from plasticrl.supervised import warm_start
    from plasticrl.supervised.config import SupervisedHareTortoiseConfig

    config = harness_config(tmp_path)
    config = dataclasses.replace(config, curvature=dataclasses.replace(config.curvature, per_part=True))
    ht = dataclasses.replace(config, hare_tortoise=SupervisedHareTortoiseConfig(enabled=True, every=1))
    summary = warm_start(config, [("warm", config), ("ht", ht)], dataset=digits)
    for arm, phases in (("fresh", 1), ("warm", 2), ("ht", 2)):
        run_dir = Path(summary["runs"][arm][0])
        tags = scalar_tags(run_dir)
        for tag in TAGS:
            assert f"plasticity/{tag}/network" in tags, (arm, tag)
        result = json.loads((run_dir / "result.json").read_text())
        ends = [d for d in result["diagnostics"] if d["when"] == "end"]
        assert [d["phase"] for d in ends] == list(range(phases))
        assert all(set(TAGS) <= set(d) for d in ends)
        # per-epoch diagnostics (not at a phase end) leave the curvature out: it costs tens of backwards
        assert not any("sharpness" in d for d in result["diagnostics"] if d["when"] == "epoch")
        assert {"plasticity/sharpness/network/encoder", "plasticity/sharpness/network/head"} <= tags
        if arm == "ht":  # the evaluated network (the tortoise) is measured too, its parts matched by path
            assert "plasticity/sharpness/tortoise" in tags and "plasticity/srank/tortoise" in tags
            assert "plasticity/sharpness/tortoise/head" in tags
            assert [d["phase"] for d in result["eval_diagnostics"]] == [0, 1]
            assert set(TAGS) | {"dormant_ratio", "weight_norm"} <= set(result["eval_diagnostics"][-1])
        else:
            assert result["eval_diagnostics"] == []


def test_curvature_changes_no_training_and_can_be_turned_off_or_moved(digits, tmp_path):
    import dataclasses

    from plasticrl.supervised import warm_start

    on = harness_config(tmp_path / "on")
    off = harness_config(tmp_path / "off", curvature=dataclasses.replace(on.curvature, enabled=False))
    start = harness_config(
        tmp_path / "start", curvature=dataclasses.replace(on.curvature, at=("start", "end"))
    )
    results = {}
    for label, config in (("on", on), ("off", off), ("start", start)):
        results[label] = warm_start(config, dataset=digits)
    assert results["on"]["arms"]["warm"]["scores"] == results["off"]["arms"]["warm"]["scores"]
    assert results["on"]["arms"]["fresh"]["scores"] == results["start"]["arms"]["fresh"]["scores"]
    read = _results(results)
    assert not any("sharpness" in d for d in read["off"]["warm"]["diagnostics"])
    starts = [d for d in read["start"]["warm"]["diagnostics"] if d["when"] == "start"]
    assert [(d["phase"], "sharpness" in d) for d in starts] == [(0, True), (1, True)]
    # the fresh arm and the warm arm's phase 2 measure the same examples of the full set: at the start of
    # phase 2 only the weights differ, so the fresh arm's start (its initial weights) is a different value
    fresh_start = [d for d in read["start"]["fresh"]["diagnostics"] if d["when"] == "start"][0]
    assert fresh_start["sharpness"] != starts[1]["sharpness"]


def _results(summaries):
    import json
    from pathlib import Path

    return {
        label: {
            arm: json.loads((Path(dirs[0]) / "result.json").read_text()) for arm, dirs in s["runs"].items()
        }
        for label, s in summaries.items()
    }


def test_curvature_flags_and_bad_values():
    from plasticrl.benchmarks import warmstart as module
    from plasticrl.supervised.config import SupervisedCurvatureConfig

    args = module.parse_args(
        ["--curvature.iterations", "7", "--curvature.no-enabled", "--curvature.at", "start"]
    )
    assert args.curvature.iterations == 7 and not args.curvature.enabled and args.curvature.at == ("start",)
    assert module.parse_args([]).curvature.enabled
    with pytest.raises(ValueError, match="iterations must be >= 1, got 0"):
        SupervisedCurvatureConfig(iterations=0)
    with pytest.raises(ValueError, match="probe_size must be an int >= 2"):
        SupervisedCurvatureConfig(probe_size=1)
    with pytest.raises(ValueError, match="curvature.at"):
        SupervisedCurvatureConfig(at=("middle",))
    assert SupervisedCurvatureConfig(probe_size=100).estimator(128).minibatch_size == 50
    assert SupervisedCurvatureConfig().estimator(64).minibatch_size == 64


# ----------------------------------------------------------------------------- the hypothesis benchmark


def test_spearman_with_ties_and_its_interval():
    from plasticrl.benchmarks.sharpness_hypothesis import _ranks, spearman

    assert _ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    x = [0.1, 0.4, 0.2, 0.9, 0.5, 0.3, 0.8, 0.8]
    y = [1.0, 3.0, 2.5, 7.0, 4.0, 2.0, 5.0, 6.0]
    result = spearman(x, y)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert result["rho"] == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-12)
    # Fisher z with Bonett & Wright's standard error sqrt((1 + rho^2 / 2) / (n - 3))
    se = math.sqrt((1 + result["rho"] ** 2 / 2) / 5)
    assert result["low"] == pytest.approx(math.tanh(math.atanh(result["rho"]) - 1.96 * se))
    assert result["high"] == pytest.approx(math.tanh(math.atanh(result["rho"]) + 1.96 * se))
    assert math.isnan(spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])["rho"])


def test_verdicts_follow_the_intervals():
    from plasticrl.benchmarks import sharpness_hypothesis as hypothesis

    assert hypothesis._signed({"mean": 1.0, "ci95": 0.5}, True) == "supports"
    assert hypothesis._signed({"mean": 1.0, "ci95": 0.5}, False) == "contradicts"
    assert hypothesis._signed({"mean": -1.0, "ci95": 0.5}, False) == "supports"
    assert hypothesis._signed({"mean": 0.2, "ci95": 0.5}, True) == "cannot decide"
    assert hypothesis._weak({"rho": 0.1, "low": -0.3, "high": 0.4}) == "supports"
    assert hypothesis._weak({"rho": 0.8, "low": 0.6, "high": 0.9}) == "contradicts"
    assert hypothesis._weak({"rho": 0.5, "low": 0.1, "high": 0.8}) == "cannot decide"
    assert hypothesis._correlated({"rho": -0.7, "low": -0.9, "high": -0.3}, False) == "supports"


def test_sharpness_hypothesis_benchmark_smoke(tmp_path):
    import json

    from plasticrl.benchmarks import sharpness_hypothesis as hypothesis
    from plasticrl.supervised.config import SupervisedCurvatureConfig

    args = hypothesis.Args(
        seeds=(0,), base_epochs=1, train_limit=200, base_width=2, curvature_probe=32, eval_every=5,
        curvature=SupervisedCurvatureConfig(
            at=("start", "end"), last_phase_only=True, iterations=3, trace_probes=2, lanczos_steps=3
        ),
        run_dir=str(tmp_path / "runs"), out_dir=str(tmp_path / "out"), plot=True,
    )  # fmt: skip
    threads = torch.get_num_threads()
    try:
        payload = hypothesis.main(args)  # sets torch's thread count (--threads 1): restored below
    finally:
        torch.set_num_threads(threads)
    assert set(payload["rows"]) == set(hypothesis.ARMS)
    for arm, rows in payload["rows"].items():
        assert len(rows) == 1 and all(math.isfinite(rows[0][key]) for key, *_ in hypothesis.METRICS), arm
    assert payload["rows"]["fresh"][0]["gap"] == 0.0
    table = (tmp_path / "out" / "sharpness_hypothesis.md").read_text()
    for label in hypothesis.LABELS.values():
        assert f"| {label} |" in table
    assert len(payload["verdicts"]) == 10 and "**" in table
    assert (tmp_path / "out" / "sharpness_hypothesis.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "sharpness_hypothesis.json").read_text())["verdicts"]
    # curvature only in the tuning phase (last_phase_only): one start and one end record per warm run
    result = json.loads((Path(payload["runs"]["warm"][0]) / "result.json").read_text())
    assert [(d["phase"], d["when"]) for d in result["diagnostics"] if "sharpness" in d] == [
        (1, "start"),
        (1, "end"),
    ]


def test_intervention_benchmark_prints_the_curvature_costs():
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "intervention_benchmark.py"), "--part", "curvature",
         "--repeats", "1", "--threads", "1", "--curvature-nets", "sac"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = ("one update", "one Hessian-vector product", "sharpness (6 steps)", "sharpness + encoder + head",
            "trace (10 probes)", "rank (1 x 20 steps)", "noise scale + cosine", "after 24 steps")  # fmt: skip
    for row in rows:
        assert row in done.stdout, row
    assert "SAC critic 2x(256,256)" in done.stdout
    assert "DrQ critic (convs" not in done.stdout and "ResNet-18 (w 64)" not in done.stdout
