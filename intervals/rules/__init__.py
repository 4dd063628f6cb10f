"""Interval rules, one module per family; importing this package registers them all."""

from . import arithmetic, elementwise, linear, normalization, pooling, shape, softmax

__all__ = ["arithmetic", "elementwise", "linear", "normalization", "pooling", "shape", "softmax"]
