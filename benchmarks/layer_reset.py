"""Resetting ResNet-18 modules k…6 before phase 2 of a warm start (Berariu et al., App. A.4–A.5).

Modules: 1 = first convolution (with its BatchNorm), 2–5 = the four stages, 6 = the classifier. One warm
arm per k re-initialises modules k…6 with their own initialisers at the phase switch (their optimizer
state cleared); the paper finds that resetting the last 4–5 modules recovers the fresh initialisation's
accuracy. ``--phase2-lr-multiplier 10`` is the paper's larger phase-2 learning rate;
``--blocks-per-stage`` and ``--base-width`` scale depth and width.

    python benchmarks/layer_reset.py --dataset digits --base-width 8 --blocks-per-stage 1 1 1 1 \\
        --phase1-epochs 5 --phase2-epochs 5 --reset-from 6 4 2 --seeds 0 1
    python benchmarks/layer_reset.py --preset berariu --data-dir data --download
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import tyro

from plasticrl.supervised import WARM_START_PRESETS, LayerResetConfig, arms_table, layer_reset, run_cli


@dataclass
class Args(LayerResetConfig):
    """Layer-reset study (see the module docstring)."""


def main(args: Args) -> dict:
    """Run the study; print and return the summary."""
    summary = layer_reset(args)
    print(arms_table(summary))
    return summary


def parse_args(argv: Sequence[str] | None = None) -> Args:
    """Parse the command line; ``--preset NAME`` supplies defaults that the other flags override."""
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = "none"
    for i, token in enumerate(argv):
        if token == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
        elif token.startswith("--preset="):
            preset = token.split("=", 1)[1]
    if preset not in WARM_START_PRESETS:
        raise ValueError(f"--preset {preset!r}: choose one of {', '.join(WARM_START_PRESETS)}")
    defaults = {**WARM_START_PRESETS[preset], "network": "resnet18", "preset": preset}
    return tyro.cli(Args, default=Args(**defaults), args=argv)


if __name__ == "__main__":
    run_cli(main, parse_args)
