"""Schedules, configs, run tags, module resolution, binding errors and optimizer utilities."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import tyro
from torch import nn

from plasticrl.interventions import (
    CBPConfig,
    HareTortoise,
    HareTortoiseConfig,
    InjectionConfig,
    L2InitConfig,
    PlasticityInjection,
    ReDo,
    ReDoConfig,
    Reset,
    ResetConfig,
    ScheduleConfig,
    ShrinkPerturb,
    ShrinkPerturbConfig,
    add_params_,
    clear_state_,
    resolve_modules,
    run_tag,
    zero_state_entries_,
)
from plasticrl.networks import MLP


def make_net(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(3, [8, 8], 2)


# ---------------------------------------------------------------- schedules


def test_schedule_every_start_until_and_at():
    s = ScheduleConfig(every=3, at=(4, 20), start=3, until=13)
    fired = [t for t in range(0, 25) if s.fires(t)]
    # every 3 within [3, 13), plus listed updates within the window (20 is past `until`).
    assert fired == [3, 4, 6, 9, 12]


def test_schedule_off_by_default_and_never_at_zero():
    assert not ScheduleConfig().scheduled
    assert not any(ScheduleConfig().fires(t) for t in range(100))
    assert not ScheduleConfig(every=5).fires(0)
    assert ScheduleConfig(every=5).fires(5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every": -1}, "every"),
        ({"at": (0,)}, "at"),
        ({"start": -1}, "start"),
        ({"start": 10, "until": 10}, "until"),
        ({"every": 2.5}, "every"),
    ],
)
def test_schedule_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ScheduleConfig(**kwargs)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ShrinkPerturbConfig(shrink_factor=1.5), "shrink_factor"),
        (lambda: ShrinkPerturbConfig(perturb_factor=-0.1), "perturb_factor"),
        (lambda: HareTortoiseConfig(momentum=1.0), "momentum"),
        (lambda: HareTortoiseConfig(momentum=-0.1), "momentum"),
        (lambda: ReDoConfig(threshold=-0.01), "threshold"),
        (lambda: ReDoConfig(threshold=float("nan")), "threshold.*finite"),
        (lambda: ReDoConfig(threshold=float("inf")), "threshold.*finite"),
        (lambda: L2InitConfig(coef=-1.0), "coef"),
        (lambda: L2InitConfig(coef=float("nan")), "coef.*finite"),
        (lambda: L2InitConfig(coef=float("inf")), "coef.*finite"),
        (lambda: L2InitConfig(coef=-float("inf")), "coef.*finite"),
        (lambda: CBPConfig(decay_rate=1.0), "decay_rate"),
        (lambda: CBPConfig(replacement_rate=2.0), "replacement_rate"),
        (lambda: ResetConfig(modules=()), "modules"),
        (lambda: ResetConfig(modules="head"), "modules"),
        (lambda: ResetConfig(every=-40000), "every"),
    ],
)
def test_config_bad_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_everything_off_by_default():
    configs = [
        ResetConfig(),
        ShrinkPerturbConfig(),
        HareTortoiseConfig(),
        L2InitConfig(),
        ReDoConfig(),
        InjectionConfig(),
        CBPConfig(),
    ]
    assert not any(c.enabled for c in configs)
    assert run_tag(configs) == "baseline"


def test_published_defaults():
    assert (ShrinkPerturbConfig().shrink_factor, ShrinkPerturbConfig().perturb_factor) == (0.4, 0.1)
    assert HareTortoiseConfig().momentum == 0.999
    assert L2InitConfig().coef == 1e-2
    assert ReDoConfig().threshold == 0.1
    cbp = CBPConfig()
    assert (cbp.replacement_rate, cbp.decay_rate, cbp.maturity_threshold) == (1e-4, 0.99, 100)


# ---------------------------------------------------------------- run tags (peers mistake #7)


def test_run_tag_names_every_active_intervention_in_order():
    configs = [
        ResetConfig(every=40000, modules=("head",)),
        ShrinkPerturbConfig(every=40000, shrink_factor=0.5, perturb_factor=0.5, modules=("encoder",)),
        HareTortoiseConfig(enabled=True, every=10000),
        L2InitConfig(enabled=False),
        ReDoConfig(every=1000),
        InjectionConfig(at=(50000,)),
        CBPConfig(enabled=True),
        L2InitConfig(enabled=True, coef=1e-3),
    ]
    tag = run_tag(configs)
    assert tag == (
        "reset-head-e40000+sp-0.5-0.5-encoder-e40000+ht-0.999-e10000+redo-0.1-e1000"
        "+inject-head-at50000+cbp-0.0001-m100+l2init-0.001"
    )
    assert run_tag(configs) == tag  # deterministic
    assert "/" not in tag and " " not in tag


def test_run_tag_distinguishes_settings():
    a = run_tag([ResetConfig(every=40000, modules=("last:2",))])
    b = run_tag([ResetConfig(every=20000, modules=("last:2",))])
    c = run_tag([ResetConfig(every=40000, modules=("all",))])
    assert len({a, b, c}) == 3
    assert a == "reset-last2-e40000"


# ---------------------------------------------------------------- tyro groups


@dataclass
class _Args:
    reset: ResetConfig = field(default_factory=ResetConfig)
    shrink_perturb: ShrinkPerturbConfig = field(default_factory=ShrinkPerturbConfig)
    hare_tortoise: HareTortoiseConfig = field(default_factory=HareTortoiseConfig)
    redo: ReDoConfig = field(default_factory=ReDoConfig)


def test_configs_work_as_nested_tyro_groups():
    args = tyro.cli(
        _Args,
        args=[
            "--reset.every",
            "40000",
            "--reset.modules",
            "head",
            "encoder",
            "--shrink-perturb.shrink-factor",
            "0.5",
            "--hare-tortoise.enabled",
            "--hare-tortoise.act-with",
            "hare",
            "--redo.until",
            "100000",
        ],
    )
    assert args.reset == ResetConfig(every=40000, modules=("head", "encoder"))
    assert args.shrink_perturb.shrink_factor == 0.5
    assert args.hare_tortoise.enabled and args.hare_tortoise.act_with == "hare"
    assert args.redo.until == 100000


def test_tyro_rejects_bad_values_with_the_field_name():
    with pytest.raises((SystemExit, ValueError)):
        tyro.cli(_Args, args=["--shrink-perturb.shrink-factor", "2.0"])


# ---------------------------------------------------------------- module resolution and binding


def test_resolve_modules_names():
    net = make_net()
    assert resolve_modules(net, ["head"]) == [net.head]
    assert resolve_modules(net, ["encoder.1"]) == [net.encoder[1]]
    assert resolve_modules(net, ["encoder.1.linear"]) == [net.encoder[1].linear]
    assert resolve_modules(net, ["last:2"]) == [net.encoder[1].linear, net.head]
    assert resolve_modules(net, ["all"]) == [net]
    # Nested selections collapse to the outer module; duplicates are removed.
    assert resolve_modules(net, ["all", "head"]) == [net]
    assert resolve_modules(net, ["head", "last:1"]) == [net.head]


@pytest.mark.parametrize(
    "name, match", [("heads", "available: .*head"), ("last:0", "last:K"), ("last:9", "last:K")]
)
def test_resolve_modules_errors(name, match):
    with pytest.raises(ValueError, match=match):
        resolve_modules(make_net(), [name])


def test_binding_errors():
    net, other = make_net(0), make_net(1)
    opt = torch.optim.Adam(net.parameters())
    cfg = ResetConfig(every=10)
    with pytest.raises(ValueError, match="not part of the bound network"):
        Reset(cfg, net, [opt], modules=[other.head])
    with pytest.raises(ValueError, match="not held by any"):
        Reset(cfg, net, [torch.optim.Adam(net.encoder.parameters())])
    with pytest.raises(ValueError, match="holds none"):
        Reset(cfg, net, [opt, torch.optim.Adam(other.parameters())])
    with pytest.raises(ValueError, match="not held by any"):
        Reset(cfg, net, [])
    with pytest.raises(TypeError, match="sequence of optimizers"):
        Reset(cfg, net, opt)
    with pytest.raises(ValueError, match="does not match"):
        Reset(cfg, net, [opt], targets=[MLP(3, [8, 8], 5)])
    with pytest.raises(ValueError, match="no part"):
        Reset(cfg, net, [opt], targets=[nn.Linear(3, 2)])
    with pytest.raises(ValueError, match="bound network itself"):
        Reset(cfg, net, [opt], targets=[net])
    with pytest.raises(ValueError, match="factors given"):
        ShrinkPerturb(
            ShrinkPerturbConfig(every=1), net, [opt], modules=[net.head], factors={net.encoder: (1, 0)}
        )
    with pytest.raises(ValueError, match="alpha"):
        ShrinkPerturb(
            ShrinkPerturbConfig(every=1), net, [opt], modules=[net.head], factors={net.head: (1.5, 0)}
        )


@pytest.mark.parametrize(
    "schedule, match",
    [
        ({}, "never fires.*every > 0 or at="),
        ({"every": 10, "until": 10}, "no update in"),
        ({"every": 10, "start": 11, "until": 20}, "no update in"),
        ({"at": (3,), "start": 5}, "no update in"),
    ],
)
@pytest.mark.parametrize("kind", ["reset", "shrink_perturb", "redo", "injection"])
def test_scheduled_interventions_whose_schedule_never_fires_are_an_error(kind, schedule, match):
    net = make_net()
    opt = torch.optim.Adam(net.parameters())
    x = torch.randn(8, 3)
    make = {
        "reset": lambda: Reset(ResetConfig(**schedule), net, [opt]),
        "shrink_perturb": lambda: ShrinkPerturb(ShrinkPerturbConfig(**schedule), net, [opt]),
        "redo": lambda: ReDo(ReDoConfig(**schedule), net, lambda: x, [opt]),
        "injection": lambda: PlasticityInjection(InjectionConfig(**schedule), net, [opt]),
    }[kind]
    with pytest.raises(ValueError, match=match):
        make()


def test_schedules_that_fire_somewhere_bind():
    net = make_net()
    opt = torch.optim.Adam(net.parameters())
    # The window [start, until) holds a multiple of every, or a listed update.
    Reset(ResetConfig(every=10, start=11, until=21), net, [opt])
    Reset(ResetConfig(at=(5,), start=5, until=6), net, [opt])
    Reset(ResetConfig(every=1000, at=(3,), until=4), net, [opt])
    # Hare & tortoise without a hare-reset schedule is an EMA only (valid); a window without a reset is not.
    HareTortoise(HareTortoiseConfig(enabled=True), net, [opt])
    with pytest.raises(ValueError, match="hare-reset schedule"):
        HareTortoise(HareTortoiseConfig(enabled=True, at=(2,), start=3), net, [opt])


# ---------------------------------------------------------------- optimizer utilities

OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam_foreach": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True),
    "adam_fused": lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
    "sgd_momentum_foreach": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, foreach=True),
    "rmsprop_centered": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9, centered=True),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2, initial_accumulator_value=0.1),
    "adadelta": lambda p: torch.optim.Adadelta(p),
    "adamax": lambda p: torch.optim.Adamax(p, lr=1e-2),
    "nadam": lambda p: torch.optim.NAdam(p, lr=1e-2),
    "radam": lambda p: torch.optim.RAdam(p, lr=1e-2),
    "rprop": lambda p: torch.optim.Rprop(p, lr=0.03),
}
# The value each optimizer initialises a per-entry state with (torch.optim ``_init_group``), where not 0.
INITIAL_STATE = {("adagrad", "sum"): 0.1, ("rprop", "step_size"): 0.03}


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    torch.manual_seed(123)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(16, 3)).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_zero_state_entries_zeroes_exactly_those_entries(kind):
    net = make_net()
    opt = OPTIMIZERS[kind](net.parameters())
    _train(net, opt)
    weight = net.head.weight
    before = {k: v.clone() for k, v in opt.state[weight].items() if torch.is_tensor(v)}
    moment_keys = [k for k, v in before.items() if v.shape == weight.shape]
    assert moment_keys, "optimizer has per-entry moments"
    cols = torch.tensor([1, 5])
    zero_state_entries_([opt], weight, cols, dim=1)
    for key in moment_keys:
        after = opt.state[weight][key]
        # Back to the optimizer's initial value: Rprop's step sizes at 0 would freeze those entries.
        assert torch.all(after[:, cols] == INITIAL_STATE.get((kind, key), 0.0))
        keep = torch.ones(weight.shape[1], dtype=torch.bool)
        keep[cols] = False
        assert torch.equal(after[:, keep], before[key][:, keep])
    if "step" in before:
        assert torch.equal(opt.state[weight]["step"], before["step"])
    _train(net, opt, steps=1)  # the optimizer still steps with the edited state


def test_rprop_entries_keep_learning_after_a_reset():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    opt = torch.optim.Rprop(layer.parameters(), lr=0.01)
    x = torch.randn(8, 3)
    for _ in range(2):
        opt.zero_grad()
        layer(x).sum().backward()
        opt.step()
    zero_state_entries_([opt], layer.weight, torch.tensor([0]), 0)
    start = layer.weight.detach().clone()
    for _ in range(20):
        opt.zero_grad()
        (layer(x) - 5).pow(2).sum().backward()
        opt.step()
    moved = (layer.weight - start).abs().amax(dim=1)
    assert moved[0] > 0.1 and moved[1] > 0.1


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda p: torch.optim.ASGD(p, lr=1e-2), "'ax'"),  # an averaged parameter, not a moment
        (lambda p: torch.optim.Adafactor(p, lr=1e-2), "'row_var'"),  # factored: not shaped like the weight
    ],
    ids=["asgd", "adafactor"],
)
def test_zero_state_entries_refuses_unknown_per_entry_state(make, key):
    net = make_net()
    opt = make(net.parameters())
    _train(net, opt)
    before = {k: v.clone() for k, v in opt.state[net.head.weight].items()}
    with pytest.raises(ValueError, match=f"per-entry state {key}.*cannot reset"):
        zero_state_entries_([opt], net.head.weight, torch.tensor([1]), dim=1)
    for k, v in opt.state[net.head.weight].items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_clear_state_restarts_like_a_new_parameter(kind):
    net = make_net()
    opt = OPTIMIZERS[kind](net.parameters())
    _train(net, opt)
    clear_state_([opt], net.head.parameters())
    assert all(p not in opt.state for p in net.head.parameters())
    assert net.encoder[0].linear.weight in opt.state
    _train(net, opt, steps=1)
    state = opt.state[net.head.weight]
    if "step" in state:
        assert float(state["step"]) == 1.0
        assert float(opt.state[net.encoder[0].linear.weight]["step"]) == 4.0


def test_add_params_copies_group_hyperparameters():
    net = make_net()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, betas=(0.8, 0.9), eps=1.5e-4, weight_decay=0.1)
    extra = nn.Linear(2, 2)
    add_params_(opt, extra.parameters(), like=net.head.weight)
    group = opt.param_groups[-1]
    assert group["params"] == list(extra.parameters())
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        3e-4,
        (0.8, 0.9),
        1.5e-4,
        0.1,
    )
    with pytest.raises(ValueError, match="already held"):
        add_params_(opt, extra.parameters(), like=net.head.weight)


def test_ordered_configs_follow_the_one_application_order():
    from types import SimpleNamespace

    from plasticrl.interventions import INTERVENTION_ORDER, ordered_configs

    settings = SimpleNamespace(**{name: f"config:{name}" for name in INTERVENTION_ORDER})
    assert ordered_configs(settings) == [f"config:{name}" for name in INTERVENTION_ORDER]
    assert INTERVENTION_ORDER.index("hare_tortoise") < INTERVENTION_ORDER.index("reset")
    with pytest.raises(AttributeError, match="redo"):
        ordered_configs(SimpleNamespace(**{n: None for n in INTERVENTION_ORDER if n != "redo"}))


def test_agents_bind_interventions_in_the_application_order():
    import torch
    from torch import nn

    from plasticrl.agents.sac import Args
    from plasticrl.common.agent_interventions import build_interventions
    from plasticrl.interventions import HareTortoiseConfig, ReDoConfig, ResetConfig

    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.Adam(net.parameters())
    x = torch.randn(4, 3)
    on = {
        "reset": ResetConfig(every=5, modules=("all",)),
        "redo": ReDoConfig(every=5),
        "hare_tortoise": HareTortoiseConfig(enabled=True),
    }
    rl_set, _ = build_interventions(
        Args(**on), net, nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)), {"critic": ([net], opt)},
        batch_fn=lambda: x, example_inputs=x,
    )  # fmt: skip
    # INTERVENTION_ORDER: hare & tortoise, (cbp), redo, reset; the harness's order is checked in
    # tests/test_supervised_train.py.
    assert [type(i).__name__ for i in rl_set] == ["HareTortoise", "ReDo", "Reset"]
