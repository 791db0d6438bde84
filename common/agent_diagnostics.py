"""Plasticity diagnostics of an agent's networks on the fixed probe batch (DESIGN.md §4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from plasticrl.interventions import curvature, effective_rank, measure, srank

__all__ = ["initial_parameters", "measure_parts", "probe_curvature"]


def measure_parts(
    parts: Mapping[str, tuple[nn.Module, Any]],
    initial: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    dormant_threshold: float,
    ensemble_features: Mapping[str, Sequence[torch.Tensor]] | None = None,
    rank_delta: float = 0.01,
) -> dict[str, float]:
    """Diagnostics (DESIGN.md §4) of each named network on its probe inputs, ``plasticity/<metric>/<name>``.

    ``initial`` holds θ₀ per network (parameter name → tensor) for ``distance_from_init``. For ensembles
    (twin critics), ``ensemble_features[name]`` gives each member's penultimate features: ``srank``,
    ``effective_rank`` and ``feature_norm`` of the network are then the mean over members, with each
    member's value under ``.../<name>/member<m>`` (one network's "last activation" would be one member).
    """
    out: dict[str, float] = {}
    for name, (module, inputs) in parts.items():
        out.update(
            measure(
                module,
                inputs,
                dormant_threshold=dormant_threshold,
                rank_delta=rank_delta,
                name=name,
                initial_params=initial.get(name),
            )
        )
    for name, features in (ensemble_features or {}).items():
        per_metric: dict[str, list[float]] = {"srank": [], "effective_rank": [], "feature_norm": []}
        for m, feature in enumerate(features):
            flat = feature.detach().reshape(feature.shape[0], -1).float()
            values = {
                "srank": float(srank(flat, rank_delta)),
                "effective_rank": effective_rank(flat),
                "feature_norm": float(flat.norm(dim=1).mean()),
            }
            for metric, value in values.items():
                per_metric[metric].append(value)
                out[f"plasticity/{metric}/{name}/member{m}"] = value
        for metric, values in per_metric.items():
            out[f"plasticity/{metric}/{name}"] = float(np.mean(values))
    return out


def initial_parameters(parts: Mapping[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """θ₀ of each named network (for ``distance_from_init``), detached copies on the CPU."""
    return {
        name: {n: p.detach().cpu().clone() for n, p in module.named_parameters()}
        for name, module in parts.items()
    }



def probe_curvature(
    model: nn.Module,
    loss_fn: Any,
    inputs: Any,
    *,
    name: str,
    parts: Mapping[str, nn.Module],
    batch_size: int,
) -> dict[str, float]:
    """:func:`plasticrl.interventions.curvature` of an agent's loss on its probe batch, with the gradient
    cosine over minibatches of the training batch size (at most half the probe, so there are two)."""
    examples = len(inputs[0])
    return curvature(
        model, loss_fn, inputs, name=name, parts=parts, minibatch_size=max(1, min(batch_size, examples // 2))
    )
