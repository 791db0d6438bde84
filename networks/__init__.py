"""Network building blocks shared by the agents and the supervised harness.

Every network names its parts (at least ``encoder`` and ``head``) so interventions can
address them by reference; any module can be re-drawn from its own initialiser
(:func:`reinitialize_`, :func:`fresh_copy`); hidden activations can be captured by hooks
(:func:`capture_activations`).
"""

from .hooks import activation_modules, capture_activations
from .init import fresh_copy, fresh_state, get_initializer, reinitialize_, set_initializer
from .layers import ACTIVATION_NAMES, ACTIVATION_TYPES, CReLU, activation_width_factor, make_activation

__all__ = [
    "ACTIVATION_NAMES",
    "ACTIVATION_TYPES",
    "CReLU",
    "activation_modules",
    "activation_width_factor",
    "capture_activations",
    "fresh_copy",
    "fresh_state",
    "get_initializer",
    "make_activation",
    "reinitialize_",
    "set_initializer",
]
