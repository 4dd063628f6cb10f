"""Soundness, tightness, cost and autograd of the bilinear rules (linear, matmul, convolutions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from soundness import assert_encloses, boxes, corners, points_in

import intervals
from intervals import Interval
from intervals.ops import interval_linear, interval_linear_iw

D = torch.float64


def _rand_box(shape, seed, scale=1.0, width=0.5, dtype=D):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(shape, generator=g, dtype=dtype) * scale
    r = torch.rand(shape, generator=g, dtype=dtype) * width
    return Interval(c - r, c + r)


def _exact_linear_bounds(x: Interval, w: torch.Tensor, b: torch.Tensor | None):
    """Exact bounds of x -> W x + b over a box: per output, each coordinate at the right end."""
    lo = torch.where(w > 0, w, 0) @ x.lower.unsqueeze(-1) + torch.where(w < 0, w, 0) @ x.upper.unsqueeze(-1)
    hi = torch.where(w > 0, w, 0) @ x.upper.unsqueeze(-1) + torch.where(w < 0, w, 0) @ x.lower.unsqueeze(-1)
    lo, hi = lo.squeeze(-1), hi.squeeze(-1)
    if b is not None:
        lo, hi = lo + b, hi + b
    return lo, hi


# ---------------------------------------------------------------------------- point weights
@given(box=boxes(shape=(3, 5)), seed=st.integers(0, 2**16), bias=st.booleans())
def test_linear_point_weights_sound_and_exact(box, seed, bias):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 5, generator=g, dtype=D)
    b = torch.randn(4, generator=g, dtype=D) if bias else None
    out = F.linear(box, w, b)
    assert_encloses(out, F.linear(points_in(box, 32, seed), w, b), what="linear")
    lo, hi = _exact_linear_bounds(box, w, b)
    torch.testing.assert_close(out.lower, lo, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.upper, hi, rtol=1e-12, atol=1e-12)


def _count_products(fn) -> int:
    """Number of GEMM/convolution kernels ``fn`` launches (nested calls included)."""
    kinds = {"aten::mm", "aten::addmm", "aten::bmm", "aten::convolution"}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name in kinds)


def test_linear_and_conv_cost_two_products():
    x = _rand_box((8, 16), 0, dtype=torch.float32)
    layer = torch.nn.Linear(16, 4)
    assert _count_products(lambda: layer(x)) == 2
    conv = torch.nn.Conv2d(3, 4, 3)
    xi = _rand_box((2, 3, 8, 8), 1, dtype=torch.float32)
    assert _count_products(lambda: conv(xi)) == 2
    wbox = _rand_box((4, 16), 2, dtype=torch.float32)
    assert _count_products(lambda: F.linear(x, wbox)) == 3  # Rump's midpoint-radius product: 3 GEMMs, not 4 or 9


# ---------------------------------------------------------------------------- interval weights
def _exact_interval_product_sum(x: Interval, w: Interval) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact bounds of sum_j x_j w_ij for independent intervals x_j, w_ij (1-D x)."""
    xl, xu = x.lower.unsqueeze(0), x.upper.unsqueeze(0)
    prods = torch.stack([w.lower * xl, w.lower * xu, w.upper * xl, w.upper * xu])
    return prods.amin(0).sum(-1), prods.amax(0).sum(-1)


@given(seed=st.integers(0, 2**16), x_point=st.booleans(), bias_iv=st.booleans())
def test_linear_interval_weights_sound(seed, x_point, bias_iv):
    x = _rand_box((6,), seed, width=0 if x_point else 0.7)
    w = _rand_box((3, 6), seed + 1, width=0.3)
    b = _rand_box((3,), seed + 2, width=0.2) if bias_iv else torch.randn(3, dtype=D)
    xin = x.lower if x_point else x
    out = F.linear(xin, w, b)
    g = torch.Generator().manual_seed(seed)
    for _ in range(64):
        xs = x.lower + (x.upper - x.lower) * (torch.rand(6, generator=g, dtype=D) > 0.5)
        ws = w.lower + (w.upper - w.lower) * torch.rand(3, 6, generator=g, dtype=D).round()
        bs = (b.lower + (b.upper - b.lower) * torch.rand(3, generator=g, dtype=D)) if bias_iv else b
        assert_encloses(out, F.linear(xs, ws, bs), what="interval-weight linear")
    # Rump's product is at most 1.5x the exact interval product width (and exact for point x).
    lo, hi = _exact_interval_product_sum(x, w)
    exact_width = hi - lo + (b.upper - b.lower if bias_iv else 0)
    ratio = ((out.upper - out.lower) / exact_width.clamp(min=1e-12)).max()
    assert ratio <= 1.5 + 1e-9
    if x_point:
        torch.testing.assert_close(out.upper - out.lower, exact_width, rtol=1e-12, atol=1e-12)


def test_matmul_all_combinations():
    a = _rand_box((2, 3, 4), 0)
    b = _rand_box((4, 5), 1)
    at, bt = a.center, b.center
    for left, right in ((a, bt), (at, b), (a, b)):
        out = left @ right
        assert isinstance(out, Interval) and out.shape == (2, 3, 5)
        for k in range(24):
            ls = points_in(a, 24, k)[k] if isinstance(left, Interval) else at
            rs = points_in(b, 24, k + 100)[k] if isinstance(right, Interval) else bt
            assert_encloses(out, ls @ rs, what="matmul")
    out = torch.bmm(a, torch.randn(2, 4, 6, dtype=D))
    assert out.shape == (2, 3, 6)
    out = torch.randn(7, 2, dtype=D) @ _rand_box((2, 3), 3)
    assert out.shape == (7, 3)


# ---------------------------------------------------------------------------- convolutions
def _jacobian_matrix(fn, shape):
    n = torch.Size(shape).numel()
    basis = torch.eye(n, dtype=D).reshape(n, *shape)
    cols = torch.stack([fn(basis[i]).reshape(-1) for i in range(n)], 1)
    return cols  # (outputs, inputs): exact since each output is a sum of single weight entries


@given(
    seed=st.integers(0, 2**16),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
)
def test_conv2d_sound_and_exact(seed, stride, padding, dilation, groups):
    g = torch.Generator().manual_seed(seed)
    x = _rand_box((1, 4, 6, 6), seed)
    w = torch.randn(4, 4 // groups, 3, 3, generator=g, dtype=D)
    b = torch.randn(4, generator=g, dtype=D)
    conv = lambda t: F.conv2d(t, w, b, stride, padding, dilation, groups)  # noqa: E731
    out = conv(x)
    assert_encloses(out, torch.stack([conv(p) for p in points_in(x, 16, seed)]), what="conv2d")
    m = _jacobian_matrix(lambda t: F.conv2d(t, w, None, stride, padding, dilation, groups), x.shape)
    flat = Interval(x.lower.reshape(-1), x.upper.reshape(-1))
    lo, hi = _exact_linear_bounds(flat, m, None)
    bias_map = b.reshape(-1, 1, 1).expand(out.shape[1:]).reshape(-1)
    torch.testing.assert_close(out.lower.reshape(-1), lo + bias_map, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.upper.reshape(-1), hi + bias_map, rtol=1e-12, atol=1e-12)


@given(seed=st.integers(0, 2**16), stride=st.integers(1, 3), padding=st.integers(0, 1))
def test_conv1d_and_conv_transpose2d_sound(seed, stride, padding):
    g = torch.Generator().manual_seed(seed)
    x1 = _rand_box((2, 3, 9), seed)
    w1 = torch.randn(5, 3, 3, generator=g, dtype=D)
    out1 = F.conv1d(x1, w1, None, stride, padding)
    assert_encloses(out1, torch.stack([F.conv1d(p, w1, None, stride, padding) for p in points_in(x1, 16, seed)]))
    x2 = _rand_box((1, 4, 4, 4), seed + 1)
    w2 = torch.randn(4, 3, 3, 3, generator=g, dtype=D)
    b2 = torch.randn(3, generator=g, dtype=D)
    ct = lambda t: F.conv_transpose2d(t, w2, b2, stride, padding)  # noqa: E731
    out2 = ct(x2)
    assert_encloses(out2, torch.stack([ct(p) for p in points_in(x2, 16, seed)]), what="conv_transpose2d")


@given(seed=st.integers(0, 2**16))
def test_conv2d_interval_weights_sound(seed):
    x = _rand_box((1, 2, 5, 5), seed, width=0.3)
    w = _rand_box((3, 2, 3, 3), seed + 1, width=0.2)
    b = _rand_box((3,), seed + 2, width=0.1)
    out = F.conv2d(x, w, b, padding=1)
    g = torch.Generator().manual_seed(seed)
    for k in range(32):
        xs = points_in(x, 32, seed)[k]
        ws = w.lower + (w.upper - w.lower) * torch.rand(w.shape, generator=g, dtype=D).round()
        bs = b.lower + (b.upper - b.lower) * torch.rand(3, generator=g, dtype=D)
        assert_encloses(out, F.conv2d(xs, ws, bs, padding=1), what="interval-weight conv2d")


def test_tiny_network_corners_exhaustive():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).double()
    box = _rand_box((4,), 7, width=0.4)
    out = net(box)
    assert_encloses(out, net(corners(box)), what="exhaustive corners")


# ---------------------------------------------------------------------------- autograd
def test_custom_ops_gradcheck_and_opcheck():
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=D).requires_grad_()  # noqa: E731
    pos = lambda *s: torch.rand(*s, generator=g, dtype=D).add(0.1).requires_grad_()  # noqa: E731
    c, r, w, b = mk(3, 2, 5), pos(3, 2, 5), mk(4, 5), mk(4)
    via_abs = lambda c, r, w, b, s: interval_linear(c, r, w, w.abs(), b, s)  # noqa: E731
    assert torch.autograd.gradcheck(via_abs, (c, r, w, b, 1.0))
    assert torch.autograd.gradcheck(via_abs, (c, r, w, None, 0.5))
    assert torch.autograd.gradcheck(interval_linear, (c, r, w, pos(4, 5), b, 0.5))
    wr, br = pos(4, 5), pos(4)
    assert torch.autograd.gradcheck(interval_linear_iw, (c, r, w, wr, b, br))
    assert torch.autograd.gradcheck(interval_linear_iw, (c, r, w, wr, None, None))
    results = torch.library.opcheck(interval_linear, (c, r, w, w.abs().detach().requires_grad_(), b, 0.5))
    assert all(v == "SUCCESS" for v in results.values()), results
    results = torch.library.opcheck(interval_linear_iw, (c, r, w, wr, b, br))
    assert all(v == "SUCCESS" for v in results.values()), results


def test_gradients_reach_interval_weights_and_parameters():
    torch.manual_seed(0)
    wl = torch.randn(3, 4, requires_grad=True)
    wu = (wl.detach() + 0.1).requires_grad_()
    w = Interval(wl, wu)
    x = Interval.linf_ball(torch.randn(5, 4), 0.1)
    out = F.relu(F.linear(x, w))
    loss = out.upper.sum() - out.lower.sum()
    loss.backward()
    assert wl.grad is not None and wu.grad is not None
    assert wl.grad.abs().sum() > 0 and wu.grad.abs().sum() > 0
    conv = torch.nn.Conv2d(1, 2, 3)
    y = conv(Interval.linf_ball(torch.rand(2, 1, 5, 5), 0.05))
    (y.upper - y.lower).sum().backward()
    assert conv.weight.grad.abs().sum() > 0


def test_weight_updates_through_data_are_seen():
    # `.data` updates (weight clipping, EMA) do not bump the version counter: no stale |W| allowed.
    layer = torch.nn.Linear(3, 2)
    conv = torch.nn.Conv2d(1, 2, 3)
    x = Interval.linf_ball(torch.zeros(1, 3), 1.0)
    xi = Interval.linf_ball(torch.zeros(1, 1, 3, 3), 1.0)
    with torch.no_grad():
        layer(x), conv(xi)
        layer.weight.data.mul_(-100.0)
        conv.weight.data.mul_(-100.0)
        assert layer(x).contains(layer(torch.ones(1, 3))).all()
        assert conv(xi).contains(conv(torch.ones(1, 1, 3, 3))).all()
    with torch.inference_mode():  # inference tensors have no version counter at all
        layer(x)


def test_cached_abs_weights_is_opt_in_and_tracks_versions():
    from intervals.rules.linear import abs_weight

    layer = torch.nn.Linear(3, 2)
    x = Interval.linf_ball(torch.randn(4, 3), 0.1)
    with torch.no_grad():
        assert abs_weight(layer.weight) is not abs_weight(layer.weight)  # no cache by default
        with intervals.cached_abs_weights():
            first = layer(x)
            assert abs_weight(layer.weight) is abs_weight(layer.weight)
            layer.weight.mul_(-2.0)  # an ordinary in-place update bumps the version: recomputed
            second = layer(x)
        torch.testing.assert_close(second.radius, F.linear(x.radius, layer.weight.abs()))
        assert not torch.allclose(first.radius, second.radius)
        assert abs_weight(layer.weight) is not abs_weight(layer.weight)  # dropped on exit
    with intervals.cached_abs_weights():  # recording autograd through the weight: never cached
        out = layer(x)
        out.upper.sum().backward()
    assert layer.weight.grad is not None
