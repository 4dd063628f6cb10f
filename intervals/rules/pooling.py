"""Pooling rules.

Average pooling is a linear map with non-negative weights, so centre and radius pool directly
(exact). Max pooling is non-decreasing in every input, so endpoints pool directly (exact).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .. import rounding
from ..errors import UnsupportedOperation
from ..registry import implements
from ._common import Interval


def _window_size(kernel_size: Any, nd: int) -> int:
    if isinstance(kernel_size, int):
        return kernel_size**nd
    return math.prod(kernel_size)


def _divisor_override(args: tuple, kwargs: dict) -> Any:
    # avg_pool2d/3d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return kwargs.get("divisor_override", args[5] if len(args) > 5 else None)


def _avg_rule(pool: Callable[..., torch.Tensor], nd: int, adaptive: bool):
    name = f"torch.nn.functional.{pool.__name__}"

    def rule(x: Interval, *args: Any, **kwargs: Any) -> Interval:
        if not adaptive and nd > 1:
            div = _divisor_override(args, kwargs)
            # The rules below rely on non-negative pooling weights; a negative divisor flips them.
            if div is not None and div <= 0:
                raise UnsupportedOperation(name, f"divisor_override={div}: only a positive divisor is supported")
        fn = lambda t: pool(t, *args, **kwargs)  # noqa: E731
        if rounding.is_rigorous():
            if adaptive:  # largest adaptive window: ceil(in / out) + 1 per dimension
                out = args[0] if args else kwargs["output_size"]
                outs = (out,) * nd if isinstance(out, int) or out is None else tuple(out)
                k = math.prod(
                    (math.ceil(s / (o or s)) + 1) for s, o in zip(x.shape[-nd:], outs, strict=True)
                )
            else:
                k = _window_size(args[0] if args else kwargs["kernel_size"], nd)
            # A k-term sum and one division: Higham's bound with gamma_{2k+4} and an underflow term.
            g = rounding.gamma(2 * k + 4, x.dtype)
            tiny = 4 * (k + 2) * rounding.denorm_min(x.dtype)
            lo, hi = fn(x.lower), fn(x.upper)
            return Interval._from_lu(
                rounding.down(lo - fn(x.lower.abs()) * g - tiny), rounding.up(hi + fn(x.upper.abs()) * g + tiny)
            )
        if x._l is None:
            return Interval._from_cr(fn(x._c), fn(x._r))
        return Interval._from_lu(fn(x.lower), fn(x.upper))

    return rule


implements(F.avg_pool1d)(_avg_rule(F.avg_pool1d, 1, False))
implements(F.avg_pool2d)(_avg_rule(F.avg_pool2d, 2, False))
implements(F.avg_pool3d)(_avg_rule(F.avg_pool3d, 3, False))
implements(F.adaptive_avg_pool1d)(_avg_rule(F.adaptive_avg_pool1d, 1, True))
implements(F.adaptive_avg_pool2d)(_avg_rule(F.adaptive_avg_pool2d, 2, True))
implements(F.adaptive_avg_pool3d)(_avg_rule(F.adaptive_avg_pool3d, 3, True))


def _max_rule(pool: Callable[..., torch.Tensor], name: str):
    def rule(x: Interval, *args: Any, return_indices: bool = False, **kwargs: Any) -> Interval:
        if return_indices:
            raise UnsupportedOperation(name, "return_indices=True (the arg-max of an interval is not a single index)")
        return Interval._from_lu(pool(x.lower, *args, **kwargs), pool(x.upper, *args, **kwargs))

    return rule


for _f in (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d
):
    implements(_f)(_max_rule(_f, f"torch.nn.functional.{_f.__name__}"))
