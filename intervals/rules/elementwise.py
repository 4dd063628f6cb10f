"""Elementwise function rules: activations, ``exp``/``log``/``sqrt``, ``abs`` and ``pow``.

Monotone functions map endpoints to endpoints, which is exact. GELU and SiLU are not monotone:
each falls to a single global minimum and rises again, so an interval that straddles the minimiser
gets the true minimum value as its lower bound (found once, at import, in float64 and rounded
down by a margin far above float64's error).

Rigorous mode evaluates most functions in float64 and widens by ``LIBM_ULPS`` ulps, which is only
valid where torch's float64 formula is accurate *relative to the value*. sigmoid, SiLU, GELU (both
forms) and softplus are not: ``1 / (1 + exp(-x))`` underflows to 0 for x < -709.8 while the true
value is a positive subnormal, ``1 + erf(x / sqrt 2)`` cancels for negative x (GELU(-10) evaluates
to -0.0, the true value is -7.6e-23), and ``beta * x`` rounds before ``exp`` magnifies the error.
Those get their own rigorous point bounds below, built from operations that are either correctly
rounded (``+ - * /``, stepped one ulp outward) or libm calls on arguments where they are accurate.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .. import ops, rounding
from ..errors import IntervalError, UnsupportedOperation
from ..registry import implements
from . import _common
from ._common import (
    Interval,
    PointBounds,
    decreasing,
    increasing,
    maybe_in_place,
    piecewise_candidates,
    require_domain,
)
from .arithmetic import _augmented, clamp

_T = torch.Tensor
_INF = float("inf")
_F64 = torch.float64

_dn, _up = rounding.down, rounding.up


def _step_dn(t: torch.Tensor, ulps: int = rounding.LIBM_ULPS) -> torch.Tensor:
    return rounding._step(t, -_INF, ulps)


def _step_up(t: torch.Tensor, ulps: int = rounding.LIBM_ULPS) -> torch.Tensor:
    return rounding._step(t, _INF, ulps)


# ---------------------------------------------------------------------------- rigorous point bounds
# Each takes float64 points and returns float64 (lower, upper) bounds of the exact real value.
# Chains of IEEE operations are sound when every operation is rounded outward (one ulp after a
# correctly rounded op) and each operand is the bound that the (monotone) operation needs.


def _bracket(value: float, ulps: int) -> tuple[float, float]:
    lo = hi = value
    for _ in range(ulps):
        lo, hi = math.nextafter(lo, -_INF), math.nextafter(hi, _INF)
    return lo, hi


#: float64 brackets of the irrational / decimal constants (checked against mpmath in the tests).
SQRT_HALF = _bracket(math.sqrt(0.5), 1)  # 1/sqrt(2): sqrt is correctly rounded
SQRT_2_OVER_PI = _bracket(math.sqrt(2.0 / math.pi), 2)  # two roundings
GELU_TANH_KAPPA = _bracket(0.044715, 1)  # the decimal 0.044715
_ERFC_ULPS = 16  # glibc and CUDA document erfc at up to 5 ulps; stay well clear


def _sigmoid_bounds(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # sigmoid(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0, e = exp(-|x|) in [0, 1]:
    # no overflow, no cancellation; 1/(1+e) falls and e/(1+e) rises with e.
    e = torch.exp(-x.abs())
    e_lo, e_hi = _step_dn(e).clamp_min(0.0), _step_up(e)
    pos = x >= 0
    lo = torch.where(pos, _dn(1.0 / _up(1.0 + e_hi)), _dn(e_lo / _up(1.0 + e_lo)))
    hi = torch.where(pos, _up(1.0 / _dn(1.0 + e_lo)), _up(e_hi / _dn(1.0 + e_hi)))
    return lo, hi.clamp_max(1.0)


def _times_bounds(x: torch.Tensor, s_lo: torch.Tensor, s_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of ``x * s`` for ``s`` in ``[s_lo, s_hi]`` (``s_lo >= 0``)."""
    pos = x >= 0
    return _dn(x * torch.where(pos, s_lo, s_hi)), _up(x * torch.where(pos, s_hi, s_lo))


def _silu_bounds(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _times_bounds(x, *_sigmoid_bounds(x))


def _gelu_bounds(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # GELU(x) = x/2 * erfc(-x/sqrt 2): erfc is accurate relative to its value (no 1 + erf
    # cancellation); its argument is bounded first, erfc is decreasing.
    p1, p2 = x * -SQRT_HALF[0], x * -SQRT_HALF[1]
    z_lo, z_hi = _dn(torch.minimum(p1, p2)), _up(torch.maximum(p1, p2))
    e_lo = _step_dn(torch.special.erfc(z_hi), _ERFC_ULPS).clamp_min(0.0)
    e_hi = _step_up(torch.special.erfc(z_lo), _ERFC_ULPS)
    lo, hi = _times_bounds(x, e_lo, e_hi)
    return _dn(lo * 0.5), _up(hi * 0.5)


def _gelu_tanh_bounds(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # 0.5 x (1 + tanh(v)) = x * sigmoid(2 v), v = sqrt(2/pi) (x + 0.044715 x^3) = sqrt(2/pi) x (1 + k x^2)
    sq = x * x
    a_lo, a_hi = _dn(_dn(sq) * GELU_TANH_KAPPA[0]).clamp_min(0.0), _up(_up(sq) * GELU_TANH_KAPPA[1])
    p_lo, p_hi = _times_bounds(x, _dn(1.0 + a_lo), _up(1.0 + a_hi))
    c_lo, c_hi = 2.0 * SQRT_2_OVER_PI[0], 2.0 * SQRT_2_OVER_PI[1]
    w_lo = _dn(torch.minimum(p_lo * c_lo, p_lo * c_hi))
    w_hi = _up(torch.maximum(p_hi * c_lo, p_hi * c_hi))
    return _times_bounds(x, _sigmoid_bounds(w_lo)[0], _sigmoid_bounds(w_hi)[1])


def _softplus_log_bounds(x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    # log1p(exp(beta x)) / beta for beta > 0, as h(y) / beta with h(y) = max(y, 0) + log1p(exp(-|y|))
    # (no overflow) increasing in y = beta x, which is bounded first (its rounding would be
    # magnified by exp).
    y_lo, y_hi = _dn(x * beta), _up(x * beta)
    l_lo = _step_dn(torch.log1p(_step_dn(torch.exp(-y_lo.abs())).clamp_min(0.0))).clamp_min(0.0)
    l_hi = _step_up(torch.log1p(_step_up(torch.exp(-y_hi.abs()))))
    h_lo, h_hi = _dn(y_lo.clamp_min(0.0) + l_lo), _up(y_hi.clamp_min(0.0) + l_hi)
    return _dn(h_lo / beta), _up(h_hi / beta)


def _register_increasing(
    fn: Callable[[torch.Tensor], torch.Tensor], *funcs: Any, bounds: PointBounds | None = None
) -> None:
    def rule(x: Interval, *args: Any, **kwargs: Any) -> Interval:
        return increasing(fn, x, bounds)

    implements(*funcs)(rule)


_register_increasing(torch.exp, torch.exp, _T.exp)
_register_increasing(torch.expm1, torch.expm1, _T.expm1)
_register_increasing(torch.sigmoid, torch.sigmoid, _T.sigmoid, F.sigmoid, bounds=_sigmoid_bounds)
_register_increasing(torch.tanh, torch.tanh, _T.tanh, F.tanh)
_register_increasing(torch.atan, torch.atan, _T.atan, torch.arctan)
_register_increasing(torch.asinh, torch.asinh, _T.asinh, torch.arcsinh)
_register_increasing(torch.erf, torch.erf, _T.erf, torch.special.erf)


@implements(torch.relu, _T.relu, F.relu)
def _relu(x: Interval, inplace: bool = False) -> Interval:
    # The hot path of IBP: a box fresh from a linear layer stays in centre/radius form through the
    # fused op. ReLU is exact in floating point, so rigorous mode needs no outward step.
    if x._l is None and not rounding.is_rigorous():
        out = Interval._from_cr(*ops.fast_interval_relu(x._c, x._r))
    else:
        out = Interval._from_lu(torch.relu(x.lower), torch.relu(x.upper))
    return maybe_in_place(x, out, inplace, "torch.nn.functional.relu")
_register_increasing(F.logsigmoid, F.logsigmoid)
def _softsign(t: torch.Tensor) -> torch.Tensor:
    # torch evaluates softsign(+-inf) as inf / inf = NaN; the limits are +-1
    return torch.where(torch.isinf(t), t.sign(), F.softsign(t))


_register_increasing(_softsign, F.softsign)


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
    return decreasing(torch.rsqrt, _unsigned_zeros(x))


def _unsigned_zeros(x: Interval) -> Interval:
    """The same box with ``-0.0`` endpoints made ``+0.0``.

    Where a function's value at -0.0 differs from its value at +0.0 (``rsqrt(-0.0) = -inf``,
    ``pow(-0.0, -0.5) = -inf``), an endpoint of -0.0 would give an inverted box; -0.0 arises from
    ordinary arithmetic (``-Interval(0, 0)``, ``relu``).
    """
    return Interval._from_lu(x.lower + 0.0, x.upper + 0.0)


@implements(torch.abs, torch.absolute, _T.abs, _T.absolute, _T.__abs__)
def _abs(x: Interval) -> Interval:
    lo, hi = x.lower, x.upper
    # max(lo, -hi, 0): lo when lo >= 0, -hi when hi <= 0, and 0 when the box straddles 0.
    neg_hi = -hi
    return Interval._from_lu(torch.maximum(lo, neg_hi).clamp_min(0.0), torch.maximum(-lo, hi))


def _pow_scalar(x: Interval, p: float) -> Interval:
    if p == 0:
        one = torch.ones_like(x.lower)
        return Interval._from_lu(one, one)
    if p == 1:  # a new box, as torch returns a new tensor (sharing tensors is fine: boxes never write them)
        return x.snapshot()
    fn = lambda t: torch.pow(t, p)  # noqa: E731
    if float(p).is_integer():
        n = int(p)
        if n > 0 and n % 2 == 1:
            return increasing(fn, x)
        lo, hi = x.lower, x.upper
        # Away from 0 every integer power is monotone, so the endpoint values bound it.
        ends = piecewise_candidates(fn, x, [])
        if n > 0:  # even: minimum 0 where the interval straddles 0
            return Interval._from_lu(torch.where((lo < 0) & (hi > 0), 0.0, ends.lower), ends.upper)
        # negative powers are unbounded near 0
        has_zero = (lo <= 0) & (hi >= 0)
        if n % 2 == 0:
            # |x| <= max(|lo|, |hi|) on the box, so x**n >= min(lo**n, hi**n) even across 0
            return Interval._from_lu(ends.lower, torch.where(has_zero, _INF, ends.upper))
        return Interval._from_lu(torch.where(has_zero, -_INF, ends.lower), torch.where(has_zero, _INF, ends.upper))
    require_domain(x.lower < 0, "torch.pow", f"non-integer exponent {p} with interval lower bound < 0")
    return increasing(fn, x) if p > 0 else decreasing(fn, _unsigned_zeros(x))


@implements(torch.pow, _T.pow, _T.__pow__)
def _pow(x: Any, exponent: Any) -> Interval:
    if isinstance(exponent, Interval) and isinstance(x, numbers.Real):
        return exponent.__rpow__(x)
    if not isinstance(x, Interval) or isinstance(exponent, Interval):
        raise UnsupportedOperation("torch.pow", "only an Interval base with a number exponent is supported")
    shape = x.shape
    if isinstance(exponent, torch.Tensor) and exponent.numel() == 1:
        shape = torch.broadcast_shapes(x.shape, exponent.shape)  # a [[2.]] exponent adds dimensions
        dtype = torch.result_type(x.lower, exponent)  # a float64 [0.5] promotes a float32 box, as in torch
        if dtype != x.dtype:
            x = x.to(dtype)
        exponent = exponent.item()
    if not isinstance(exponent, numbers.Real):
        raise UnsupportedOperation("torch.pow", "the exponent must be a number")
    if exponent != exponent:
        raise IntervalError("torch.pow: exponent is NaN")
    out = _pow_scalar(x, float(exponent))
    return out if out.shape == shape else out.expand(shape)


implements(_T.pow_, _T.__ipow__)(_augmented(_pow, "Tensor.pow_"))


@implements(torch.square, _T.square)
def _square(x: Interval) -> Interval:
    return _pow_scalar(x, 2.0)


# ---------------------------------------------------------------------------- piecewise activations
@implements(F.leaky_relu, _T.leaky_relu if hasattr(_T, "leaky_relu") else None)
def _leaky_relu(x: Interval, negative_slope: float = 0.01, inplace: bool = False) -> Interval:
    fn = lambda t: F.leaky_relu(t, negative_slope)  # noqa: E731
    out = increasing(fn, x) if negative_slope >= 0 else piecewise_candidates(fn, x, [0.0])
    return maybe_in_place(x, out, inplace, "torch.nn.functional.leaky_relu")


@implements(F.elu)
def _elu(x: Interval, alpha: float = 1.0, inplace: bool = False) -> Interval:
    fn = lambda t: F.elu(t, alpha)  # noqa: E731
    out = increasing(fn, x) if alpha >= 0 else piecewise_candidates(fn, x, [0.0])
    return maybe_in_place(x, out, inplace, "torch.nn.functional.elu")


@implements(F.celu)
def _celu(x: Interval, alpha: float = 1.0, inplace: bool = False) -> Interval:
    return maybe_in_place(x, increasing(lambda t: F.celu(t, alpha), x), inplace, "torch.nn.functional.celu")


@implements(F.selu)
def _selu(x: Interval, inplace: bool = False) -> Interval:
    return maybe_in_place(x, increasing(F.selu, x), inplace, "torch.nn.functional.selu")


@implements(F.softplus)
def _softplus(x: Interval, beta: float = 1.0, threshold: float = 20.0) -> Interval:
    """``softplus(x) = log1p(exp(beta x)) / beta``, torch's identity ``x`` where ``beta x > threshold``.

    Both pieces rise, but at the switch ``k = threshold / beta`` the function drops by
    ``log1p(exp(-threshold)) / beta`` (2e-9 at the defaults): just right of ``k`` the values are
    ``~k``, below the log form at a left endpoint near ``k``. So: lower bound
    ``min(g(l), max(l, k_lo))`` and upper bound ``max(g(min(u, k_hi)), u)``, with ``g`` the log form
    and ``k_lo <= k <= k_hi`` covering where torch's rounded ``beta x > threshold`` switches.
    """
    if not beta > 0:
        raise UnsupportedOperation("torch.nn.functional.softplus", f"beta={beta}: only beta > 0 is supported")
    lo, hi = x.lower, x.upper
    k = threshold / beta
    if math.isinf(k):
        k_lo = k_hi = k
    else:
        fi = torch.finfo(lo.dtype)
        margin = 4 * fi.eps * abs(k) + fi.tiny
        k_lo, k_hi = k - margin, k + margin
    # Boxes wholly below k_lo see only the log form, wholly above k_hi only the identity.
    if rounding.is_rigorous():
        lo64, hi64 = lo.to(_F64), hi.to(_F64)
        g_lo = _softplus_log_bounds(lo64, beta)[0]
        lower = torch.where(hi64 < k_lo, g_lo, torch.minimum(g_lo, lo64.clamp_min(k_lo)))
        upper = torch.where(lo64 > k_hi, hi64, torch.maximum(_softplus_log_bounds(hi64.clamp_max(k_hi), beta)[1], hi64))
        return Interval._from_lu(*rounding.cast_outward(lower, upper, lo.dtype))
    def g(t: torch.Tensor) -> torch.Tensor:
        # the stable log form: log1p(exp(beta t)) overflows for beta t > 88 (float32) when a large
        # threshold keeps the log form in use there
        bt = t * beta
        return (bt.clamp_min(0) + torch.log1p(torch.exp(-bt.abs()))) / beta

    g_lo = g(lo)
    lower = torch.where(hi < k_lo, g_lo, torch.minimum(g_lo, lo.clamp_min(k_lo)))
    upper = torch.where(lo > k_hi, hi, torch.maximum(g(hi.clamp_max(k_hi)), hi))
    return Interval._from_lu(lower, upper)


@implements(F.hardtanh)
def _hardtanh(x: Interval, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Interval:
    return maybe_in_place(x, clamp(x, min_val, max_val), inplace, "torch.nn.functional.hardtanh")


@implements(F.hardtanh_)
def _hardtanh_(x: Interval, min_val: float = -1.0, max_val: float = 1.0) -> Interval:
    return _hardtanh(x, min_val, max_val, inplace=True)


@implements(F.relu6)
def _relu6(x: Interval, inplace: bool = False) -> Interval:
    return maybe_in_place(x, clamp(x, 0.0, 6.0), inplace, "torch.nn.functional.relu6")


@implements(F.hardsigmoid)
def _hardsigmoid(x: Interval, inplace: bool = False) -> Interval:
    return maybe_in_place(x, increasing(F.hardsigmoid, x), inplace, "torch.nn.functional.hardsigmoid")


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


#: Boxes reaching within this distance of a stored argmin take the stored minimum as lower bound:
#: the argmin found at import is only accurate to ~1e-8 (the function is flat there), and a box
#: between the stored and the true minimiser must not miss the minimum.
ARGMIN_BAND = 2.0**-20

_min_cache: dict[tuple[float, torch.dtype], float] = {}


def _round_down(value: float, dtype: torch.dtype) -> float:
    key = (value, dtype)
    if key not in _min_cache:
        t = torch.tensor(value, dtype=_F64)
        _min_cache[key] = float(rounding.cast_outward(t, t, dtype)[0])
    return _min_cache[key]


def _limit_at_infinity(values: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    nan = torch.isnan(values)
    return torch.where(nan, torch.where(at > 0, float("inf"), 0.0), values)


def unimodal(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: Interval,
    argmin: float,
    min_value: float,
    bounds: PointBounds | None = None,
) -> Interval:
    """Image under ``fn`` decreasing on ``(-inf, argmin]`` and increasing on ``[argmin, inf)``.

    ``min_value`` must be a lower bound of the minimum; ``bounds`` gives rigorous point bounds.
    """
    lo, hi = x.lower, x.upper
    straddles = (lo < argmin + ARGMIN_BAND) & (hi > argmin - ARGMIN_BAND)
    min_value = _round_down(min_value, lo.dtype)
    if rounding.is_rigorous():
        pb = bounds if bounds is not None else _common.libm_bounds(fn)
        (f_lo_lo, f_lo_hi), (f_hi_lo, f_hi_hi) = pb(lo.to(_F64)), pb(hi.to(_F64))
        lower, upper = rounding.cast_outward(torch.minimum(f_lo_lo, f_hi_lo), torch.maximum(f_lo_hi, f_hi_hi), lo.dtype)
        return Interval._from_lu(torch.where(straddles, min_value, lower), upper)
    # torch may evaluate f(+-inf) as inf * 0 = NaN; the limits are 0 at -inf and +inf at +inf.
    f_lo, f_hi = _limit_at_infinity(fn(lo), lo), _limit_at_infinity(fn(hi), hi)
    return Interval._from_lu(torch.where(straddles, min_value, torch.minimum(f_lo, f_hi)), torch.maximum(f_lo, f_hi))


def _gelu_tanh_t(t: torch.Tensor) -> torch.Tensor:
    return F.gelu(t, approximate="tanh")


@implements(F.gelu)
def _gelu(x: Interval, approximate: str = "none") -> Interval:
    if approximate == "tanh":
        return unimodal(_gelu_tanh_t, x, *GELU_TANH_MIN, bounds=_gelu_tanh_bounds)
    if approximate != "none":
        raise UnsupportedOperation("torch.nn.functional.gelu", f"approximate={approximate!r}")
    # torch's kernels cancel in 1 + erf for x < -2 (thousands of ulps relative to the tiny values
    # there, about 7e-7 absolute at most in float32): within the default-mode tolerance (64 ulps of
    # max(1, |value|)). Cancellation-free forms cost 2.5x in float64 (float32 erfc is slower still);
    # rigorous mode uses them (_gelu_bounds).
    return unimodal(F.gelu, x, *GELU_MIN, bounds=_gelu_bounds)


@implements(F.silu)
def _silu_rule(x: Interval, inplace: bool = False) -> Interval:
    return maybe_in_place(x, unimodal(F.silu, x, *SILU_MIN, bounds=_silu_bounds), inplace, "torch.nn.functional.silu")
