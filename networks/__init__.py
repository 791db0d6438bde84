"""Network building blocks shared by the agents and the supervised harness.

Every network names its parts (at least ``encoder`` and ``head``) so interventions can
address them by reference; any module can be re-drawn from its own initialiser
(:func:`reinitialize_`, :func:`fresh_copy`); hidden activations can be captured by hooks
(:func:`capture_activations`). Networks take float inputs; scaling pixels by 1/255 is the agent's job.
"""

from .augmentation import augment_pixels, intensity_noise, pixels_to_float, random_shift
from .cnn import (
    Conv2dSame,
    DrQEncoder,
    ImpalaCNN,
    ImpalaResidualBlock,
    ImpalaStage,
    MaxPool2dSame,
    NatureCNN,
    same_padding,
)
from .ensemble import (
    EnsembleActivation,
    EnsembleBlock,
    EnsembleLayerNorm,
    EnsembleLinear,
    EnsembleMLP,
    QEnsemble,
)
from .hooks import activation_modules, capture_activations
from .init import fresh_copy, fresh_state, get_initializer, reinitialize_, set_initializer
from .layers import (
    ACTIVATION_NAMES,
    ACTIVATION_TYPES,
    CReLU,
    OrthogonalInit,
    XavierUniformInit,
    activation_width_factor,
    check_positive_int,
    make_activation,
)
from .mlp import MLP, mlp_param_count, param_matched_hidden_dims
from .resnet import BasicBlock, ResNet18
from .target import soft_update_

__all__ = [
    "ACTIVATION_NAMES",
    "ACTIVATION_TYPES",
    "BasicBlock",
    "CReLU",
    "Conv2dSame",
    "DrQEncoder",
    "EnsembleActivation",
    "EnsembleBlock",
    "EnsembleLayerNorm",
    "EnsembleLinear",
    "EnsembleMLP",
    "ImpalaCNN",
    "ImpalaResidualBlock",
    "ImpalaStage",
    "MLP",
    "MaxPool2dSame",
    "NatureCNN",
    "OrthogonalInit",
    "QEnsemble",
    "ResNet18",
    "XavierUniformInit",
    "augment_pixels",
    "activation_modules",
    "activation_width_factor",
    "capture_activations",
    "check_positive_int",
    "fresh_copy",
    "fresh_state",
    "get_initializer",
    "intensity_noise",
    "make_activation",
    "mlp_param_count",
    "param_matched_hidden_dims",
    "pixels_to_float",
    "random_shift",
    "reinitialize_",
    "same_padding",
    "set_initializer",
    "soft_update_",
]
