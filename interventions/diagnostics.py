"""Measurements of plasticity on any ``nn.Module`` with a fixed probe batch (DESIGN.md §4).

Units are the output features (Linear) or channels (Conv) of activation modules (dimension 1 of their
output); every hidden nonlinearity of this package's networks is such a module. Tags are
``plasticity/<metric>/<network>`` for the whole network and ``plasticity/<metric>/<network>/<layer>``
per layer (the activation module's or weight-owning module's qualified name).

Layers are *call sites*: an activation module together with the weight layer (a module owning a weight
matrix or kernel: Linear, Conv, ...) executed last before the call. One activation module reused at
several layers (torchvision's shared ``self.relu``) therefore gives one layer per call site, named
``<module>@<weight layer>`` (``relu@conv1``, ``relu@conv2``); a module with a single call site keeps its
plain name. Calls at the same site accumulate: a sub-network applied to several inputs in one forward
(an encoder on observations and next observations) is one layer seen on more samples. A call site that
sees different numbers of units in one forward cannot be told apart this way and is a ValueError.

An *output activation* (``MLP(..., output_activation="tanh")``) is not a hidden layer: an activation
whose output tensor is itself returned by the model and read by no weight layer is left out of the
unit counts and of the penultimate features (``exclude_output_activation=False`` keeps it, e.g. for a
feature extractor that returns its last activation unchanged; one that flattens it first is unaffected).

- ``dormant_ratio``: τ-dormant units (Sokar et al. 2023): s_i = E|h_i| / (mean_k E|h_k| + 1e-9) over the
  batch (and spatial positions), dormant if s_i ≤ τ. The network value counts units across layers;
  ``dormant_ratio_layer_mean`` is the plain mean of the layer ratios (logged too, never confused with it).
- ``dead_ratio``: units whose activation is exactly zero for every sample (and position).
- ``srank``: smallest k with Σ_{i≤k} σ_i / Σ_i σ_i ≥ 1 − δ (Kumar et al. 2021), on the penultimate
  features: the outputs at the hidden call site executed last (all its calls in the forward, stacked),
  flattened per sample. Not a "stable rank".
- ``effective_rank``: exp(−Σ p_i log p_i), p_i = σ_i / Σ σ (Roy & Vetterli 2007).
- ``feature_norm``: mean over the batch of ‖φ(x)‖₂ of the penultimate features.
- ``weight_norm``, ``grad_norm`` (from ``.grad`` where present), ``distance_from_init`` (‖θ − θ₀‖₂, needs
  θ₀: :class:`PlasticityMonitor` keeps it): per weight-owning module and for the whole network.

Curvature and gradient noise of a loss (sharpness, Hessian trace and rank, gradient noise scale,
minibatch gradient cosine) are in :mod:`.curvature`; :class:`PlasticityMonitor` adds them when it is given
the loss.

Measuring never changes the model's outputs, parameters, buffers, gradients, train/eval modes or torch's
RNG state: the probe forward runs under ``torch.no_grad`` in **eval mode** (so dropout draws nothing and
BatchNorm uses, and does not update, its running statistics: the network as it is evaluated), and every
module's mode, every buffer and the CPU/CUDA RNG states are restored afterwards.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from plasticrl.networks import ACTIVATION_TYPES, CReLU

from .curvature import CurvatureConfig, curvature

__all__ = [
    "PlasticityMonitor",
    "UnitStatistics",
    "activation_statistics",
    "dormant_mask",
    "effective_rank",
    "measure",
    "output_tensors",
    "probe_mode",
    "run_forward",
    "slice_batch",
    "srank",
]

SCORE_EPS = 1e-9  # dopamine labs/redo weight_recyclers.py: score / (mean score + 1e-9)


def _check_threshold(dormant_threshold: float) -> None:
    if not float(dormant_threshold) >= 0:
        raise ValueError(f"dormant_threshold (tau) must be >= 0, got {dormant_threshold}")


def _check_delta(rank_delta: float) -> None:
    if not 0.0 < float(rank_delta) < 1.0:
        raise ValueError(f"rank_delta (delta) must be in (0, 1), got {rank_delta}")


def run_forward(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``; a tuple/list is passed as positional arguments, a dict as keyword arguments."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


@contextmanager
def probe_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for a probe forward; restores every module's mode, every buffer and the RNG states."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _batch_size(inputs: Any) -> int | None:
    """Size of dim 0 of the first tensor in ``inputs`` (a tensor, tuple, list or dict), or None."""
    if torch.is_tensor(inputs):
        return inputs.shape[0] if inputs.dim() > 0 else None
    if isinstance(inputs, Mapping):
        inputs = list(inputs.values())
    if isinstance(inputs, (tuple, list)):
        for value in inputs:
            size = _batch_size(value)
            if size is not None:
                return size
    return None


def slice_batch(inputs: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a batch: every tensor (also inside tuples, lists, dicts) along dim 0."""
    if torch.is_tensor(inputs):
        return inputs[start:stop] if inputs.dim() > 0 else inputs
    if isinstance(inputs, Mapping):
        return {k: slice_batch(v, start, stop) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(slice_batch(v, start, stop) for v in inputs)
    return inputs


@dataclass
class UnitStatistics:
    """Per-unit statistics of one activation module's output on a batch (units along dimension 1)."""

    mean_abs: torch.Tensor  # E|h_i| over the batch and spatial positions
    max_abs: torch.Tensor  # max |h_i|; 0 exactly when the unit is dead on the whole batch


# Activations whose outputs are never negative: |h| = h, so the reductions skip the abs.
NON_NEGATIVE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, CReLU)


def unit_sums(output: torch.Tensor, non_negative: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(Σ|h_i|, max|h_i|, samples × positions) over every dimension but the unit dimension 1."""
    if output.dim() < 2:
        raise ValueError(
            f"activation outputs need a batch and a unit dimension, got shape {tuple(output.shape)}"
        )
    x = output.detach()
    dims = [d for d in range(x.dim()) if d != 1]
    if non_negative:
        return x.sum(dim=dims), x.amax(dim=dims), x.numel() // x.shape[1]
    total = torch.linalg.vector_norm(x, ord=1, dim=dims)
    return total, torch.linalg.vector_norm(x, ord=math.inf, dim=dims), x.numel() // x.shape[1]


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in a model's output (a tensor, or tuples, lists and dicts of them)."""
    if torch.is_tensor(output):
        return [output]
    if isinstance(output, Mapping):
        return [t for v in output.values() for t in output_tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in output_tensors(v)]
    return []


# A call site: (activation module name, name of the weight layer executed last before the call or None).
_Site = tuple[str, "str | None"]


def _owns_weight_matrix(module: nn.Module) -> bool:
    weight = module._parameters.get("weight")
    if weight is not None:
        return weight.dim() >= 2
    parametrizations = getattr(module, "parametrizations", None)  # weight_norm / spectral_norm
    return parametrizations is not None and "weight" in parametrizations


@contextmanager
def _site_hooks(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    on_call: Callable[[_Site, nn.Module, torch.Tensor], None],
    on_layer_input: Callable[[torch.Tensor], None] | None = None,
) -> Iterator[None]:
    """Hooks reporting every call of ``modules`` with its call site (and, optionally, every weight layer's
    input); removed on exit."""
    layers: dict[int, tuple[str, nn.Module]] = {}
    for name, module in model.named_modules():
        if _owns_weight_matrix(module):
            layers.setdefault(id(module), (name, module))
    last_layer: list[str | None] = [None]

    def start(_module: nn.Module, _args: tuple) -> None:
        last_layer[0] = None

    def read(_module: nn.Module, args: tuple) -> None:
        if args and torch.is_tensor(args[0]):
            on_layer_input(args[0])

    def make_layer_hook(name: str):
        def hook(_module: nn.Module, _args: tuple, _output: Any) -> None:
            last_layer[0] = name

        return hook

    def make_activation_hook(name: str):
        def hook(module: nn.Module, _args: tuple, output: Any) -> None:
            if not torch.is_tensor(output):
                raise TypeError(f"activation module {name!r} returned {type(output).__name__}, not a tensor")
            on_call((name, last_layer[0]), module, output)

        return hook

    handles = [model.register_forward_pre_hook(start)]
    try:
        for name, module in layers.values():
            if on_layer_input is not None:
                handles.append(module.register_forward_pre_hook(read))
            handles.append(module.register_forward_hook(make_layer_hook(name)))
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_activation_hook(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_width(site: _Site, widths: dict[_Site, int], output: torch.Tensor) -> None:
    if output.dim() < 2:
        raise ValueError(
            f"activation outputs need a batch and a unit dimension, got shape {tuple(output.shape)} "
            f"from {site[0]!r}"
        )
    seen = widths.setdefault(site, output.shape[1])
    if seen != output.shape[1]:
        raise ValueError(
            f"activation module {site[0]!r} sees {seen} and {output.shape[1]} units after the same weight "
            f"layer ({site[1] or 'none'!r}) in one forward, so its layers cannot be told apart; give each "
            "layer its own activation module"
        )


@dataclass
class _Sites:
    calls: list[_Site]  # every activation call of one forward, in execution order
    output_sites: set[_Site]  # output activations: returned by the model, read by no weight layer


def _discover_sites(model: nn.Module, inputs: Any, modules: Mapping[str, nn.Module]) -> _Sites:
    """Call sites of ``modules`` from one probe forward on the first two samples."""
    calls: list[_Site] = []
    widths: dict[_Site, int] = {}
    site_of_output: dict[int, _Site] = {}
    alive: list[torch.Tensor] = []  # keeps ids unique while they are compared
    read: set[_Site] = set()

    def on_call(site: _Site, _module: nn.Module, output: torch.Tensor) -> None:
        _check_width(site, widths, output)
        calls.append(site)
        site_of_output[id(output)] = site
        alive.append(output)

    def on_layer_input(x: torch.Tensor) -> None:
        for tensor in (x, x._base):  # the activation output itself or a view of it (a flatten)
            if tensor is not None and id(tensor) in site_of_output:
                read.add(site_of_output[id(tensor)])

    with _site_hooks(model, modules, on_call, on_layer_input), probe_mode(model), torch.no_grad():
        result = run_forward(model, slice_batch(inputs, 0, 2))
    returned = {site_of_output[id(t)] for t in output_tensors(result) if id(t) in site_of_output}
    return _Sites(calls, returned - read)


def _site_names(sites: list[_Site]) -> dict[_Site, str]:
    """The layer name of each call site: the module's name, with ``@<weight layer>`` when it has several."""
    per_module = Counter(module for module, _ in dict.fromkeys(sites))
    return {
        site: site[0] if per_module[site[0]] == 1 else f"{site[0]}@{site[1] or 'input'}" for site in sites
    }


@dataclass
class _Probe:
    stats: dict[str, UnitStatistics]  # by layer (call site) name
    outputs: dict[str, torch.Tensor]  # kept outputs by layer name: every call and chunk, stacked
    last: str | None  # the layer giving the penultimate features (hidden call site executed last)


def _stack(name: str, pieces: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(p.shape[1:]) for p in pieces}
    if len(shapes) > 1:
        raise ValueError(
            f"layer {name!r} outputs per-sample shapes {sorted(shapes)} in one forward; they cannot be "
            "stacked into one feature matrix"
        )
    return torch.cat(pieces)


def _probe(
    model: nn.Module,
    inputs: Any,
    modules: Mapping[str, nn.Module] | None,
    *,
    chunk_size: int | None,
    exclude_output_activation: bool,
    keep: Literal["none", "last", "all"],
) -> _Probe:
    """Per call site statistics (and kept outputs) of ``modules`` on the probe batch."""
    if modules is None:
        modules = {name: m for name, m in model.named_modules() if isinstance(m, ACTIVATION_TYPES)}
    if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
    sites = _discover_sites(model, inputs, modules)
    excluded = sites.output_sites if exclude_output_activation else set()
    hidden_calls = [site for site in sites.calls if site not in excluded]
    last = hidden_calls[-1] if hidden_calls else None
    sums: dict[_Site, list] = {}
    widths: dict[_Site, int] = {}
    kept: dict[_Site, list[torch.Tensor]] = {}

    def on_call(site: _Site, module: nn.Module, output: torch.Tensor) -> None:
        if site in excluded:
            return
        _check_width(site, widths, output)
        total, peak, count = unit_sums(output, isinstance(module, NON_NEGATIVE_ACTIVATIONS))
        if site in sums:
            acc = sums[site]
            acc[0] = acc[0] + total
            acc[1] = torch.maximum(acc[1], peak)
            acc[2] += count
        else:
            sums[site] = [total, peak, count]
        if keep == "all" or (keep == "last" and site == last):
            kept.setdefault(site, []).append(output.detach())

    size = _batch_size(inputs)
    step = size if chunk_size is None or size is None else chunk_size
    with _site_hooks(model, modules, on_call), probe_mode(model), torch.no_grad():
        for start in range(0, size or 1, step or 1):
            run_forward(model, inputs if size is None else slice_batch(inputs, start, start + step))
    order = list(dict.fromkeys([*sites.calls, *sums]))
    names = _site_names(order)
    stats = {
        names[site]: UnitStatistics(sums[site][0] / sums[site][2], sums[site][1])
        for module_name in modules
        for site in order
        if site[0] == module_name and site in sums
    }
    outputs = {names[site]: _stack(names[site], pieces) for site, pieces in kept.items()}
    return _Probe(stats, outputs, names[last] if last in kept else None)


def activation_statistics(
    model: nn.Module,
    inputs: Any,
    modules: Mapping[str, nn.Module] | None = None,
    *,
    keep_last_output: bool = False,
    chunk_size: int | None = 64,
    exclude_output_activation: bool = True,
) -> tuple[dict[str, UnitStatistics], torch.Tensor | None]:
    """Per-unit statistics of each layer of ``modules`` (default: every activation module) on the batch.

    Layers are call sites (module docstring): a module used at several layers gives one entry per layer
    (``relu@conv1``, ...); calls at one site (a sub-network applied to several inputs) accumulate. Output
    activations are left out unless ``exclude_output_activation`` is False. Statistics are reduced inside
    the hooks, so large activations are never all held at once, and the batch runs in chunks of
    ``chunk_size`` samples (eval mode makes samples independent; smaller working sets are faster on CPUs;
    None: one forward), after one forward on two samples that finds the call sites. With
    ``keep_last_output``, also returns the penultimate features: the outputs at the hidden call site
    executed last, for the whole batch. Runs in :func:`probe_mode` under ``torch.no_grad``.
    """
    probe = _probe(
        model,
        inputs,
        modules,
        chunk_size=chunk_size,
        exclude_output_activation=exclude_output_activation,
        keep="last" if keep_last_output else "none",
    )
    return probe.stats, (probe.outputs[probe.last] if probe.last is not None else None)


def dormant_mask(stats: UnitStatistics, threshold: float) -> torch.Tensor:
    """Boolean mask of τ-dormant units: E|h_i| / (mean_k E|h_k| + 1e-9) ≤ τ."""
    score = stats.mean_abs / (stats.mean_abs.mean() + SCORE_EPS)
    return score <= threshold


def _singular_values(features: torch.Tensor) -> torch.Tensor:
    if features.dim() != 2:
        raise ValueError(f"features must be a (samples, dims) matrix, got shape {tuple(features.shape)}")
    return torch.linalg.svdvals(features.detach().to(torch.float32))


def _srank_from_singular_values(sv: torch.Tensor, delta: float) -> int:
    total = sv.sum()
    if total <= 0:
        return 0
    cumulative = torch.cumsum(sv, dim=0) / total
    # Tolerance for float rounding of the cumulative sum at exactly 1 − δ.
    return int(torch.searchsorted(cumulative, cumulative.new_tensor([1.0 - delta - 1e-6]))[0].item()) + 1


def _effective_rank_from_singular_values(sv: torch.Tensor) -> float:
    total = sv.sum()
    if total <= 0:
        return 0.0
    p = sv / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()).item())


def srank(features: torch.Tensor, delta: float = 0.01) -> int:
    """srank_δ of a (samples, dims) feature matrix (Kumar et al. 2021)."""
    _check_delta(delta)
    return _srank_from_singular_values(_singular_values(features), delta)


def effective_rank(features: torch.Tensor) -> float:
    """Effective rank exp(H(σ/‖σ‖₁)) of a (samples, dims) feature matrix (Roy & Vetterli 2007)."""
    return _effective_rank_from_singular_values(_singular_values(features))


def _param_owners(model: nn.Module) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    owners = []
    for name, module in model.named_modules():
        params = [(f"{name}.{k}" if name else k, p) for k, p in module._parameters.items() if p is not None]
        if params:
            owners.append((name or "_root", params))
    return owners


def _norm_tags(
    metric: str, network: str, per_layer: list[tuple[str, torch.Tensor]], out: dict[str, float]
) -> None:
    if not per_layer:
        return
    values = torch.stack([value.detach().double().cpu() for _, value in per_layer]).tolist()
    out[f"plasticity/{metric}/{network}"] = math.sqrt(sum(v * v for v in values))
    for (layer, _), value in zip(per_layer, values):
        out[f"plasticity/{metric}/{network}/{layer}"] = value


@torch.no_grad()
def _weight_metrics(
    model: nn.Module, network: str, initial_params: Mapping[str, torch.Tensor] | None
) -> dict[str, float]:
    out: dict[str, float] = {}
    weights, grads, distances = [], [], []
    for layer, params in _param_owners(model):
        weights.append((layer, torch.linalg.vector_norm(torch.stack([p.detach().norm() for _, p in params]))))
        with_grad = [p.grad for _, p in params if p.grad is not None]
        if with_grad:
            grads.append((layer, torch.linalg.vector_norm(torch.stack([g.norm() for g in with_grad]))))
        if initial_params is not None:
            pairs = [
                (p, initial_params[n])
                for n, p in params
                if n in initial_params and initial_params[n].shape == p.shape
            ]
            if pairs:
                dists = torch.stack([torch.dist(p.detach(), p0.to(p.device)) for p, p0 in pairs])
                distances.append((layer, torch.linalg.vector_norm(dists)))
    _norm_tags("weight_norm", network, weights, out)
    _norm_tags("grad_norm", network, grads, out)
    _norm_tags("distance_from_init", network, distances, out)
    return out


def _activation_metrics(
    stats: Mapping[str, UnitStatistics], network: str, dormant_threshold: float
) -> dict[str, float]:
    out: dict[str, float] = {}
    if not stats:
        return out
    dormant_counts, dead_counts, sizes = [], [], []
    for stat in stats.values():
        dormant_counts.append(dormant_mask(stat, dormant_threshold).sum())
        dead_counts.append((stat.max_abs == 0).sum())
        sizes.append(stat.mean_abs.numel())
    dormant = torch.stack(dormant_counts).tolist()
    dead = torch.stack(dead_counts).tolist()
    total = sum(sizes)
    for metric, counts in (("dormant_ratio", dormant), ("dead_ratio", dead)):
        # Unit-weighted: a 10-unit layer weighs 10/N, not 1/L (peers average layer ratios).
        out[f"plasticity/{metric}/{network}"] = sum(counts) / total
        ratios = [c / n for c, n in zip(counts, sizes)]
        out[f"plasticity/{metric}_layer_mean/{network}"] = sum(ratios) / len(ratios)
        for layer, ratio in zip(stats, ratios):
            out[f"plasticity/{metric}/{network}/{layer}"] = ratio
    return out


def _feature_metrics(features: torch.Tensor, network: str, rank_delta: float, suffix: str = "") -> dict:
    flat = features.reshape(features.shape[0], -1).to(torch.float32)
    sv = torch.linalg.svdvals(flat)
    return {
        f"plasticity/srank/{network}{suffix}": float(_srank_from_singular_values(sv, rank_delta)),
        f"plasticity/effective_rank/{network}{suffix}": _effective_rank_from_singular_values(sv),
        f"plasticity/feature_norm/{network}{suffix}": float(flat.norm(dim=1).mean().item()),
    }


def measure(
    model: nn.Module,
    inputs: Any,
    *,
    dormant_threshold: float = 0.025,
    rank_delta: float = 0.01,
    name: str = "network",
    per_layer_rank: bool = False,
    initial_params: Mapping[str, torch.Tensor] | None = None,
    chunk_size: int | None = 64,
    exclude_output_activation: bool = True,
) -> dict[str, float]:
    """All diagnostics of ``model`` on the probe batch ``inputs``, as flat ``{tag: float}``.

    Args:
        model: any module; its activation modules' call sites define the layers and units.
        inputs: the probe batch (a tensor, a tuple of positional arguments or a dict of keyword arguments).
        dormant_threshold: τ for ``dormant_ratio`` (0.025 for logging, Sokar et al. 2023).
        rank_delta: δ for ``srank`` (0.01, Kumar et al. 2021).
        name: the network's name in the tags (``plasticity/<metric>/<name>``).
        per_layer_rank: also srank / effective rank / feature norm of every layer's output (flattened per
            sample; costs one SVD per layer and holds every layer's output for the whole batch).
        initial_params: θ₀ by parameter name (``model.named_parameters()``) for ``distance_from_init``.
        chunk_size: samples per probe forward (the batch is split; None: one forward).
        exclude_output_activation: leave an output activation (returned by the model, read by no weight
            layer) out of the unit counts and the penultimate features (module docstring).
    """
    _check_threshold(dormant_threshold)
    _check_delta(rank_delta)
    if not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    probe = _probe(
        model,
        inputs,
        None,
        chunk_size=chunk_size,
        exclude_output_activation=exclude_output_activation,
        keep="all" if per_layer_rank else "last",
    )
    out: dict[str, float] = {}
    if per_layer_rank:
        for layer, output in probe.outputs.items():
            out.update(_feature_metrics(output, name, rank_delta, suffix=f"/{layer}"))
    out.update(_activation_metrics(probe.stats, name, dormant_threshold))
    if probe.last is not None:
        out.update(_feature_metrics(probe.outputs[probe.last], name, rank_delta))
    out.update(_weight_metrics(model, name, initial_params))
    return out


class PlasticityMonitor:
    """Diagnostics of one network on a fixed probe batch, with the state that :func:`measure` lacks.

    Keeps θ₀ (for ``distance_from_init``) and the dormant units at the last :meth:`mark_reset`, so
    that later measurements report ``dormant_overlap``: the fraction of units dormant right before the
    reset that are dormant again now (per layer and for the network; dopamine's ReDo logs this as
    ``dead_intersected_percent``).

    Given ``loss_fn(model, inputs)`` (and ``loss_inputs``, default the probe batch), :meth:`measure` also
    reports the curvature and gradient-noise diagnostics of :func:`~.curvature.curvature` (sharpness,
    Hessian trace and rank, gradient noise scale and cosine) with ``curvature_config``'s settings, and
    sharpness per part for ``curvature_parts`` (name → module). They cost tens of backward passes, so
    ``measure(curvature=False)`` leaves them out and :meth:`curvature` computes them alone.

        monitor = PlasticityMonitor(q_net, probe_obs, name="q")
        ...
        if step % diagnostics_every == 0:
            log(monitor.measure())          # after backward: grad_norm is read from .grad
        monitor.mark_reset(); reset.apply()
    """

    def __init__(
        self,
        model: nn.Module,
        probe_inputs: Any,
        *,
        name: str = "network",
        dormant_threshold: float = 0.025,
        rank_delta: float = 0.01,
        per_layer_rank: bool = False,
        chunk_size: int | None = 64,
        exclude_output_activation: bool = True,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        loss_inputs: Any = None,
        curvature_config: CurvatureConfig | None = None,
        curvature_parts: Mapping[str, nn.Module] | None = None,
    ):
        _check_threshold(dormant_threshold)
        _check_delta(rank_delta)
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be callable as loss_fn(model, inputs), got {type(loss_fn).__name__}"
            )
        if curvature_config is not None and not isinstance(curvature_config, CurvatureConfig):
            raise TypeError(
                f"curvature_config must be a CurvatureConfig, got {type(curvature_config).__name__}"
            )
        self.model = model
        self.probe_inputs = probe_inputs
        self.name = name
        self.dormant_threshold = dormant_threshold
        self.rank_delta = rank_delta
        self.per_layer_rank = per_layer_rank
        self.chunk_size = chunk_size
        self.exclude_output_activation = exclude_output_activation
        self.initial_params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.dormant_at_reset: dict[str, torch.Tensor] | None = None
        self.loss_fn = loss_fn
        self.loss_inputs = loss_inputs
        self.curvature_config = curvature_config if curvature_config is not None else CurvatureConfig()
        self.curvature_parts = curvature_parts

    def dormant_masks(self) -> dict[str, torch.Tensor]:
        """Per layer (activation call site), the mask of τ-dormant units on the probe batch now."""
        stats, _ = activation_statistics(
            self.model,
            self.probe_inputs,
            chunk_size=self.chunk_size,
            exclude_output_activation=self.exclude_output_activation,
        )
        return {layer: dormant_mask(s, self.dormant_threshold) for layer, s in stats.items()}

    def mark_reset(self) -> None:
        """Record the dormant units now (call right before a reset / recycling step)."""
        self.dormant_at_reset = self.dormant_masks()

    def curvature(self) -> dict[str, float]:
        """:func:`~.curvature.curvature` of ``loss_fn`` on ``loss_inputs`` (default: the probe batch) with
        the monitor's ``curvature_config`` and ``curvature_parts``; ValueError without a ``loss_fn``."""
        if self.loss_fn is None:
            raise ValueError("curvature needs a loss: build the PlasticityMonitor with loss_fn=...")
        inputs = self.probe_inputs if self.loss_inputs is None else self.loss_inputs
        return curvature(
            self.model,
            self.loss_fn,
            inputs,
            name=self.name,
            parts=self.curvature_parts,
            **self.curvature_config.kwargs(),
        )

    def measure(self, curvature: bool | None = None) -> dict[str, float]:
        """All diagnostics (see :func:`measure`) plus ``distance_from_init`` and ``dormant_overlap``, and the
        curvature diagnostics (:meth:`curvature`) when ``curvature`` is True, or None and a ``loss_fn``
        was given."""
        out = measure(
            self.model,
            self.probe_inputs,
            dormant_threshold=self.dormant_threshold,
            rank_delta=self.rank_delta,
            name=self.name,
            per_layer_rank=self.per_layer_rank,
            initial_params=self.initial_params,
            chunk_size=self.chunk_size,
            exclude_output_activation=self.exclude_output_activation,
        )
        if self.dormant_at_reset is not None:
            out.update(self._overlap())
        if curvature or (curvature is None and self.loss_fn is not None):
            out.update(self.curvature())
        return out

    def _overlap(self) -> dict[str, float]:
        now = self.dormant_masks()
        out: dict[str, float] = {}
        before_total = both_total = 0
        for layer, before in self.dormant_at_reset.items():
            current = now.get(layer)
            if current is None or current.shape != before.shape:
                continue
            before_count = int(before.sum())
            both = int((before & current.to(before.device)).sum())
            before_total += before_count
            both_total += both
            out[f"plasticity/dormant_overlap/{self.name}/{layer}"] = (
                both / before_count if before_count else 0.0
            )
        out[f"plasticity/dormant_overlap/{self.name}"] = both_total / before_total if before_total else 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        """θ₀ and the dormant masks at the last reset, for checkpoints."""
        return {"initial_params": self.initial_params, "dormant_at_reset": self.dormant_at_reset}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.initial_params = {k: v.clone() for k, v in state["initial_params"].items()}
        masks = state["dormant_at_reset"]
        self.dormant_at_reset = None if masks is None else {k: v.clone() for k, v in masks.items()}
