"""The supervised training loop, protocols and CLIs: same classes as the agents, schedules, optimizer
handling, checkpoint → resume equality, end-to-end runs on scikit-learn's digits."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import plasticrl.interventions as interventions
import plasticrl.networks as networks
from plasticrl.common import CHECKPOINT_FILE, RESULT_FILE, Run
from plasticrl.supervised import (
    ArmInputs,
    ContinualConfig,
    InterventionSchedule,
    LayerResetConfig,
    Phase,
    RunInterrupted,
    Trainer,
    TrainSettings,
    WarmStartConfig,
    build_interventions,
    build_network,
    check_network_input,
    continual,
    evaluate_accuracy,
    layer_reset,
    load_dataset,
    optimizer_for,
    protocols,
    warm_start,
)
from plasticrl.supervised.config import SupervisedHareTortoiseConfig, SupervisedShrinkPerturbConfig

REPO = Path(__file__).resolve().parents[1]

TINY = dict(
    dataset="digits", hidden_dims=(16,), batch_size=64, lr=1e-2, progress=False, probe_size=64, log_every=5
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", normalize="unit")


def tiny_config(tmp_path, **overrides) -> WarmStartConfig:
    values = {**TINY, "run_dir": str(tmp_path / "runs"), "phase1_epochs": 2, "phase2_epochs": 2}
    values.update(overrides)
    return WarmStartConfig(**values)


# ----------------------------------------------------------------------------- same classes as the agents


def test_harness_uses_the_agents_networks_and_interventions(digits, tmp_path):
    config = tiny_config(
        tmp_path,
        shrink_perturb=SupervisedShrinkPerturbConfig(every=1),
        hare_tortoise=SupervisedHareTortoiseConfig(enabled=True),
        l2_init=interventions.L2InitConfig(enabled=True),
        cbp=interventions.CBPConfig(enabled=True),
    )
    net = build_network(config, digits.image_shape, 10)
    assert type(net) is networks.MLP
    assert (
        type(build_network(dataclasses.replace(config, network="resnet18"), (1, 8, 8), 10))
        is networks.ResNet18
    )
    opt = optimizer_for(config, net)
    x = digits.x_train.flatten(1)
    schedule = build_interventions(config, net, opt, batch_fn=lambda: x[:32], example_inputs=x[:2])
    kinds = [type(i) for i, _ in schedule.entries]
    assert kinds == [
        interventions.HareTortoise,
        interventions.ContinualBackprop,
        interventions.ShrinkPerturb,
        interventions.L2Init,
    ]
    assert isinstance(schedule.interventions, interventions.InterventionSet)
    assert isinstance(config.shrink_perturb, interventions.ShrinkPerturbConfig)
    schedule.close()


def test_harness_and_agents_share_the_same_class_objects():
    """Import identity: the classes the harness builds are the very objects the agents use (one module
    each, not a second copy imported under another name)."""
    from plasticrl.agents import drq, sac
    from plasticrl.common import agent_interventions as agent
    from plasticrl.supervised import config as supervised_config
    from plasticrl.supervised import models, protocols, schedule

    assert models.MLP is sac.MLP is drq.MLP is networks.MLP
    assert models.ResNet18 is networks.ResNet18
    for name in (
        "HareTortoise",
        "ContinualBackprop",
        "ReDo",
        "Reset",
        "ShrinkPerturb",
        "PlasticityInjection",
    ):
        assert getattr(schedule, name) is getattr(agent, name) is getattr(interventions, name), name
    assert schedule.L2Init is agent.L2Init and schedule.InterventionSet is agent.InterventionSet
    assert protocols.Reset is agent.Reset and protocols.PlasticityMonitor is interventions.PlasticityMonitor
    assert supervised_config.CBPConfig is sac.CBPConfig and supervised_config.L2InitConfig is sac.L2InitConfig
    for mine, theirs in (
        (supervised_config.SupervisedResetConfig, agent.ResetConfig),
        (supervised_config.SupervisedShrinkPerturbConfig, agent.ShrinkPerturbConfig),
        (supervised_config.SupervisedHareTortoiseConfig, agent.HareTortoiseConfig),
        (supervised_config.SupervisedReDoConfig, agent.ReDoConfig),
        (supervised_config.SupervisedInjectionConfig, agent.InjectionConfig),
    ):
        assert issubclass(mine, theirs)
    # the repository folders are only ever imported as plasticrl.<name>
    assert not {"networks", "interventions", "supervised", "common"} & set(sys.modules)


# ----------------------------------------------------------------------------- schedules


def test_schedule_units(digits):
    torch.manual_seed(0)
    net = networks.MLP(64, (16,), 10)
    opt = torch.optim.Adam(net.parameters())
    sp = interventions.ShrinkPerturb(SupervisedShrinkPerturbConfig(every=1), net, [opt], modules=[net.head])
    ht = interventions.HareTortoise(SupervisedHareTortoiseConfig(enabled=True, every=2), net, [opt])
    reset = interventions.Reset(interventions.ResetConfig(every=3), net, [opt], modules=[net.encoder])
    schedule = InterventionSchedule([(ht, "epoch"), (reset, "step"), (sp, "phase")])
    x = digits.x_train.flatten(1)[:32]

    net(x).sum().backward()
    opt.step()
    head_before = net.head.weight.detach().clone()
    tortoise_before = ht.tortoise.head.weight.detach().clone()
    assert schedule.after_update(1) == {}
    # the EMA ran after the update even though the hare resets are counted in epochs
    expected = 0.999 * tortoise_before + 0.001 * head_before
    torch.testing.assert_close(ht.tortoise.head.weight, expected)
    assert torch.equal(net.head.weight, head_before)
    assert schedule.after_update(3) == {"interventions/reset": 1.0}
    assert schedule.after_epoch(1) == {}
    assert schedule.after_epoch(2) == {"interventions/hare_tortoise": 1.0}
    assert torch.equal(net.head.weight, ht.tortoise.head.weight)
    assert schedule.at_phase_switch(1) == {"interventions/shrink_perturb": 1.0}
    assert not torch.equal(net.head.weight, ht.tortoise.head.weight)
    assert schedule.eval_network(net) is ht.tortoise


# ----------------------------------------------------------------------------- the loop


def make_trainer(digits, *, seed=0, config=None, run=None, stop=None, reset_optimizer=True):
    config = config or WarmStartConfig(**TINY)
    torch.manual_seed(seed)
    net = build_network(config, digits.image_shape, 10)
    opt = optimizer_for(config, net)
    x = digits.x_train.flatten(1)
    n = x.shape[0]
    phases = [
        Phase("subset", torch.arange(n // 4), digits.y_train[: n // 4], epochs=2),
        Phase("full", torch.arange(n), digits.y_train, epochs=2),
    ]
    monitor = interventions.PlasticityMonitor(net, x[:64])
    settings = TrainSettings(
        lr=config.lr,
        batch_size=config.batch_size,
        reset_optimizer_between_phases=reset_optimizer,
        progress=False,
    )
    trainer = Trainer(
        net,
        opt,
        x,
        phases,
        settings,
        InterventionSchedule([]),
        torch.Generator().manual_seed(seed),
        monitor=monitor,
        evaluator=lambda m, _p: evaluate_accuracy(m, digits.x_test.flatten(1), digits.y_test),
        run=run,
        stop=stop,
    )
    trainer.interventions = build_interventions(
        config, net, opt, batch_fn=lambda: trainer.random_batch(32), example_inputs=x[:2], monitor=monitor
    )
    return trainer


@pytest.mark.parametrize("reset_optimizer", [True, False])
def test_phase_switch_clears_optimizer_state_and_fires_once(digits, monkeypatch, reset_optimizer):
    calls = []
    original = interventions.ShrinkPerturb.apply

    def spy(self):
        calls.append(trainer.state.global_step)
        original(self)

    monkeypatch.setattr(interventions.ShrinkPerturb, "apply", spy)
    config = WarmStartConfig(**TINY, shrink_perturb=SupervisedShrinkPerturbConfig(every=1))
    trainer = make_trainer(digits, config=config, reset_optimizer=reset_optimizer)
    summary = trainer.fit()
    n = digits.x_train.shape[0]
    phase1 = 2 * -(-(n // 4) // 64)
    phase2 = 2 * -(-n // 64)
    assert summary["updates"] == phase1 + phase2
    assert calls == [phase1]  # once, at the switch
    steps = {int(s["step"]) for s in trainer.optimizer.state.values()}
    assert steps == ({phase2} if reset_optimizer else {phase1 + phase2})
    assert [p["updates"] for p in summary["phases"]] == [phase1, phase2]
    assert len(summary["evals"]) == 4 and summary["final_test_accuracy"] > 0.5


class StopAfter(dict):
    """Stands in for stop_on_signals' dict: reports a signal after ``n`` checks."""

    def __init__(self, n):
        super().__init__(signal=None)
        self.n = n

    def get(self, key, default=None):
        self.n -= 1
        return "SIGTERM" if self.n < 0 else None


def test_checkpoint_resume_equals_uninterrupted(digits, tmp_path):
    config = WarmStartConfig(
        **TINY,
        shrink_perturb=SupervisedShrinkPerturbConfig(every=1),
        hare_tortoise=SupervisedHareTortoiseConfig(enabled=True, every=1),
        l2_init=interventions.L2InitConfig(enabled=True),
    )
    reference = make_trainer(digits, config=config)
    expected = reference.fit()

    run = Run.create(tmp_path, "t", "digits", "x", 0, {"a": 1})
    interrupted = make_trainer(digits, config=config, run=run, stop=StopAfter(20))  # stops mid-phase-2
    with pytest.raises(RunInterrupted, match="--resume"):
        interrupted.fit()
    run.close()
    assert interrupted.state.phase == 1 and 0 < interrupted.state.batch_in_epoch

    run, checkpoint = Run.resume(run.path, {"a": 1})
    resumed = make_trainer(
        digits, config=config, seed=123
    )  # a different seed: everything comes from the file
    resumed.run = run
    resumed.load_state_dict(checkpoint)
    result = resumed.fit()
    run.close()
    for a, b in zip(reference.network.parameters(), resumed.network.parameters()):
        assert torch.equal(a, b)
    ht_ref = reference.interventions.hare_tortoise.tortoise
    ht_res = resumed.interventions.hare_tortoise.tortoise
    for a, b in zip(ht_ref.parameters(), ht_res.parameters()):
        assert torch.equal(a, b)
    assert [e["accuracy"] for e in result["evals"]] == [e["accuracy"] for e in expected["evals"]]
    assert result["updates"] == expected["updates"]


# ----------------------------------------------------------------------------- protocols end to end


def test_warm_start_end_to_end_on_digits(digits, tmp_path):
    config = tiny_config(tmp_path, fraction=0.3, label_noise=0.5, seeds=(0, 1))
    arms = [
        ("warm", config),
        ("sp", dataclasses.replace(config, shrink_perturb=SupervisedShrinkPerturbConfig(every=1))),
    ]
    summary = warm_start(config, arms, dataset=digits)
    assert set(summary["arms"]) == {"fresh", "warm", "sp"}
    assert summary["tags"] == {"fresh": "fresh", "warm": "warm", "sp": "warm+sp-0.4-0.1-all-e1-phase"}
    fresh, warm = summary["arms"]["fresh"]["scores"], summary["arms"]["warm"]["scores"]
    assert summary["gap"] == pytest.approx(sum(f - w for f, w in zip(fresh, warm)) / 2)
    for path in summary["runs"]["warm"]:
        run_dir = Path(path)
        assert {"config.json", "eval.csv", "result.json"} <= {p.name for p in run_dir.iterdir()}
        assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
        result = json.loads((run_dir / RESULT_FILE).read_text())
        with (run_dir / "eval.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [float(r["mean_return"]) for r in rows] == pytest.approx(
            [e["accuracy"] for e in result["evals"]]
        )
        assert [p["name"] for p in result["phases"]] == ["subset", "full"]
        assert result["score"] == result["evals"][-1]["accuracy"]
    # the fresh control trains only phase 2, from the same initial weights
    fresh_result = json.loads((Path(summary["runs"]["fresh"][0]) / RESULT_FILE).read_text())
    assert [p["name"] for p in fresh_result["phases"]] == ["full"]


def test_resume_reuses_finished_and_continues_interrupted_arms(digits, tmp_path, monkeypatch):
    config = tiny_config(tmp_path, checkpoint_every=1)
    reference = warm_start(dataclasses.replace(config, run_dir=str(tmp_path / "reference")), dataset=digits)

    @contextlib.contextmanager
    def stop_in_warm_arm():
        yield StopAfter(30)

    calls = {"n": 0}
    real = protocols.stop_on_signals

    def stops(*args):
        calls["n"] += 1
        return stop_in_warm_arm() if calls["n"] == 2 else real(*args)

    monkeypatch.setattr(protocols, "stop_on_signals", stops)
    with pytest.raises(RunInterrupted):
        warm_start(config, dataset=digits)
    warm_dirs = list((tmp_path / "runs").glob("warm_start__digits__warm__*"))
    assert len(warm_dirs) == 1 and (warm_dirs[0] / CHECKPOINT_FILE).is_file()
    assert not (warm_dirs[0] / RESULT_FILE).exists()
    saved = json.loads((warm_dirs[0] / "config.json").read_text())["args"]["settings"]
    # config.json holds every resolved setting, the ones that do not change the arm included
    assert saved == json.loads(json.dumps(dataclasses.asdict(config), default=str))
    assert {"device", "threads", "checkpoint_every", "eval_batch_size"} <= set(saved)
    monkeypatch.setattr(protocols, "stop_on_signals", real)
    # ... and resuming ignores them: other threads, evaluation batch size and device still match
    volatile = dict(threads=torch.get_num_threads(), eval_batch_size=512, device="cpu", checkpoint_every=2)
    resumed = warm_start(dataclasses.replace(config, resume=True, **volatile), dataset=digits)
    assert len(list((tmp_path / "runs").iterdir())) == 2  # the fresh arm was reused, the warm arm continued
    assert resumed["arms"]["warm"]["scores"] == reference["arms"]["warm"]["scores"]
    assert resumed["arms"]["fresh"]["scores"] == reference["arms"]["fresh"]["scores"]


def test_layer_reset_resets_modules_k_to_6(digits, tmp_path):
    config = LayerResetConfig(
        **{**TINY, "batch_size": 128},
        run_dir=str(tmp_path),
        base_width=4,
        blocks_per_stage=(1, 1, 1, 1),
        phase1_epochs=1,
        phase2_epochs=1,
        reset_from=(4,),
        diagnostics_every=0,
        phase2_lr_multiplier=10.0,
    )
    torch.manual_seed(0)
    net = build_network(config, (1, 8, 8), 10)
    opt = optimizer_for(config, net)
    [(reset, unit)] = protocols._layer_reset_builder(4)(net, opt)
    assert unit == "phase" and reset.modules == [net.numbered_module(k) for k in (4, 5, 6)]
    params = [[p.detach().clone() for p in m.parameters()] for m in net.numbered_modules()]
    InterventionSchedule([(reset, unit)]).at_phase_switch(1)
    for k, module in enumerate(net.numbered_modules()):
        changed = [not torch.equal(a, p) for a, p in zip(params[k], module.parameters())]
        # every weight tensor of modules 4..6 is re-drawn (BatchNorm's constant 1/0 init excepted)
        assert any(changed) == (k >= 3), f"module {k + 1}"
    summary = layer_reset(config, dataset=digits)
    assert set(summary["arms"]) == {"fresh", "warm", "reset4-6"}
    # the phase-2 learning-rate multiplier names the warm arms' runs (the fresh control does not use it)
    assert summary["tags"] == {
        "fresh": "fresh",
        "warm": "warm+phase2-lrx10",
        "reset4-6": "reset4-6+phase2-lrx10",
    }
    ones = dataclasses.replace(config, phase2_lr_multiplier=1.0)
    assert protocols._phase2_lr_tag(ones) == () and protocols._phase2_lr_tag(config) == ("phase2-lrx10",)


def test_continual_permuted_tasks_on_digits(digits, tmp_path):
    config = ContinualConfig(
        **{**TINY, "batch_size": 16},
        run_dir=str(tmp_path),
        num_tasks=3,
        normalize="unit",
        diagnostics_every=1,
    )
    summary = continual(config, dataset=digits)
    online = summary["online_accuracy"][0]
    assert len(online) == 3 and all(0.0 < a <= 1.0 for a in online)
    result = json.loads((Path(summary["runs"][0]) / RESULT_FILE).read_text())
    assert [p["name"] for p in result["phases"]] == ["task1", "task2", "task3"]
    assert result["updates"] == 3 * -(-digits.x_train.shape[0] // 16)
    assert summary["first_tasks"]["mean"] == pytest.approx(sum(online) / 3)


def test_class_incremental_evaluates_seen_classes(digits, tmp_path):
    config = ContinualConfig(
        **{**TINY, "batch_size": 32},
        run_dir=str(tmp_path),
        task="class_incremental",
        num_tasks=2,
        classes_per_task=5,
        epochs_per_task=2,
    )
    phases, evaluator = protocols._continual_phases(config, ArmInputs.of(config, digits), 0)
    assert len(phases) == 2 and evaluator is not None
    classes = [set(digits.y_train[p.indices].tolist()) for p in phases]
    assert len(classes[0]) == 5 and not classes[0] & classes[1]
    summary = continual(config, dataset=digits)
    assert len(summary["online_accuracy"][0]) == 2


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_rejected_early(digits, tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        WarmStartConfig(fraction=1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        WarmStartConfig(label_noise=-0.2)
    for k in (0, 7):
        with pytest.raises(ValueError, match="1..6"):
            LayerResetConfig(reset_from=(k,))
    with pytest.raises(ValueError, match="resnet18"):
        LayerResetConfig(network="mlp")
    with pytest.raises(ValueError, match="1..6"):
        networks.ResNet18(10).numbered_module(7)
    mlp = networks.MLP(784, (8,), 10)
    with pytest.raises(ValueError, match=r"\(64,\)"):
        check_network_input(mlp, digits.x_train.flatten(1), 10, "digits")
    with pytest.raises(ValueError, match="100 classes"):
        check_network_input(networks.MLP(64, (8,), 10), digits.x_train.flatten(1), 100, "cifar100")


def test_network_options_a_network_does_not_take_are_errors(digits, tmp_path):
    with pytest.raises(ValueError, match="resnet18 has BatchNorm"):
        WarmStartConfig(network="resnet18", layer_norm=True)
    with pytest.raises(ValueError, match="keeps the width"):
        WarmStartConfig(network="resnet18", activation="crelu")
    for options in (dict(layer_norm=True), dict(activation="crelu"), dict(activation="gelu")):
        with pytest.raises(ValueError, match="linear model"):
            WarmStartConfig(network="linear", **options)
    with pytest.raises(ValueError, match="unknown activation"):
        WarmStartConfig(activation="swish")
    with pytest.raises(ValueError, match="hidden-dims"):
        WarmStartConfig(hidden_dims=())
    # a config changed after construction is refused when the network is built, not ignored
    config = WarmStartConfig(network="resnet18")
    config.layer_norm = True
    with pytest.raises(ValueError, match="LayerNorm"):
        build_network(config, (1, 8, 8), 10)


def test_every_arm_and_network_is_checked_before_training(digits, tmp_path):
    from plasticrl.benchmarks import warmstart
    from plasticrl.supervised import check_sweep

    config = tiny_config(tmp_path, base_width=4, blocks_per_stage=(1, 1, 1, 1))
    with pytest.raises(ValueError) as info:
        check_sweep(config, ["head_reset", "crelu", "layer_norm", "redo"], ["mlp", "resnet18", "linear"])
    message = str(info.value)
    assert "sweep arm(s) crelu, layer_norm cannot run on network 'resnet18'" in message
    assert "sweep arm(s) crelu, layer_norm, redo cannot run on network 'linear'" in message
    allowed = "shrink_perturb, hare_tortoise, head_reset, reset_all, l2_init, redo, cbp, injection"
    assert f"(sweep arms that run on resnet18: {allowed}):" in message
    assert "'mlp'" not in message  # every arm runs on the MLP
    check_sweep(config, ["head_reset", "redo"], ["mlp", "resnet18"])
    with pytest.raises(ValueError, match="unknown sweep arm"):
        check_sweep(config, ["nope"])

    # the command line refuses before the first combination trains: no run directory is written
    args = warmstart.parse_args(
        ["--dataset", "digits", "--hidden-dims", "16", "--sweep", "--sweep-arms", "head_reset", "crelu"]
        + ["--sweep-networks", "mlp", "resnet18", "--base-width", "4", "--run-dir", str(tmp_path / "cli")]
    )
    with pytest.raises(ValueError, match="'crelu'"):
        warmstart.main(args)
    assert not (tmp_path / "cli").exists()
    # warm_start itself builds every arm first: an arm that cannot run fails before the fresh arm trains
    linear = dataclasses.replace(config, network="linear")
    redo = protocols.sweep_arm(linear, "redo")
    with pytest.raises(ValueError, match="arm 'redo' cannot run on --network linear: ReDo"):
        warm_start(linear, [("warm", linear), ("redo", redo)], dataset=digits)
    assert not Path(config.run_dir).exists()


# ----------------------------------------------------------------------------- command lines


def test_warmstart_cli_presets_and_sweep(tmp_path):
    from plasticrl.benchmarks import warmstart

    args = warmstart.parse_args(["--preset", "hare-tortoise", "--lr", "3e-3"])
    assert (args.fraction, args.label_noise, args.lr, args.optimizer) == (0.1, 0.5, 3e-3, "adamw")
    assert args.epochs() == (1000, 111)
    assert (args.shrink_perturb.shrink_factor, args.shrink_perturb.perturb_factor) == (0.2, 0.8)
    assert warmstart.parse_args(["--preset", "ash-adams"]).target_train_accuracy == 0.99
    with pytest.raises(ValueError, match="choose one of"):
        warmstart.parse_args(["--preset", "nope"])

    table = tmp_path / "table.md"
    args = warmstart.parse_args(
        ["--dataset", "digits", "--hidden-dims", "16", "--phase1-epochs", "1", "--phase2-epochs", "1"]
        + ["--sweep", "--sweep-arms", "head_reset", "crelu", "--run-dir", str(tmp_path / "runs")]
        + ["--no-progress", "--diagnostics-every", "0", "--table-out", str(table)]
    )
    summaries = warmstart.main(args)
    text = table.read_text()
    assert "| head_reset | `warm+reset-head-e1-phase` |" in text
    assert "| crelu | `warm+crelu-matched` |" in text
    assert "Ash & Adams Table 1 layout" in text and "| digits |" in text
    assert set(summaries["digits/mlp/adam"]["arms"]) == {"fresh", "warm", "head_reset", "crelu"}


def test_table1_follows_ash_and_adams_order():
    from plasticrl.supervised import summarize_arms, table1, table1_order

    def summary(fresh, warm):
        return summarize_arms({"fresh": fresh, "warm": warm})

    keys = [
        ("cifar100", "mlp", "adam"),
        ("digits", "linear", "sgd"),
        ("svhn", "resnet18", "adam"),
        ("cifar10", "mlp", "sgd"),
        ("aaa", "mlp", "adamw"),
        ("cifar10", "resnet18", "sgd"),
    ]
    rows, columns = table1_order(keys)
    assert rows == [
        ("resnet18", "sgd"),
        ("resnet18", "adam"),
        ("mlp", "sgd"),
        ("mlp", "adam"),
        ("mlp", "adamw"),
        ("linear", "sgd"),
    ]
    assert columns == ["cifar10", "svhn", "cifar100", "digits", "aaa"]
    assert table1_order(reversed(keys)) == (rows, columns)  # stable: independent of the run order
    results = {key: summary([0.8, 0.7], [0.7, 0.5]) for key in keys}
    lines = table1(results).splitlines()
    assert lines[0] == "| | CIFAR-10 | SVHN | CIFAR-100 | digits | aaa |"
    assert [line.split(" | ")[0] for line in lines[2:8]] == [
        "| ResNet SGD",
        "| ResNet Adam",
        "| MLP SGD",
        "| MLP Adam",
        "| MLP AdamW",
        "| LR SGD",
    ]
    # fresh and warm each with their 95% interval (t_{0.975,1} = 12.706), then the paired gap
    cell = "75.0 ± 63.5 / 60.0 ± 127.1 (gap 15.0 ± 63.5)"
    assert lines[2] == f"| ResNet SGD | {cell} | – | – | – | – |"
    assert lines[4] == f"| MLP SGD | {cell} | – | – | – | – |"


@pytest.mark.parametrize("arm", [a for a in protocols.SWEEP_ARMS if a != "warm"])
def test_every_sweep_arm_runs(digits, tmp_path, arm):
    config = tiny_config(tmp_path, phase1_epochs=1, phase2_epochs=2, diagnostics_every=1)
    arm_config = protocols.sweep_arm(config, arm)
    summary = warm_start(config, [(arm, arm_config)], dataset=digits)
    result = json.loads((Path(summary["runs"][arm][0]) / RESULT_FILE).read_text())
    n = digits.y_train.numel()
    assert result["updates"] == -(-round(0.5 * n) // 64) + 2 * -(-n // 64)
    assert result["tag"] == summary["tags"][arm] != "warm"
    assert result["diagnostics"] and "dead_ratio" in result["diagnostics"][-1]


def test_cli_user_errors_are_one_line_and_status_2(tmp_path):
    (tmp_path / "data").mkdir()
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "warmstart.py"), "--dataset", "mnist"]
        + ["--data-dir", str(tmp_path / "data"), "--run-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: dataset 'mnist' is not in --data-dir"), done.stderr
    assert "Traceback" not in done.stderr and "--download" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_run_cli_separates_user_errors_from_bugs(tmp_path, capsys):
    from plasticrl.supervised import run_cli

    folder = tmp_path / "cifar10"
    folder.mkdir()
    (folder / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(SystemExit) as info:  # a corrupt file: ChecksumError from the dataset code
        run_cli(lambda _: load_dataset("cifar10", tmp_path), lambda: None)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "c58f30108f718f92721af3b95e74349a" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:  # a bad value from the settings' validation
        run_cli(lambda config: None, lambda: WarmStartConfig(fraction=2.0))
    assert info.value.code == 2 and "fraction (p)" in capsys.readouterr().err

    def interrupted(_):
        raise RunInterrupted("stopped by SIGTERM; run the same command with --resume to continue")

    with pytest.raises(SystemExit) as info:
        run_cli(interrupted, lambda: None)
    assert info.value.code == 1 and "--resume" in capsys.readouterr().err

    def bug(_):  # the same classes raised outside plasticrl's code are bugs: their traceback stays
        raise ValueError("a bug, not a user error")

    with pytest.raises(ValueError, match="a bug"):
        run_cli(bug, lambda: None)
    with pytest.raises(RuntimeError):
        run_cli(lambda _: torch.zeros(2) @ torch.zeros(3), lambda: None)
    assert capsys.readouterr().err == ""


def test_multi_stage_and_smooth_transition_end_to_end(digits, tmp_path):
    from plasticrl.supervised import MultiStageConfig, SmoothTransitionConfig, multi_stage, smooth_transition

    common = {**TINY, "run_dir": str(tmp_path), "diagnostics_every": 0}
    staged = multi_stage(
        MultiStageConfig(**common, num_stages=2, uniform_fraction=0.0, stage_epochs=1, final_epochs=1),
        dataset=digits,
    )
    assert set(staged["arms"]) == {"fresh", "staged"}
    sizes = staged["stage_sizes"][0]
    assert sizes[-1] == digits.y_train.numel() and sizes[0] < sizes[1] < sizes[2]
    result = json.loads((Path(staged["runs"]["staged"][0]) / RESULT_FILE).read_text())
    assert [p["name"] for p in result["phases"]] == ["stage1", "stage2", "full"]

    smooth = smooth_transition(
        SmoothTransitionConfig(**common, p=0.2, p_final=0.6, biased_epochs=2, total_epochs=3), dataset=digits
    )
    result = json.loads((Path(smooth["runs"]["smooth"][0]) / RESULT_FILE).read_text())
    steps = digits.y_train.numel() // 64
    assert [(p["name"], p["updates"]) for p in result["phases"]] == [("biased", 2 * steps), ("full", steps)]
    assert smooth["tags"]["smooth"] == "p0.2-0.6"


def test_summarize_arms_by_hand():
    from plasticrl.supervised import arms_table, summarize_arms

    summary = summarize_arms({"fresh": [0.9, 0.8], "warm": [0.8, 0.6], "x": [0.85, 0.75]})
    warm, x = summary["arms"]["warm"], summary["arms"]["x"]
    assert summary["gap"] == pytest.approx(0.15) and warm["gap"] == pytest.approx(0.15)
    # paired differences 0.1 and 0.2: sd 0.0707, se 0.05, t_{0.975,1} = 12.706
    assert warm["gap_ci95"] == pytest.approx(12.7062 * 0.05, rel=1e-4)
    assert x["gap"] == pytest.approx(0.05) and x["gap_closed"] == pytest.approx(1 - 0.05 / 0.15)
    assert "| x | `` | 80.0 ± 63.5 | 5.0 ± 0.0 | 67% |" in arms_table(summary)
    no_gap = summarize_arms({"fresh": [0.8, 0.8], "warm": [0.9, 0.85], "x": [0.8, 0.8]})
    assert "gap_closed" not in no_gap["arms"]["x"]  # nothing to close when warm is not worse


def test_resume_ignores_settings_of_interventions_that_are_off():
    base = {"arm": "warm", "settings": {"lr": 1e-3, "cbp": {"enabled": False, "decay_rate": 0.99}}}
    changed = {"arm": "warm", "settings": {"lr": 1e-3, "cbp": {"enabled": False, "decay_rate": 0.5}}}
    assert protocols._active_settings(base) == protocols._active_settings(changed)
    on = {"arm": "warm", "settings": {"lr": 1e-3, "cbp": {"enabled": True, "decay_rate": 0.99}}}
    assert protocols._active_settings(on) != protocols._active_settings(base)
    scheduled = {"arm": "warm", "settings": {"reset": {"every": 0, "at": [3], "modules": ["head"]}}}
    assert "reset" in protocols._active_settings(scheduled)["settings"]
    assert (
        "reset" not in protocols._active_settings({"settings": {"reset": {"every": 0, "at": []}}})["settings"]
    )


def test_prepare_data_limits_and_holds_out():
    from plasticrl.supervised import prepare_data

    data = prepare_data(
        WarmStartConfig(dataset="digits", train_limit=300, validation_fraction=1 / 3, device="cpu")
    )
    n_train = 1797 - round(0.2 * 1797)
    assert data.y_test.numel() == round(n_train / 3)  # the validation share replaces the test split
    assert data.y_train.numel() == 300
    assert torch.bincount(data.y_train, minlength=10).min() >= 28  # stratified: about 30 per class
