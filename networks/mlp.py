"""Multi-layer perceptron with named parts, optional LayerNorm and CReLU.

Used for SAC/DrQ actor and critic trunks (on states or on encoder features) and for the supervised
harness (MLP 3072→100→100→C of Ash & Adams 2020, 2×100 of Kumar et al. 2023, logistic regression
with no hidden layer).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .layers import CReLU, activation_width_factor, check_positive_int, make_activation


def _feature_activation(name: str) -> nn.Module:
    # CReLU concatenates along the last axis here so that (time, batch, features) inputs work too.
    return CReLU(dim=-1) if name == "crelu" else make_activation(name)


def mlp_param_count(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int | None = None,
    *,
    width_factor: int = 1,
    layer_norm: bool = False,
) -> int:
    """Number of parameters of an :class:`MLP` with these sizes.

    ``width_factor`` is how many features the activation emits per unit (2 for CReLU): every layer after
    the first hidden one, and the head, see that many times the previous width as inputs.
    """
    count = 0
    fan_in = in_dim
    for width in hidden_dims:
        count += fan_in * width + width + (2 * width if layer_norm else 0)
        fan_in = width * width_factor
    if out_dim is not None:
        count += fan_in * out_dim + out_dim
    return count


def param_matched_hidden_dims(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int | None,
    *,
    width_factor: int,
    layer_norm: bool = False,
) -> tuple[int, ...]:
    """Hidden widths for a ``width_factor``-widening activation with about the parameters of the plain net.

    Rule: every hidden width is scaled by one common factor s and rounded (at least 1); s is the largest
    value for which the widened net has no more parameters than the same net with a width-preserving
    activation (ReLU) at the original widths. Hidden-to-hidden layers dominate large nets, so s → 1/√2
    for CReLU (e.g. 256 → 181 units). Abbas et al. 2023 shrink CReLU layers to keep the parameter count;
    their exact rounding is not published, this rule is ours.
    """
    target = mlp_param_count(in_dim, hidden_dims, out_dim, layer_norm=layer_norm)

    def widths(scale: float) -> tuple[int, ...]:
        return tuple(max(1, int(scale * h + 0.5)) for h in hidden_dims)

    def count(scale: float) -> int:
        return mlp_param_count(
            in_dim, widths(scale), out_dim, width_factor=width_factor, layer_norm=layer_norm
        )

    lo, hi = 0.0, 1.0
    if count(hi) <= target:
        return widths(hi)
    # count(scale) is non-decreasing in scale; bisect for the largest scale within budget.
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if count(mid) <= target:
            lo = mid
        else:
            hi = mid
    return widths(lo)


class MLP(nn.Module):
    """Fully connected network: ``encoder`` (hidden blocks) then ``head`` (last Linear).

    Args:
        in_dim: input features (last axis of the input).
        hidden_dims: widths of the hidden layers; empty gives a linear model (then ``out_dim`` is required).
        out_dim: output width; None leaves ``head`` as ``nn.Identity`` and the network returns features.
        activation: hidden activation, one of ``ACTIVATION_NAMES``. ``"crelu"`` doubles each hidden
            layer's output, so the next layer has twice the inputs.
        layer_norm: LayerNorm between each hidden Linear and its activation.
        output_activation: optional activation after the head (a module named ``output_activation``; it is
            an activation module, so ``capture_activations`` records it too).
        keep_param_count: shrink the hidden widths so that a widening activation (CReLU) keeps about the
            parameter count of the ReLU net, see :func:`param_matched_hidden_dims`. No effect otherwise.

    Attributes:
        encoder: ``nn.Sequential`` of hidden blocks; ``encoder[i]`` has ``linear`` [``norm``] ``act``.
        head: the output ``nn.Linear`` (or ``nn.Identity``).
        hidden_dims: the hidden widths actually used (after ``keep_param_count``).
        feature_dim: width of the encoder output (the last hidden width × 2 for CReLU; ``in_dim`` without
            hidden layers).
        out_dim: the ``out_dim`` argument; ``output_dim`` is the width the forward pass returns.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int | None = None,
        *,
        activation: str = "relu",
        layer_norm: bool = False,
        output_activation: str | None = None,
        keep_param_count: bool = False,
    ):
        super().__init__()
        in_dim = check_positive_int("in_dim", in_dim)
        if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence):
            raise TypeError(f"hidden_dims must be a sequence of positive ints, got {hidden_dims!r}")
        hidden_dims = tuple(check_positive_int(f"hidden_dims[{i}]", w) for i, w in enumerate(hidden_dims))
        if out_dim is not None:
            out_dim = check_positive_int("out_dim", out_dim)
        if not hidden_dims and out_dim is None:
            raise ValueError("an MLP needs at least one hidden layer or an out_dim")
        if output_activation is not None and out_dim is None:
            raise ValueError("output_activation needs an out_dim (there is no head to apply it to)")
        make_activation(activation)  # validates the name before any layer is built
        if output_activation is not None:
            make_activation(output_activation)

        factor = activation_width_factor(activation)
        widths = tuple(hidden_dims)
        if keep_param_count and factor != 1:
            widths = param_matched_hidden_dims(
                in_dim, widths, out_dim, width_factor=factor, layer_norm=layer_norm
            )

        blocks = []
        fan_in = in_dim
        for width in widths:
            parts: OrderedDict[str, nn.Module] = OrderedDict(linear=nn.Linear(fan_in, width))
            if layer_norm:
                parts["norm"] = nn.LayerNorm(width)
            parts["act"] = _feature_activation(activation)
            blocks.append(nn.Sequential(parts))
            fan_in = width * factor

        self.in_dim = in_dim
        self.hidden_dims = widths
        self.activation = activation
        self.feature_dim = fan_in
        self.out_dim = out_dim
        if out_dim is None:
            self.output_dim = fan_in
        else:
            self.output_dim = out_dim * activation_width_factor(output_activation or "identity")
        self.encoder = nn.Sequential(*blocks)
        self.head = nn.Linear(fan_in, out_dim) if out_dim is not None else nn.Identity()
        self.output_activation = (
            _feature_activation(output_activation) if output_activation is not None else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(
                f"MLP expects inputs with last dimension {self.in_dim}, got shape {tuple(x.shape)}"
            )
        return self.output_activation(self.head(self.encoder(x)))
