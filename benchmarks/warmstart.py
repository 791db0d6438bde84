"""Warm start vs fresh initialisation, and how much of the gap each intervention closes.

Phase 1 trains on a class-stratified share p of the training set with a share q of its labels flipped to
another class, phase 2 on the full clean set; a fresh-initialisation control (no interventions, same
initial weights per seed) trains on phase 2 alone. The generalisation gap is fresh − warm test accuracy,
with a Student-t 95% interval over the paired per-seed differences. Presets: ``ash-adams`` (Ash & Adams
2020: 50% → 100%, each phase to 99% training accuracy, validation on 1/3 of the training split),
``hare-tortoise`` (Lee et al. 2024: 10% with 50% label noise → 100%, epochs 100 / data ratio, AdamW,
warm-up, clipping), ``berariu`` (Berariu et al.: ResNet-18 on CIFAR-10, 350 + 500 epochs, mean of the
last 100 epochs). Other flags override the preset's values.

    python benchmarks/warmstart.py --dataset digits --seeds 0 1 2
    python benchmarks/warmstart.py --preset hare-tortoise --seeds 0 1 2 3 4 --shrink-perturb.every 1
    python benchmarks/warmstart.py --preset hare-tortoise --sweep --seeds 0 1 2 3 4 \\
        --sweep-arms shrink_perturb hare_tortoise head_reset l2_init --table-out table.md
    python benchmarks/warmstart.py --preset ash-adams --sweep --sweep-datasets cifar10 svhn cifar100 \\
        --sweep-networks mlp resnet18 --sweep-optimizers sgd adam --data-dir data --download

Without ``--sweep`` the warm arm uses the intervention flags given (``--shrink-perturb.every 1`` shrinks
and perturbs at the phase switch). ``--sweep`` runs fresh, plain warm and one warm arm per
``--sweep-arms`` entry, for every dataset × network × optimizer combination, and prints one Markdown table
per combination plus one in the layout of Ash & Adams' Table 1 (rows ResNet SGD, ResNet Adam, MLP SGD,
MLP Adam, columns CIFAR-10, SVHN, CIFAR-100, then the others). Every arm × network combination is checked
before anything trains. Run directories land in ``--run-dir``; ``--resume`` reuses finished arms and
continues unfinished ones. Expected errors (missing data, bad values) print ``error: ...`` and exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tyro

from plasticrl.supervised import (
    NETWORK_NAMES,
    SWEEP_ARMS,
    WARM_START_PRESETS,
    WarmStartConfig,
    arms_table,
    check_sweep,
    dataset_names,
    run_cli,
    sweep_arm,
    table1,
    warm_start,
)


@dataclass
class Args(WarmStartConfig):
    """Warm-start study (see the module docstring)."""

    sweep: bool = False
    """run fresh, warm and every --sweep-arms arm over the seeds and print Markdown tables"""
    sweep_arms: tuple[str, ...] = ("shrink_perturb", "hare_tortoise", "head_reset", "l2_init")
    """sweep arms besides fresh and warm (shrink_perturb hare_tortoise head_reset reset_all l2_init redo cbp
    injection crelu layer_norm)"""
    sweep_datasets: tuple[str, ...] = ()
    """datasets to sweep over (default: --dataset)"""
    sweep_networks: tuple[str, ...] = ()
    """networks to sweep over: mlp, linear, resnet18 (default: --network)"""
    sweep_optimizers: tuple[str, ...] = ()
    """optimizers to sweep over: adam, adamw, sgd (default: --optimizer)"""
    table_out: str | None = None
    """also write the Markdown table(s) to this file"""
    json_out: str | None = None
    """also write the summaries to this JSON file"""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.sweep_arms:
            if name not in SWEEP_ARMS or name == "warm":
                raise ValueError(f"unknown sweep arm {name!r}; choose from {', '.join(SWEEP_ARMS[1:])}")
        choices = {
            "sweep_datasets": dataset_names(),
            "sweep_networks": NETWORK_NAMES,
            "sweep_optimizers": ("adam", "adamw", "sgd"),
        }
        for field, allowed in choices.items():
            for name in getattr(self, field):
                if name not in allowed:
                    flag = "--" + field.replace("_", "-")
                    raise ValueError(f"{flag} {name!r}: choose from {', '.join(allowed)}")


def _study_config(args: Args) -> WarmStartConfig:
    fields = {f.name for f in dataclasses.fields(WarmStartConfig)}
    return WarmStartConfig(**{name: getattr(args, name) for name in fields})


def _combinations(args: Args) -> list[tuple[str, str, str]]:
    datasets = args.sweep_datasets or (args.dataset,)
    networks = args.sweep_networks or (args.network,)
    optimizers = args.sweep_optimizers or (args.optimizer,)
    return [(d, n, o) for d in datasets for n in networks for o in optimizers]


def main(args: Args) -> dict:
    """Run the study; print and return its summaries."""
    config = _study_config(args)
    if not args.sweep:
        summary = warm_start(config)
        tables = arms_table(summary)
        summaries = {"single": summary}
    else:
        combinations = _combinations(args)
        # Every arm on every network is built once before anything trains (a clear error, not one after
        # hours of earlier combinations).
        check_sweep(config, args.sweep_arms, [network for _, network, _ in combinations])
        summaries, by_combination, blocks = {}, {}, []
        for dataset, network, optimizer in combinations:
            combo = dataclasses.replace(config, dataset=dataset, network=network, optimizer=optimizer)
            arms = [(name, sweep_arm(combo, name)) for name in ("warm", *args.sweep_arms)]
            summary = warm_start(combo, arms)
            key = f"{dataset}/{network}/{optimizer}"
            summaries[key] = summary
            by_combination[(dataset, network, optimizer)] = summary
            epochs = "/".join(str(e) for e in summary["epochs"])
            title = f"### {key} (p {combo.fraction:g}, q {combo.label_noise:g}, epochs {epochs})"
            blocks.append(f"{title}\n\n{arms_table(summary)}")
        blocks.append("### Ash & Adams Table 1 layout\n\n" + table1(by_combination))
        tables = "\n\n".join(blocks)
    print(tables)
    if args.table_out:
        Path(args.table_out).write_text(tables + "\n")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summaries, indent=2, default=str) + "\n")
    return summaries


def _preset_in(argv: Sequence[str]) -> str:
    for i, token in enumerate(argv):
        if token == "--preset" and i + 1 < len(argv):
            name = argv[i + 1]
        elif token.startswith("--preset="):
            name = token.split("=", 1)[1]
        else:
            continue
        if name not in WARM_START_PRESETS:
            raise ValueError(f"--preset {name!r}: choose one of {', '.join(WARM_START_PRESETS)}")
        return name
    return "none"


def parse_args(argv: Sequence[str] | None = None) -> Args:
    """Parse the command line; ``--preset NAME`` supplies the defaults that the other flags override."""
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = _preset_in(argv)
    return tyro.cli(Args, default=Args(**WARM_START_PRESETS[preset], preset=preset), args=argv)


if __name__ == "__main__":
    run_cli(main, parse_args)
