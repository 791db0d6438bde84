"""Networks of the supervised harness: the same classes the agents use (plasticrl.networks)."""

from __future__ import annotations

import math

import torch
from torch import nn

from plasticrl.networks import MLP, ResNet18

from .config import CommonConfig, network_options_error

__all__ = ["build_network", "check_network_input", "flat_inputs", "optimizer_for"]


def flat_inputs(config: CommonConfig) -> bool:
    """Whether the network takes flat vectors (MLP, linear) rather than images (ResNet)."""
    return config.network in ("mlp", "linear")


def build_network(config: CommonConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The network named by ``config.network`` for images of ``image_shape`` and ``num_classes`` outputs.

    ``mlp`` and ``linear`` take the flattened image (``in_dim = C·H·W``); ``linear`` is logistic regression
    (an MLP without hidden layers). ``resnet18`` is the CIFAR ResNet-18 with modules 1–6. Options a network
    does not take (``layer_norm`` or CReLU on ``resnet18``, …) raise ValueError, never pass silently.
    """
    problem = network_options_error(
        config.network, config.activation, config.layer_norm, config.keep_param_count
    )
    if problem:
        raise ValueError(problem)
    if config.network == "resnet18":
        return ResNet18(
            num_classes,
            in_channels=image_shape[0],
            blocks_per_stage=tuple(config.blocks_per_stage),
            base_width=config.base_width,
            activation=config.activation,
        )
    hidden = () if config.network == "linear" else tuple(config.hidden_dims)
    if config.network == "mlp" and not hidden:
        raise ValueError("--network mlp needs --hidden-dims (use --network linear for logistic regression)")
    return MLP(
        math.prod(image_shape),
        hidden,
        num_classes,
        activation=config.activation,
        layer_norm=config.layer_norm,
        keep_param_count=config.keep_param_count,
    )


@torch.no_grad()
def check_network_input(
    network: nn.Module, inputs: torch.Tensor, num_classes: int, dataset: str = ""
) -> None:
    """Run ``network`` on two examples; ValueError naming both shapes if the dataset does not fit it or its
    output width is not ``num_classes``."""
    sample = inputs[:2]
    training = network.training
    network.eval()
    try:
        out = network(sample)
    except (ValueError, RuntimeError) as error:
        raise ValueError(
            f"{type(network).__name__} cannot take the {dataset or 'dataset'} inputs of shape "
            f"{tuple(inputs.shape[1:])}: {error}"
        ) from error
    finally:
        network.train(training)
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise ValueError(
            f"{type(network).__name__} outputs shape {tuple(out.shape[1:])} per example but "
            f"{dataset or 'the dataset'} has {num_classes} classes"
        )


def optimizer_for(config: CommonConfig, network: nn.Module) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the network's trainable parameters, from the config."""
    params = [p for p in network.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(
            params,
            lr=config.lr,
            betas=tuple(config.adam_betas),
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            params,
            lr=config.lr,
            betas=tuple(config.adam_betas),
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose adam, adamw or sgd")
