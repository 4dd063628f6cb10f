"""Pooling, normalisation and softmax rules: sound, and exact/tight where the rule claims it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from soundness import as_cr, assert_encloses, boxes, corners, points_in, scaled

from intervals import Interval, UnsupportedOperation


def batched(fn, pts: torch.Tensor) -> torch.Tensor:
    """Apply ``fn`` (which takes an (N, ...) batch) to each of the stacked point sets."""
    n, b = pts.shape[0], pts.shape[1]
    out = fn(pts.reshape(n * b, *pts.shape[2:]))
    return out.reshape(n, b, *out.shape[1:])


def close(a: torch.Tensor, b: torch.Tensor, ulps: float = 64) -> None:
    eps = torch.finfo(a.dtype).eps
    tol = ulps * eps * torch.clamp(torch.maximum(a.abs(), b.abs()), min=1.0)
    bad = (a - b).abs() > tol
    assert not bad.any(), f"max diff {(a - b).abs().max().item()!r} at {torch.nonzero(bad)[0].tolist()}"


IMAGES = hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=7).map(
    lambda s: (min(s[0], 2), min(s[1], 3), s[2], s[3])
)


# ---------------------------------------------------------------------------- pooling
@st.composite
def pool_params(draw, dilation=True):
    k = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    s = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = draw(st.tuples(st.integers(1, 2), st.integers(1, 2))) if dilation else (1, 1)
    return k, s, p, d, draw(st.booleans())


def _valid(fn, shape, dtype):
    try:
        fn(torch.zeros(shape, dtype=dtype))
    except RuntimeError:
        return False
    return True


def check_pool_exact(fn, box: Interval, n: int = 24) -> None:
    out = fn(box)
    assert isinstance(out, Interval)
    # the bounds are attained at the all-lower and all-upper points (pooling is non-decreasing)
    close(out.lower, fn(box.lower))
    close(out.upper, fn(box.upper))
    assert_encloses(out, batched(fn, points_in(box, n)))


@settings(max_examples=scaled(80))
@given(shape=IMAGES, data=st.data(), params=pool_params(), cr=st.booleans(), f32=st.booleans())
def test_max_pool2d_exact(shape, data, params, cr, f32):
    k, s, p, d, ceil = params
    dtype = torch.float32 if f32 else torch.float64
    fn = lambda t: F.max_pool2d(t, k, s, p, d, ceil_mode=ceil)  # noqa: E731
    assume(_valid(fn, shape, dtype))
    box = data.draw(boxes(shape=shape, dtype=dtype))
    check_pool_exact(fn, as_cr(box) if cr else box)


@settings(max_examples=scaled(80))
@given(shape=IMAGES, data=st.data(), params=pool_params(dilation=False), cr=st.booleans(),
       include_pad=st.booleans(), divisor=st.sampled_from([None, 1, 3]))
def test_avg_pool2d_exact(shape, data, params, cr, include_pad, divisor):
    k, s, p, _, ceil = params
    fn = lambda t: F.avg_pool2d(t, k, s, p, ceil, include_pad, divisor)  # noqa: E731
    assume(_valid(fn, shape, torch.float64))
    box = data.draw(boxes(shape=shape))
    check_pool_exact(fn, as_cr(box) if cr else box)


@settings(max_examples=scaled(40))
@given(shape=IMAGES, data=st.data(), cr=st.booleans(), avg=st.booleans())
def test_adaptive_pool2d_exact(shape, data, cr, avg):
    out_size = data.draw(st.one_of(
        st.integers(1, 4), st.tuples(st.integers(1, 4), st.one_of(st.none(), st.integers(1, 4)))))
    pool = F.adaptive_avg_pool2d if avg else F.adaptive_max_pool2d
    fn = lambda t: pool(t, out_size)  # noqa: E731
    box = data.draw(boxes(shape=shape))
    check_pool_exact(fn, as_cr(box) if cr else box)


def test_pool_modules_and_1d():
    lo = torch.randn(2, 3, 9, dtype=torch.float64)
    box = Interval(lo, lo + torch.rand_like(lo))
    for fn in (lambda t: F.max_pool1d(t, 3, 2, 1), lambda t: F.avg_pool1d(t, 2), lambda t: F.adaptive_avg_pool1d(t, 4),
               lambda t: F.adaptive_max_pool1d(t, 2)):
        check_pool_exact(fn, box)
    box2 = Interval(lo.reshape(2, 3, 3, 3), lo.reshape(2, 3, 3, 3) + 1)
    for m in (torch.nn.MaxPool2d(2, 1, ceil_mode=True), torch.nn.AvgPool2d(2, 1, 1), torch.nn.AdaptiveAvgPool2d(2),
              torch.nn.AdaptiveMaxPool2d((1, 2))):
        check_pool_exact(m, box2)


def test_pool_width_is_not_trivially_zero():
    # a pooled window that mixes a wide coordinate with points keeps its width
    lo = torch.zeros(1, 1, 2, 2)
    hi = lo.clone()
    hi[0, 0, 0, 0] = 4.0
    out = F.avg_pool2d(Interval(lo, hi), 2)
    assert out.lower.item() == 0.0 and out.upper.item() == 1.0
    out = F.max_pool2d(Interval(lo - 1, hi), 2)
    assert out.lower.item() == -1.0 and out.upper.item() == 4.0


@pytest.mark.parametrize(
    "call",
    [
        lambda x: F.max_pool2d(x, 2, return_indices=True),
        lambda x: F.max_pool1d(x[0], 2, return_indices=True),
        lambda x: F.adaptive_max_pool2d(x, 1, return_indices=True),
        lambda x: torch.nn.MaxPool2d(2, return_indices=True)(x),
    ],
)
def test_max_pool_return_indices_raises(call):
    box = Interval(torch.zeros(1, 2, 4, 4), torch.ones(1, 2, 4, 4))
    with pytest.raises(UnsupportedOperation, match="max_pool"):
        call(box)


# ---------------------------------------------------------------------------- batch norm
@st.composite
def bn_setup(draw):
    c = draw(st.integers(1, 4))
    n = draw(st.integers(1, 3))
    extra = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(c, generator=g, dtype=torch.float64) * 3
    var = torch.rand(c, generator=g, dtype=torch.float64) * 4 + draw(st.sampled_from([0.0, 1e-3, 1.0]))
    weight = draw(st.sampled_from(["none", "neg", "mixed"]))
    w = None if weight == "none" else torch.randn(c, generator=g, dtype=torch.float64) * 2
    if weight == "neg":
        w = -w.abs() - 0.1
    b = None if weight == "none" else torch.randn(c, generator=g, dtype=torch.float64)
    box = draw(boxes(shape=(n, c, *extra)))
    return box, mean, var, w, b


@settings(max_examples=scaled(100))
@given(setup=bn_setup(), cr=st.booleans(), eps=st.sampled_from([1e-5, 0.1]))
def test_batch_norm_eval_exact(setup, cr, eps):
    box, mean, var, w, b = setup
    x = as_cr(box) if cr else box
    fn = lambda t: F.batch_norm(t, mean, var, w, b, False, 0.1, eps)  # noqa: E731
    out = fn(x)
    assert isinstance(out, Interval)
    a, c = fn(x.lower), fn(x.upper)  # per-channel affine: the extremes are at the endpoints
    close(out.lower, torch.minimum(a, c))
    close(out.upper, torch.maximum(a, c))
    assert_encloses(out, batched(fn, points_in(x, 16)))
    if w is not None and bool((w < 0).all()):
        # a negative scale swaps the endpoints: the lower bound comes from the upper input
        close(out.lower, c)


def test_batch_norm_module_eval_with_running_stats():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([0.25, 4.0, 1.5]))
        bn.weight.copy_(torch.tensor([-2.0, 0.5, -0.1]))
        bn.bias.copy_(torch.tensor([0.3, -0.2, 1.0]))
    bn.eval()
    lo = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    box = Interval(lo, lo + torch.rand_like(lo))
    out = bn(box)
    assert out.lower.requires_grad  # the autograd form (parameters require gradients)
    a, c = bn(box.lower), bn(box.upper)
    close(out.lower, torch.minimum(a, c))
    close(out.upper, torch.maximum(a, c))
    calls = []
    real_addcmul = torch.addcmul

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append("out" in kwargs)
        return real_addcmul(*args, **kwargs)

    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:  # the in-place form: the very same box
        mp.setattr(torch, "addcmul", spy)
        out_ng = bn(box)
        box32 = Interval(box.lower.float(), box.upper.float())
        stats = (bn.running_mean.float(), bn.running_var.float(), bn.weight.float())
        out_mixed = F.batch_norm(box32, *stats, bn.bias)  # a float64 bias
    assert calls[0] is True  # no autograd: the centre went into its own buffer (out=)
    assert torch.equal(out_ng.lower, out.lower.detach()) and torch.equal(out_ng.upper, out.upper.detach())
    # A float64 bias on a float32 box promotes the centre to float64, as torch's own ops do: not in place.
    assert calls[1] is False and out_mixed.center.dtype == torch.float64


@pytest.mark.parametrize("case", ["functional_no_stats", "functional_training", "module_train", "module_no_tracking"])
def test_batch_norm_training_raises(case):
    box = Interval(torch.zeros(4, 3, 2, 2), torch.ones(4, 3, 2, 2))
    with pytest.raises(UnsupportedOperation, match="batch_norm") as info:
        if case == "functional_no_stats":
            F.batch_norm(box, None, None, training=True)
        elif case == "functional_training":
            F.batch_norm(box, torch.zeros(3), torch.ones(3), training=True)
        elif case == "module_train":
            torch.nn.BatchNorm2d(3)(box)
        else:
            torch.nn.BatchNorm2d(3, track_running_stats=False).eval()(box)
    msg = str(info.value)
    assert "eval()" in msg and "batch" in msg


# ---------------------------------------------------------------------------- layer norm
@st.composite
def ln_setup(draw):
    norm_shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    dtype = draw(st.sampled_from([torch.float64, torch.float64, torch.float32]))
    box = draw(boxes(shape=lead + norm_shape, dtype=dtype, lo=draw(st.sampled_from([-10.0, -1.0])),
                     hi=draw(st.sampled_from([10.0, 1.0]))))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    affine = draw(st.sampled_from(["none", "weight", "both"]))
    w = torch.randn(norm_shape, generator=g, dtype=dtype) * 2 if affine != "none" else None
    b = torch.randn(norm_shape, generator=g, dtype=dtype) if affine == "both" else None
    eps = draw(st.sampled_from([1e-5, 1e-2, 1.0]))
    return box, norm_shape, w, b, eps


@settings(max_examples=scaled(150))
@given(setup=ln_setup(), cr=st.booleans())
def test_layer_norm_sound(setup, cr):
    box, norm_shape, w, b, eps = setup
    x = as_cr(box) if cr else box
    fn = lambda t: F.layer_norm(t, norm_shape, w, b, eps)  # noqa: E731
    out = fn(x)
    assert isinstance(out, Interval) and out.shape == box.shape
    pts = [points_in(x, 96)]
    if x.numel() <= 8:
        pts.append(corners(x))
    vals = torch.cat([torch.stack([fn(p) for p in ps]) for ps in pts])
    assert_encloses(out, vals, scale=4 if box.dtype == torch.float32 else 1)


@settings(max_examples=scaled(30))
@given(setup=ln_setup())
def test_layer_norm_point_box_is_tight(setup):
    box, norm_shape, w, b, eps = setup
    x = Interval.point(box.lower)
    out = F.layer_norm(x, norm_shape, w, b, eps)
    ref = F.layer_norm(box.lower, norm_shape, w, b, eps)
    tol = 1e-4 if box.dtype == torch.float32 else 1e-9
    # a lone normalised coordinate is 0 for any input, a wider group amplifies rounding by 1/sqrt(eps)
    scale = 1.0 / math.sqrt(eps)
    assert torch.allclose(out.lower, ref, atol=tol * scale, rtol=tol)
    assert torch.allclose(out.upper, ref, atol=tol * scale, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [1.6982128620147705, 0.1, -3.3])
def test_layer_norm_constant_group_contains_true_value(dtype, value):
    # Regression: fl(c - mean(c)) is not 0 for a constant group (mean rounds), and 1/sqrt(eps)
    # amplified that ulp to ~4e-5 while the bound had zero width, excluding the true value 0.
    x = Interval.point(torch.full((2, 3), value, dtype=dtype))
    b = torch.tensor([0.0, 1.0, -2.0], dtype=dtype)
    out = F.layer_norm(x, (3,), torch.tensor([1.0, -2.0, 0.5], dtype=dtype), b, 1e-5)
    assert bool(out.contains(b.expand(2, 3)).all()), (out.lower, out.upper)
    # the width reflects the amplified rounding only: ~n ulps of |x| / sqrt(eps), times |w|
    assert float((out.upper - out.lower).max()) < 2e3 * torch.finfo(dtype).eps * abs(value) / 1e-5**0.5


def test_layer_norm_module_bounds_a_wide_box():
    ln = torch.nn.LayerNorm(5).double()
    with torch.no_grad():
        ln.weight.copy_(torch.tensor([1.0, -2.0, 0.5, -0.1, 3.0]))
        ln.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5]))
    box = Interval(torch.full((1, 5), -3.0, dtype=torch.float64), torch.full((1, 5), 3.0, dtype=torch.float64))
    out = ln(box)
    vals = torch.stack([ln(p) for p in corners(box)])
    assert_encloses(out, vals)
    # standardised coordinates never exceed sqrt(n - 1) = 2, so the bound is finite and capped
    assert torch.all(out.upper <= 2 * ln.weight.abs() + ln.bias + 1e-12)


# ---------------------------------------------------------------------------- softmax
@st.composite
def softmax_setup(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    dtype = draw(st.sampled_from([torch.float64, torch.float64, torch.float32]))
    lim = draw(st.sampled_from([1.0, 10.0, 40.0]))
    return draw(boxes(shape=shape, dtype=dtype, lo=-lim, hi=lim)), dim


def _opposite_corner(lo: torch.Tensor, hi: torch.Tensor, dim: int, k: int) -> torch.Tensor:
    """x_k = lo_k, every other x_j = hi_j, along ``dim``."""
    idx = torch.arange(lo.shape[dim]).reshape([-1 if d == dim % lo.dim() else 1 for d in range(lo.dim())])
    return torch.where(idx == k, lo, hi)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@settings(max_examples=scaled(100))
@given(setup=softmax_setup(), cr=st.booleans(), spelling=st.sampled_from(["F", "torch", "method"]))
def test_softmax_sound_and_tight(log, setup, cr, spelling):
    box, dim = setup
    x = as_cr(box) if cr else box
    name = "log_softmax" if log else "softmax"
    ref = getattr(F, name)
    fn = {"F": lambda t: ref(t, dim=dim), "torch": lambda t: getattr(torch, name)(t, dim),
          "method": lambda t: getattr(t, name)(dim)}[spelling]
    out = fn(x)
    assert isinstance(out, Interval)
    assert_encloses(out, torch.stack([ref(p, dim) for p in points_in(x, 24)]))
    # tightness: each coordinate's bounds are attained at an opposite corner, up to the rounding
    # allowance the rule adds: (n + 8) * 4 float64 ulps of the logits' spread (see _widened_softplus)
    n = x.shape[dim] if x.dim() else 1
    spread = float((x.upper.amax() - x.lower.amin()).clamp(min=1.0)) if x.numel() else 1.0
    ulps = 256 + 3 * (n + 8) * 4 * spread * torch.finfo(torch.float64).eps / torch.finfo(x.dtype).eps
    for k in range(x.shape[dim]):
        low_corner = _opposite_corner(x.lower, x.upper, dim, k)
        high_corner = _opposite_corner(x.upper, x.lower, dim, k)
        close(out.lower.select(dim, k), ref(low_corner, dim).select(dim, k), ulps=ulps)
        close(out.upper.select(dim, k), ref(high_corner, dim).select(dim, k), ulps=ulps)


def test_softmax_dtype_argument_and_module():
    box = Interval(torch.zeros(2, 3), torch.ones(2, 3))
    f64 = torch.float64
    # the dtype is the 4th argument of F.softmax but the 3rd of torch.softmax / the 2nd of the method
    for call in (lambda t: F.softmax(t, dim=1, dtype=f64), lambda t: F.softmax(t, 1, 3, f64),
                 lambda t: torch.softmax(t, 1, f64), lambda t: t.softmax(1, f64), lambda t: t.softmax(1, dtype=f64),
                 lambda t: torch.log_softmax(t, 1, f64), lambda t: t.log_softmax(-1, f64)):
        assert call(box.lower).dtype == f64
        assert call(box).dtype == f64
    m = torch.nn.Softmax(dim=-1)
    out = m(box)
    assert torch.all(out.lower > 0) and torch.all(out.upper < 1)
    out = torch.nn.LogSoftmax(dim=0)(box)
    assert torch.all(out.upper <= 0)


def test_naive_endpoint_softmax_is_unsound():
    """Why the rule exists: mapping endpoints through softmax does not enclose the image."""
    box = Interval(torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64))
    naive_lo, naive_hi = F.softmax(box.lower, 0), F.softmax(box.upper, 0)
    naive = Interval(torch.minimum(naive_lo, naive_hi), torch.maximum(naive_lo, naive_hi))
    point = torch.tensor([0.0, 1.0], dtype=torch.float64)  # inside the box
    value = F.softmax(point, 0)
    assert not bool(naive.contains(value).all()), "the naive map happened to be sound here"
    out = F.softmax(box, 0)
    assert bool(out.contains(value).all())
    # the same for log_softmax, and for points drawn everywhere in the box
    lbox = F.log_softmax(box, 0)
    naive_l = Interval(torch.minimum(F.log_softmax(box.lower, 0), F.log_softmax(box.upper, 0)),
                       torch.maximum(F.log_softmax(box.lower, 0), F.log_softmax(box.upper, 0)))
    vals = torch.stack([F.log_softmax(p, 0) for p in points_in(box, 32)])
    assert not bool(naive_l.contains(vals).all())
    assert_encloses(lbox, vals, tol=1e-15)


def test_softmax_without_dim_is_refused():
    box = Interval(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(UnsupportedOperation, match="softmax"):
        F.softmax(box, None)


# ---------------------------------------------------------------------------- rigorous mode
def _rig_ops(seed: int):
    g = torch.Generator().manual_seed(seed)
    mean, var = torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.01
    w, b = torch.randn(3, generator=g), torch.randn(3, generator=g)
    lw, lb = torch.randn(4, generator=g), torch.randn(4, generator=g)
    return {
        "avg_pool2d": lambda t: F.avg_pool2d(t, 2, 1, 1),
        "avg_pool2d_divisor": lambda t: F.avg_pool2d(t, 3, 1, 1, divisor_override=5),
        "adaptive_avg_pool2d": lambda t: F.adaptive_avg_pool2d(t, (3, 2)),
        "max_pool2d": lambda t: F.max_pool2d(t, 2, 1, 1, ceil_mode=True),
        "batch_norm": lambda t: F.batch_norm(t, mean.to(t.dtype), var.to(t.dtype), w.to(t.dtype), b.to(t.dtype)),
        "layer_norm": lambda t: F.layer_norm(t, (4,), lw.to(t.dtype), lb.to(t.dtype)),
        "softmax": lambda t: F.softmax(t, 1),
        "log_softmax": lambda t: F.log_softmax(t, -1),
    }


@pytest.mark.parametrize("name", sorted(_rig_ops(0)))
@settings(max_examples=scaled(15))
@given(box=boxes(shape=(2, 3, 4, 4), dtype=torch.float32, lo=-5.0, hi=5.0), seed=st.integers(0, 99))
def test_rigorous_mode_encloses_float64_reference(name, box, seed):
    """float32 bounds in rigorous mode contain the float64 value of every sampled point."""
    import intervals

    op = _rig_ops(seed)[name]
    with intervals.rigorous():
        out = op(box)
    assert out.dtype == torch.float32
    pts = points_in(box, 12).double()
    vals = torch.stack([op(p) for p in pts])
    # float64 evaluation is within a few float64 ulps of the exact value: allow just that
    tol = 16 * torch.finfo(torch.float64).eps * torch.clamp(vals.abs(), min=1.0)
    lo, hi = out.lower.double(), out.upper.double()
    bad = (vals < lo - tol) | (vals > hi + tol)
    lo, hi = lo.expand_as(vals), hi.expand_as(vals)
    assert not bad.any(), f"{name}: {vals[bad][:3]} outside [{lo[bad][:3]}, {hi[bad][:3]}]"


# ---------------------------------------------------------------------------- unbounded inputs
INF = math.inf
UNBOUNDED_OPS = {
    "softmax": lambda t: F.softmax(t, 1),
    "log_softmax": lambda t: F.log_softmax(t, 1),
    "batch_norm": lambda t: F.batch_norm(t.unsqueeze(-1), torch.zeros(4), torch.ones(4),
                                         torch.tensor([0.0, 2.0, 1.0, -1.0]), torch.ones(4)),
    "layer_norm": lambda t: F.layer_norm(t, (4,)),
    "avg_pool": lambda t: F.avg_pool1d(t, 2),
    "max_pool": lambda t: F.max_pool1d(t, 2),
}


@pytest.mark.parametrize("name", sorted(UNBOUNDED_OPS))
def test_unbounded_boxes_give_no_nan(name):
    # Unbounded endpoints arise from interval division by a divisor that straddles 0. Regression:
    # inf - inf inside softmax and inf * 0 inside batch_norm produced NaN bounds.
    op = UNBOUNDED_OPS[name]
    box = Interval(torch.tensor([[0.0, -INF, 1.0, 2.0], [-INF, -3.0, 0.0, -INF]]),
                   torch.tensor([[INF, INF, 1.0, 3.0], [INF, -1.0, 0.0, 5.0]]))
    out = op(box)
    assert not torch.isnan(out.lower).any() and not torch.isnan(out.upper).any(), (out.lower, out.upper)
    assert torch.all(out.lower <= out.upper)
    finite = Interval(torch.clamp(box.lower, min=-1e3), torch.clamp(box.upper, max=1e3))
    pts = torch.cat([points_in(finite, 32), torch.tensor([[[1e30, -1e30, 1.0, 2.0], [-1e30, -3.0, 0.0, 5.0]]])])
    assert_encloses(out, torch.stack([op(p) for p in pts]))


def test_centre_radius_with_infinite_radius_has_no_nan_bounds():
    box = Interval.from_center_radius(torch.tensor([3e38, 0.0]), torch.tensor([INF, 1.0]))
    out = 2 * box  # the centre overflows to inf: c - r = inf - inf
    assert not torch.isnan(out.lower).any() and not torch.isnan(out.upper).any()
    assert float(out.lower[0]) == -INF and float(out.upper[0]) == INF
