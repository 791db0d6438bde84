"""Hidden units with their incoming and outgoing weights, found from the network's data flow.

ReDo and continual backprop replace single units: fresh incoming weights (a row of the layer that
produces the unit, or an output channel of a conv), zero outgoing weights (a column of each layer that
reads it, or an input channel; after ``conv → flatten → linear`` the block of H·W columns of channel
c), and cleared optimizer moments of exactly those entries. The network is unchanged as a function at
that moment only if *every* use of the unit goes through the zeroed weights, so the pairs are found
from the autograd graph of one probe forward, not guessed from module order:

    incoming (Linear|Conv2d) → [BatchNorm|LayerNorm]* → activation → [flatten] → outgoing (Linear|Conv2d)+

A group is recyclable when each arrow is the only use of the tensor it starts from. Skipped, with the
reason in :func:`find_unit_groups`' second result: activations whose input is not a layer's output
(e.g. after max-pooling or a residual sum: the Impala blocks' first ReLU and the ReLU after the last
stage), whose output feeds anything else (a residual connection, another module type), the output
activation (nothing reads it), width-changing activations (CReLU), grouped convs, Linear layers on
inputs with more than two dimensions, modules called more than once per forward, and units whose
incoming layer is frozen (plasticity injection's frozen head and anchor: they must not change; a frozen
layer *reading* recyclable units still gets its columns zeroed, so the outputs stay unchanged). For residual
networks this recycles exactly what dopamine's ReDo recycles in its ResNet mode: the inner unit of
each residual block and the dense layers.

LayerNorm between the incoming layer and the activation normalises across units, so re-drawing a unit's
incoming weights changes its neighbours too; such groups are recycled (as Dohare et al. do) but the
network's outputs then change slightly at the moment of recycling.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from plasticrl.networks import ACTIVATION_TYPES, XavierUniformInit, get_initializer, reinitialize_

from .base import Intervention
from .binding import mirror_module, qualified_name, rebind_modules, structure_signature
from .diagnostics import output_tensors, probe_mode, run_forward, slice_batch
from .optim import zero_state_entries_

__all__ = ["Outgoing", "UnitGroup", "example_batch", "find_unit_groups", "group_modules", "recycle_units_"]

_LAYER_TYPES = (nn.Linear, nn.Conv2d)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
_VIEW_NODES = {"ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0"}


@dataclass(frozen=True)
class Outgoing:
    """A layer reading a group's units: ``columns_per_unit`` input columns (or channels) per unit."""

    layer: nn.Module
    columns_per_unit: int = 1


@dataclass(frozen=True)
class UnitGroup:
    """The units of one activation module with the layers that write and read them."""

    name: str
    incoming: nn.Module
    norms: tuple[nn.Module, ...]
    activation: nn.Module
    outgoing: tuple[Outgoing, ...]
    num_units: int

    def outgoing_index(self, out: Outgoing, units: torch.Tensor) -> torch.Tensor:
        """Indices along dim 1 of ``out.layer.weight`` that carry ``units``."""
        if out.columns_per_unit == 1:
            return units
        offsets = torch.arange(out.columns_per_unit, device=units.device)
        return (units[:, None] * out.columns_per_unit + offsets).reshape(-1)

    def mirror(self, network: nn.Module, target: nn.Module) -> UnitGroup:
        """The same group in ``target``, a copy of ``network`` with the same structure."""

        def twin(module: nn.Module) -> nn.Module:
            return mirror_module(target, qualified_name(network, module), module)

        return UnitGroup(
            name=self.name,
            incoming=twin(self.incoming),
            norms=tuple(twin(m) for m in self.norms),
            activation=self.activation,
            outgoing=tuple(Outgoing(twin(o.layer), o.columns_per_unit) for o in self.outgoing),
            num_units=self.num_units,
        )


@dataclass
class _Call:
    module: nn.Module
    name: str
    in_node: Any
    out_node: Any
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def _trace(model: nn.Module, inputs: Any) -> tuple[list[_Call], Counter, Counter]:
    """Module calls with autograd nodes of their input and output, and how often each node is used."""
    watched = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, _LAYER_TYPES + _NORM_TYPES + ACTIVATION_TYPES)
    }
    calls: list[_Call] = []
    pending: dict[int, list[tuple[Any, tuple[int, ...]]]] = {}
    call_counts: Counter = Counter()

    def pre_hook(module: nn.Module, args: tuple) -> None:
        x = args[0] if args and torch.is_tensor(args[0]) else None
        pending.setdefault(id(module), []).append(
            (None if x is None else x.grad_fn, () if x is None else tuple(x.shape))
        )

    def make_post_hook(name: str):
        def post_hook(module: nn.Module, _args: tuple, output: Any) -> None:
            in_node, in_shape = pending[id(module)].pop()
            call_counts[id(module)] += 1
            if torch.is_tensor(output):
                calls.append(_Call(module, name, in_node, output.grad_fn, in_shape, tuple(output.shape)))

        return post_hook

    handles = []
    for name, module in watched.items():
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(make_post_hook(name)))
    try:
        with probe_mode(model), torch.enable_grad():
            output = run_forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    roots = [t.grad_fn for t in output_tensors(output) if t.grad_fn is not None]
    return calls, _use_counts(roots), call_counts


def _use_counts(roots: list[Any]) -> Counter:
    """For every autograd node reachable from ``roots``, its uses: edges pointing to it, plus one for
    each time it is a model output (a tensor returned by the model is used outside it)."""
    uses: Counter = Counter(roots)
    seen = set(roots)
    stack = list(roots)
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            uses[child] += 1
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return uses


def _units_of(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _per_unit_norm(norm: nn.Module, units: int) -> bool:
    if isinstance(norm, nn.LayerNorm):
        return tuple(norm.normalized_shape) == (units,)
    return norm.num_features == units


def _group_for(
    act: _Call, producers: dict[Any, _Call], consumers: list[_Call], uses: Counter
) -> UnitGroup | str:
    """The unit group of activation call ``act``, or the reason it is not recyclable."""
    if act.in_node is None or act.out_node is None:
        return "no autograd graph at this activation (are the parameters before it frozen?)"
    if act.in_shape != act.out_shape:
        return "the activation changes the number of features (e.g. CReLU)"
    norms: list[_Call] = []
    node = act.in_node
    while True:
        if uses[node] != 1:
            return "the activation's input is also used elsewhere (e.g. a residual connection)"
        producer = producers.get(node)
        if producer is None:
            return "the activation's input is not the output of a Linear/Conv2d layer (e.g. pooling, a sum)"
        if isinstance(producer.module, _NORM_TYPES):
            norms.append(producer)
            node = producer.in_node
            continue
        break
    incoming = producer.module
    if not isinstance(incoming, _LAYER_TYPES):
        return f"unsupported layer {type(incoming).__name__} before the activation"
    units = _units_of(incoming)
    if len(act.out_shape) < 2 or act.out_shape[1] != units:
        return "units are not along dimension 1 of the activation output"
    if isinstance(incoming, nn.Linear) and len(act.out_shape) != 2:
        return "Linear layers on inputs with more than 2 dimensions are not supported"
    if any(not _per_unit_norm(n.module, units) for n in norms):
        return "a normalisation layer between the layer and the activation is not per unit"

    outgoing: list[Outgoing] = []
    view_nodes: Counter = Counter()
    direct = 0
    spatial = 1
    for size in act.out_shape[2:]:
        spatial *= size
    for call in consumers:
        node = call.in_node
        if node is act.out_node:
            direct += 1
        elif (
            node is not None
            and node.name() in _VIEW_NODES
            and len(node.next_functions) == 1
            and node.next_functions[0][0] is act.out_node
        ):
            view_nodes[node] += 1
        else:
            continue
        layer = call.module
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or layer.in_channels != units or node is not act.out_node:
                return "a Conv2d reading these units is grouped or reads a reshaped input"
            outgoing.append(Outgoing(layer, 1))
        elif node is act.out_node:
            if len(act.out_shape) != 2:
                return "a Linear layer reads a conv output without flattening"
            outgoing.append(Outgoing(layer, 1))
        else:
            if call.in_shape != (act.out_shape[0], units * spatial):
                return "a Linear layer reads a reshape that is not a per-sample flatten"
            outgoing.append(Outgoing(layer, spatial))
    if not outgoing:
        return "no Linear/Conv2d layer reads its output (the output activation, or an unsupported path)"
    if uses[act.out_node] != direct + len(view_nodes) or any(uses[v] != n for v, n in view_nodes.items()):
        return "its output is also used outside the layers that read it (e.g. a residual connection)"
    return UnitGroup(
        name=act.name,
        incoming=incoming,
        norms=tuple(n.module for n in reversed(norms)),
        activation=act.module,
        outgoing=tuple(outgoing),
        num_units=units,
    )


def find_unit_groups(
    model: nn.Module, inputs: Any, within: Sequence[nn.Module] | None = None
) -> tuple[list[UnitGroup], dict[str, str]]:
    """Recyclable unit groups of ``model`` (execution order) and, by activation name, why others are not.

    One probe forward with gradients enabled on the first two samples of ``inputs`` (eval mode; outputs,
    parameters, grads, modes and RNG are left as they were). With ``within``, only groups whose
    incoming layer lies inside one of those modules are returned.
    """
    calls, uses, call_counts = _trace(model, slice_batch(inputs, 0, 2))
    inside = None if within is None else {id(m) for root in within for m in root.modules()}
    producers = {c.out_node: c for c in calls if c.out_node is not None}
    layer_calls = [c for c in calls if isinstance(c.module, _LAYER_TYPES)]
    groups: list[UnitGroup] = []
    skipped: dict[str, str] = {}
    for call in calls:
        if not isinstance(call.module, ACTIVATION_TYPES):
            continue
        result = _group_for(call, producers, layer_calls, uses)
        if isinstance(result, UnitGroup):
            modules = (result.incoming, *result.norms, result.activation, *(o.layer for o in result.outgoing))
            if any(call_counts[id(m)] != 1 for m in modules):
                result = "a module of this group is called more than once per forward (shared weights)"
            elif not result.incoming.weight.requires_grad:
                result = "its incoming layer is frozen (e.g. plasticity injection's frozen head or anchor)"
            elif inside is not None and id(result.incoming) not in inside:
                continue
        if isinstance(result, str):
            skipped[call.name] = result
        else:
            groups.append(result)
    return groups, skipped


def example_batch(inputs: Any) -> Any:
    """The first two samples of ``inputs`` as detached copies (what :func:`find_unit_groups` reads), kept
    to find the groups again after a change of the network's structure without drawing a new batch."""
    sliced = slice_batch(inputs, 0, 2)

    def copy_(x: Any) -> Any:
        if torch.is_tensor(x):
            return x.detach().clone()
        if isinstance(x, dict):
            return {k: copy_(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return type(x)(copy_(v) for v in x)
        return x

    return copy_(sliced)


def group_modules(groups: Sequence[UnitGroup], owner: str) -> dict[nn.Module, str]:
    """Every layer whose parameters recycling ``groups`` changes (incoming, norms, outgoing), each with a
    note on why, for :meth:`Intervention._check_optimizers_cover` (``owner`` names the intervention)."""
    touched: dict[nn.Module, str] = {}
    for group in groups:
        touched.setdefault(group.incoming, f"{owner}: writes unit group {group.name!r}, rows re-drawn")
        for norm in group.norms:
            touched.setdefault(norm, f"{owner}: normalises unit group {group.name!r}, entries re-drawn")
        for out in group.outgoing:
            touched.setdefault(
                out.layer, f"{owner}: reads unit group {group.name!r}, columns of recycled units zeroed"
            )
    return touched


def _fresh_leaf_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A fresh draw of a leaf module's own parameters and buffers, drawn with its own initialiser.

    Unlike ``fresh_state`` this does not clone the current values first (only new storage is drawn),
    which matters for large layers.
    """
    donor = copy.copy(module)
    donor._parameters = {
        k: None if v is None else nn.Parameter(torch.empty_like(v), requires_grad=False)
        for k, v in module._parameters.items()
    }
    donor._buffers = {k: None if v is None else torch.empty_like(v) for k, v in module._buffers.items()}
    donor._modules = {}
    reinitialize_(donor)
    state = {k: v.detach() for k, v in donor._parameters.items() if v is not None}
    state.update({k: v for k, v in donor._buffers.items() if v is not None})
    return state


# PyTorch's own reset_parameters of Linear and Conv layers: kaiming_uniform_(a=√5), i.e. U(±1/√fan_in).
_DEFAULT_RESETS = (nn.Linear.reset_parameters, nn.modules.conv._ConvNd.reset_parameters)


def _iid_uniform_bound(layer: nn.Module) -> float | None:
    """b when the layer's initialiser draws every weight i.i.d. from U(−b, b), b fixed by the full weight
    shape (PyTorch's default Linear/Conv init, :class:`~plasticrl.networks.XavierUniformInit`); else None
    (e.g. orthogonal init, whose rows are not independent)."""
    init = get_initializer(layer)
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
    if init is None and getattr(type(layer), "reset_parameters", None) in _DEFAULT_RESETS:
        return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    if type(init) is XavierUniformInit:
        return init.gain * math.sqrt(6.0 / (fan_in + fan_out))
    return None


def _fresh_rows(layer: nn.Module, units: torch.Tensor) -> torch.Tensor:
    """Fresh incoming weights (rows / output channels) for ``units`` from the layer's own initialiser.

    With an i.i.d. initialiser only those rows are drawn, from the same distribution as rows of a full
    draw (recycling a few units of a 15,488 → 2,048 layer then costs microseconds, not a 31.7M-value
    draw); otherwise the whole layer is drawn and the rows taken from it.
    """
    weight = layer.weight
    bound = _iid_uniform_bound(layer)
    if bound is not None:
        rows = torch.empty((units.numel(), *weight.shape[1:]), dtype=weight.dtype, device=weight.device)
        return rows.uniform_(-bound, bound)
    return _fresh_leaf_state(layer)["weight"].index_select(0, units.to(weight.device))


def _reinit_incoming_(
    group: UnitGroup, units: torch.Tensor, optimizers: Sequence[Optimizer], mirrors
) -> None:
    rows = _fresh_rows(group.incoming, units)
    fresh_norms = [_fresh_leaf_state(norm) for norm in group.norms]
    for g in (group, *mirrors):
        layer = g.incoming
        idx = units.to(layer.weight.device)
        layer.weight.index_copy_(0, idx, rows.to(layer.weight.device))
        if layer.bias is not None:
            layer.bias.index_fill_(0, idx, 0.0)  # dopamine's ReDo and Dohare et al. zero the bias
        for norm, norm_fresh in zip(g.norms, fresh_norms):
            for key, value in list(norm._parameters.items()) + list(norm._buffers.items()):
                if value is not None and value.dim() > 0 and value.shape[0] == g.num_units:
                    value.index_copy_(0, idx, norm_fresh[key].to(value.device).index_select(0, idx))
    idx = units.to(group.incoming.weight.device)
    zero_state_entries_(optimizers, group.incoming.weight, idx, 0)
    if group.incoming.bias is not None:
        zero_state_entries_(optimizers, group.incoming.bias, idx, 0)
    for norm in group.norms:
        for value in norm.parameters(recurse=False):
            if value.dim() > 0 and value.shape[0] == group.num_units:
                zero_state_entries_(optimizers, value, idx, 0)


def _zero_outgoing_(group: UnitGroup, units: torch.Tensor, optimizers: Sequence[Optimizer], mirrors) -> None:
    for g in (group, *mirrors):
        for out in g.outgoing:
            out.layer.weight.index_fill_(1, g.outgoing_index(out, units.to(out.layer.weight.device)), 0.0)
    for out in group.outgoing:
        index = group.outgoing_index(out, units.to(out.layer.weight.device))
        zero_state_entries_(optimizers, out.layer.weight, index, 1)


@torch.no_grad()
def recycle_units_(
    assignments: Sequence[tuple[UnitGroup, torch.Tensor]],
    optimizers: Sequence[Optimizer],
    mirrors: Sequence[Sequence[UnitGroup]] = (),
) -> None:
    """Re-initialise the given units of each group: incoming rows from the layer's initialiser with zero
    bias, normalisation entries from their initialiser, outgoing columns zero, their moments zero.

    ``assignments`` pairs each group with the indices of its units to recycle. As in dopamine, all
    incoming weights are re-drawn first and all outgoing weights zeroed afterwards, so a weight that is
    both (it connects two recycled units) ends at zero. ``mirrors[k]`` lists the twins of the k-th
    group in target copies; they receive the same fresh values and zeros.
    """
    assignments = [(g, u) for g, u in assignments]
    twins = list(mirrors) if mirrors else [() for _ in assignments]
    if len(twins) != len(assignments):
        raise ValueError("mirrors must list the target twins of every assigned group")
    for (group, units), group_twins in zip(assignments, twins):
        if units.numel():
            _reinit_incoming_(group, units, optimizers, group_twins)
    for (group, units), group_twins in zip(assignments, twins):
        if units.numel():
            _zero_outgoing_(group, units, optimizers, group_twins)


def sync_group_(group: UnitGroup, mirror: UnitGroup) -> None:
    """Copy every layer of ``group`` (incoming, norms, outgoing) into its ``mirror`` in a target copy."""
    with torch.no_grad():
        pairs = [(group.incoming, mirror.incoming), *zip(group.norms, mirror.norms)]
        pairs += [(o.layer, m.layer) for o, m in zip(group.outgoing, mirror.outgoing)]
        for source, destination in pairs:
            destination.load_state_dict(source.state_dict())


class UnitRecycler(Intervention):
    """What ReDo and continual backprop share: their unit groups are found on an example batch
    (``_discover``) and found again when the network's structure changes (plasticity injection)."""

    def _discover(self, example: Any) -> None:
        raise NotImplementedError

    def sync_structure(self) -> bool:
        """Find the unit groups again if the network's structure changed; returns whether it did."""
        if structure_signature(self.network) == self._signature:
            return False
        try:
            self.modules, self.module_names = rebind_modules(self.network, self.modules, self.module_names)
            self._discover(self._example)
        except ValueError as error:
            raise ValueError(
                f"{self.name}: after a change of the network's structure (e.g. plasticity injection): {error}"
            ) from error
        return True
