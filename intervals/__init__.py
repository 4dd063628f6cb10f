"""hypercert.intervals: sound interval arithmetic on torch tensors.

``Interval`` is a box ``[lower, upper]`` of tensors that unmodified ``nn.Module``s accept through
``__torch_function__`` (interval bound propagation). Every supported torch function has a sound
rule; any other raises :class:`UnsupportedOperation`.

Example:
    >>> import torch
    >>> from intervals import Interval
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> box = Interval.linf_ball(torch.zeros(1, 4), eps=0.1)
    >>> out = net(box)
    >>> bool((out.lower <= net(torch.zeros(1, 4))).all())
    True
"""

from . import rules as _rules  # noqa: F401  (registers every rule)
from .errors import IntervalError, UnsupportedInPlace, UnsupportedMethod, UnsupportedOperation
from .interval import Interval
from .precision import bf16_radius, is_bf16_radius
from .registry import supported_functions
from .rounding import is_rigorous, rigorous
from .rules.linear import cached_abs_weights

__all__ = [
    "Interval",
    "IntervalError",
    "UnsupportedOperation",
    "UnsupportedMethod",
    "UnsupportedInPlace",
    "rigorous",
    "is_rigorous",
    "supported_functions",
    "cached_abs_weights",
    "bf16_radius",
    "is_bf16_radius",
]
