"""Pixel encoders: the Nature CNN, the Impala CNN (BBF) and the DrQ encoder.

Every network here takes float tensors (batch, channels, height, width) and does no input scaling:
dividing uint8 pixels by 255 is the agent's job (DrQ's ``drq.py`` divides inside its encoder, dopamine
and BBF before it; the result is the same). Each names its parts ``encoder`` (pixels → flat features)
and ``head``, and every nonlinearity is its own module so hooks see every hidden layer.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .init import set_initializer
from .layers import (
    OrthogonalInit,
    XavierUniformInit,
    activation_width_factor,
    check_positive_int,
    make_activation,
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow/Flax ``'SAME'``: output ceil(size / stride), extra pad after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_out(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _image_size(value: int | Sequence[int]) -> tuple[int, int]:
    hw = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(hw) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {value!r}")
    return check_positive_int("image height", hw[0]), check_positive_int("image width", hw[1])


def _check_image_batch(net: str, x: torch.Tensor, expected: tuple[int, int, int]) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{net} expects float input of shape (batch, {', '.join(map(str, expected))}), "
            f"got {tuple(x.shape)}"
        )


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow/Flax ``'SAME'`` padding (asymmetric when needed).

    PyTorch's ``padding='same'`` refuses strides > 1; Flax's default ``nn.Conv`` (used by dopamine's Atari
    networks) pads so the output is ceil(input / stride), putting the odd pixel at the bottom/right.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = True
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


class MaxPool2dSame(nn.MaxPool2d):
    """``nn.MaxPool2d`` with Flax ``'SAME'`` padding (pads with -inf, odd pixel at the bottom/right).

    ``nn.MaxPool2d(3, 2, padding=1)`` gives the same output size but shifts the windows by one pixel on
    even inputs; this one reproduces ``flax.linen.max_pool(x, (3, 3), (2, 2), 'SAME')`` used by BBF.
    """

    def __init__(self, kernel_size: int, stride: int):
        super().__init__(kernel_size, stride=stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size, self.stride)
        left, right = same_padding(x.shape[-1], self.kernel_size, self.stride)
        return super().forward(F.pad(x, (left, right, top, bottom), value=-math.inf))


class NatureCNN(nn.Module):
    """The DQN network of Mnih et al. 2015 (Nature): 32 8×8/4, 64 4×4/2, 64 3×3/1 convs, dense 512.

    Args:
        in_channels: stacked frames (4 for Atari).
        num_outputs: width of the linear ``head`` (actions); None leaves it ``nn.Identity``.
        feature_dim: units of the dense layer (512 in the paper).
        activation: hidden activation, one of ``ACTIVATION_NAMES``; ``"crelu"`` doubles the channels
            (and dense units) that each next layer sees.
        image_size: input height and width (84 in the paper).
        padding: ``"valid"`` (the paper: 84 → 20 → 9 → 7, 3,136 features) or ``"same"`` (Flax's default,
            as in dopamine's JAX ``NatureDQNNetwork``/``FullRainbowNetwork`` used for DrQ(ε) on Atari-100k:
            84 → 21 → 11 → 11, 7,744 features).

    Initialisation is PyTorch's default (weights and biases U(±1/√fan_in)). Dopamine's JAX Nature and
    FullRainbow networks use Xavier-uniform kernels and zero biases instead; an agent that wants those
    attaches them with ``set_initializer(net, XavierUniformInit(), types=(nn.Conv2d, nn.Linear))``.

    Attributes: ``encoder`` (conv1, act1, conv2, act2, conv3, act3, flatten, fc, act4), ``head``,
    ``conv_output_dim`` (flattened conv features), ``feature_dim`` (encoder output width, ×2 for CReLU),
    ``output_dim`` (what forward returns).
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_outputs: int | None = None,
        *,
        feature_dim: int = 512,
        activation: str = "relu",
        image_size: int | Sequence[int] = 84,
        padding: str = "valid",
    ):
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        feature_dim = check_positive_int("feature_dim", feature_dim)
        if num_outputs is not None:
            num_outputs = check_positive_int("num_outputs", num_outputs)
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        make_activation(activation)
        height, width = _image_size(image_size)
        self.input_shape = (in_channels, height, width)
        factor = activation_width_factor(activation)

        specs = ((32, 8, 4), (64, 4, 2), (64, 3, 1))  # (channels, kernel, stride), Mnih et al. 2015
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for i, (out_channels, kernel, stride) in enumerate(specs, start=1):
            if padding == "valid":
                if min(height, width) < kernel:
                    raise ValueError(
                        f"image_size {(height, width)} is too small for NatureCNN with padding='valid'"
                    )
                layers[f"conv{i}"] = nn.Conv2d(channels, out_channels, kernel, stride=stride)
                height, width = _conv_out(height, kernel, stride), _conv_out(width, kernel, stride)
            else:
                layers[f"conv{i}"] = Conv2dSame(channels, out_channels, kernel, stride=stride)
                height, width = -(-height // stride), -(-width // stride)
            layers[f"act{i}"] = make_activation(activation)
            channels = out_channels * factor
        self.conv_output_dim = channels * height * width
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(self.conv_output_dim, feature_dim)
        layers["act4"] = make_activation(activation)

        self.feature_dim = feature_dim * factor
        self.output_dim = num_outputs if num_outputs is not None else self.feature_dim
        self.encoder = nn.Sequential(layers)
        self.head = nn.Linear(self.feature_dim, num_outputs) if num_outputs is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch("NatureCNN", x, self.input_shape)
        return self.head(self.encoder(x))


class ImpalaResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3×3 convs, no normalisation (Espeholt et al. 2018; BBF)."""

    def __init__(self, channels: int):
        super().__init__()
        self.act1 = nn.ReLU()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act2 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act2(self.conv1(self.act1(x))))


class ImpalaStage(nn.Module):
    """conv 3×3 → max-pool 3×3 stride 2 ('SAME') → residual blocks."""

    def __init__(self, in_channels: int, channels: int, num_blocks: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.pool = MaxPool2dSame(3, 2)
        self.blocks = nn.Sequential(*(ImpalaResidualBlock(channels) for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pool(self.conv(x)))


class ImpalaCNN(nn.Module):
    """The Impala ResNet encoder with a width multiplier, as in BBF (Schwarzer et al. 2023).

    BBF (google-research ``bigger_better_faster/bbf/spr_networks.py``, ``configs/BBF.gin``): stages of
    (16, 32, 32) channels × width 4, each conv 3×3 → max-pool 3×3/2 → 2 residual blocks, no
    normalisation, ReLU after the last stage; every conv and dense kernel Xavier-uniform, biases zero.
    BBF's own head (projection 2048 → ReLU → dueling C51) and the latent renormalisation belong to the
    agent; the optional ``head`` here is Linear(feature_dim, hidden_dim) → ReLU → Linear(hidden_dim,
    num_outputs).

    Attributes: ``encoder`` (``stage0``…, ``act``, ``flatten``; ``encoder[i]`` is stage i), ``stages``,
    ``head``, ``latent_shape`` (C, H, W) of the last stage's output (128, 11, 11 for BBF on 84×84),
    ``feature_dim`` (its flattened size, 15,488), ``output_dim`` (what forward returns).
    """

    def __init__(
        self,
        in_channels: int = 4,
        *,
        width_scale: int = 4,
        channels: Sequence[int] = (16, 32, 32),
        num_blocks: int = 2,
        num_outputs: int | None = None,
        hidden_dim: int = 2048,
        image_size: int | Sequence[int] = 84,
    ):
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        width_scale = check_positive_int("width_scale", width_scale)
        hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, numbers.Integral) or num_blocks < 0:
            raise ValueError(f"num_blocks must be a non-negative int, got {num_blocks!r}")
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
        channels = tuple(check_positive_int(f"channels[{i}]", c) for i, c in enumerate(channels))
        if num_outputs is not None:
            num_outputs = check_positive_int("num_outputs", num_outputs)
        height, width = _image_size(image_size)
        self.input_shape = (in_channels, height, width)

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        previous = in_channels
        for i, c in enumerate(channels):
            layers[f"stage{i}"] = ImpalaStage(previous, c * width_scale, int(num_blocks))
            previous = c * width_scale
            height, width = -(-height // 2), -(-width // 2)
        layers["act"] = nn.ReLU()
        layers["flatten"] = nn.Flatten()

        self.latent_shape = (previous, height, width)
        self.feature_dim = previous * height * width
        self.output_dim = num_outputs if num_outputs is not None else self.feature_dim
        self.encoder = nn.Sequential(layers)
        if num_outputs is None:
            self.head: nn.Module = nn.Identity()
        else:
            self.head = nn.Sequential(
                OrderedDict(
                    fc=nn.Linear(self.feature_dim, hidden_dim),
                    act=nn.ReLU(),
                    out=nn.Linear(hidden_dim, num_outputs),
                )
            )
        set_initializer(self, XavierUniformInit(), types=(nn.Conv2d, nn.Linear))

    @property
    def stages(self) -> list[ImpalaStage]:
        """The residual stages, in order."""
        return [m for m in self.encoder if isinstance(m, ImpalaStage)]

    def encode_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder output before flattening, (batch, *latent_shape): what SPR's transition model uses."""
        _check_image_batch("ImpalaCNN", x, self.input_shape)
        return self.encoder[:-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch("ImpalaCNN", x, self.input_shape)
        return self.head(self.encoder(x))


class DrQEncoder(nn.Module):
    """The DrQ pixel encoder (Kostrikov et al. 2020; denisyarats/drq ``drq.py`` ``Encoder``).

    Four 3×3 convs of 32 channels (first stride 2, then stride 1, no padding), ReLU after each, flatten
    (32·35·35 for 84×84), then Linear → ``feature_dim`` → LayerNorm → tanh. Weights as in drq's
    ``utils.weight_init``: orthogonal with the ReLU gain √2 for convs and gain 1 for the Linear, biases
    zero; LayerNorm at ones/zeros.

    Input scaling: drq.py divides the observation by 255 inside the encoder; here the caller does it
    (like every network in this package), which gives the same numbers.

    Attributes: ``encoder`` (conv1, act1, …, conv4, act4, flatten), ``head`` (fc, norm, tanh),
    ``conv_output_dim`` (39,200 for 84×84), ``feature_dim``, ``output_dim`` (= ``feature_dim``).
    """

    num_filters = 32  # drq.py Encoder.num_filters
    num_layers = 4  # drq.py Encoder.num_layers

    def __init__(self, obs_shape: tuple[int, int, int] = (9, 84, 84), feature_dim: int = 50):
        super().__init__()
        if len(obs_shape) != 3:
            raise ValueError(f"obs_shape must be (channels, height, width), got {obs_shape!r}")
        channels, height, width = (
            check_positive_int(n, v) for n, v in zip(("channels", "height", "width"), obs_shape)
        )
        feature_dim = check_positive_int("feature_dim", feature_dim)
        self.input_shape = (channels, height, width)

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        previous = channels
        for i in range(1, self.num_layers + 1):
            stride = 2 if i == 1 else 1
            if min(height, width) < 3:
                raise ValueError(f"obs_shape {tuple(obs_shape)} is too small for DrQEncoder's four 3×3 convs")
            layers[f"conv{i}"] = nn.Conv2d(previous, self.num_filters, 3, stride=stride)
            layers[f"act{i}"] = nn.ReLU()
            height, width = _conv_out(height, 3, stride), _conv_out(width, 3, stride)
            previous = self.num_filters
        layers["flatten"] = nn.Flatten()

        self.conv_output_dim = self.num_filters * height * width
        self.feature_dim = feature_dim
        self.output_dim = feature_dim
        self.encoder = nn.Sequential(layers)
        self.head = nn.Sequential(
            OrderedDict(
                fc=nn.Linear(self.conv_output_dim, feature_dim),
                norm=nn.LayerNorm(feature_dim),
                tanh=nn.Tanh(),
            )
        )
        set_initializer(self.encoder, OrthogonalInit(nn.init.calculate_gain("relu")), types=(nn.Conv2d,))
        set_initializer(self.head, OrthogonalInit(1.0), types=(nn.Linear,))

    def forward(self, obs: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """Features of ``obs``; ``detach=True`` stops gradients into the convs (DrQ's actor update)."""
        _check_image_batch("DrQEncoder", obs, self.input_shape)
        h = self.encoder(obs)
        if detach:
            h = h.detach()
        return self.head(h)
