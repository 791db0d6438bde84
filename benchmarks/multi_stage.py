"""Multi-stage pretraining with class-imbalanced splits (Berariu et al., App. A.3).

K pretraining stages on nested subsets D_1 ⊂ … ⊂ D_K, each adding a random share of D_u (the r-fraction
of the data taken uniformly) and all examples of a new group of classes, then the final stage on the
whole training set; the fresh control trains only the final stage. r = 1 grows the data uniformly, r = 0
brings new classes per stage. The paper finds the final test accuracy falls with more stages and with
more class imbalance between stages.

    python benchmarks/multi_stage.py --dataset digits --num-stages 3 --uniform-fraction 0 --seeds 0 1 2
"""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from plasticrl.supervised import MultiStageConfig, arms_table, multi_stage, run_cli


@dataclass
class Args(MultiStageConfig):
    """Multi-stage pretraining study (see the module docstring)."""


def main(args: Args) -> dict:
    """Run the study; print and return the summary."""
    summary = multi_stage(args)
    print(f"stage sizes per seed: {summary['stage_sizes']}")
    print(arms_table(summary))
    return summary


if __name__ == "__main__":
    run_cli(main, lambda: tyro.cli(Args))
