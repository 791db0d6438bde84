"""CIFAR-style ResNet-18 whose depth (blocks per stage) and width (base channels) are parameters.

The seed paper ("A study on the plasticity of neural networks", Berariu et al. 2021) warm-starts this
network, scales blocks per stage d and base width w (stages w, 2w, 4w, 8w), and resets "modules"
numbered 1 = first conv, 2–5 = the four stages, 6 = the classifier. The layout is the usual CIFAR
variant of He et al. 2016: 3×3 stride-1 stem, no max-pool, BatchNorm, stage strides 1, 2, 2, 2, 1×1
projection shortcuts where the shape changes, global average pooling, linear classifier;
11,173,962 parameters for 10 classes at d = 2, w = 64. PyTorch's default initialisation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .layers import activation_width_factor, check_positive_int, make_activation


class BasicBlock(nn.Module):
    """act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x)), two 3×3 convs without bias."""

    def __init__(self, in_channels: int, channels: int, stride: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        if stride != 1 or in_channels != channels:
            self.shortcut: nn.Module = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(channels),
                )
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18 with ``encoder`` (stem, layer1–layer4, pool) and ``head`` (the classifier).

    Args:
        num_classes: classifier outputs.
        in_channels: image channels.
        blocks_per_stage: residual blocks in each of the four stages ((2, 2, 2, 2) is ResNet-18).
        base_width: channels of the stem and first stage; stages have w, 2w, 4w, 8w.
        activation: a width-preserving activation name (CReLU is refused: the residual additions need
            equal widths).

    ``numbered_modules()`` / ``numbered_module(k)`` give the seed paper's modules 1–6 by reference,
    for resets.
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        base_width: int = 64,
        activation: str = "relu",
    ):
        super().__init__()
        num_classes = check_positive_int("num_classes", num_classes)
        in_channels = check_positive_int("in_channels", in_channels)
        base_width = check_positive_int("base_width", base_width)
        if isinstance(blocks_per_stage, (str, bytes)) or not isinstance(blocks_per_stage, Sequence):
            raise TypeError(
                f"blocks_per_stage must be a sequence of 4 positive ints, got {blocks_per_stage!r}"
            )
        if len(blocks_per_stage) != 4:
            raise ValueError(
                f"blocks_per_stage must have 4 entries (one per stage), got {blocks_per_stage!r}"
            )
        blocks_per_stage = tuple(
            check_positive_int(f"blocks_per_stage[{i}]", n) for i, n in enumerate(blocks_per_stage)
        )
        make_activation(activation)
        if activation_width_factor(activation) != 1:
            raise ValueError(
                f"ResNet18 needs an activation that keeps the width (residual sums); {activation!r} does not"
            )

        self.in_channels = in_channels
        self.blocks_per_stage = tuple(blocks_per_stage)
        self.base_width = base_width
        stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, base_width, 3, stride=1, padding=1, bias=False),
                bn=nn.BatchNorm2d(base_width),
                act=make_activation(activation),
            )
        )
        parts: OrderedDict[str, nn.Module] = OrderedDict(stem=stem)
        previous = base_width
        for i, (blocks, stride) in enumerate(zip(self.blocks_per_stage, (1, 2, 2, 2)), start=1):
            channels = base_width * 2 ** (i - 1)
            stage = [BasicBlock(previous, channels, stride, activation)]
            stage += [BasicBlock(channels, channels, 1, activation) for _ in range(blocks - 1)]
            parts[f"layer{i}"] = nn.Sequential(*stage)
            previous = channels
        parts["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

        self.feature_dim = previous
        self.output_dim = num_classes
        self.encoder = nn.Sequential(parts)
        self.head = nn.Linear(previous, num_classes)

    def numbered_modules(self) -> list[nn.Module]:
        """The seed paper's modules 1–6: stem (conv + BN + activation), layer1–layer4, the classifier."""
        e = self.encoder
        return [e.stem, e.layer1, e.layer2, e.layer3, e.layer4, self.head]

    def numbered_module(self, k: int) -> nn.Module:
        """The seed paper's module ``k`` (1 = first conv, 2–5 = stages, 6 = classifier)."""
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"module number must be an int in 1..6, got {k!r}")
        if not 1 <= k <= 6:
            raise ValueError(
                f"module number must be in 1..6 (1 first conv, 2-5 stages, 6 classifier), got {k}"
            )
        return self.numbered_modules()[k - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet18 expects input of shape (batch, {self.in_channels}, height, width), "
                f"got {tuple(x.shape)}"
            )
        return self.head(self.encoder(x))
