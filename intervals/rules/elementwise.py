"""Elementwise function rules: activations, ``exp``/``log``/``sqrt``, ``abs`` and ``pow``.

Monotone functions map endpoints to endpoints, which is exact. GELU and SiLU are not monotone:
each falls to a single global minimum and rises again, so an interval that straddles the minimiser
gets the true minimum value as its lower bound (found once, at import, in float64 and rounded
down by a margin far above float64's error).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .. import rounding
from ..errors import UnsupportedOperation
from ..registry import implements
from ._common import Interval, decreasing, increasing, piecewise_candidates, require_domain

_T = torch.Tensor
_INF = float("inf")


def _register_increasing(fn: Callable[[torch.Tensor], torch.Tensor], *funcs: Any) -> None:
    def rule(x: Interval, *args: Any, **kwargs: Any) -> Interval:
        return increasing(fn, x)

    implements(*funcs)(rule)


_register_increasing(torch.exp, torch.exp, _T.exp)
_register_increasing(torch.expm1, torch.expm1, _T.expm1)
_register_increasing(torch.sigmoid, torch.sigmoid, _T.sigmoid, F.sigmoid)
_register_increasing(torch.tanh, torch.tanh, _T.tanh, F.tanh)
_register_increasing(torch.atan, torch.atan, _T.atan, torch.arctan)
_register_increasing(torch.asinh, torch.asinh, _T.asinh, torch.arcsinh)
_register_increasing(torch.erf, torch.erf, _T.erf, torch.special.erf)
_register_increasing(torch.relu, torch.relu, _T.relu, F.relu)
_register_increasing(F.logsigmoid, F.logsigmoid)
_register_increasing(F.softsign, F.softsign)


@implements(torch.log, _T.log)
def _log(x: Interval) -> Interval:
    require_domain(x.lower < 0, "torch.log", "interval lower bound < 0 (log is undefined there)")
    return increasing(torch.log, x)


@implements(torch.log1p, _T.log1p)
def _log1p(x: Interval) -> Interval:
    require_domain(x.lower < -1, "torch.log1p", "interval lower bound < -1 (log1p is undefined there)")
    return increasing(torch.log1p, x)


@implements(torch.sqrt, _T.sqrt)
def _sqrt(x: Interval) -> Interval:
    require_domain(x.lower < 0, "torch.sqrt", "interval lower bound < 0 (sqrt is undefined there)")
    return increasing(torch.sqrt, x)


@implements(torch.rsqrt, _T.rsqrt)
def _rsqrt(x: Interval) -> Interval:
    require_domain(x.lower < 0, "torch.rsqrt", "interval lower bound < 0 (rsqrt is undefined there)")
    return decreasing(torch.rsqrt, x)


@implements(torch.abs, torch.absolute, _T.abs, _T.absolute, _T.__abs__)
def _abs(x: Interval) -> Interval:
    lo, hi = x.lower, x.upper
    # Straddling 0: the minimum is 0 and the maximum the larger magnitude; otherwise monotone.
    new_lo = torch.where(lo >= 0, lo, torch.where(hi <= 0, -hi, torch.zeros_like(lo)))
    new_hi = torch.maximum(-lo, hi)
    return Interval._from_lu(new_lo, new_hi)


def _pow_scalar(x: Interval, p: float) -> Interval:
    if p == 0:
        one = torch.ones_like(x.lower)
        return Interval._from_lu(one, one)
    if p == 1:
        return x
    fn = lambda t: torch.pow(t, p)  # noqa: E731
    if float(p).is_integer():
        n = int(p)
        if n > 0 and n % 2 == 1:
            return increasing(fn, x)
        lo, hi = x.lower, x.upper
        straddles = (lo < 0) & (hi > 0)
        has_zero = (lo <= 0) & (hi >= 0)
        # Away from 0 every integer power is monotone, so the endpoint values bound it.
        ends = piecewise_candidates(fn, x, [])
        if n > 0:  # even: minimum 0 where the interval straddles 0
            return Interval._from_lu(torch.where(straddles, torch.zeros_like(lo), ends.lower), ends.upper)
        # negative powers are unbounded near 0
        full = torch.full_like(lo, _INF)
        if n % 2 == 0:
            return Interval._from_lu(torch.where(has_zero, torch.zeros_like(lo), ends.lower), torch.where(has_zero, full, ends.upper))
        return Interval._from_lu(torch.where(has_zero, -full, ends.lower), torch.where(has_zero, full, ends.upper))
    require_domain(x.lower < 0, "torch.pow", f"non-integer exponent {p} with interval lower bound < 0")
    return increasing(fn, x) if p > 0 else decreasing(fn, x)


@implements(torch.pow, _T.pow, _T.__pow__)
def _pow(x: Any, exponent: Any) -> Interval:
    if not isinstance(x, Interval) or isinstance(exponent, Interval):
        raise UnsupportedOperation("torch.pow", "only an Interval base with a number exponent is supported")
    if isinstance(exponent, torch.Tensor) and exponent.numel() == 1:
        exponent = exponent.item()
    if not isinstance(exponent, numbers.Real):
        raise UnsupportedOperation("torch.pow", "the exponent must be a number")
    return _pow_scalar(x, float(exponent))


@implements(torch.square, _T.square)
def _square(x: Interval) -> Interval:
    return _pow_scalar(x, 2.0)


# ---------------------------------------------------------------------------- piecewise activations
@implements(F.leaky_relu, _T.leaky_relu if hasattr(_T, "leaky_relu") else None)
def _leaky_relu(x: Interval, negative_slope: float = 0.01, inplace: bool = False) -> Interval:
    fn = lambda t: F.leaky_relu(t, negative_slope)  # noqa: E731
    if negative_slope >= 0:
        return increasing(fn, x)
    return piecewise_candidates(fn, x, [0.0])


@implements(F.elu)
def _elu(x: Interval, alpha: float = 1.0, inplace: bool = False) -> Interval:
    fn = lambda t: F.elu(t, alpha)  # noqa: E731
    if alpha >= 0:
        return increasing(fn, x)
    return piecewise_candidates(fn, x, [0.0])


@implements(F.celu)
def _celu(x: Interval, alpha: float = 1.0, inplace: bool = False) -> Interval:
    return increasing(lambda t: F.celu(t, alpha), x)


@implements(F.selu)
def _selu(x: Interval, inplace: bool = False) -> Interval:
    return increasing(F.selu, x)


@implements(F.softplus)
def _softplus(x: Interval, beta: float = 1.0, threshold: float = 20.0) -> Interval:
    # torch switches to the identity above threshold/beta, where the log form is a hair larger:
    # the switch point is a (tiny) local maximum, so it is a candidate.
    fn = lambda t: F.softplus(t, beta, threshold)  # noqa: E731
    return piecewise_candidates(fn, x, [threshold / beta])


@implements(F.hardtanh, F.hardtanh_ if hasattr(F, "hardtanh_") else None)
def _hardtanh(x: Interval, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Interval:
    return Interval._from_lu(x.lower.clamp(min_val, max_val), x.upper.clamp(min_val, max_val))


@implements(F.relu6)
def _relu6(x: Interval, inplace: bool = False) -> Interval:
    return Interval._from_lu(x.lower.clamp(0, 6), x.upper.clamp(0, 6))


@implements(F.hardsigmoid)
def _hardsigmoid(x: Interval, inplace: bool = False) -> Interval:
    return increasing(F.hardsigmoid, x)


# ---------------------------------------------------------------------------- unimodal activations
def _golden_min(f: Callable[[float], float], a: float, b: float) -> tuple[float, float]:
    """Argmin and a value not above the minimum of a unimodal ``f`` on ``[a, b]`` (float64)."""
    invphi = (math.sqrt(5) - 1) / 2
    c, d = b - invphi * (b - a), a + invphi * (b - a)
    for _ in range(200):
        if f(c) < f(d):
            b = d
        else:
            a = c
        c, d = b - invphi * (b - a), a + invphi * (b - a)
    x = (a + b) / 2
    # f is flat at its minimiser, so f(x) is within ~1e-16 of the true minimum; the margin makes
    # the returned value a certain lower bound.
    return x, f(x) - 1e-12


def _gelu_erf(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _gelu_tanh(x: float) -> float:
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


GELU_MIN = _golden_min(_gelu_erf, -2.0, 0.0)
GELU_TANH_MIN = _golden_min(_gelu_tanh, -2.0, 0.0)
SILU_MIN = _golden_min(_silu, -3.0, 0.0)


def unimodal(fn: Callable[[torch.Tensor], torch.Tensor], x: Interval, argmin: float, min_value: float) -> Interval:
    """Image under ``fn`` decreasing on ``(-inf, argmin]`` and increasing on ``[argmin, inf)``."""
    lo, hi = x.lower, x.upper
    if rounding.is_rigorous():
        f_lo_lo, f_lo_hi = rounding.outward_unary(fn, lo, lo)
        f_hi_lo, f_hi_hi = rounding.outward_unary(fn, hi, hi)
        bound_min = rounding.cast_outward(torch.tensor(min_value, dtype=torch.float64), torch.tensor(min_value, dtype=torch.float64), lo.dtype)[0]
        upper = torch.maximum(f_lo_hi, f_hi_hi)
        lower = torch.where((lo < argmin) & (hi > argmin), bound_min.to(lo.device), torch.minimum(f_lo_lo, f_hi_lo))
        return Interval._from_lu(lower, upper)
    f_lo, f_hi = fn(lo), fn(hi)
    straddles = (lo < argmin) & (hi > argmin)
    lower = torch.where(straddles, torch.full_like(f_lo, min_value), torch.minimum(f_lo, f_hi))
    return Interval._from_lu(lower, torch.maximum(f_lo, f_hi))


@implements(F.gelu)
def _gelu(x: Interval, approximate: str = "none") -> Interval:
    if approximate == "tanh":
        return unimodal(lambda t: F.gelu(t, approximate="tanh"), x, *GELU_TANH_MIN)
    return unimodal(F.gelu, x, *GELU_MIN)


@implements(F.silu)
def _silu_rule(x: Interval, inplace: bool = False) -> Interval:
    return unimodal(F.silu, x, *SILU_MIN)
