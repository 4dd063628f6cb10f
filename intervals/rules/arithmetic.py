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
from ..errors import IntervalError, UnsupportedOperation, check_no_nan
from ..registry import func_name, implements
from ._common import Interval, endpoints, is_iv

_T = torch.Tensor
_INF = float("inf")


def _outward(lo: torch.Tensor, hi: torch.Tensor) -> Interval:
    if rounding.is_rigorous():
        return Interval._from_lu(rounding.down(lo), rounding.up(hi))
    return Interval._from_lu(lo, hi)


def _nan_to_zero_(t: torch.Tensor) -> torch.Tensor:
    # A NaN endpoint product can only be 0 * inf: every real product it stands for is 0.
    return t.nan_to_num_(0.0, _INF, -_INF)


def _exact_number(s: Any, like: torch.Tensor) -> Any:
    """Rigorous mode: a Python number as an operand of an op on ``like``'s dtype.

    torch rounds a number to the tensor's dtype before the operation (``0.1`` to float32, an int
    above 2**53 to float64), a rounding the one-ulp outward step does not cover. A number that the
    dtype holds exactly is returned as a float; any other becomes the point Interval rounded outward.
    """
    f = float(s)
    t = torch.tensor(f, dtype=like.dtype)
    if float(t) == s:  # exact comparison (int vs float included)
        return f
    lo = f if f <= s else math.nextafter(f, -_INF)
    hi = f if f >= s else math.nextafter(f, _INF)
    t64 = torch.tensor([lo, hi], dtype=torch.float64, device=like.device)
    low, high = rounding.cast_outward(t64[0], t64[1], like.dtype)
    return Interval._from_lu(low, high)


def exact_operand(s: Any, like: torch.Tensor) -> Any:
    """Rigorous mode: a non-Interval operand, as an outward-rounded point Interval if the op's dtype
    cannot hold it exactly (a Python number, or a tensor that type promotion would round)."""
    if isinstance(s, numbers.Number):
        return _exact_number(s, like)
    if isinstance(s, torch.Tensor):
        result = torch.result_type(like, s)
        if s.dtype == result or not result.is_floating_point:
            return s
        s64 = s.to(torch.float64)
        return Interval._from_lu(*rounding.cast_outward(s64, s64, result))
    return s


def _like(a: Any, b: Any) -> torch.Tensor:
    iv = a if is_iv(a) else b
    return iv.lower if iv._l is not None else iv._c


def _reject_nan_number(op: str, *operands: Any) -> None:
    """A NaN number or tensor operand has no sound image: refuse it (a box never holds NaN, and the
    products below read NaN as 0 * inf, i.e. 0)."""
    for v in operands:
        if isinstance(v, float) and v != v:
            raise IntervalError(f"{op}: operand is NaN")
        if isinstance(v, torch.Tensor):
            check_no_nan(v, f"{op}: tensor operand")


def add(a: Any, b: Any, *, alpha: float = 1) -> Interval:
    """``a + alpha * b`` for intervals, tensors and numbers."""
    _reject_nan_number("torch.add", a, b, alpha)
    if rounding.is_rigorous():
        like = _like(a, b)
        a, b = exact_operand(a, like), exact_operand(b, like)
        if alpha != 1:
            # alpha * b is rounded too: make b an Interval so the product is rounded outward.
            if not is_iv(b):
                like = _like(a, b)
                bt = torch.as_tensor(b, dtype=None if isinstance(b, torch.Tensor) else like.dtype, device=like.device)
                b = Interval._from_lu(bt, bt)
            b = mul(b, alpha)
    elif alpha != 1:
        b = mul(b, alpha) if is_iv(b) else b * alpha
    if not rounding.is_rigorous():
        # Stay in centre/radius form when the operands are in it: a shift moves only the centre.
        # Only without a dtype change: a box's endpoints are its centre -/+ radius rounded in its
        # own dtype, which a wider centre/radius would no longer enclose.
        if is_iv(a) and is_iv(b):
            if a._l is None and b._l is None and a._c.dtype == b._c.dtype:
                return Interval._from_cr(a._c + b._c, a._r + b._r)
        else:
            iv, other = (a, b) if is_iv(a) else (b, a)
            if iv._l is None and torch.result_type(iv._c, other) == iv._c.dtype:
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
    _reject_nan_number("torch.mul", a, b)
    if not is_iv(a):
        a, b = b, a
    if rounding.is_rigorous() and not is_iv(b):
        b = exact_operand(b, _like(a, b))
    if not is_iv(b):
        if isinstance(b, numbers.Number):
            if b == 0:
                return Interval._from_lu(torch.zeros_like(a.lower), torch.zeros_like(a.lower))
            if a._l is None and not rounding.is_rigorous():
                return Interval._from_cr(a._c * b, a._r * abs(b))
            # 0 * inf is NaN in IEEE arithmetic and 0 for a box (the convention used throughout)
            lo, hi = _nan_to_zero_(a.lower * b), _nan_to_zero_(a.upper * b)
            return _outward(lo, hi) if b > 0 else _outward(hi, lo)
        # 0 * inf -> 0 in every product before the min/max (fmin would skip the NaN and lose that 0)
        p, q = _nan_to_zero_(a.lower * b), _nan_to_zero_(a.upper * b)
        return _outward(torch.minimum(p, q), torch.maximum(p, q))
    al, au = a.lower, a.upper
    bl, bu = b.lower, b.upper
    p1, p2, p3, p4 = (_nan_to_zero_(t) for t in (al * bl, al * bu, au * bl, au * bu))
    lo = torch.minimum(torch.minimum(p1, p2), torch.minimum(p3, p4))
    hi = torch.maximum(torch.maximum(p1, p2), torch.maximum(p3, p4))
    return _outward(lo, hi)


def div(a: Any, b: Any, *, rounding_mode: str | None = None) -> Interval:
    """Elementwise quotient; ``[-inf, inf]`` where the divisor's interval contains 0."""
    if rounding_mode is not None:
        raise UnsupportedOperation("torch.div", f"rounding_mode={rounding_mode!r} is not supported")
    _reject_nan_number("torch.div", a, b)
    if rounding.is_rigorous():
        like = _like(a, b)
        a, b = exact_operand(a, like), exact_operand(b, like)
    if isinstance(b, numbers.Number):
        if b == 0 or abs(b) <= rounding.denorm_min(a.dtype) / 2:  # 0 once rounded to the dtype
            full = torch.full_like(a.lower, _INF)
            return Interval._from_lu(-full, full)
        lo, hi = a.lower / b, a.upper / b
        return _outward(lo, hi) if b > 0 else _outward(hi, lo)
    al, au = endpoints(a)
    bl, bu = endpoints(b)
    if isinstance(al, numbers.Number):
        al = au = torch.as_tensor(al, dtype=bl.dtype, device=bl.device)
    spans_zero = (bl <= 0) & (bu >= 0)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (al, au, bl, bu)):
        # The quotients by a zero endpoint are discarded below, but their derivatives (0 * inf)
        # would still poison the gradient with NaN: divide by 1 there instead.
        bl, bu = torch.where(spans_zero, 1.0, bl), torch.where(spans_zero, 1.0, bu)
    q1, q2, q3, q4 = al / bl, al / bu, au / bl, au / bu
    lo = torch.fmin(torch.fmin(q1, q2), torch.fmin(q3, q4))
    hi = torch.fmax(torch.fmax(q1, q2), torch.fmax(q3, q4))
    res = _outward(lo, hi)
    lo = torch.where(spans_zero, -_INF, res.lower)
    hi = torch.where(spans_zero, _INF, res.upper)
    return Interval._from_lu(lo, hi)


def reciprocal(a: Interval) -> Interval:
    return div(1.0, a)


implements(torch.add, _T.add, _T.__add__, _T.__radd__)(add)
implements(torch.sub, torch.subtract, _T.sub, _T.subtract, _T.__sub__)(sub)
implements(torch.mul, torch.multiply, _T.mul, _T.multiply, _T.__mul__, _T.__rmul__)(mul)
implements(torch.div, torch.divide, torch.true_divide, _T.div, _T.divide, _T.true_divide, _T.__truediv__)(div)


def _augmented(rule: Any, name: str):
    """``a op= b`` for ``Tensor.__iadd__`` and friends: in place on a box (its holders see the change);
    a tensor cannot become a box in place, so ``t += box`` is refused rather than rebinding ``t``
    (other holders of the tensor would keep its old values). The refusal is an ``IntervalError``:
    torch turns a ``TypeError`` from an in-place operator into Python's fallback ``t = t + box``."""

    def augmented(a: Any, b: Any, *args: Any, **kwargs: Any) -> Interval:
        if is_iv(a):
            return a._assign_inplace(rule(a, b, *args, **kwargs), name)
        raise IntervalError(f"{name}: a tensor cannot hold an Interval in place; write t = t + box")

    return augmented


# ``t += x`` reaches __torch_function__ as Tensor.add_ (the others likewise)
for _fs, _rule in (((_T.__iadd__, _T.add_), add), ((_T.__isub__, _T.sub_), sub), ((_T.__imul__, _T.mul_), mul),
                   ((_T.__itruediv__, _T.div_), div)):
    for _f in _fs:
        implements(_f)(_augmented(_rule, func_name(_f)))
implements(torch.neg, torch.negative, _T.neg, _T.negative, _T.__neg__)(neg)
implements(torch.reciprocal, _T.reciprocal)(reciprocal)


@implements(_T.__rsub__, torch.rsub)
def _rsub(a: Any, b: Any, *, alpha: float = 1) -> Interval:
    # torch.rsub(a, b, alpha) is b - alpha * a
    return sub(b, a, alpha=alpha)


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
    if dim is None and keepdim:  # torch keeps every dimension as size 1
        dim = tuple(range(x.dim()))
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
    return div(total, float(n))  # an empty mean is undefined: division by 0 gives [-inf, inf]


def _monotone_reduction(func: Any):
    def rule(x: Interval, *args: Any, **kwargs: Any) -> Interval:
        return Interval._from_lu(func(x.lower, *args, **kwargs), func(x.upper, *args, **kwargs))

    return rule


implements(torch.amax, _T.amax)(_monotone_reduction(torch.amax))
implements(torch.amin, _T.amin)(_monotone_reduction(torch.amin))


@implements(torch.cumsum, _T.cumsum)
def _cumsum(x: Interval, dim: int, *, dtype: torch.dtype | None = None) -> Interval:
    if dtype is not None:
        x = x.to(dtype)
    lo, hi = torch.cumsum(x.lower, dim), torch.cumsum(x.upper, dim)
    if not rounding.is_rigorous():
        return Interval._from_lu(lo, hi)
    # Every prefix is a sum of at most n terms: Higham's bound as in _sum_rigorous, prefix by prefix.
    n = x.shape[dim] if x.dim() else 1
    g = rounding.gamma(2 * n + 2, x.dtype)
    tiny = n * 2 * rounding.denorm_min(x.dtype)
    err_lo = torch.cumsum(x.lower.abs(), dim) * g + tiny
    err_hi = torch.cumsum(x.upper.abs(), dim) * g + tiny
    return Interval._from_lu(rounding.down(lo - err_lo), rounding.up(hi + err_hi))


def _logsumexp_bounds(t: torch.Tensor, dim: Any, keepdim: bool, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous float64 bounds of the exact ``log(sum(exp(t)))``: ``m + log(sum(exp(t - m)))``
    with every step rounded outward (``exp``/``log`` widened by ``LIBM_ULPS``)."""
    t = t.to(torch.float64)
    m = t.amax(dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, 0.0)  # all -inf (sum 0) or an inf present: shift by 0
    e_lo = rounding._step(torch.exp(rounding.down(t - m)), -_INF, rounding.LIBM_ULPS).clamp_min(0.0)
    e_hi = rounding._step(torch.exp(rounding.up(t - m)), _INF, rounding.LIBM_ULPS)
    g = rounding.gamma(2 * n + 2, torch.float64)
    tiny = n * 2 * rounding.denorm_min(torch.float64)
    s_lo, s_hi = e_lo.sum(dim, keepdim), e_hi.sum(dim, keepdim)
    s_lo = rounding.down(s_lo - (s_lo * g + tiny)).clamp_min(0.0)
    s_hi = rounding.up(s_hi + (s_hi * g + tiny))
    l_lo = rounding._step(torch.log(s_lo), -_INF, rounding.LIBM_ULPS)
    l_hi = rounding._step(torch.log(s_hi), _INF, rounding.LIBM_ULPS)
    if not keepdim:
        m = m.squeeze(dim) if isinstance(dim, int) else m.reshape(l_lo.shape)
    return rounding.down(m + l_lo), rounding.up(m + l_hi)


@implements(torch.logsumexp, _T.logsumexp)
def _logsumexp(x: Interval, dim: Any, keepdim: bool = False) -> Interval:
    if not rounding.is_rigorous():
        return Interval._from_lu(torch.logsumexp(x.lower, dim, keepdim), torch.logsumexp(x.upper, dim, keepdim))
    n = _reduced_count(x, dim)
    lo = _logsumexp_bounds(x.lower, dim, keepdim, n)[0]
    hi = _logsumexp_bounds(x.upper, dim, keepdim, n)[1]
    return Interval._from_lu(*rounding.cast_outward(lo, hi, x.dtype))


# ---------------------------------------------------------------------------- max / min / clamp
def _monotone_binary(fn: Any):
    """Rule for an elementwise ``fn(a, b)`` non-decreasing in both arguments (max, min)."""

    name = f"torch.{fn.__name__}"

    def rule(a: Any, b: Any) -> Interval:
        # NaN refused, so fmax/fmin (which skip NaN) and maximum/minimum agree on every box
        _reject_nan_number(name, a, b)
        if rounding.is_rigorous():
            like = _like(a, b)
            a, b = exact_operand(a, like), exact_operand(b, like)
        al, au = endpoints(a)
        bl, bu = endpoints(b)
        return Interval._from_lu(fn(al, bl), fn(au, bu))

    return rule


implements(torch.maximum, _T.maximum, torch.fmax)(_monotone_binary(torch.maximum))
implements(torch.minimum, _T.minimum, torch.fmin)(_monotone_binary(torch.minimum))


def clamp(x: Any, min: Any = None, max: Any = None) -> Interval:
    """``clamp`` is non-decreasing in ``x``, ``min`` and ``max``, so endpoints map to endpoints."""
    if min is None and max is None:
        raise UnsupportedOperation("torch.clamp", "at least one of min and max must be given")
    _reject_nan_number("torch.clamp", min, max)
    if rounding.is_rigorous():  # a bound the dtype cannot hold is rounded down/up for lower/upper
        like = x.lower if is_iv(x) else _like(min, max) if is_iv(min) or is_iv(max) else x
        min = None if min is None else exact_operand(min, like)
        max = None if max is None else exact_operand(max, like)
    xl, xu = endpoints(x)
    mnl, mnu = endpoints(min)
    mxl, mxu = endpoints(max)
    return Interval._from_lu(torch.clamp(xl, mnl, mxl), torch.clamp(xu, mnu, mxu))


implements(torch.clamp, torch.clip, _T.clamp, _T.clip)(clamp)
