"""Soundness and tightness of the elementwise rules (``intervals/rules/elementwise.py``).

Soundness: for points inside the input box (corners, centre, random points, and for the
non-monotone functions a dense grid plus the kinks/minimisers), torch's own ``f(point)`` lies in the
output Interval up to the default-mode tolerance. Tightness: monotone functions give exactly
``f(lower)``, ``f(upper)`` (bit-equal to torch), the non-monotone ones the true extrema.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from soundness import assert_encloses, boxes
from soundness import points_in as _points_in

import intervals
from intervals import Interval
from intervals.rules import elementwise as ew

F64, F32 = torch.float64, torch.float32
INF = math.inf


def points_in(box: Interval, n: int = 24, seed: int = 0) -> torch.Tensor:
    # ``lo + (hi - lo) * u`` can round past ``hi``: keep the sample points inside the box.
    return _points_in(box, n, seed).clamp(box.lower, box.upper)


def grid(box: Interval, k: int = 129) -> torch.Tensor:
    """``k`` evenly spaced points per element, endpoints included, stacked on a leading dim."""
    t = torch.linspace(0, 1, k, dtype=box.dtype).reshape(-1, *([1] * box.dim()))
    return (box.lower + (box.upper - box.lower) * t).clamp(box.lower, box.upper)


def with_points(box: Interval, *special: float) -> torch.Tensor:
    """Grid points plus each special point (a kink, a minimiser) wherever it lies in the box."""
    pts = [grid(box), points_in(box)]
    for s in special:
        s = torch.full_like(box.lower, s)
        for p in (s, torch.nextafter(s, s + 1), torch.nextafter(s, s - 1)):
            pts.append(torch.where((box.lower <= p) & (p <= box.upper), p, box.lower)[None])
    return torch.cat(pts)


RANGES = {
    "any": [(-10.0, 10.0), (-1e-3, 1e-3), (-1e4, 1e4), (-50.0, -5.0), (5.0, 50.0), (-2.0, 1.0)],
    "nonneg": [(0.0, 10.0), (0.0, 1e-4), (1.0, 1e6), (0.0, 0.5)],
}


@st.composite
def box_for(draw, domain="any", dtype=None):
    if dtype is None:
        dtype = draw(st.sampled_from([F64, F64, F32]))
    lo, hi = draw(st.sampled_from(RANGES[domain]))
    box = draw(boxes(dtype=dtype, lo=lo, hi=hi, max_side=5))
    if draw(st.integers(0, 3)) == 0:
        box = Interval._from_cr(box.center, box.radius)  # centre/radius-form input
        box = Interval(box.lower.clamp_min(0.0), box.upper) if domain == "nonneg" else box
    return box


# name -> (function applied to Interval and tensor alike, domain, kind, special points)
# kind: "inc" / "dec" = monotone (bit-exact endpoint images); "other" = checked on a dense grid.
UNARY = {
    "exp": (torch.exp, "any", "inc", ()),
    "Tensor.exp": (lambda x: x.exp(), "any", "inc", ()),
    "log": (torch.log, "nonneg", "inc", ()),
    "sqrt": (torch.sqrt, "nonneg", "inc", ()),
    "rsqrt": (torch.rsqrt, "nonneg", "dec", ()),
    "relu": (torch.relu, "any", "inc", ()),
    "F.relu": (F.relu, "any", "inc", ()),
    "sigmoid": (torch.sigmoid, "any", "inc", ()),
    "F.sigmoid": (F.sigmoid, "any", "inc", ()),
    "tanh": (torch.tanh, "any", "inc", ()),
    "hardtanh": (F.hardtanh, "any", "inc", ()),
    "hardtanh(-2, 0.5)": (lambda x: F.hardtanh(x, -2.0, 0.5), "any", "inc", ()),
    "relu6": (F.relu6, "any", "inc", ()),
    "leaky_relu": (F.leaky_relu, "any", "inc", ()),
    "leaky_relu(0.2)": (lambda x: F.leaky_relu(x, 0.2), "any", "inc", ()),
    "leaky_relu(-0.3)": (lambda x: F.leaky_relu(x, negative_slope=-0.3), "any", "other", (0.0,)),
    "leaky_relu(-2)": (lambda x: F.leaky_relu(x, -2.0), "any", "other", (0.0,)),
    "elu": (F.elu, "any", "inc", ()),
    "elu(0.5)": (lambda x: F.elu(x, 0.5), "any", "inc", ()),
    "elu(-0.7)": (lambda x: F.elu(x, alpha=-0.7), "any", "other", (0.0,)),
    "abs": (torch.abs, "any", "other", (0.0,)),
    "builtin abs": (abs, "any", "other", (0.0,)),
    "square": (torch.square, "any", "other", (0.0,)),
    "x**2": (lambda x: x**2, "any", "other", (0.0,)),
    "pow 3": (lambda x: torch.pow(x, 3), "any", "inc", ()),
    "pow 4": (lambda x: x.pow(4), "any", "other", (0.0,)),
    "pow 5.0": (lambda x: x**5.0, "any", "inc", ()),
    "pow 1": (lambda x: x**1, "any", "inc", ()),
    "pow 0": (lambda x: x**0, "any", "inc", ()),
    "pow -1": (lambda x: x**-1, "any", "other", (0.0,)),
    "pow -2": (lambda x: torch.pow(x, -2), "any", "other", (0.0,)),
    "pow -3": (lambda x: torch.pow(x, -3.0), "any", "other", (0.0,)),
    "pow tensor 2": (lambda x: torch.pow(x, torch.tensor(2)), "any", "other", (0.0,)),
    "pow 0.5": (lambda x: x**0.5, "nonneg", "inc", ()),
    "pow 1.7": (lambda x: torch.pow(x, 1.7), "nonneg", "inc", ()),
    "pow -0.5": (lambda x: x**-0.5, "nonneg", "dec", ()),
    "pow -2.5": (lambda x: torch.pow(x, -2.5), "nonneg", "dec", ()),
    "softplus": (F.softplus, "any", "other", (20.0,)),
    "softplus(2, 5)": (lambda x: F.softplus(x, beta=2.0, threshold=5.0), "any", "other", (2.5,)),
    "softplus(0.3, 1)": (lambda x: F.softplus(x, 0.3, 1.0), "any", "other", (1 / 0.3,)),
    "softplus(1, -2)": (lambda x: F.softplus(x, 1.0, -2.0), "any", "other", (-2.0,)),
    "softplus(3, 30)": (lambda x: F.softplus(x, 3.0, 30.0), "any", "other", (10.0,)),
    "gelu": (F.gelu, "any", "other", (ew.GELU_MIN[0],)),
    "gelu tanh": (lambda x: F.gelu(x, approximate="tanh"), "any", "other", (ew.GELU_TANH_MIN[0],)),
    "silu": (F.silu, "any", "other", (ew.SILU_MIN[0],)),
}


@pytest.mark.parametrize("name", list(UNARY))
@given(data=st.data())
def test_unary_sound_and_tight(name, data):
    fn, domain, kind, special = UNARY[name]
    box = data.draw(box_for(domain))
    out = fn(box)
    assert isinstance(out, Interval) and out.shape == box.shape and out.dtype == box.dtype
    pts = with_points(box, *special)
    vals = fn(pts)
    assert_encloses(out, vals, what=name)
    if kind == "inc" and name in ("relu", "F.relu"):
        # a centre/radius box takes the fused ReLU op: exact but for a subnormal c + r, whose
        # halving may drop one denorm_min
        denorm = torch.finfo(box.dtype).tiny * torch.finfo(box.dtype).eps
        assert ((out.lower - fn(box.lower)).abs() <= denorm).all(), name
        assert ((out.upper - fn(box.upper)).abs() <= denorm).all(), name
    elif kind == "inc":
        assert torch.equal(out.lower, fn(box.lower)) and torch.equal(out.upper, fn(box.upper)), name
    elif kind == "dec":
        assert torch.equal(out.lower, fn(box.upper)) and torch.equal(out.upper, fn(box.lower)), name
    else:
        # tight: the bounds are attained (up to rounding) on the grid + special points, except for
        # the unbounded sides of negative powers around 0.
        eps = torch.finfo(box.dtype).eps
        finite = torch.isfinite(out.lower) & torch.isfinite(out.upper)
        if name.startswith("softplus"):
            # An endpoint within a few ulps of the switch k is on an unknown side of torch's rounded
            # test beta * x > threshold: the rule then covers both pieces (loose by <= the drop).
            k = torch.tensor(special[0], dtype=box.dtype)
            zone = 16 * torch.finfo(box.dtype).eps * max(1.0, abs(special[0]))
            finite &= ((box.lower - k).abs() > zone) & ((box.upper - k).abs() > zone)
        slack = 64 * eps * torch.clamp(torch.maximum(out.lower.abs(), out.upper.abs()), min=1.0)
        vmin = vals.amin(0)
        vmax = vals.amax(0)
        gap = 1e-9 if name.startswith(("gelu", "silu")) else 0.0  # the stored minimum's margin
        assert torch.all(~finite | (out.lower >= vmin - slack - gap)), (name, out, vmin)
        assert torch.all(~finite | (out.upper <= vmax + slack)), (name, out, vmax)


# ---------------------------------------------------------------------------- non-monotone specifics
def _mp_argmin(f, a, b):
    """(argmin, min) of a unimodal ``f`` on [a, b] via mpmath root of the derivative."""
    mpmath.mp.dps = 30
    x = mpmath.findroot(lambda t: mpmath.diff(f, t), (a, b), solver="anderson")
    return float(x), float(f(x))


def _mp_gelu(t):
    return t / 2 * mpmath.erfc(-t / mpmath.sqrt(2))


def _mp_gelu_tanh(t):
    return t / 2 * (1 + mpmath.tanh(mpmath.sqrt(2 / mpmath.pi) * (t + mpmath.mpf("0.044715") * t**3)))


def _mp_silu(t):
    return t / (1 + mpmath.exp(-t))


MINIMISERS = {
    "gelu": (F.gelu, _mp_gelu),
    "gelu tanh": (lambda x: F.gelu(x, approximate="tanh"), _mp_gelu_tanh),
    "silu": (F.silu, _mp_silu),
}


@pytest.mark.parametrize("name", list(MINIMISERS))
@pytest.mark.parametrize("dtype", [F64, F32])
def test_straddling_the_minimiser_gets_the_true_minimum(name, dtype):
    fn, mp_f = MINIMISERS[name]
    a_true, m_true = _mp_argmin(mp_f, -2.0, -0.5)
    g = torch.Generator().manual_seed(1)
    # boxes straddling the minimiser by a lot, a little, and by less than the stored argmin's error
    left = torch.tensor([3.0, 0.5, 1e-3, 1e-7, 1e-10, 0.0], dtype=F64)
    right = torch.tensor([2.0, 1e-4, 0.2, 1e-9, 1e-10, 1e-12], dtype=F64)
    lo = (a_true - left).to(dtype)
    hi = (a_true + right).to(dtype)
    hi = torch.maximum(hi, lo)
    box = Interval(lo, hi)
    out = fn(box)
    dense = grid(box, 2049)
    rand = lo + (hi - lo) * torch.rand(512, *lo.shape, generator=g, dtype=dtype)
    at_min = torch.full_like(lo, a_true).clamp(lo, hi)[None]
    vals = fn(torch.cat([dense, rand, at_min]))
    assert_encloses(out, vals, what=name)
    straddle = (lo.double() < a_true) & (hi.double() > a_true)
    assert torch.all(out.lower[straddle].double() <= m_true), (out.lower, m_true)
    # tight: within 1e-9 of the true minimum (plus one float32 rounding)
    slack = 1e-9 + (0 if dtype == F64 else 2e-8)
    assert torch.all(out.lower[straddle].double() >= m_true - slack), (out.lower, m_true)
    # boxes entirely on one side of the minimiser are monotone there: exact endpoint images
    side = Interval(torch.tensor([-5.0, 0.5, -1.9], dtype=dtype), torch.tensor([-3.0, 2.0, -1.5], dtype=dtype))
    out = fn(side)
    assert torch.equal(out.lower, torch.minimum(fn(side.lower), fn(side.upper)))
    assert torch.equal(out.upper, torch.maximum(fn(side.lower), fn(side.upper)))


@pytest.mark.parametrize("beta,threshold", [(1.0, 20.0), (2.0, 5.0), (0.3, 1.0), (1.0, -2.0), (3.0, 30.0), (0.7, 0.0)])
@given(data=st.data())
def test_softplus_around_the_switch_point(beta, threshold, data):
    # torch's softplus switches to the identity where beta * x > threshold and drops there by
    # log1p(exp(-threshold)) / beta; a box around the switch must enclose both sides.
    dtype = data.draw(st.sampled_from([F64, F32]))
    k = threshold / beta
    scale = data.draw(st.sampled_from([1e-12, 1e-7, 1e-3, 1.0]))
    offs = data.draw(st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4))
    a, b = sorted((k + scale * offs[0], k + scale * offs[1]))
    c, d = sorted((k + scale * offs[2], k + scale * offs[3]))
    box = Interval(torch.tensor([a, c, k, k - scale], dtype=dtype), torch.tensor([b, d, k + scale, k], dtype=dtype))
    fn = lambda x: F.softplus(x, beta, threshold)  # noqa: E731
    out = fn(box)
    near = torch.stack([torch.nextafter(box.lower, box.upper), torch.nextafter(box.upper, box.lower)])
    kk = torch.full_like(box.lower, k)
    sw = torch.stack([torch.nextafter(kk, kk + 1), kk, torch.nextafter(kk, kk - 1)]).clamp(box.lower, box.upper)
    assert_encloses(out, fn(torch.cat([grid(box, 257), near, sw])), what=f"softplus({beta}, {threshold})")


def test_softplus_switch_regression():
    # l just below the switch, x just above: softplus(x) = x is below the log form at l.
    box = Interval(torch.tensor([20 - 1e-12], dtype=F64), torch.tensor([21.0], dtype=F64))
    x = torch.tensor([20 + 1e-12], dtype=F64)
    out = F.softplus(box)
    assert out.lower.item() <= F.softplus(x).item() <= out.upper.item()


def test_softplus_nonpositive_beta_is_unsupported():
    box = Interval(torch.zeros(2), torch.ones(2))
    with pytest.raises(intervals.UnsupportedOperation, match="softplus"):
        F.softplus(box, beta=-1.0)
    with pytest.raises(intervals.UnsupportedOperation, match="softplus"):
        F.softplus(box, beta=0.0)


@pytest.mark.parametrize("name", ["abs", "square", "pow 4", "leaky_relu(-0.3)", "elu(-0.7)"])
def test_straddling_zero_minimum_is_exact(name):
    fn = UNARY[name][0]
    box = Interval(torch.tensor([-2.0, -0.5, -3.0], dtype=F64), torch.tensor([1.0, 4.0, 0.0], dtype=F64))
    out = fn(box)
    assert out.lower[:2].tolist() == [0.0, 0.0]
    ends = torch.stack([fn(box.lower), fn(box.upper)])
    assert torch.equal(out.upper, ends.amax(0))


def test_negative_powers_around_zero():
    box = Interval(torch.tensor([-2.0, 0.0, -1.0, 0.5], dtype=F64), torch.tensor([1.0, 3.0, 0.0, 2.0], dtype=F64))
    out = box**-1
    assert out.lower.tolist()[:3] == [-INF, -INF, -INF] and out.upper.tolist()[:3] == [INF, INF, INF]
    assert out.lower[3].item() == 0.5 and out.upper[3].item() == 2.0
    out = box**-2
    # |x| <= max(|l|, |u|) on the box, so x**-2 >= min(l**-2, u**-2); unbounded above near 0
    assert out.lower.tolist() == [0.25, 1 / 9, 1.0, 0.25] and out.upper.tolist()[:3] == [INF, INF, INF]


# ---------------------------------------------------------------------------- domain errors
@pytest.mark.parametrize(
    "fn,op", [(torch.sqrt, "torch.sqrt"), (torch.log, "torch.log"), (torch.rsqrt, "torch.rsqrt"),
              (lambda x: x**0.5, "torch.pow"), (lambda x: torch.pow(x, -1.5), "torch.pow")]
)
def test_domain_errors_name_op_count_and_first_index(fn, op):
    lo = torch.tensor([[0.5, 1.0, 2.0], [3.0, -1e-300, 4.0], [-2.0, 0.0, -5.0]], dtype=F64)
    box = Interval(lo, lo.abs() + 1)
    with pytest.raises(intervals.IntervalError) as exc:
        fn(box)
    msg = str(exc.value)
    assert msg.startswith(op + ":"), msg
    assert "3 element(s)" in msg and "first at index (1, 1)" in msg, msg
    assert isinstance(exc.value, ValueError)
    # lower == 0 is inside the domain: no error, and sqrt/log give the limits
    ok = Interval(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))
    fn(ok)


def test_log_sqrt_at_zero():
    box = Interval(torch.zeros(1, dtype=F64), torch.full((1,), 4.0, dtype=F64))
    assert torch.log(box).lower.item() == -INF and torch.sqrt(box).upper.item() == 2.0
    assert torch.rsqrt(box).upper.item() == INF and torch.rsqrt(box).lower.item() == 0.5


def test_unsupported_elementwise():
    x = Interval(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 3.0]))
    with pytest.raises(intervals.UnsupportedOperation, match=r"torch\.pow"):
        torch.pow(x, x)
    with pytest.raises(intervals.UnsupportedOperation, match=r"torch\.pow"):
        x ** torch.tensor([1.0, 2.0])
    with pytest.raises(intervals.UnsupportedOperation, match="gelu"):
        F.gelu(x, approximate="sigmoid")
    with pytest.raises(intervals.UnsupportedOperation, match=r"\bsin\b"):
        torch.sin(x)


# ---------------------------------------------------------------------------- autograd
AUTOGRAD = {
    "exp": (torch.exp, "any"), "log": (torch.log, "pos"), "sqrt": (torch.sqrt, "pos"), "rsqrt": (torch.rsqrt, "pos"),
    "relu": (torch.relu, "any"), "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), "any"),
    "leaky_relu neg": (lambda x: F.leaky_relu(x, -0.1), "any"), "elu": (F.elu, "any"),
    "elu neg": (lambda x: F.elu(x, -0.5), "any"), "softplus": (F.softplus, "any"),
    "softplus(2, 1)": (lambda x: F.softplus(x, 2.0, 1.0), "any"), "sigmoid": (torch.sigmoid, "any"),
    "tanh": (torch.tanh, "any"), "gelu": (F.gelu, "any"), "gelu tanh": (lambda x: F.gelu(x, approximate="tanh"), "any"),
    "silu": (F.silu, "any"), "hardtanh": (F.hardtanh, "any"), "relu6": (F.relu6, "any"), "abs": (torch.abs, "any"),
    "square": (torch.square, "any"), "pow 3": (lambda x: x**3, "any"), "pow -2": (lambda x: x**-2, "pos"),
    "pow 1.5": (lambda x: x**1.5, "pos"),
}


@pytest.mark.parametrize("rigorous", [False, True])
@pytest.mark.parametrize("name", list(AUTOGRAD))
def test_autograd_flows(name, rigorous):
    fn, domain = AUTOGRAD[name]
    g = torch.Generator().manual_seed(0)
    c = torch.randn(4, 5, generator=g, dtype=F64) * 2
    if domain == "pos":
        c = c.abs() + 0.5
    lo = (c - 0.25).requires_grad_(True)
    hi = (c + 0.25).requires_grad_(True)
    if rigorous:
        with intervals.rigorous():
            out = fn(Interval(lo, hi))
    else:
        out = fn(Interval(lo, hi))
    (out.upper.sum() + out.lower.sum()).backward()
    assert lo.grad is not None or hi.grad is not None
    for t in (lo.grad, hi.grad):
        if t is not None:
            assert torch.isfinite(t).all(), (name, t)
    assert float(sum(t.abs().sum() for t in (lo.grad, hi.grad) if t is not None)) > 0


@pytest.mark.parametrize("name", ["exp", "sigmoid", "tanh", "relu", "softplus", "sqrt"])
def test_autograd_of_monotone_matches_derivative(name):
    fn, domain = AUTOGRAD[name]
    c = torch.linspace(0.5 if domain == "pos" else -3, 3, 7, dtype=F64)
    lo, hi = (c - 0.1).requires_grad_(True), (c + 0.1).requires_grad_(True)
    fn(Interval(lo, hi)).upper.sum().backward()
    ref = hi.detach().clone().requires_grad_(True)
    fn(ref).sum().backward()
    assert torch.allclose(hi.grad, ref.grad), (hi.grad, ref.grad)
