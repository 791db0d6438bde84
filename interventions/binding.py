"""Binding interventions to modules, optimizers and target copies, with clear errors for bad bindings.

Configs carry module *names* (for the command line); :func:`resolve_modules` turns them into module
references against one network. Interventions hold those references, never parameter-name strings.
Target copies (target networks, EMA copies) are whole networks with the same structure as the bound
network; the part matching a bound module is found by its qualified name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch import nn
from torch.optim import Optimizer

__all__ = [
    "check_modules_in_network",
    "check_optimizers_hold",
    "mirror_module",
    "qualified_name",
    "rebind_modules",
    "resolve_modules",
    "structure_signature",
    "weight_layers",
]


def weight_layers(root: nn.Module) -> list[nn.Module]:
    """Modules owning a weight matrix or kernel (Linear, Conv, ...), in registration order."""
    layers = []
    for module in root.modules():
        weight = module._parameters.get("weight")
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
            layers.append(module)
    return layers


def _available_names(root: nn.Module) -> str:
    names = [name for name, _ in root.named_modules() if name]
    shown = names if len(names) <= 40 else [name for name, _ in root.named_children()]
    return ", ".join(shown + ["last:K", "all"])


def _resolve_one(root: nn.Module, name: str) -> list[nn.Module]:
    if name == "all":
        return [root]
    if name.startswith("last:"):
        count_text = name.split(":", 1)[1]
        layers = weight_layers(root)
        if not count_text.isdigit() or not 1 <= int(count_text) <= len(layers):
            raise ValueError(
                f"{name!r}: 'last:K' needs an integer K between 1 and {len(layers)} (the network's "
                "weight layers)"
            )
        return layers[-int(count_text) :]
    try:
        return [root.get_submodule(name)]
    except AttributeError:
        raise ValueError(
            f"{type(root).__name__} has no part named {name!r}; available: {_available_names(root)}"
        ) from None


def resolve_modules(root: nn.Module, names: Iterable[str]) -> list[nn.Module]:
    """The modules of ``root`` named by ``names``, without duplicates or modules nested in others.

    A name is an attribute path (``"head"``, ``"encoder"``, ``"critic.head"``, ``"encoder.0"``),
    ``"last:K"`` (the last K weight layers in registration order; normalisation layers are not
    counted) or ``"all"`` (``root`` itself). A module that lies inside another selected module is
    dropped, so no parameter is acted on twice.
    """
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of strings, got the string {names!r}")
    selected: list[nn.Module] = []
    for name in names:
        for module in _resolve_one(root, name):
            if all(module is not m for m in selected):
                selected.append(module)
    if not selected:
        raise ValueError("no module names given")
    inside_other = set()
    for outer in selected:
        for inner in outer.modules():
            if inner is not outer:
                inside_other.add(id(inner))
    return [m for m in selected if id(m) not in inside_other]


def qualified_name(root: nn.Module, module: nn.Module) -> str:
    """The qualified name of ``module`` in ``root`` (``""`` for ``root`` itself); ValueError if absent."""
    for name, candidate in root.named_modules(remove_duplicate=False):
        if candidate is module:
            return name
    raise ValueError(
        f"{type(module).__name__} module is not part of the bound network ({type(root).__name__}); "
        "pass modules taken from that network (e.g. net.head), not copies"
    )


def check_modules_in_network(root: nn.Module, modules: Sequence[nn.Module]) -> list[str]:
    """Qualified names of ``modules`` in ``root``; ValueError naming any module that is not part of it."""
    if not modules:
        raise ValueError("no modules to bind")
    return [qualified_name(root, m) for m in modules]


def check_optimizers_hold(
    modules: Sequence[nn.Module],
    optimizers: Sequence[Optimizer],
    names: Sequence[str] | None = None,
    *,
    why: Mapping[int, str] | None = None,
    scope: nn.Module | None = None,
) -> None:
    """Check that every trainable parameter of ``modules`` is held by one of ``optimizers``, and that each
    optimizer holds at least one of them (with ``scope``: at least one parameter of ``scope``, e.g. the
    whole network); ValueError otherwise (naming the parameter or optimizer).

    ``why`` maps ``id(module)`` to a note on what the intervention does to that module, quoted in the
    error (e.g. "ReDo zeroes the columns reading recycled units").
    """
    if isinstance(optimizers, Optimizer):
        raise TypeError("optimizers must be a sequence of optimizers, e.g. [opt]")
    for opt in optimizers:
        if not isinstance(opt, Optimizer):
            raise TypeError(f"expected torch.optim.Optimizer instances, got {type(opt).__name__}")
    held = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    bound = set()
    names = names or [type(m).__name__ for m in modules]
    for module, module_name in zip(modules, names):
        for param_name, param in module.named_parameters():
            bound.add(id(param))
            if param.requires_grad and id(param) not in held:
                note = (why or {}).get(id(module))
                raise ValueError(
                    f"parameter {module_name or '<root>'}.{param_name} is not held by any of the given "
                    f"{len(optimizers)} optimizer(s){f' ({note})' if note else ''}; pass the optimizer "
                    "that trains it, so that its optimizer state is reset with the weights"
                )
    if scope is not None:
        bound = {id(p) for p in scope.parameters()}
    for i, opt in enumerate(optimizers):
        if not any(id(p) in bound for group in opt.param_groups for p in group["params"]):
            what = (
                f"the bound network ({type(scope).__name__})"
                if scope is not None
                else f"the bound modules ({', '.join(n or '<root>' for n in names)})"
            )
            raise ValueError(f"optimizer {i} ({type(opt).__name__}) holds none of the parameters of {what}")


def structure_signature(root: nn.Module) -> tuple:
    """What identifies the structure of ``root``: every submodule's name and identity, its parameters'
    names and identities and its buffers' names, shapes and dtypes.

    It changes when modules or parameters are added, removed, replaced or moved (plasticity injection
    wraps the head in a new module and adds parameters), not when values change in place (resets, ReDo,
    training). Cheap enough to compare after every update (one walk over the modules).
    """
    return tuple(
        (
            name,
            id(module),
            tuple((k, id(p)) for k, p in module._parameters.items()),
            tuple((k, None if b is None else (tuple(b.shape), b.dtype)) for k, b in module._buffers.items()),
        )
        for name, module in root.named_modules()
    )


def rebind_modules(
    root: nn.Module, modules: Sequence[nn.Module], names: Sequence[str]
) -> tuple[list[nn.Module], list[str]]:
    """The bound ``modules`` (at qualified ``names``) after a structural change of ``root``.

    Each bound module is replaced by the module that now sits at its qualified name (plasticity injection
    puts an ``InjectedHead`` where the head was, holding the old head as ``frozen``); a module whose name
    no longer exists is kept if it is still part of ``root`` (under its new name). ValueError for a bound
    module that left the network. Modules nested in others are dropped, as in :func:`resolve_modules`.
    """
    rebound: list[nn.Module] = []
    for module, name in zip(modules, names):
        try:
            current = root.get_submodule(name) if name else root
        except AttributeError:
            try:
                current, name = module, qualified_name(root, module)
            except ValueError:
                raise ValueError(
                    f"bound module {name or '<root>'!r} ({type(module).__name__}) is no longer part of the "
                    f"network ({type(root).__name__}) after a change of its structure; bind the "
                    "intervention again to the new network"
                ) from None
        if all(current is not m for m in rebound):
            rebound.append(current)
    inside_other = {id(inner) for outer in rebound for inner in outer.modules() if inner is not outer}
    kept = [m for m in rebound if id(m) not in inside_other]
    return kept, [qualified_name(root, m) for m in kept]


def mirror_module(target: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """The part of ``target`` (a copy of the bound network) at qualified name ``name``, checked to have
    parameters and buffers of the same names and shapes as ``module``."""
    try:
        twin = target.get_submodule(name) if name else target
    except AttributeError:
        raise ValueError(
            f"target copy {type(target).__name__} has no part {name!r}; targets must be copies of the "
            "bound network with the same structure"
        ) from None
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    if ours != theirs:
        raise ValueError(
            f"target part {name or '<root>'!r} does not match the bound module's parameters and buffers "
            "(names or shapes differ)"
        )
    if any(p is q for p in module.parameters() for q in twin.parameters()):
        raise ValueError(f"target part {name or '<root>'!r} shares parameters with the bound network")
    return twin
