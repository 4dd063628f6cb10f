"""Opt-in bfloat16 radius products: the ``|W| r`` half of an interval layer at bf16 GEMM speed.

A point-weight interval layer costs two products, ``W c`` and ``|W| r``. Inside
``with intervals.bf16_radius():`` the radius product runs in bfloat16, which CPUs with AVX512-BF16
or AMX (and GPUs) multiply several times faster than float32. It stays an upper bound because
every quantity in it is non-negative:

* ``|W|`` and ``r`` are rounded to the nearest bfloat16, each at least ``(1 - 2^-8)`` times its
  value; a product of two bf16 numbers is exact in the float32 accumulator.
* A float32 sum of ``n`` non-negative terms, in any order, is at least ``(1 - (n-1) u32)`` times
  the exact sum, and the final rounding of the result to bfloat16 loses at most another factor
  ``(1 - 2^-8)``. The result is multiplied back by the inverse of all these factors (with a
  margin for the float32 multiply).

The centre ``W c`` stays in float32, so only the radius loosens: by at most 2.4% per layer (every
rounding going up and the allowance on top), about 1.2% typically (the allowance alone); over a
deep network these compound. The bounds keep the same guarantee as default mode (sound up to
float32 round-off in the centre; underflow below float32's normal range is not accounted for).
Rigorous mode (:func:`intervals.rigorous`) ignores this switch. It applies to float32
point-weight ``F.linear`` and convolutions on CPU, where oneDNN accumulates bf16 products in
float32; elsewhere (other devices, float64 or interval weights) the float32 path runs unchanged.
Gradients flow through it as through the float32 product, computed in bfloat16.

Whether it pays depends on the machine: the conversions cost memory passes that the faster
product must win back (``python -m benchmarks.ibp_speed --bf16-radius`` measures both).

Example:
    >>> import torch, intervals
    >>> layer = torch.nn.Linear(64, 8)
    >>> box = intervals.Interval.linf_ball(torch.rand(4, 64), 0.01)
    >>> exact = layer(box)
    >>> with intervals.bf16_radius():
    ...     fast = layer(box)
    >>> bool((fast.radius >= exact.radius).all()), bool(torch.equal(fast.center, exact.center))
    (True, True)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch

__all__ = ["bf16_radius", "is_bf16_radius", "bf16_radius_applies", "inflation", "radius_product_bf16"]

_state = threading.local()

#: float32 unit roundoff and bfloat16's (8-bit significand).
_U32 = 2.0**-24
_UBF16 = 2.0**-8


def is_bf16_radius() -> bool:
    """True inside a :func:`bf16_radius` context on this thread."""
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def bf16_radius(enabled: bool = True) -> Iterator[None]:
    """Context manager: interval layers compute ``|W| r`` in bfloat16, rounded to stay an upper bound.

    ``bf16_radius(False)`` switches it off again inside an enclosing block.
    """
    previous = getattr(_state, "depth", 0)
    _state.depth = previous + 1 if enabled else 0
    try:
        yield
    finally:
        _state.depth = previous


def bf16_radius_applies(*tensors: torch.Tensor) -> bool:
    """Whether the bf16 radius path serves these operands (switch on, float32 CPU tensors)."""
    return is_bf16_radius() and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


def inflation(terms: int, scale: float = 1.0) -> float:
    """The factor that lifts a bf16 product of ``terms``-long non-negative sums to an upper bound.

    ``1 / ((1 - 2^-8)^3 (1 - (terms - 1) u32))``: both factors and the result rounded to nearest
    bfloat16, the sum accumulated in float32. Times a margin of ``2^-20`` for the float32 multiply
    that applies it, times ``scale`` (a power of two, exact).

    Example:
        >>> round(inflation(784), 5)
        1.01186
    """
    n = max(int(terms), 1)
    if (n - 1) * _U32 >= 0.5:
        raise ValueError(f"bf16 radius: a sum of {n} terms is too long for the float32 error bound")
    return scale / ((1.0 - _UBF16) ** 3 * (1.0 - (n - 1) * _U32)) * (1.0 + 2.0**-20)


def radius_product_bf16(
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    radius: torch.Tensor,
    abs_weight: torch.Tensor,
    terms: int,
    scale: float = 1.0,
) -> torch.Tensor:
    """An upper bound on ``scale * op(radius, abs_weight)`` from one bfloat16 product (float32 result).

    Args:
        op: a bilinear map that sums ``terms`` products per output (``F.linear``, a convolution).
        radius, abs_weight: non-negative float32 tensors.
        terms: the number of products summed into each output.
        scale: a power of two folded into the result.
    """
    out = op(radius.to(torch.bfloat16), abs_weight.to(torch.bfloat16))
    return out.to(torch.float32) * inflation(terms, scale)
