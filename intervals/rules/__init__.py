"""Interval rules, one module per family; importing this package registers them all."""

from ..interval import bind_tensor_methods
from . import arithmetic, elementwise, linear, normalization, pooling, shape, softmax

bind_tensor_methods()

__all__ = ["arithmetic", "elementwise", "linear", "normalization", "pooling", "shape", "softmax"]
