"""Index-level constructions of the supervised plasticity studies (all on tensors, seeded generators).

- :func:`stratified_split` / :func:`warm_start_split`: a class-balanced fraction p of the training set
  with a fraction q of its labels replaced by a *different* class (phase 1), then the full clean set
  (phase 2): Ash & Adams 2020 (p 0.5, q 0) and Lee et al. 2024 (p 0.1, q 0.5).
- :func:`multi_stage_splits`: nested, class-imbalanced pretraining sets (Berariu et al., App. A.3).
- :class:`MixedSampler`: the smooth transition (each example from the full set with probability p, else
  from the pretraining subset; Berariu et al., App. A.2).
- :func:`task_permutation`, :func:`random_labels`, :func:`class_incremental_tasks`: continual task
  streams (permuted inputs, random labels, new classes per task).

Counts that are fractions of a set size are rounded half up (``floor(x + 0.5)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "MixedSampler",
    "WarmStartSplit",
    "check_fraction",
    "class_incremental_tasks",
    "corrupt_labels",
    "multi_stage_splits",
    "proportional_counts",
    "random_labels",
    "round_half_up",
    "stratified_split",
    "task_permutation",
    "warm_start_split",
]


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float if it lies in [0, 1]; ValueError naming ``name`` otherwise (NaN included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
    return float(value)


def round_half_up(x: float) -> int:
    """Nearest integer, halves rounded up (Python's ``round`` rounds halves to even)."""
    return int(math.floor(x + 0.5))


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")


def proportional_counts(sizes: torch.Tensor, total: int) -> torch.Tensor:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainder method).

    Each group gets floor or ceil of its exact share ``total·size/Σsize`` and the counts sum to
    ``total``; ties in the remainder go to the lower group index.
    """
    sizes = sizes.to(torch.int64)
    n = int(sizes.sum())
    if not 0 <= total <= n:
        raise ValueError(f"cannot take {total} of {n} items")
    if n == 0:
        return torch.zeros_like(sizes)
    exact = sizes.to(torch.float64) * total / n
    counts = exact.floor().to(torch.int64)
    remainder = exact - counts
    short = total - int(counts.sum())
    if short:
        order = torch.argsort(-remainder, stable=True)
        counts[order[:short]] += 1
    return torch.minimum(counts, sizes)


def stratified_split(
    labels: torch.Tensor, fraction: float, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected, rest): a random ``round(fraction·n)`` indices with each class represented in proportion
    (floor or ceil of ``fraction·n_c``), and the other indices. Both sorted ascending."""
    check_fraction("fraction", fraction)
    _check_labels(labels, num_classes)
    labels = labels.cpu()
    n = labels.numel()
    class_sizes = torch.bincount(labels, minlength=num_classes)
    counts = proportional_counts(class_sizes, round_half_up(fraction * n))
    chosen = torch.zeros(n, dtype=torch.bool)
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        pick = members[torch.randperm(members.numel(), generator=generator)[: int(counts[c])]]
        chosen[pick] = True
    return chosen.nonzero().flatten(), (~chosen).nonzero().flatten()


def corrupt_labels(
    labels: torch.Tensor, rate: float, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy labels, mask): exactly ``round(rate·n)`` random examples get a label drawn uniformly from the
    *other* classes (as in dojeon-ai/Hare-Tortoise ``PartialImageFolder``); the rest keep theirs."""
    check_fraction("label noise rate", rate)
    _check_labels(labels, num_classes)
    labels = labels.cpu()
    n = labels.numel()
    count = round_half_up(rate * n)
    mask = torch.zeros(n, dtype=torch.bool)
    noisy = labels.clone()
    if count == 0:
        return noisy, mask
    if num_classes < 2:
        raise ValueError("label noise needs at least 2 classes (a wrong label must be another class)")
    chosen = torch.randperm(n, generator=generator)[:count]
    mask[chosen] = True
    # y + k mod C with k uniform in 1..C-1 is uniform over the C-1 other classes and never y itself.
    shift = torch.randint(1, num_classes, (count,), generator=generator)
    noisy[chosen] = (labels[chosen] + shift) % num_classes
    return noisy, mask


@dataclass
class WarmStartSplit:
    """Phase 1: ``phase1_indices`` with ``phase1_labels`` (``noisy`` marks the corrupted ones);
    phase 2: every training index with its clean label."""

    phase1_indices: torch.Tensor
    phase1_labels: torch.Tensor
    noisy: torch.Tensor
    phase2_indices: torch.Tensor
    phase2_labels: torch.Tensor


def warm_start_split(
    labels: torch.Tensor,
    fraction: float,
    label_noise: float,
    num_classes: int,
    generator: torch.Generator,
) -> WarmStartSplit:
    """The two-phase warm-start data: a stratified ``fraction`` with ``label_noise`` of its labels wrong,
    then the complete, clean training set."""
    fraction = check_fraction("fraction (p, the share of the training set in phase 1)", fraction)
    label_noise = check_fraction("label_noise (q, the share of phase-1 labels corrupted)", label_noise)
    if fraction == 0.0:
        raise ValueError("fraction (p) must be > 0: phase 1 needs at least one example")
    labels_cpu = labels.cpu()
    phase1, _ = stratified_split(labels_cpu, fraction, num_classes, generator)
    if phase1.numel() == 0:
        raise ValueError(f"fraction {fraction} of {labels.numel()} examples rounds to an empty phase 1")
    noisy_labels, mask = corrupt_labels(labels_cpu[phase1], label_noise, num_classes, generator)
    device = labels.device
    return WarmStartSplit(
        phase1_indices=phase1.to(device),
        phase1_labels=noisy_labels.to(device),
        noisy=mask.to(device),
        phase2_indices=torch.arange(labels.numel(), device=device),
        phase2_labels=labels.clone(),
    )


def multi_stage_splits(
    labels: torch.Tensor,
    num_classes: int,
    num_stages: int,
    uniform_fraction: float,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """Nested training sets D_1 ⊂ … ⊂ D_{K+1} = D for K = ``num_stages`` pretraining stages.

    Berariu et al., App. A.3, with r = ``uniform_fraction``: (1) partition the classes at random into K+1
    groups C_1..C_{K+1} (sizes differ by at most one); (2) split the training set at random into D_u with
    round(r·n) examples and D_c = D \\ D_u; (3) partition D_u at random into K+1 near-equal parts
    D_{u,1..K+1}; (4) D_i = D_{i−1} ∪ D_{u,i} ∪ {(x, c) ∈ D_c : c ∈ C_i}. The last set is the whole
    training set (the final tuning phase). r = 1 gives uniform random growth; r = 0 gives pure class
    partitions (each stage brings new classes). The paper's symbols did not survive in our copy; the
    K+1 groups follow from its statement that the (K+1)-th set is the final tuning set.

    Returns K+1 sorted index tensors.
    """
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages (pretraining stages K) must be an int >= 1, got {num_stages!r}")
    uniform_fraction = check_fraction(
        "uniform_fraction (r, the share of data from all classes)", uniform_fraction
    )
    _check_labels(labels, num_classes)
    groups = num_stages + 1
    if uniform_fraction < 1.0 and groups > num_classes:
        raise ValueError(
            f"{num_stages} pretraining stages need {groups} class groups but there are only {num_classes} "
            "classes; use fewer stages or uniform_fraction 1"
        )
    labels_cpu = labels.cpu()
    n = labels_cpu.numel()
    class_order = torch.randperm(num_classes, generator=generator)
    group_of_class = torch.empty(num_classes, dtype=torch.int64)
    for g, chunk in enumerate(torch.tensor_split(class_order, groups)):
        group_of_class[chunk] = g
    order = torch.randperm(n, generator=generator)
    num_uniform = round_half_up(uniform_fraction * n)
    uniform, by_class = order[:num_uniform], order[num_uniform:]
    stage_of = torch.empty(n, dtype=torch.int64)
    for g, chunk in enumerate(torch.tensor_split(uniform, groups)):
        stage_of[chunk] = g
    stage_of[by_class] = group_of_class[labels_cpu[by_class]]
    device = labels.device
    return [(stage_of <= g).nonzero().flatten().to(device) for g in range(groups)]


class MixedSampler:
    """Batches for the smooth transition: each example independently from the full set with probability p,
    otherwise from the pretraining subset (uniform, with replacement, as in Berariu et al. App. A.2, where
    an "epoch" is n_full / batch_size such draws rather than a permutation)."""

    def __init__(self, full_size: int, subset: torch.Tensor, generator: torch.Generator):
        if full_size < 1 or subset.numel() < 1:
            raise ValueError("the full set and the pretraining subset must both be non-empty")
        if int(subset.min()) < 0 or int(subset.max()) >= full_size:
            raise ValueError(f"subset indices must lie in 0..{full_size - 1}")
        self.full_size = full_size
        self.subset = subset
        self.generator = generator

    def sample(self, batch_size: int, p: float) -> torch.Tensor:
        """``batch_size`` indices into the full set; each from the full set with probability ``p``."""
        check_fraction("p (probability of drawing from the full set)", p)
        g = self.generator
        device = self.subset.device
        # The draws come from the run's seeded CPU generator (the same stream on every device); only the
        # batch-sized draws move to the subset's device, never the subset itself.
        from_full = (torch.rand(batch_size, generator=g) < p).to(device)
        full = torch.randint(self.full_size, (batch_size,), generator=g).to(device)
        positions = torch.randint(self.subset.numel(), (batch_size,), generator=g).to(device)
        return torch.where(from_full, full, self.subset[positions])


def task_permutation(seed: int, task: int, num_features: int) -> torch.Tensor:
    """The input permutation of ``task`` (a fresh random permutation per task, reproducible from
    ``(seed, task)`` alone so a resumed run rebuilds it)."""
    generator = torch.Generator().manual_seed(_task_seed(seed, task, 1))
    return torch.randperm(num_features, generator=generator)


def random_labels(seed: int, task: int, size: int, num_classes: int) -> torch.Tensor:
    """Uniformly random labels for ``task`` (Kumar et al. 2023, Lyle et al. 2023 random-label tasks)."""
    generator = torch.Generator().manual_seed(_task_seed(seed, task, 2))
    return torch.randint(num_classes, (size,), generator=generator)


def _task_seed(seed: int, task: int, stream: int) -> int:
    return (seed * 1_000_003 + task * 7919 + stream) % (2**63 - 1)


def class_incremental_tasks(
    labels: torch.Tensor, num_classes: int, classes_per_task: int, generator: torch.Generator
) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    """Tasks that each bring ``classes_per_task`` new classes (in a random class order): per task, its
    classes and the sorted indices of their examples. The last task may have fewer classes."""
    if isinstance(classes_per_task, bool) or not isinstance(classes_per_task, int):
        raise TypeError(f"classes_per_task must be an int, got {classes_per_task!r}")
    if not 1 <= classes_per_task <= num_classes:
        raise ValueError(f"classes_per_task must be in 1..{num_classes}, got {classes_per_task}")
    _check_labels(labels, num_classes)
    order = torch.randperm(num_classes, generator=generator)
    labels_cpu = labels.cpu()
    tasks = []
    for start in range(0, num_classes, classes_per_task):
        classes = tuple(int(c) for c in order[start : start + classes_per_task])
        member = torch.isin(labels_cpu, torch.tensor(classes))
        tasks.append((classes, member.nonzero().flatten().to(labels.device)))
    return tasks
