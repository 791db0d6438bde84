"""Capture intermediate activations with forward hooks, without changing model code.

Diagnostics (dormant units, feature rank) and ReDo need the post-activation outputs of
every hidden layer. The networks in this package express every nonlinearity as a module
(``nn.ReLU``, :class:`~plasticrl.networks.layers.CReLU`, ...), so hooks on those modules see
each hidden layer's units. Any other ``nn.Module`` built the same way works too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .layers import ACTIVATION_TYPES


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> module for every activation module in ``model`` (registration order)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ACTIVATION_TYPES)}


@contextmanager
def capture_activations(
    model: nn.Module,
    modules: dict[str, nn.Module] | Iterable[nn.Module] | None = None,
    *,
    detach: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``modules`` (default: every activation module) during forwards.

    Yields a dict filled by the forward passes run inside the ``with`` block: qualified name ->
    the output of that module's last call. Hooks are removed on exit, even after an error.

        with capture_activations(net) as acts:
            net(x)
        acts["encoder.1"]  # output of the first ReLU
    """
    if modules is None:
        named = activation_modules(model)
    elif isinstance(modules, dict):
        named = dict(modules)
    else:
        names = {id(m): n for n, m in model.named_modules()}
        named = {}
        for m in modules:
            if id(m) not in names:
                raise ValueError(f"{type(m).__name__} module is not part of the given model")
            named[names[id(m)]] = m
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            captured[name] = output.detach() if detach else output

        return hook

    try:
        for name, m in named.items():
            handles.append(m.register_forward_hook(make_hook(name)))
        yield captured
    finally:
        for h in handles:
            h.remove()
