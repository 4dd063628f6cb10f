"""Helpers the rule modules share: endpoint access for mixed arguments, monotone maps, checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import rounding
from ..errors import IntervalError, first_bad
from ..interval import Interval

__all__ = [
    "Interval",
    "is_iv",
    "endpoints",
    "increasing",
    "decreasing",
    "require_domain",
    "piecewise_candidates",
    "PointBounds",
    "libm_bounds",
    "rigorous",
]

rigorous = rounding.is_rigorous
_INF = float("inf")


def is_iv(x: Any) -> bool:
    return isinstance(x, Interval)


def maybe_in_place(x: Interval, result: Interval, inplace: bool, name: str) -> Interval:
    """``result``, or with ``inplace=True`` (``nn.ReLU(inplace=True)`` ...) ``x`` made ``result`` in place,
    as torch changes the tensor (see :meth:`Interval._assign_inplace`)."""
    return x._assign_inplace(result, name) if inplace else result


def endpoints(x: Any) -> tuple[Any, Any]:
    """``(lower, upper)`` of an Interval; ``(x, x)`` for a tensor or a number."""
    if isinstance(x, Interval):
        return x.lower, x.upper
    return x, x


#: A rigorous point evaluator: float64 points -> (lower, upper) float64 bounds of the exact value.
PointBounds = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def libm_bounds(fn: Callable[[torch.Tensor], torch.Tensor], ulps: int = rounding.LIBM_ULPS) -> PointBounds:
    """Point bounds of ``fn`` from its float64 value widened by ``ulps`` float64 ulps each way.

    Only valid where torch's float64 ``fn`` is accurate to ``ulps`` ulps *relative* to its value:
    a formula with cancellation or an overflowing intermediate needs its own :data:`PointBounds`.
    """

    def bounds(x64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = fn(x64)
        return rounding._step(y, -_INF, ulps), rounding._step(y, _INF, ulps)

    return bounds


def _rigorous_ends(bounds: PointBounds, at_lower: torch.Tensor, at_upper: torch.Tensor) -> Interval:
    lo = bounds(at_lower.to(torch.float64))[0]
    hi = bounds(at_upper.to(torch.float64))[1]
    return Interval._from_lu(*rounding.cast_outward(lo, hi, at_lower.dtype))


def increasing(fn: Callable[[torch.Tensor], torch.Tensor], x: Interval, bounds: PointBounds | None = None) -> Interval:
    """Image of ``x`` under a non-decreasing elementwise ``fn``: ``[fn(lower), fn(upper)]``.

    In rigorous mode ``bounds`` (default: :func:`libm_bounds` of ``fn``) bounds the exact values.
    """
    if rounding.is_rigorous():
        if bounds is None:
            return Interval._from_lu(*rounding.outward_unary(fn, x.lower, x.upper))
        return _rigorous_ends(bounds, x.lower, x.upper)
    return Interval._from_lu(fn(x.lower), fn(x.upper))


def decreasing(fn: Callable[[torch.Tensor], torch.Tensor], x: Interval, bounds: PointBounds | None = None) -> Interval:
    """Image of ``x`` under a non-increasing elementwise ``fn``: ``[fn(upper), fn(lower)]``."""
    if rounding.is_rigorous():
        if bounds is None:
            return Interval._from_lu(*rounding.outward_unary(fn, x.upper, x.lower))
        return _rigorous_ends(bounds, x.upper, x.lower)
    return Interval._from_lu(fn(x.upper), fn(x.lower))


def piecewise_candidates(
    fn: Callable[[torch.Tensor], torch.Tensor], x: Interval, kinks: list[float]
) -> Interval:
    """Image under ``fn`` that is monotone between the points ``kinks``.

    The extrema over ``[l, u]`` lie at ``l``, ``u`` or a kink inside; every candidate is evaluated
    and the min/max taken. Sound for any piecewise-monotone ``fn`` (continuous or not, as long as
    ``fn`` at a kink is the value of the piece that attains the extremum there). The kinks must be
    representable in the interval's dtype (they are evaluated as such, e.g. 0).
    """
    lo_pts, hi_pts = [x.lower], [x.upper]
    for k in kinks:
        inside = (x.lower < k) & (x.upper > k)
        # Outside, the kink candidate is replaced by an endpoint so it cannot widen the result.
        lo_pts.append(torch.where(inside, k, x.lower))
    pts_lo = torch.stack(lo_pts + hi_pts)
    if rounding.is_rigorous():
        vlo, vhi = rounding.outward_unary(fn, pts_lo, pts_lo)
        return Interval._from_lu(vlo.amin(0), vhi.amax(0))
    vals = fn(pts_lo)
    return Interval._from_lu(vals.amin(0), vals.amax(0))


def require_domain(mask: torch.Tensor, op: str, what: str) -> None:
    """Raise a clear :class:`IntervalError` if ``mask`` marks inputs outside ``op``'s domain."""
    bad = first_bad(mask)
    if bad is not None:
        count, index = bad
        raise IntervalError(f"{op}: {what} in {count} element(s), first at index {index}")

