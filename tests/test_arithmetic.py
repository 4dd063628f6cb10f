"""Soundness and tightness of the arithmetic rules (``intervals/rules/arithmetic.py``).

Soundness: for points drawn inside the input box(es) (corners included), the plain-torch result
lies inside the output Interval, up to the documented default-mode ulp tolerance
(:func:`soundness.assert_encloses`). Exact-rational checks of rigorous mode live in
``test_rigorous_elementwise.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from soundness import assert_encloses, boxes, corners
from soundness import points_in as _points_in

import intervals
from intervals import Interval

F64, F32 = torch.float64, torch.float32
INF = math.inf


# ---------------------------------------------------------------------------- strategies / helpers
def points_in(box: Interval, n: int = 16, seed: int = 0) -> torch.Tensor:
    """``soundness.points_in`` clamped into the box: ``lo + (hi - lo) * u`` can round past ``hi``,
    and a point outside the box is no evidence against a rule (1/x near a small endpoint)."""
    return _points_in(box, n, seed).clamp(box.lower, box.upper)


def _cr_form(box: Interval) -> Interval:
    """The same box stored in centre/radius form (exercises the rules' centre/radius fast paths)."""
    return Interval._from_cr(box.center, box.radius)


@st.composite
def any_box(draw, shape=None, dtype=None, allow_cr=True):
    """Boxes of every magnitude: tiny, unit, huge; negative, positive and straddling 0."""
    if dtype is None:
        dtype = draw(st.sampled_from([F64, F64, F64, F32]))
    lo, hi = draw(
        st.sampled_from([(-10.0, 10.0), (-1e-4, 1e-4), (-1e8, 1e8), (0.0, 5.0), (-5.0, 0.0), (1e3, 1e6), (-1e6, -1e3)])
    )
    box = draw(boxes(shape=shape, dtype=dtype, lo=lo, hi=hi))
    if allow_cr and draw(st.booleans()):
        box = _cr_form(box)
    return box


@st.composite
def box_pair(draw, dtype=None, allow_cr=True):
    a = draw(any_box(dtype=dtype, allow_cr=allow_cr))
    b = draw(any_box(shape=tuple(a.shape), dtype=a.dtype, allow_cr=allow_cr))
    return a, b


@st.composite
def nonzero_box(draw, shape, dtype):
    """A box that excludes 0 in every element (per-element random sign)."""
    box = draw(boxes(shape=shape, dtype=dtype, lo=1e-3, hi=1e3))
    flip = draw(st.lists(st.booleans(), min_size=box.numel(), max_size=box.numel()))
    s = torch.tensor(flip).reshape(box.shape)
    return Interval(torch.where(s, -box.upper, box.lower), torch.where(s, -box.lower, box.upper))


def _mag(x) -> float:
    if isinstance(x, Interval):
        if x._l is None:  # do not cache the endpoints: that would take the rules off their cr paths
            return float(x._c.abs().max()) + float(x._r.abs().max())
        return max(float(x.lower.abs().max()), float(x.upper.abs().max()))
    if isinstance(x, torch.Tensor):
        return float(x.abs().max())
    return abs(x)


def cr_tol(a, b, dtype):
    """Tolerance for a result built from centre/radius operands.

    In centre/radius form an endpoint is ``c -/+ r`` recomputed after the operation, so its rounding
    error scales with the operands' magnitudes (cancellation), not with the result's. Endpoint-form
    operands get the default (relative) tolerance.
    """
    if not any(isinstance(x, Interval) and x._l is None for x in (a, b)):
        return None
    return 64 * torch.finfo(dtype).eps * (1 + _mag(a)) * (1 + _mag(b))


def cross_points(a: Interval, b: Interval, n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs of ``n`` points of ``a`` and ``n`` points of ``b`` (corners of both included)."""
    pa, pb = points_in(a, n, seed=1), points_in(b, n, seed=2)
    k = pa.shape[0]
    pa = pa[:, None].expand(k, k, *pa.shape[1:]).reshape(k * k, *pa.shape[1:])
    pb = pb[None, :].expand(k, k, *pb.shape[1:]).reshape(k * k, *pb.shape[1:])
    return pa, pb


def tensor_in(box: Interval, seed: int = 3) -> torch.Tensor:
    """A plain tensor drawn inside ``box`` (used as the non-interval operand)."""
    return points_in(box, 4, seed=seed)[3]


scalars = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 2.0, 0.5, -0.1, 3.0]),
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
)

# ---------------------------------------------------------------------------- + - * (interval, interval)
BINARY_IV_IV = {
    "a+b": lambda a, b: a + b,
    "b+a": lambda a, b: b + a,
    "torch.add": lambda a, b: torch.add(a, b),
    "add alpha": lambda a, b: torch.add(a, b, alpha=-2.5),
    "a.add": lambda a, b: a.add(b),
    "a-b": lambda a, b: a - b,
    "b-a": lambda a, b: b - a,
    "torch.sub alpha": lambda a, b: torch.sub(a, b, alpha=0.75),
    "torch.rsub": lambda a, b: torch.rsub(a, b),
    "a*b": lambda a, b: a * b,
    "b*a": lambda a, b: b * a,
    "torch.mul": lambda a, b: torch.mul(a, b),
}


@pytest.mark.parametrize("name", list(BINARY_IV_IV))
@given(ab=box_pair())
def test_binary_interval_interval_sound(name, ab):
    a, b = ab
    tol = cr_tol(a, b, a.dtype)  # before anything caches the endpoints of a centre/radius box
    op = BINARY_IV_IV[name]
    out = op(a, b)
    assert isinstance(out, Interval)
    pa, pb = cross_points(a, b)
    assert_encloses(out, op(pa, pb), tol=tol, what=name)


@given(ab=box_pair(allow_cr=False))
def test_interval_product_is_exact_at_corners(ab):
    a, b = ab
    out = a * b
    prods = torch.stack([a.lower * b.lower, a.lower * b.upper, a.upper * b.lower, a.upper * b.upper])
    assert torch.equal(out.lower, prods.amin(0)) and torch.equal(out.upper, prods.amax(0))
    out = a + b
    assert torch.equal(out.lower, a.lower + b.lower) and torch.equal(out.upper, a.upper + b.upper)
    out = a - b
    assert torch.equal(out.lower, a.lower - b.upper) and torch.equal(out.upper, a.upper - b.lower)


# ---------------------------------------------------------------------------- interval with tensor
BINARY_IV_T = {
    "iv+t": lambda a, t: a + t,
    "t+iv": lambda a, t: t + a,
    "torch.add(t, iv, alpha)": lambda a, t: torch.add(t, a, alpha=3.0),
    "torch.add(iv, t, alpha)": lambda a, t: torch.add(a, t, alpha=-0.3),
    "iv-t": lambda a, t: a - t,
    "t-iv": lambda a, t: t - a,
    "torch.sub(t, iv, alpha)": lambda a, t: torch.sub(t, a, alpha=2.0),
    "torch.rsub(iv, t, alpha)": lambda a, t: torch.rsub(a, t, alpha=2.0),
    "torch.rsub(t, iv, alpha)": lambda a, t: torch.rsub(t, a, alpha=-1.5),
    "iv*t": lambda a, t: a * t,
    "t*iv": lambda a, t: t * a,
    "torch.mul(t, iv)": lambda a, t: torch.mul(t, a),
}


@pytest.mark.parametrize("name", list(BINARY_IV_T))
@given(ab=box_pair())
def test_binary_interval_tensor_sound(name, ab):
    a, b = ab
    t = tensor_in(b)
    tol = cr_tol(a, t, a.dtype)
    op = BINARY_IV_T[name]
    out = op(a, t)
    assert isinstance(out, Interval)
    pa = points_in(a, 24)
    assert_encloses(out, op(pa, t), tol=tol, what=name)


@given(a=any_box(shape=(3, 4)), row=any_box(shape=(4,)))
def test_binary_broadcasting(a, row):
    tol = cr_tol(a, row, a.dtype)  # |t| <= |row|
    t = tensor_in(row)
    for op in (lambda x, y: x + y, lambda x, y: x - y, lambda x, y: y - x, lambda x, y: x * y):
        out = op(a, t)
        assert out.shape == (3, 4)
        assert_encloses(out, op(points_in(a, 16), t), tol=None if tol is None else tol * 2)
        r = row.to(a.dtype)
        out = op(a, r)
        pa, pr = cross_points(a, r.expand(3, 4), n=6)
        assert_encloses(out, op(pa, pr), tol=tol)


# ---------------------------------------------------------------------------- interval with scalar
BINARY_IV_S = {
    "iv+s": lambda a, s: a + s,
    "s+iv": lambda a, s: s + a,
    "torch.add(iv, s, alpha)": lambda a, s: torch.add(a, s, alpha=2.0),
    "iv-s": lambda a, s: a - s,
    "s-iv": lambda a, s: s - a,
    "torch.sub(iv, s, alpha)": lambda a, s: torch.sub(a, s, alpha=-0.5),
    "iv*s": lambda a, s: a * s,
    "s*iv": lambda a, s: s * a,
    "torch.mul(iv, s)": lambda a, s: torch.mul(a, s),
    "iv/s": lambda a, s: a / s if s != 0 else a / 7.0,
    "torch.div(iv, s)": lambda a, s: torch.div(a, s) if s != 0 else torch.div(a, -3.0),
}


@pytest.mark.parametrize("name", list(BINARY_IV_S))
@given(a=any_box(), s=scalars)
def test_binary_interval_scalar_sound(name, a, s):
    tol = cr_tol(a, s, a.dtype)
    op = BINARY_IV_S[name]
    out = op(a, s)
    assert isinstance(out, Interval)
    assert_encloses(out, op(points_in(a, 24), s), tol=tol, what=f"{name} s={s}")


@given(a=any_box(allow_cr=False), s=scalars)
def test_interval_times_scalar_is_exact(a, s):
    for out in (a * s, s * a, torch.mul(a, s)):
        p, q = a.lower * s, a.upper * s
        assert torch.equal(out.lower, torch.minimum(p, q)), s
        assert torch.equal(out.upper, torch.maximum(p, q)), s
    if torch.tensor(s, dtype=a.dtype) != 0:
        out = a / s
        p, q = a.lower / s, a.upper / s
        assert torch.equal(out.lower, torch.minimum(p, q)) and torch.equal(out.upper, torch.maximum(p, q))


# ---------------------------------------------------------------------------- division
@given(data=st.data())
def test_division_by_nonzero_interval_sound_and_exact(data):
    dtype = data.draw(st.sampled_from([F64, F64, F32]))
    a = data.draw(any_box(dtype=dtype, allow_cr=False))
    b = data.draw(nonzero_box(tuple(a.shape), dtype))
    for op in (lambda x, y: x / y, lambda x, y: torch.div(x, y), lambda x, y: torch.true_divide(x, y)):
        out = op(a, b)
        pa, pb = cross_points(a, b)
        assert_encloses(out, op(pa, pb))
        quots = torch.stack([a.lower / b.lower, a.lower / b.upper, a.upper / b.lower, a.upper / b.upper])
        assert torch.equal(out.lower, quots.amin(0)) and torch.equal(out.upper, quots.amax(0))
    # tensor / interval and interval / tensor
    t = tensor_in(a)
    out = t / b
    assert_encloses(out, t / points_in(b, 24))
    out = a / tensor_in(b)
    assert_encloses(out, points_in(a, 24) / tensor_in(b))
    # scalar / interval and reciprocal
    assert_encloses(2.5 / b, 2.5 / points_in(b, 24))  # torch's own scalar / tensor: reciprocal(p) * 2.5
    two5 = torch.tensor(2.5, dtype=dtype)
    for out, ref in ((2.5 / b, lambda p: two5 / p), (torch.reciprocal(b), torch.reciprocal)):
        pb = points_in(b, 24)
        assert_encloses(out, ref(pb))
        assert torch.equal(out.lower, torch.minimum(ref(b.lower), ref(b.upper)))
        assert torch.equal(out.upper, torch.maximum(ref(b.lower), ref(b.upper)))


@given(data=st.data())
def test_division_by_interval_containing_zero_is_whole_line(data):
    dtype = data.draw(st.sampled_from([F64, F32]))
    a = data.draw(any_box(dtype=dtype))
    b = data.draw(nonzero_box(tuple(a.shape), dtype))
    # Make a random subset of the divisor's elements contain 0 (straddling, or touching it).
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=a.numel(), max_size=a.numel()))).reshape(a.shape)
    kind = data.draw(st.sampled_from(["straddle", "lower0", "upper0", "zero"]))
    lo = {"straddle": -b.upper.abs(), "lower0": torch.zeros_like(b.lower), "upper0": -b.upper.abs(),
          "zero": torch.zeros_like(b.lower)}[kind]
    hi = {"straddle": b.lower.abs(), "lower0": b.upper.abs(), "upper0": torch.zeros_like(b.lower),
          "zero": torch.zeros_like(b.lower)}[kind]
    b = Interval(torch.where(mask, lo, b.lower), torch.where(mask, hi, b.upper))
    for out in (a / b, torch.div(a, b), 3.0 / b, torch.reciprocal(b), tensor_in(a) / b):
        assert torch.all(out.lower[mask] == -INF) and torch.all(out.upper[mask] == INF), kind
        assert torch.isfinite(out.lower[~mask]).all() and torch.isfinite(out.upper[~mask]).all()
    # away from the zero-containing elements the bound is the ordinary sound one
    pa, pb = cross_points(a, b)
    q = pa / pb
    assert_encloses(a / b, torch.where(torch.isnan(q), 0.0, q).to(dtype))


def test_division_by_zero_tensor_and_scalar_zero():
    a = Interval(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, -1.0, 3.0]))
    t = torch.tensor([0.0, 2.0, -0.0])
    out = a / t
    assert out.lower.tolist() == [-INF, -1.0, -INF] and out.upper.tolist() == [INF, -0.5, INF]
    out = a / 0.0
    assert torch.all(out.lower == -INF) and torch.all(out.upper == INF)


# ---------------------------------------------------------------------------- neg
@given(a=any_box())
def test_neg(a):
    for out in (-a, torch.neg(a), a.neg(), torch.negative(a)):
        assert_encloses(out, -points_in(a))
        assert torch.equal(out.lower, -a.upper) and torch.equal(out.upper, -a.lower)


# ---------------------------------------------------------------------------- reductions
def _shift(dim):
    """The points tensor has a leading sample dim: shift non-negative reduction dims by one."""
    if dim is None:
        return None
    if isinstance(dim, int):
        return dim + 1 if dim >= 0 else dim
    return tuple(d + 1 if d >= 0 else d for d in dim)


@st.composite
def box_and_dim(draw):
    box = draw(any_box(shape=draw(st.sampled_from([(5,), (3, 4), (2, 3, 2)]))))
    nd = box.dim()
    dim = draw(st.one_of(st.none(), st.integers(-nd, nd - 1), st.sets(st.integers(0, nd - 1), min_size=1).map(tuple)))
    return box, dim, draw(st.booleans())


@given(bd=box_and_dim())
def test_sum_and_mean(bd):
    box, dim, keepdim = bd
    pts = points_in(box, 24)
    n = box.numel()
    for name in ("sum", "mean"):
        fn = getattr(torch, name)
        if dim is None:
            out = fn(box)
            ref = torch.stack([fn(p) for p in pts])
        else:
            out = fn(box, dim, keepdim=keepdim)
            ref = fn(pts, _shift(dim), keepdim=keepdim)
        method = getattr(box, name)() if dim is None else getattr(box, name)(dim=dim, keepdim=keepdim)
        assert torch.equal(method.lower, out.lower) and torch.equal(method.upper, out.upper)
        assert out.shape == ref.shape[1:], (name, dim, keepdim)
        assert_encloses(out, ref, scale=n, what=f"{name} dim={dim} keepdim={keepdim}")
        # the bound is attained (up to rounding) at the all-lower and all-upper points
        assert_encloses(Interval._from_lu(out.lower, out.lower), ref[0], scale=n)
        assert_encloses(Interval._from_lu(out.upper, out.upper), ref[1], scale=n)


def test_sum_dtype_and_mean_dtype():
    box = Interval(torch.tensor([1.0, 2.0], dtype=F32), torch.tensor([1.5, 2.5], dtype=F32))
    out = torch.sum(box, dtype=F64)
    assert out.dtype == F64 and out.lower.item() == 3.0 and out.upper.item() == 4.0
    out = torch.mean(box, 0, dtype=F64)
    assert out.dtype == F64 and out.lower.item() == 1.5 and out.upper.item() == 2.0


@given(bd=box_and_dim())
def test_amax_amin(bd):
    box, dim, keepdim = bd
    pts = points_in(box, 24)
    for name in ("amax", "amin"):
        fn = getattr(torch, name)
        if dim is None:
            out, ref = fn(box), torch.stack([fn(p) for p in pts])
        else:
            out, ref = fn(box, dim, keepdim=keepdim), fn(pts, _shift(dim), keepdim=keepdim)
        assert_encloses(out, ref, tol=0.0)
        assert torch.equal(out.lower, ref[0]) and torch.equal(out.upper, ref[1])


@given(bd=box_and_dim())
def test_logsumexp_and_cumsum(bd):
    box, dim, keepdim = bd
    d = 0 if dim is None else (dim if isinstance(dim, int) else dim[0])
    pts = points_in(box, 24)
    out = torch.logsumexp(box, d, keepdim=keepdim)
    assert_encloses(out, torch.logsumexp(pts, _shift(d), keepdim=keepdim), scale=box.numel())
    out = torch.logsumexp(box, dim=(0, -1) if box.dim() > 1 else 0)
    assert_encloses(out, torch.logsumexp(pts, (1, -1) if box.dim() > 1 else 1), scale=box.numel())
    out = torch.cumsum(box, d)
    assert_encloses(out, torch.cumsum(pts, _shift(d)), scale=box.numel())


# ---------------------------------------------------------------------------- maximum / minimum / clamp
@given(ab=box_pair())
def test_maximum_minimum(ab):
    a, b = ab
    pa, pb = cross_points(a, b, n=8)
    t = tensor_in(b)
    for fn in (torch.maximum, torch.minimum):
        out = fn(a, b)
        assert_encloses(out, fn(pa, pb), tol=0.0)
        assert torch.equal(out.lower, fn(a.lower, b.lower)) and torch.equal(out.upper, fn(a.upper, b.upper))
        assert_encloses(fn(a, t), fn(points_in(a), t), tol=0.0)
        assert_encloses(fn(t, a), fn(t, points_in(a)), tol=0.0)
        method = getattr(a, fn.__name__)(b)
        assert torch.equal(method.lower, out.lower) and torch.equal(method.upper, out.upper)


@given(data=st.data())
def test_clamp(data):
    x = data.draw(any_box(shape=(2, 3)))
    s = sorted(data.draw(st.lists(st.floats(-20, 20), min_size=2, max_size=2)))
    px = points_in(x, 16)
    # scalar bounds (one or both)
    for kw in ({"min": s[0]}, {"max": s[1]}, {"min": s[0], "max": s[1]}, {"min": s[1], "max": s[0]}):
        for out in (torch.clamp(x, **kw), x.clamp(**kw), torch.clip(x, **kw)):
            assert_encloses(out, torch.clamp(px, **kw), tol=0.0)
            assert torch.equal(out.lower, torch.clamp(x.lower, **kw))
            assert torch.equal(out.upper, torch.clamp(x.upper, **kw))
    # tensor bounds
    mn_box = data.draw(any_box(shape=(2, 3), dtype=x.dtype))
    mx_box = data.draw(any_box(shape=(2, 3), dtype=x.dtype))
    tmin, tmax = tensor_in(mn_box), tensor_in(mx_box)
    for kw in ({"min": tmin}, {"max": tmax}, {"min": tmin, "max": tmax}):
        out = torch.clamp(x, **kw)
        assert_encloses(out, torch.clamp(px, **kw), tol=0.0)
    # Interval bounds (and a tensor clamped by Interval bounds)
    pmn, pmx = points_in(mn_box, 16, seed=5), points_in(mx_box, 16, seed=6)
    out = torch.clamp(x, mn_box, mx_box)
    for perm in (torch.arange(16), torch.randperm(16, generator=torch.Generator().manual_seed(0))):
        assert_encloses(out, torch.clamp(px, pmn[perm], pmx), tol=0.0)
    out = torch.clamp(x, min=mn_box)
    assert_encloses(out, torch.clamp(px, min=pmn.flip(0)), tol=0.0)
    t = tensor_in(x)
    out = torch.clamp(t, mn_box, mx_box)
    assert isinstance(out, Interval)
    assert_encloses(out, torch.clamp(t, pmn, pmx.flip(0)), tol=0.0)


def test_clamp_without_bounds_is_unsupported():
    with pytest.raises(intervals.UnsupportedOperation, match="torch.clamp"):
        torch.clamp(Interval(torch.zeros(2), torch.ones(2)))


# ---------------------------------------------------------------------------- unsupported
def test_floor_division_and_interval_powers_are_unsupported():
    x = Interval(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 3.0]))
    with pytest.raises(intervals.UnsupportedOperation, match=r"torch\.div.*floor") as exc:
        torch.div(x, torch.tensor([2.0, 3.0]), rounding_mode="floor")
    assert exc.value.func_name == "torch.div"
    with pytest.raises(intervals.UnsupportedOperation, match=r"torch\.div.*trunc"):
        torch.div(x, 2.0, rounding_mode="trunc")
    with pytest.raises(intervals.UnsupportedOperation, match=r"torch\.pow") as exc:
        torch.pow(x, x)
    assert exc.value.func_name == "torch.pow"
    with pytest.raises(intervals.UnsupportedOperation, match=r"torch\.pow"):
        torch.pow(torch.tensor([2.0, 3.0]), x)  # a tensor base (a positive number base is supported)
    with pytest.raises(intervals.UnsupportedOperation, match="floor_divide"):
        torch.floor_divide(x, 2.0)
    with pytest.raises(intervals.UnsupportedOperation, match="fmod"):
        torch.fmod(x, 2.0)


# ---------------------------------------------------------------------------- special values
def test_zero_times_unbounded_is_zero_not_nan():
    # [-inf, inf] * 0: every real product is 0, so the bound must be [0, 0], never NaN.
    whole = Interval(torch.tensor([-INF, -INF, 0.0]), torch.tensor([INF, 1.0, 0.0]))
    zero = Interval(torch.zeros(3), torch.zeros(3))
    unb = Interval(torch.tensor([-INF, -1.0, -INF]), torch.tensor([INF, INF, INF]))
    for out in (whole * zero, zero * whole, whole * torch.zeros(3), whole * 0.0, unb * zero):
        assert not torch.isnan(out.lower).any() and not torch.isnan(out.upper).any(), out
        assert torch.all(out.lower <= 0) and torch.all(out.upper >= 0)
    out = whole * unb
    assert out.lower.tolist() == [-INF, -INF, 0.0] and out.upper.tolist() == [INF, INF, 0.0]


# ---------------------------------------------------------------------------- autograd
def _leaf_box(box: Interval) -> tuple[Interval, torch.Tensor, torch.Tensor]:
    lo = box.lower.detach().clone().requires_grad_(True)
    hi = box.upper.detach().clone().requires_grad_(True)
    return Interval(lo, hi), lo, hi


AUTOGRAD_OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "rsub scalar": lambda a, b: 2.0 - a,
    "mul": lambda a, b: a * b,
    "mul tensor": lambda a, b: a * b.center.detach(),
    "mul scalar": lambda a, b: -3.0 * a,
    "div": lambda a, b: a / b,
    "div scalar": lambda a, b: a / -4.0,
    "rdiv": lambda a, b: 1.0 / b,
    "sum": lambda a, b: a.sum(0),
    "mean": lambda a, b: torch.mean(a, dim=1, keepdim=True),
    "amax": lambda a, b: torch.amax(a, 1),
    "amin": lambda a, b: torch.amin(a, 0),
    "maximum": lambda a, b: torch.maximum(a, b),
    "minimum": lambda a, b: torch.minimum(a, b),
    "clamp": lambda a, b: torch.clamp(a, -0.5, 0.5),
    "clamp iv": lambda a, b: torch.clamp(a, min=b),
    "neg": lambda a, b: -a,
}


@pytest.mark.parametrize("name", list(AUTOGRAD_OPS))
def test_autograd_flows(name):
    g = torch.Generator().manual_seed(0)
    c = torch.randn(3, 4, generator=g, dtype=F64)
    a, alo, ahi = _leaf_box(Interval(c - 0.3, c + 0.3))
    # b: divisor, half its elements containing 0 (the documented [-inf, inf] rule must not poison grads)
    bl = torch.tensor([[0.5, 1.0, -2.0, -1.0], [-1.0, 0.0, -0.5, 1.0], [2.0, 3.0, -1.0, -3.0]], dtype=F64)
    b, blo, bhi = _leaf_box(Interval(bl, bl + 0.75))
    out = AUTOGRAD_OPS[name](a, b)
    out.upper[torch.isfinite(out.upper)].sum().backward()
    grads = [t.grad for t in (alo, ahi, blo, bhi) if t.grad is not None]
    assert grads, "no gradient reached the inputs"
    for gr in grads:
        assert torch.isfinite(gr).all(), f"{name}: non-finite gradient {gr}"
    assert sum(float(gr.abs().sum()) for gr in grads) > 0


def test_autograd_values():
    # d/d(upper) of sum(upper(a * 2 + 1)) is 2; of sum(upper(-a)) w.r.t. lower is -1.
    a, lo, hi = _leaf_box(Interval(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)))
    (a * 2 + 1).upper.sum().backward()
    assert hi.grad.tolist() == [2.0, 2.0, 2.0] and (lo.grad is None or lo.grad.abs().sum() == 0)
    a, lo, hi = _leaf_box(Interval(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)))
    (-a).upper.sum().backward()
    assert lo.grad.tolist() == [-1.0, -1.0, -1.0]


def test_corners_of_small_box_product_sum():
    # An exhaustive-corner check of a composite expression (multilinear, so corners suffice).
    a = Interval(torch.tensor([-1.0, 0.5, -2.0], dtype=F64), torch.tensor([2.0, 0.75, -1.0], dtype=F64))
    b = Interval(torch.tensor([0.25, -3.0, -1.0], dtype=F64), torch.tensor([0.5, 1.0, 4.0], dtype=F64))
    out = (a * b - a).sum()
    joint = Interval(torch.cat([a.lower, b.lower]), torch.cat([a.upper, b.upper]))
    cs = corners(joint)
    vals = (cs[:, :3] * cs[:, 3:] - cs[:, :3]).sum(1)
    assert_encloses(out, vals)
