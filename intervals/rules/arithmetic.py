"""Arithmetic rules: ``+ - * /``, reductions, elementwise ``maximum``/``minimum`` and ``clamp``.

Division by an interval that contains 0 (a zero tensor divisor included) gives ``[-inf, +inf]``
for that element: the quotient set is unbounded (and undefined at 0 itself), so the whole line is
the only sound answer. Products use ``fmin``/``fmax`` so that ``0 * inf`` (an infinite endpoint
times a zero factor, whose true products are all 0) does not turn the bound into NaN.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from .. import rounding
from ..errors import UnsupportedOperation
from ..registry import implements
from ._common import Interval, endpoints, is_iv

_T = torch.Tensor
_INF = float("inf")


def _outward(lo: torch.Tensor, hi: torch.Tensor) -> Interval:
    if rounding.is_rigorous():
        return Interval._from_lu(rounding.down(lo), rounding.up(hi))
    return Interval._from_lu(lo, hi)


def add(a: Any, b: Any, *, alpha: float = 1) -> Interval:
    """``a + alpha * b`` for intervals, tensors and numbers."""
    if alpha != 1:
        b = mul(b, alpha) if is_iv(b) else b * alpha
    if not rounding.is_rigorous():
        # Stay in centre/radius form when the operands are in it: a shift moves only the centre.
        if is_iv(a) and is_iv(b):
            if a._l is None and b._l is None:
                return Interval._from_cr(a._c + b._c, a._r + b._r)
        else:
            iv, other = (a, b) if is_iv(a) else (b, a)
            if iv._l is None:
                c = iv._c + other
                return Interval._from_cr(c, iv._r if c.shape == iv._r.shape else iv._r.expand(c.shape))
    al, au = endpoints(a)
    bl, bu = endpoints(b)
    return _outward(al + bl, au + bu)


def neg(a: Interval) -> Interval:
    if a._l is None:
        return Interval._from_cr(-a._c, a._r)
    return Interval._from_lu(-a.upper, -a.lower)


def sub(a: Any, b: Any, *, alpha: float = 1) -> Interval:
    """``a - alpha * b``."""
    return add(a, neg(b) if is_iv(b) else -b, alpha=alpha)


def mul(a: Any, b: Any) -> Interval:
    """Elementwise product; the min/max of the endpoint products."""
    if not is_iv(a):
        a, b = b, a
    if not is_iv(b):
        if isinstance(b, numbers.Number):
            if b == 0:
                return Interval._from_lu(torch.zeros_like(a.lower), torch.zeros_like(a.lower))
            if a._l is None and not rounding.is_rigorous():
                return Interval._from_cr(a._c * b, a._r * abs(b))
            lo, hi = a.lower * b, a.upper * b
            return _outward(lo, hi) if b > 0 else _outward(hi, lo)
        p, q = a.lower * b, a.upper * b
        return _outward(torch.fmin(p, q), torch.fmax(p, q))
    al, au = a.lower, a.upper
    bl, bu = b.lower, b.upper
    p1, p2, p3, p4 = al * bl, al * bu, au * bl, au * bu
    lo = torch.fmin(torch.fmin(p1, p2), torch.fmin(p3, p4))
    hi = torch.fmax(torch.fmax(p1, p2), torch.fmax(p3, p4))
    return _outward(lo, hi)


def div(a: Any, b: Any, *, rounding_mode: str | None = None) -> Interval:
    """Elementwise quotient; ``[-inf, inf]`` where the divisor's interval contains 0."""
    if rounding_mode is not None:
        raise UnsupportedOperation("torch.div", f"rounding_mode={rounding_mode!r} is not supported")
    if isinstance(b, numbers.Number):
        if b == 0:
            full = torch.full_like(a.lower, _INF)
            return Interval._from_lu(-full, full)
        lo, hi = a.lower / b, a.upper / b
        return _outward(lo, hi) if b > 0 else _outward(hi, lo)
    al, au = endpoints(a)
    bl, bu = endpoints(b)
    if isinstance(al, numbers.Number):
        al = au = torch.as_tensor(al, dtype=bl.dtype, device=bl.device)
    q1, q2, q3, q4 = al / bl, al / bu, au / bl, au / bu
    lo = torch.fmin(torch.fmin(q1, q2), torch.fmin(q3, q4))
    hi = torch.fmax(torch.fmax(q1, q2), torch.fmax(q3, q4))
    res = _outward(lo, hi)
    spans_zero = (bl <= 0) & (bu >= 0)
    lo = torch.where(spans_zero, -_INF, res.lower)
    hi = torch.where(spans_zero, _INF, res.upper)
    return Interval._from_lu(lo, hi)


def reciprocal(a: Interval) -> Interval:
    return div(1.0, a)


implements(torch.add, _T.add, _T.__add__, _T.__radd__, _T.__iadd__)(add)
implements(torch.sub, torch.subtract, _T.sub, _T.subtract, _T.__sub__, _T.__isub__)(sub)
implements(torch.mul, torch.multiply, _T.mul, _T.multiply, _T.__mul__, _T.__rmul__, _T.__imul__)(mul)
implements(torch.div, torch.divide, torch.true_divide, _T.div, _T.divide, _T.true_divide, _T.__truediv__, _T.__itruediv__)(div)
implements(torch.neg, torch.negative, _T.neg, _T.negative, _T.__neg__)(neg)
implements(torch.reciprocal, _T.reciprocal)(reciprocal)


@implements(_T.__rsub__, torch.rsub)
def _rsub(a: Any, b: Any, *, alpha: float = 1) -> Interval:
    return sub(b, a, alpha=alpha) if alpha == 1 else add(b, mul(a, -alpha))


@implements(_T.__rtruediv__, _T.__rdiv__)
def _rdiv(a: Any, b: Any) -> Interval:
    return div(b, a)


# ---------------------------------------------------------------------------- reductions
def _reduced_count(x: Interval, dim: Any) -> int:
    if dim is None:
        return x.numel()
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return math.prod(x.shape[d] for d in dims) if dims else x.numel()


def _sum_rigorous(x: Interval, dim: Any, keepdim: bool) -> Interval:
    # Higham: |fl(sum) - sum| <= gamma_{n-1} sum|x_i|; gamma_{2n+2} also absorbs the rounding of
    # the error term itself, and n * denorm_min covers underflow.
    n = _reduced_count(x, dim)
    g = rounding.gamma(2 * n + 2, x.dtype)
    tiny = n * 2 * rounding.denorm_min(x.dtype)
    kw = {"keepdim": keepdim} if dim is not None else {}
    args = (dim,) if dim is not None else ()
    lo, hi = x.lower.sum(*args, **kw), x.upper.sum(*args, **kw)
    err_lo = x.lower.abs().sum(*args, **kw) * g + tiny
    err_hi = x.upper.abs().sum(*args, **kw) * g + tiny
    return Interval._from_lu(rounding.down(lo - err_lo), rounding.up(hi + err_hi))


@implements(torch.sum, _T.sum)
def _sum(x: Interval, dim: Any = None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> Interval:
    if dtype is not None:
        x = x.to(dtype)
    if rounding.is_rigorous():
        return _sum_rigorous(x, dim, keepdim)
    if dim is None:
        if x._l is None:
            return Interval._from_cr(x._c.sum(), x._r.sum())
        return Interval._from_lu(x.lower.sum(), x.upper.sum())
    if x._l is None:
        return Interval._from_cr(x._c.sum(dim, keepdim), x._r.sum(dim, keepdim))
    return Interval._from_lu(x.lower.sum(dim, keepdim), x.upper.sum(dim, keepdim))


@implements(torch.mean, _T.mean)
def _mean(x: Interval, dim: Any = None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> Interval:
    n = _reduced_count(x, dim)
    total = _sum(x, dim, keepdim, dtype=dtype)
    return div(total, float(n)) if n else total


def _monotone_reduction(func: Any):
    def rule(x: Interval, *args: Any, **kwargs: Any) -> Interval:
        return Interval._from_lu(func(x.lower, *args, **kwargs), func(x.upper, *args, **kwargs))

    return rule


implements(torch.amax, _T.amax)(_monotone_reduction(torch.amax))
implements(torch.amin, _T.amin)(_monotone_reduction(torch.amin))
implements(torch.logsumexp, _T.logsumexp)(_monotone_reduction(torch.logsumexp))
implements(torch.cumsum, _T.cumsum)(_monotone_reduction(torch.cumsum))


# ---------------------------------------------------------------------------- max / min / clamp
@implements(torch.maximum, _T.maximum, torch.fmax)
def _maximum(a: Any, b: Any) -> Interval:
    al, au = endpoints(a)
    bl, bu = endpoints(b)
    return Interval._from_lu(torch.maximum(al, bl), torch.maximum(au, bu))


@implements(torch.minimum, _T.minimum, torch.fmin)
def _minimum(a: Any, b: Any) -> Interval:
    al, au = endpoints(a)
    bl, bu = endpoints(b)
    return Interval._from_lu(torch.minimum(al, bl), torch.minimum(au, bu))


def clamp(x: Any, min: Any = None, max: Any = None) -> Interval:
    """``clamp`` is non-decreasing in ``x``, ``min`` and ``max``, so endpoints map to endpoints."""
    if min is None and max is None:
        raise UnsupportedOperation("torch.clamp", "at least one of min and max must be given")
    xl, xu = endpoints(x)
    mnl, mnu = endpoints(min)
    mxl, mxu = endpoints(max)
    return Interval._from_lu(torch.clamp(xl, mnl, mxl), torch.clamp(xu, mnu, mxu))


implements(torch.clamp, torch.clip, _T.clamp, _T.clip)(clamp)
