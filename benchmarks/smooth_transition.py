"""Smooth transition from a pretraining subset to the full set (Berariu et al., App. A.2).

One training run whose batches draw each example from the full training set with probability p and from
a pretraining subset otherwise, for the first ``--biased-epochs`` epochs (``--p-final`` moves p linearly),
then from the full set alone; an epoch is n_train / batch_size such draws. The control draws from the full
set throughout. The paper finds a generalisation gap even after few biased epochs.

    python benchmarks/smooth_transition.py --dataset digits --p 0.2 --biased-epochs 5 --total-epochs 20
"""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from plasticrl.supervised import SmoothTransitionConfig, arms_table, run_cli, smooth_transition


@dataclass
class Args(SmoothTransitionConfig):
    """Smooth-transition study (see the module docstring)."""


def main(args: Args) -> dict:
    """Run the study; print and return the summary."""
    summary = smooth_transition(args)
    print(arms_table(summary))
    return summary


if __name__ == "__main__":
    run_cli(main, lambda: tyro.cli(Args))
