"""Rigorous mode: bounds contain the EXACT real value, with zero tolerance.

References: exact rational arithmetic (``fractions.Fraction`` of the float endpoints) for
``+ - * /``, sums and means; mpmath at 50 digits for the transcendental functions, evaluated at the
float endpoints converted exactly. float32 and float64 inputs, including the ranges where naive
float64 formulas break down (sigmoid/SiLU below -709, GELU's ``1 + erf`` cancellation, softplus's
``beta * x`` rounding, exp near over/underflow, subnormals).
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from soundness import boxes
from soundness import points_in as _points_in

import intervals
from intervals import Interval
from intervals.rules import elementwise as ew

F64, F32 = torch.float64, torch.float32
mpmath.mp.dps = 50
MP = mpmath.mpf


def points_in(box: Interval, n: int = 6, seed: int = 0) -> torch.Tensor:
    return _points_in(box, n, seed).clamp(box.lower, box.upper)


def _flat(t: torch.Tensor) -> list[float]:
    return t.detach().reshape(-1).tolist()  # float32 -> Python float is exact


def assert_contains_exact(out: Interval, pts: torch.Tensor, exact, what: str = "") -> None:
    """``out.lower <= exact(x) <= out.upper`` for every point (exact reals, no tolerance)."""
    lo, hi = _flat(out.lower), _flat(out.upper)
    for p in pts:
        for i, x in enumerate(_flat(p)):
            v = exact(x)
            if v is None:
                continue
            msg = f"{what}: exact f({x!r}) = {mpmath.nstr(v, 20)} not in [{lo[i]!r}, {hi[i]!r}]"
            assert MP(lo[i]) <= v <= MP(hi[i]), msg


@st.composite
def rbox(draw, ranges, dtype=None, max_side=3):
    """A finite 1-D box from one of ``ranges`` (ranges beyond float32 are skipped for float32)."""
    if dtype is None:
        dtype = draw(st.sampled_from([F64, F32]))
    fmax = torch.finfo(dtype).max
    lo, hi = draw(st.sampled_from([r for r in ranges if max(abs(r[0]), abs(r[1])) < fmax]))
    return draw(boxes(dtype=dtype, lo=lo, hi=hi, max_side=max_side, max_dims=1))


# ---------------------------------------------------------------------------- exact references (mpmath)
def _sigmoid(x):
    return 1 / (1 + mpmath.exp(-MP(x)))


def _gelu(x):
    x = MP(x)
    return x / 2 * mpmath.erfc(-x / mpmath.sqrt(2))


def _gelu_tanh(x):
    # x/2 (1 + tanh(v)) written as x / (1 + exp(-2v)): 1 + tanh(v) cancels even at 50 digits
    x = MP(x)
    v = mpmath.sqrt(2 / mpmath.pi) * (x + MP("0.044715") * x**3)
    return x / (1 + mpmath.exp(-2 * v))


def _silu(x):
    x = MP(x)
    return x / (1 + mpmath.exp(-x))


def _softplus(beta, threshold):
    def f(x):
        if Fraction(x) * Fraction(beta) > Fraction(threshold):
            return MP(x)
        return mpmath.log1p(mpmath.exp(MP(beta) * MP(x))) / MP(beta)

    return f


def _pow(p):
    def f(x):
        if x == 0 and p < 0:
            return None  # a pole: the rule answers +-inf there
        if x < 0 and not float(p).is_integer():
            return None
        return MP(x) ** (int(p) if float(p).is_integer() else MP(p))

    return f


WIDE = [(-10.0, 10.0), (-1e-6, 1e-6), (-100.0, 100.0)]


def _leaky(slope):
    return lambda x: MP(x) if x >= 0 else MP(slope) * MP(x)


def _elu(alpha):
    return lambda x: MP(x) if x > 0 else MP(alpha) * mpmath.expm1(MP(x))


# name: (torch fn, exact fn, ranges, extra interior points)
RIG_UNARY = {
    "exp": (torch.exp, lambda x: mpmath.exp(MP(x)),
            WIDE + [(-745.5, -700.0), (700.0, 709.8), (-104.0, -80.0), (80.0, 88.8)], ()),
    "log": (torch.log, lambda x: mpmath.log(MP(x)) if x > 0 else None,
            [(0.0, 1e-300), (0.5, 2.0), (0.99, 1.01), (1.0, 1e300), (0.0, 1e-40), (0.0, 10.0)], ()),
    "sqrt": (torch.sqrt, lambda x: mpmath.sqrt(MP(x)), [(0.0, 1e-300), (0.0, 10.0), (1e200, 1e300), (0.0, 1e-40)], ()),
    "rsqrt": (torch.rsqrt, lambda x: 1 / mpmath.sqrt(MP(x)) if x > 0 else None, [(0.0, 10.0), (1e-300, 1e-200)], ()),
    "tanh": (torch.tanh, lambda x: mpmath.tanh(MP(x)), WIDE + [(15.0, 40.0), (-1e-30, 1e-30)], ()),
    "sigmoid": (torch.sigmoid, _sigmoid, WIDE + [(-746.0, -700.0), (-110.0, -80.0), (30.0, 50.0)], ()),
    "gelu": (F.gelu, _gelu, WIDE + [(-40.0, -3.0), (-1e3, -30.0), (3.0, 40.0), (-2.0, 0.0)], (ew.GELU_MIN[0],)),
    "gelu tanh": (lambda x: F.gelu(x, approximate="tanh"), _gelu_tanh,
                  WIDE + [(-40.0, -3.0), (-1e3, -30.0), (-2.0, 0.0)], (ew.GELU_TANH_MIN[0],)),
    "silu": (F.silu, _silu, WIDE + [(-746.0, -700.0), (-110.0, -80.0), (-3.0, 0.0)], (ew.SILU_MIN[0],)),
    "relu": (torch.relu, lambda x: max(MP(x), 0), WIDE, (0.0,)),
    "leaky_relu(0.1)": (lambda x: F.leaky_relu(x, 0.1), _leaky(0.1), WIDE, ()),
    "leaky_relu(-0.3)": (lambda x: F.leaky_relu(x, -0.3), _leaky(-0.3), WIDE, (0.0,)),
    "elu": (F.elu, _elu(1.0), WIDE + [(-40.0, 0.0)], ()),
    "elu(-0.7)": (lambda x: F.elu(x, -0.7), _elu(-0.7), WIDE, (0.0,)),
    "abs": (torch.abs, lambda x: abs(MP(x)), WIDE, (0.0,)),
    "hardtanh": (F.hardtanh, lambda x: min(max(MP(x), -1), 1), WIDE, ()),
    "relu6": (F.relu6, lambda x: min(max(MP(x), 0), 6), WIDE, ()),
    "softplus": (F.softplus, _softplus(1.0, 20.0), WIDE + [(-745.0, -700.0), (19.0, 21.0), (-100.0, 40.0)], (20.0,)),
    "softplus(0.3, 1)": (lambda x: F.softplus(x, 0.3, 1.0), _softplus(0.3, 1.0),
                         WIDE + [(-2400.0, -2300.0), (3.0, 3.7), (-1e3, 1e3)], (1 / 0.3,)),
    "softplus(2.7, 5)": (lambda x: F.softplus(x, 2.7, 5.0), _softplus(2.7, 5.0),
                         WIDE + [(-270.0, -250.0), (1.8, 1.9)], (5 / 2.7,)),
    "softplus(1e-3, -2)": (lambda x: F.softplus(x, 1e-3, -2.0), _softplus(1e-3, -2.0),
                           [(-2100.0, -1900.0), (-1e5, -1e4)], (-2000.0,)),
}
for _p in (2, 3, 4, 7, -1, -2, -3):
    RIG_UNARY[f"pow {_p}"] = (lambda x, p=_p: x**p, _pow(_p), WIDE + [(-1e30, 1e30), (1e-5, 1e-3)], (0.0,))
for _p in (0.5, 1.5, -0.5, 2.5, 1 / 3):
    RIG_UNARY[f"pow {_p:.3g}"] = (
        lambda x, p=_p: torch.pow(x, p), _pow(_p), [(0.0, 10.0), (1e-30, 1e-20), (1e10, 1e30)], ()
    )


@pytest.mark.parametrize("name", list(RIG_UNARY))
@given(data=st.data())
def test_rigorous_unary_contains_exact(name, data):
    fn, exact, ranges, special = RIG_UNARY[name]
    box = data.draw(rbox(ranges))
    with intervals.rigorous():
        out = fn(box)
    assert out.dtype == box.dtype and not torch.isnan(out.lower).any() and not torch.isnan(out.upper).any()
    pts = [points_in(box)]
    for s in special:
        p = torch.full_like(box.lower, s)
        pts.append(torch.where((box.lower <= p) & (p <= box.upper), p, box.lower)[None])
    assert_contains_exact(out, torch.cat(pts), exact, name)


@pytest.mark.parametrize("name", ["gelu", "gelu tanh", "silu"])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_rigorous_minimum_of_unimodal(name, dtype):
    fn, exact, _, (argmin,) = RIG_UNARY[name]
    mpmath.mp.dps = 50
    a_true = mpmath.findroot(lambda t: mpmath.diff(exact, t), argmin)
    m_true = exact(a_true)
    lo = torch.tensor([argmin - 1.0, argmin - 1e-6, argmin - 1e-9], dtype=dtype)
    hi = torch.tensor([argmin + 0.5, argmin + 1e-9, argmin + 1e-6], dtype=dtype)
    with intervals.rigorous():
        out = fn(Interval(lo, hi))
    for i in range(3):
        assert MP(float(out.lower[i])) <= m_true


# ---------------------------------------------------------------------------- regressions at the breakdown points
def test_rigorous_breakdown_points():
    x = torch.tensor([-720.0, -740.0, -745.0, -709.0], dtype=F64)
    box = Interval(x, x)
    with intervals.rigorous():
        sig, silu = torch.sigmoid(box), F.silu(box)
        gl = F.gelu(Interval(torch.tensor([-10.0, -5.0], dtype=F64), torch.tensor([-10.0, -5.0], dtype=F64)))
    assert_contains_exact(sig, x[None], _sigmoid, "sigmoid")
    assert_contains_exact(silu, x[None], _silu, "silu")
    assert_contains_exact(gl, torch.tensor([[-10.0, -5.0]], dtype=F64), _gelu, "gelu")
    # still tight: within a few ulps / subnormal steps of the exact value
    assert float(sig.upper[0]) < 2.1e-313 and float(gl.lower[0]) > -7.7e-23


def test_constants_bracket_the_exact_values():
    mpmath.mp.dps = 50
    assert MP(ew.SQRT_HALF[0]) < 1 / mpmath.sqrt(2) < MP(ew.SQRT_HALF[1])
    assert MP(ew.SQRT_2_OVER_PI[0]) < mpmath.sqrt(2 / mpmath.pi) < MP(ew.SQRT_2_OVER_PI[1])
    assert MP(ew.GELU_TANH_KAPPA[0]) < MP("0.044715") < MP(ew.GELU_TANH_KAPPA[1])


@pytest.mark.parametrize(
    "name,const,exact",
    [
        ("GELU_MIN", ew.GELU_MIN, _gelu),
        ("GELU_TANH_MIN", ew.GELU_TANH_MIN, _gelu_tanh),
        ("SILU_MIN", ew.SILU_MIN, _silu),
    ],
)
def test_unimodal_minimum_constants(name, const, exact):
    mpmath.mp.dps = 50
    argmin, min_value = const
    a_true = mpmath.findroot(lambda t: mpmath.diff(exact, t), argmin)
    m_true = exact(a_true)
    assert MP(min_value) <= m_true, name
    assert m_true - MP(min_value) < MP("1e-9"), name
    # the stored argmin is within the band the rule widens by
    assert abs(MP(argmin) - a_true) < ew.ARGMIN_BAND / 4, name


# ---------------------------------------------------------------------------- + - * / exact rationals
def _frac_points(box: Interval, n: int = 6, seed: int = 0) -> list[list[Fraction]]:
    return [[Fraction(v) for v in _flat(p)] for p in points_in(box, n, seed)]


def _below(bound: float, v: Fraction) -> bool:
    """``bound <= v`` for a float bound that may be infinite."""
    return bound == -math.inf or (bound != math.inf and Fraction(bound) <= v)


def _above(bound: float, v: Fraction) -> bool:
    return bound == math.inf or (bound != -math.inf and Fraction(bound) >= v)


def assert_contains_frac(out: Interval, values: list[list[Fraction]], what: str = "") -> None:
    lo, hi = _flat(out.lower), _flat(out.upper)
    for row in values:
        for i, v in enumerate(row):
            if v is None:
                continue
            assert _below(lo[i], v) and _above(hi[i], v), f"{what}: exact {float(v)!r} not in [{lo[i]!r}, {hi[i]!r}]"


RANGES = [(-10.0, 10.0), (-1e-30, 1e-30), (-1e30, 1e30), (1e-3, 1e3), (-1e300, 1e300), (-1e-310, 1e-310)]


@st.composite
def rpair(draw):
    dtype = draw(st.sampled_from([F64, F32]))
    a = draw(rbox(RANGES, dtype=dtype, max_side=4))
    b = draw(rbox(RANGES, dtype=dtype, max_side=4))
    n = min(a.numel(), b.numel())
    return Interval(a.lower[:n], a.upper[:n]), Interval(b.lower[:n], b.upper[:n])


def _exact_binary(op, xs, ys):
    out = []
    for x, y in zip(xs, ys, strict=True):
        row = []
        for p, q in zip(x, y, strict=True):
            if op == "/" and q == 0:
                row.append(None)
            else:
                row.append({"+": p + q, "-": p - q, "*": p * q, "/": (p / q) if q else None}[op])
        out.append(row)
    return out


OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


@pytest.mark.parametrize("op", list(OPS))
@given(ab=rpair())
def test_rigorous_binary_exact(op, ab):
    a, b = ab
    with intervals.rigorous():
        out = OPS[op](a, b)
        out_t = OPS[op](a, points_in(b, 4, 7)[3])
        out_rt = OPS[op](points_in(a, 4, 8)[3], b)
    xs, ys = _frac_points(a, 6, 1), _frac_points(b, 6, 2)
    # all pairs of the sample points (corner pairs included)
    pairs_x = [x for x in xs for _ in ys]
    pairs_y = [y for _ in xs for y in ys]
    assert_contains_frac(out, _exact_binary(op, pairs_x, pairs_y), f"iv {op} iv")
    tb = [[Fraction(v) for v in _flat(points_in(b, 4, 7)[3])]] * len(xs)
    assert_contains_frac(out_t, _exact_binary(op, xs, tb), f"iv {op} tensor")
    ta = [[Fraction(v) for v in _flat(points_in(a, 4, 8)[3])]] * len(ys)
    assert_contains_frac(out_rt, _exact_binary(op, ta, ys), f"tensor {op} iv")


SCALARS = st.one_of(st.sampled_from([0.1, -0.1, 1 / 3, 3.0, -2.0, 1e-40, 1e30, 2**60 + 1, 10**20 + 1, 7]),
                    st.floats(-1e6, 1e6, allow_nan=False))


@given(a=rbox(RANGES, max_side=4), s=SCALARS, alpha=st.sampled_from([1, 0.1, -3, 1 / 3]))
def test_rigorous_scalar_ops_exact(a, s, alpha):
    # A scalar that the dtype cannot hold (0.1 in float32, 2**60 + 1 in float64) must not be
    # rounded silently before the outward step.
    fs = Fraction(s)
    fa = Fraction(alpha)
    with intervals.rigorous():
        outs = {
            "a+s": a + s, "s+a": s + a, "a-s": a - s, "s-a": s - a, "a*s": a * s, "s*a": s * a,
            "add alpha": torch.add(a, s, alpha=alpha), "sub alpha": torch.sub(a, s, alpha=alpha),
            "iv alpha": torch.add(a, a, alpha=alpha),
        }
        if s != 0:
            outs["a/s"] = a / s
        outs["s/a"] = s / a
    exact = {
        "a+s": lambda x: x + fs, "s+a": lambda x: x + fs, "a-s": lambda x: x - fs, "s-a": lambda x: fs - x,
        "a*s": lambda x: x * fs, "s*a": lambda x: x * fs, "a/s": lambda x: x / fs,
        "s/a": lambda x: fs / x if x else None, "add alpha": lambda x: x + fa * fs, "sub alpha": lambda x: x - fa * fs,
    }
    pts = _frac_points(a, 6)
    for name, out in outs.items():
        if name == "iv alpha":
            vals = [[x + fa * x for x in row] for row in pts]
        else:
            vals = [[exact[name](x) for x in row] for row in pts]
        assert_contains_frac(out, vals, f"{name} s={s!r} alpha={alpha}")


def test_rigorous_rounded_operands():
    # 0.1 rounds up in float32; 1 + 2**-30 rounds to 1: both must be accounted for.
    a = Interval(torch.tensor([-1.0, 0.0], dtype=F32), torch.tensor([-1.0, 0.0], dtype=F32))
    with intervals.rigorous():
        out = a + (1 + 2**-30)
        out2 = a * 0.1
    assert Fraction(float(out.upper[0])) >= Fraction(2**-30) and Fraction(float(out.lower[1])) <= 1 + Fraction(2**-30)
    assert Fraction(float(out2.lower[0])) <= -Fraction(0.1) <= Fraction(float(out2.upper[0]))
    # alpha * tensor is rounded before the sum: -0.3 + 3 * 0.1 is 2.8e-17 exactly, 5.6e-17 in floats
    a = Interval(torch.tensor([-0.3], dtype=F64), torch.tensor([-0.3], dtype=F64))
    t = torch.tensor([3.0], dtype=F64)
    with intervals.rigorous():
        outs = [torch.add(a, t, alpha=0.1), torch.sub(a, -t, alpha=0.1), torch.add(t * 0, a + 0.3)]
    exact = Fraction(-0.3) + 3 * Fraction(0.1)
    for out in outs[:2]:
        assert Fraction(float(out.lower)) <= exact <= Fraction(float(out.upper))
    assert Fraction(float(outs[2].lower)) <= Fraction(-0.3) + Fraction(0.3) <= Fraction(float(outs[2].upper))


@st.composite
def rbox_dim(draw):
    dtype = draw(st.sampled_from([F64, F32]))
    lo, hi = draw(st.sampled_from([r for r in RANGES if r[1] < torch.finfo(dtype).max]))
    box = draw(boxes(shape=draw(st.sampled_from([(7,), (3, 4), (2, 2, 3)])), dtype=dtype, lo=lo, hi=hi))
    nd = box.dim()
    dim = draw(st.one_of(st.none(), st.integers(-nd, nd - 1)))
    return box, dim, draw(st.booleans())


@given(bd=rbox_dim())
def test_rigorous_sum_mean_exact(bd):
    box, dim, keepdim = bd
    with intervals.rigorous():
        s = torch.sum(box) if dim is None else torch.sum(box, dim, keepdim=keepdim)
        m = torch.mean(box) if dim is None else torch.mean(box, dim=dim, keepdim=keepdim)
    lo = box.lower.double().numpy()
    hi = box.upper.double().numpy()

    def exact_sum(arr):
        f = np.vectorize(Fraction, otypes=[object])(arr)
        if dim is None:
            return np.array(f.sum())
        return f.sum(axis=dim, keepdims=keepdim)

    n = box.numel() if dim is None else box.shape[dim]
    for out, scale in ((s, 1), (m, Fraction(1, n))):
        el, eh = exact_sum(lo) * scale, exact_sum(hi) * scale
        ol, oh = _flat(out.lower), _flat(out.upper)
        for i, (vl, vh) in enumerate(zip(np.ravel(el), np.ravel(eh), strict=True)):
            assert _below(ol[i], vl) and _above(oh[i], vh), (dim, keepdim, float(vl), ol[i], float(vh), oh[i])


@pytest.mark.parametrize("s", [1.0, -1.0, 3.0, -3.0])
@pytest.mark.parametrize("order", [(0, 1, 2), (1, 0, 2), (0, 2, 1)])
def test_rigorous_sum_cancellation(s, order):
    # 1e8 + s - 1e8 in float32: round-to-nearest loses s in some order; the bound must not.
    vals = [1e8, s, -1e8]
    lo = torch.tensor([vals[i] for i in order], dtype=F32)
    box = Interval(lo, lo)
    with intervals.rigorous():
        outs = [box.sum(), box.mean(), torch.cumsum(box, 0)[-1:]]
    exact = sum(Fraction(v) for v in _flat(lo))
    for out, e in zip(outs, (exact, exact / 3, exact), strict=True):
        assert Fraction(float(out.lower)) <= e <= Fraction(float(out.upper)), (out, float(e))


@given(bd=rbox_dim())
def test_rigorous_cumsum_exact(bd):
    box, dim, _ = bd
    dim = 0 if dim is None else dim
    with intervals.rigorous():
        out = torch.cumsum(box, dim)
    for t, bound, ok in ((box.lower, out.lower, _below), (box.upper, out.upper, _above)):
        exact = np.cumsum(np.vectorize(Fraction, otypes=[object])(t.double().numpy()), axis=dim)
        for b, e in zip(_flat(bound), np.ravel(exact), strict=True):
            assert ok(b, e), (b, float(e))


@given(bd=rbox_dim())
def test_rigorous_logsumexp_exact(bd):
    box, dim, keepdim = bd
    dim = -1 if dim is None else dim
    with intervals.rigorous():
        out = torch.logsumexp(box, dim, keepdim=keepdim)
    lse = np.vectorize(lambda v: mpmath.exp(MP(v)), otypes=[object])
    for t, bound, upper in ((box.lower, out.lower, False), (box.upper, out.upper, True)):
        sums = lse(t.double().numpy()).sum(axis=dim, keepdims=keepdim)
        for b, v in zip(_flat(bound), np.ravel(sums), strict=True):
            exact = mpmath.log(v)
            assert (MP(b) >= exact) if upper else (MP(b) <= exact), (b, exact)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_rigorous_mean_of_thirds(dtype):
    lo = torch.full((3,), 0.1, dtype=dtype)
    with intervals.rigorous():
        out = Interval(lo, lo).mean()
    exact = Fraction(float(lo[0]))
    assert Fraction(float(out.lower)) <= exact <= Fraction(float(out.upper))
    assert math.isfinite(float(out.upper))
