"""Split constructions of the supervised studies, task streams and confidence intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from plasticrl.supervised import splits as sp
from plasticrl.supervised import stats


def labels_with_sizes(sizes):
    return torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(sizes)])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- stratified and warm start


def test_proportional_counts_largest_remainder():
    # exact shares 2.5, 1.5, 1.0 → floors 2, 1, 1; the one left goes to the largest remainder (tie: first)
    assert sp.proportional_counts(torch.tensor([5, 3, 2]), 5).tolist() == [3, 1, 1]
    assert sp.proportional_counts(torch.tensor([10, 10, 10]), 30).tolist() == [10, 10, 10]
    assert sp.proportional_counts(torch.tensor([7, 0, 3]), 0).tolist() == [0, 0, 0]


def test_stratified_split_sizes_and_balance():
    labels = labels_with_sizes([50, 30, 20, 11])
    chosen, rest = sp.stratified_split(labels, 0.3, 4, gen())
    assert chosen.numel() == round(0.3 * 111) == 33
    assert torch.equal(torch.sort(torch.cat([chosen, rest])).values, torch.arange(111))
    per_class = torch.bincount(labels[chosen], minlength=4)
    exact = torch.tensor([50, 30, 20, 11]) * 0.3
    assert torch.all(per_class >= exact.floor()) and torch.all(per_class <= exact.ceil())


def test_warm_start_split_noise_is_exact_and_wrong():
    labels = labels_with_sizes([40] * 10)
    split = sp.warm_start_split(labels, 0.25, 0.5, 10, gen(3))
    n1 = split.phase1_indices.numel()
    assert n1 == 100
    assert torch.bincount(labels[split.phase1_indices], minlength=10).tolist() == [10] * 10
    flipped = split.phase1_labels != labels[split.phase1_indices]
    assert int(split.noisy.sum()) == round(0.5 * n1) == 50
    assert torch.equal(flipped, split.noisy)  # every corrupted label is really another class
    assert int(split.phase1_labels.min()) >= 0 and int(split.phase1_labels.max()) <= 9
    # phase 2: every example, clean labels
    assert torch.equal(split.phase2_indices, torch.arange(400))
    assert torch.equal(split.phase2_labels, labels)


def test_corrupt_labels_rounds_half_up_and_covers_other_classes():
    labels = torch.zeros(7, dtype=torch.int64)
    noisy, mask = sp.corrupt_labels(labels, 0.5, 3, gen())
    assert int(mask.sum()) == 4  # 3.5 rounds up
    many, _ = sp.corrupt_labels(torch.zeros(3000, dtype=torch.int64), 1.0, 4, gen(1))
    counts = torch.bincount(many, minlength=4)
    assert counts[0] == 0 and all(abs(int(c) - 1000) < 100 for c in counts[1:])


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_fractions_outside_the_unit_interval(bad):
    labels = labels_with_sizes([5, 5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sp.warm_start_split(labels, bad, 0.0, 2, gen())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sp.warm_start_split(labels, 0.5, bad, 2, gen())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sp.multi_stage_splits(labels, 2, 1, bad, gen())


def test_warm_start_split_rejects_empty_phase_and_single_class_noise():
    with pytest.raises(ValueError, match="must be > 0"):
        sp.warm_start_split(labels_with_sizes([5, 5]), 0.0, 0.0, 2, gen())
    with pytest.raises(ValueError, match="at least 2 classes"):
        sp.corrupt_labels(torch.zeros(4, dtype=torch.int64), 0.5, 1, gen())


# ----------------------------------------------------------------------------- multi-stage


def reference_multi_stage(labels, num_classes, k, r, seed):
    """Berariu et al. A.3 with Python sets, drawing the same random numbers in the same order."""
    g = gen(seed)
    class_order = torch.randperm(num_classes, generator=g).tolist()
    class_groups = [set(chunk.tolist()) for chunk in np.array_split(np.array(class_order), k + 1)]
    order = torch.randperm(labels.numel(), generator=g).tolist()
    n_u = math.floor(r * labels.numel() + 0.5)
    uniform_parts = [set(chunk.tolist()) for chunk in np.array_split(np.array(order[:n_u], dtype=int), k + 1)]
    by_class = order[n_u:]
    stages, current = [], set()
    for i in range(k + 1):
        current = current | uniform_parts[i] | {j for j in by_class if int(labels[j]) in class_groups[i]}
        stages.append(sorted(current))
    return stages, class_groups


@pytest.mark.parametrize("k,r", [(1, 0.0), (2, 0.5), (4, 0.3), (3, 1.0)])
def test_multi_stage_follows_the_construction(k, r):
    labels = labels_with_sizes([30, 25, 20, 28, 22, 26, 24, 21, 27, 23])
    stages = sp.multi_stage_splits(labels, 10, k, r, gen(7))
    expected, class_groups = reference_multi_stage(labels, 10, k, r, 7)
    assert [s.tolist() for s in stages] == expected
    assert len(stages) == k + 1
    assert stages[-1].tolist() == list(range(labels.numel()))  # the last set is the whole training set
    for a, b in zip(stages, stages[1:]):
        assert set(a.tolist()) < set(b.tolist())  # nested, strictly growing
    if r == 0.0:  # pure class partitions: stage i holds exactly the classes of groups 1..i
        for i, stage in enumerate(stages):
            seen = set().union(*class_groups[: i + 1])
            assert set(labels[stage].tolist()) == seen
            assert stage.numel() == int(sum((labels == c).sum() for c in seen))


def test_multi_stage_needs_enough_classes():
    with pytest.raises(ValueError, match="class groups"):
        sp.multi_stage_splits(labels_with_sizes([5, 5, 5]), 3, 3, 0.5, gen())
    assert len(sp.multi_stage_splits(labels_with_sizes([5, 5, 5]), 3, 3, 1.0, gen())) == 4


# ----------------------------------------------------------------------------- smooth transition sampler


def test_mixed_sampler_probability():
    subset = torch.arange(0, 100)  # the first 100 of 1000
    sampler = sp.MixedSampler(1000, subset, gen(5))
    assert int(sampler.sample(5000, 0.0).max()) < 100
    draws = sampler.sample(40000, 0.3)
    outside = float((draws >= 100).float().mean())
    # from the full set with probability 0.3, landing outside the subset with probability 0.9
    assert abs(outside - 0.3 * 0.9) < 0.01
    uniform = sampler.sample(40000, 1.0)
    assert abs(float((uniform < 100).float().mean()) - 0.1) < 0.01


class _NoHostCopy(torch.Tensor):
    """A subset tensor that fails the test when copied to the host."""

    def cpu(self, *args, **kwargs):
        raise AssertionError("MixedSampler copied the whole subset to the CPU")


def test_mixed_sampler_keeps_the_subset_on_its_device():
    plain = torch.arange(50, 150)
    sampler = sp.MixedSampler(1000, plain.as_subclass(_NoHostCopy), gen(3))
    draws = sampler.sample(256, 0.5).as_subclass(torch.Tensor)
    # the same draws as from the seeded CPU generator directly (identical on every device)
    g = gen(3)
    from_full = torch.rand(256, generator=g) < 0.5
    full = torch.randint(1000, (256,), generator=g)
    sub = plain[torch.randint(100, (256,), generator=g)]
    assert torch.equal(draws, torch.where(from_full, full, sub))


# ----------------------------------------------------------------------------- continual streams


def test_task_permutations_are_permutations():
    perms = [sp.task_permutation(0, t, 784) for t in range(5)]
    for perm in perms:
        assert torch.equal(torch.sort(perm).values, torch.arange(784))
    assert all(not torch.equal(perms[0], p) for p in perms[1:])
    assert torch.equal(sp.task_permutation(0, 3, 784), perms[3])  # rebuilt identically on resume
    assert not torch.equal(sp.task_permutation(1, 3, 784), perms[3])


def test_random_labels_and_class_incremental():
    noise = sp.random_labels(0, 2, 5000, 10)
    assert torch.equal(noise, sp.random_labels(0, 2, 5000, 10))
    assert all(abs(int(c) - 500) < 90 for c in torch.bincount(noise, minlength=10))
    labels = labels_with_sizes([3, 4, 5, 6, 7])
    tasks = sp.class_incremental_tasks(labels, 5, 2, gen())
    assert [len(c) for c, _ in tasks] == [2, 2, 1]
    assert sorted(c for classes, _ in tasks for c in classes) == [0, 1, 2, 3, 4]
    for classes, idx in tasks:
        assert set(labels[idx].tolist()) == set(classes)
        assert idx.numel() == sum(int((labels == c).sum()) for c in classes)
    with pytest.raises(ValueError, match="classes_per_task"):
        sp.class_incremental_tasks(labels, 5, 6, gen())


# ----------------------------------------------------------------------------- confidence intervals


def test_mean_ci_against_hand_computation():
    ci = stats.mean_ci([1.0, 2.0, 3.0])
    # s = 1, se = 1/sqrt(3), t_{0.975, 2} = 4.302653
    assert ci.mean == 2.0 and ci.n == 3
    assert abs(ci.half_width - 4.302653 / math.sqrt(3)) < 1e-4
    single = stats.mean_ci([0.7])
    assert single.mean == 0.7 and math.isnan(single.half_width)
    gap = stats.paired_gap([0.9, 0.8, 0.85], [0.8, 0.75, 0.8])
    assert abs(gap.mean - (0.1 + 0.05 + 0.05) / 3) < 1e-12
    sd = np.std([0.1, 0.05, 0.05], ddof=1)
    assert abs(gap.half_width - 4.302653 * sd / math.sqrt(3)) < 1e-4
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_gap([1.0], [1.0, 2.0])


def test_t_table_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df, value in stats._T975.items():
        assert abs(value - scipy_stats.t.ppf(0.975, df)) < 1e-4
