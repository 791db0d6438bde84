"""Ensembles of identical MLPs (twin critics) evaluated in one batched call, with per-member parts.

SAC and DrQ train two Q-networks on the same inputs. Evaluating them one after the other doubles the
number of small matrix products and kernel launches; :class:`EnsembleMLP` stacks the members' weights
and runs every layer of all members as one ``addmm`` (shared input) or ``baddbmm`` (per-member input).

Every member keeps ordinary ``nn.Linear`` / ``nn.LayerNorm`` / activation modules, so interventions and
diagnostics that work on plain modules work here unchanged: resets and fresh draws use each layer's own
initialiser, optimizers hold each member's parameters, ReDo and continual backprop find the members'
units. Two rules make this work:

- **Training mode** (the default) takes the batched path; activations run member by member only while a
  forward hook is attached to them (continual backprop, :func:`capture_activations`), so hooks see
  ``(batch, units)`` outputs as for an ordinary MLP.
- **Eval mode** (the probe forwards of diagnostics, ReDo and unit discovery, which switch the network to
  eval) runs each member through its own modules, so each ``nn.Linear`` is really called.

Both paths compute the same function (up to float rounding of the batched products). A layer replaced
by another module (plasticity injection wraps a whole :class:`EnsembleLinear`) keeps working: wrappers
receive the same ``member=`` keyword.

Names: ``encoder.<i>.linear.members.<m>`` (hidden Linear i of member m), ``encoder.<i>.norm.members.<m>``,
``encoder.<i>.act.members.<m>``, ``head.members.<m>``; ``encoder`` and ``head`` address all members
at once, as in :class:`~plasticrl.networks.MLP`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import activation_width_factor, check_positive_int, make_activation
from .mlp import _feature_activation

__all__ = [
    "EnsembleActivation",
    "EnsembleBlock",
    "EnsembleLayerNorm",
    "EnsembleLinear",
    "EnsembleMLP",
    "QEnsemble",
]


def _member_inputs(x: torch.Tensor, num_members: int) -> list[torch.Tensor]:
    """Per-member inputs: a shared ``(batch, features)`` input is used by every member."""
    if x.dim() == 2:
        return [x] * num_members
    if x.dim() != 3 or x.shape[0] != num_members:
        raise ValueError(
            f"ensemble inputs must be (batch, features) shared by all members or (members={num_members}, "
            f"batch, features), got shape {tuple(x.shape)}"
        )
    return list(x.unbind(0))


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


class EnsembleLinear(nn.Module):
    """``num_members`` independent ``nn.Linear`` layers applied together.

    ``forward(x)``: ``x`` of shape (batch, in) is shared by every member (one ``addmm`` with the stacked
    weights), (members, batch, in) gives each member its own input (one ``baddbmm``); the output is
    (members, batch, out). ``forward(x, member=m)`` applies member ``m`` alone to (batch, in).
    """

    def __init__(self, num_members: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.num_members = check_positive_int("num_members", num_members)
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.members = nn.ModuleList(
            nn.Linear(in_features, out_features, bias=bias) for _ in range(num_members)
        )

    def _batchable(self) -> bool:
        return all(type(m) is nn.Linear for m in self.members)

    def forward(self, x: torch.Tensor, member: int | None = None) -> torch.Tensor:
        if member is not None:
            return self.members[member](x)
        if not self._batchable():  # a member was replaced (e.g. injected): run them one by one
            inputs = _member_inputs(x, self.num_members)
            return torch.stack([m(xi) for m, xi in zip(self.members, inputs)])
        weight = torch.stack([m.weight for m in self.members])  # (E, out, in)
        bias = None if self.members[0].bias is None else torch.stack([m.bias for m in self.members])
        if x.dim() == 2:
            # Shared input: one (batch, in) x (in, E·out) product for all members.
            flat_bias = None if bias is None else bias.reshape(-1)
            out = F.linear(x, weight.reshape(-1, self.in_features), flat_bias)
            return out.view(x.shape[0], self.num_members, self.out_features).transpose(0, 1)
        _member_inputs(x, self.num_members)  # shape check
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    def extra_repr(self) -> str:
        return (
            f"num_members={self.num_members}, in_features={self.in_features}, "
            f"out_features={self.out_features}"
        )


class EnsembleLayerNorm(nn.Module):
    """One ``nn.LayerNorm`` per member over the last axis of (members, batch, features)."""

    def __init__(self, num_members: int, features: int, eps: float = 1e-5):
        super().__init__()
        self.num_members = check_positive_int("num_members", num_members)
        self.members = nn.ModuleList(nn.LayerNorm(features, eps=eps) for _ in range(num_members))

    def forward(self, x: torch.Tensor, member: int | None = None) -> torch.Tensor:
        if member is not None:
            return self.members[member](x)
        if not all(type(m) is nn.LayerNorm for m in self.members):
            return torch.stack([m(xi) for m, xi in zip(self.members, x.unbind(0))])
        first = self.members[0]
        normalized = F.layer_norm(x, first.normalized_shape, None, None, first.eps)
        weight = torch.stack([m.weight for m in self.members]).unsqueeze(1)
        bias = torch.stack([m.bias for m in self.members]).unsqueeze(1)
        return torch.addcmul(bias, normalized, weight)


class EnsembleActivation(nn.Module):
    """One activation module per member (so hooks and unit discovery see each member's units)."""

    def __init__(self, num_members: int, activation: str):
        super().__init__()
        self.num_members = check_positive_int("num_members", num_members)
        self.members = nn.ModuleList(_feature_activation(activation) for _ in range(num_members))

    def forward(self, x: torch.Tensor, member: int | None = None) -> torch.Tensor:
        if member is not None:
            return self.members[member](x)
        if any(_has_hooks(m) for m in self.members):
            return torch.stack([m(xi) for m, xi in zip(self.members, x.unbind(0))])
        return self.members[0](x)  # elementwise (CReLU concatenates along the last axis)


class EnsembleBlock(nn.Module):
    """``linear`` → [``norm``] → ``act`` for every member."""

    def __init__(self, num_members: int, in_features: int, width: int, activation: str, layer_norm: bool):
        super().__init__()
        self.linear = EnsembleLinear(num_members, in_features, width)
        self.norm = EnsembleLayerNorm(num_members, width) if layer_norm else None
        self.act = EnsembleActivation(num_members, activation)

    def forward(self, x: torch.Tensor, member: int | None = None) -> torch.Tensor:
        h = self.linear(x, member=member)
        if self.norm is not None:
            h = self.norm(h, member=member)
        return self.act(h, member=member)


class EnsembleMLP(nn.Module):
    """``num_members`` MLPs of the same shape (e.g. SAC's twin critics) evaluated together.

    Args:
        in_dim: input features.
        hidden_dims: hidden widths (at least one).
        out_dim: output width of each member.
        num_members: ensemble size (2 for twin critics).
        activation: hidden activation (``ACTIVATION_NAMES``; ``"crelu"`` doubles what the next layer sees).
        layer_norm: LayerNorm between each hidden Linear and its activation.
        batched: use the batched path in training mode (False: always member by member).

    ``forward(x)`` takes (batch, in_dim) shared by the members or (members, batch, in_dim) and returns
    (members, batch, out_dim). ``member_forward(x, m)`` runs member ``m`` alone: (batch, in_dim) →
    (batch, out_dim). See the module docstring for the batched and member-by-member paths.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        *,
        num_members: int = 2,
        activation: str = "relu",
        layer_norm: bool = False,
        batched: bool = True,
    ):
        super().__init__()
        in_dim = check_positive_int("in_dim", in_dim)
        out_dim = check_positive_int("out_dim", out_dim)
        num_members = check_positive_int("num_members", num_members)
        if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence) or not hidden_dims:
            raise ValueError(
                f"hidden_dims must be a non-empty sequence of positive ints, got {hidden_dims!r}"
            )
        widths = tuple(check_positive_int(f"hidden_dims[{i}]", w) for i, w in enumerate(hidden_dims))
        make_activation(activation)
        factor = activation_width_factor(activation)
        blocks = []
        fan_in = in_dim
        for width in widths:
            blocks.append(EnsembleBlock(num_members, fan_in, width, activation, layer_norm))
            fan_in = width * factor
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.hidden_dims = widths
        self.feature_dim = fan_in
        self.num_members = num_members
        self.batched = batched
        self.encoder = nn.ModuleList(blocks)
        self.head = EnsembleLinear(num_members, fan_in, out_dim)

    def member_features(self, x: torch.Tensor, member: int) -> torch.Tensor:
        """Penultimate features of member ``member`` on (batch, in_dim)."""
        h = x
        for block in self.encoder:
            h = block(h, member=member)
        return h

    def member_forward(self, x: torch.Tensor, member: int) -> torch.Tensor:
        """Member ``member`` alone: (batch, in_dim) → (batch, out_dim)."""
        return self.head(self.member_features(x, member), member=member)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"EnsembleMLP expects last dimension {self.in_dim}, got shape {tuple(x.shape)}")
        if self.training and self.batched:
            h = x
            for block in self.encoder:
                h = block(h)
            return self.head(h)
        inputs = _member_inputs(x, self.num_members)
        return torch.stack([self.member_forward(xi, m) for m, xi in enumerate(inputs)])


class QEnsemble(EnsembleMLP):
    """An ensemble of Q-functions Q_m(s, a) on ``[state features, action]`` (twin critics with 2 members).

    ``forward(obs, action)`` → (members, batch); ``features(obs, action)`` → each member's penultimate
    features (for diagnostics).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dims: Sequence[int],
        *,
        num_members: int = 2,
        activation: str = "relu",
        layer_norm: bool = False,
    ):
        obs_dim = check_positive_int("obs_dim", obs_dim)
        action_dim = check_positive_int("action_dim", action_dim)
        super().__init__(
            obs_dim + action_dim,
            hidden_dims,
            1,
            num_members=num_members,
            activation=activation,
            layer_norm=layer_norm,
        )
        self.obs_dim = obs_dim
        self.action_dim = action_dim

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.cat([obs, action], dim=-1)).squeeze(-1)

    def features(self, obs: torch.Tensor, action: torch.Tensor) -> list[torch.Tensor]:
        """Penultimate features of every member on (obs, action)."""
        x = torch.cat([obs, action], dim=-1)
        return [self.member_features(x, m) for m in range(self.num_members)]
