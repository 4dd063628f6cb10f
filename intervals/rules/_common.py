"""Helpers the rule modules share: endpoint access for mixed arguments, monotone maps, checks."""

from __future__ import annotations

from typing import Any, Callable

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
    "rigorous",
]

rigorous = rounding.is_rigorous


def is_iv(x: Any) -> bool:
    return isinstance(x, Interval)


def endpoints(x: Any) -> tuple[Any, Any]:
    """``(lower, upper)`` of an Interval; ``(x, x)`` for a tensor or a number."""
    if isinstance(x, Interval):
        return x.lower, x.upper
    return x, x


def increasing(fn: Callable[[torch.Tensor], torch.Tensor], x: Interval) -> Interval:
    """Image of ``x`` under a non-decreasing elementwise ``fn``: ``[fn(lower), fn(upper)]``."""
    if rounding.is_rigorous():
        return Interval._from_lu(*rounding.outward_unary(fn, x.lower, x.upper))
    return Interval._from_lu(fn(x.lower), fn(x.upper))


def decreasing(fn: Callable[[torch.Tensor], torch.Tensor], x: Interval) -> Interval:
    """Image of ``x`` under a non-increasing elementwise ``fn``: ``[fn(upper), fn(lower)]``."""
    if rounding.is_rigorous():
        return Interval._from_lu(*rounding.outward_unary(fn, x.upper, x.lower))
    return Interval._from_lu(fn(x.upper), fn(x.lower))


def piecewise_candidates(
    fn: Callable[[torch.Tensor], torch.Tensor], x: Interval, kinks: list[float]
) -> Interval:
    """Image under ``fn`` that is monotone between the points ``kinks``.

    The extrema over ``[l, u]`` lie at ``l``, ``u`` or a kink inside; every candidate is evaluated
    and the min/max taken. Sound for any piecewise-monotone ``fn``.
    """
    lo_pts, hi_pts = [x.lower], [x.upper]
    for k in kinks:
        kt = torch.full_like(x.lower, k)
        inside = (x.lower < kt) & (kt < x.upper)
        # Outside, the kink candidate is replaced by an endpoint so it cannot widen the result.
        lo_pts.append(torch.where(inside, kt, x.lower))
        hi_pts.append(torch.where(inside, kt, x.upper))
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

