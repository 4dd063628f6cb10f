"""The opt-in bfloat16 radius product (``intervals.bf16_radius``): an upper bound, never below the exact radius."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from soundness import assert_encloses, points_in

import intervals
from intervals import Interval
from intervals.precision import inflation, radius_product_bf16

#: The documented worst case: both factors and the result rounded up (2^-8 each, to nearest bf16), and the
#: allowance for rounding them down on top.
LOOSEST = (1 + 2**-8) ** 3 / (1 - 2**-8) ** 3 * (1 + 2**-18)


def _box(shape, seed, scale, width):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(shape, generator=g) * scale
    r = torch.rand(shape, generator=g) * width * scale
    return Interval.from_center_radius(c, r)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_in=st.sampled_from([1, 7, 100, 784, 4096]),
    magnitude=st.sampled_from([1e-3, 1.0, 1e4]),
    width=st.sampled_from([1e-4, 0.05, 1.0]),
)
def test_linear_radius_is_never_below_the_exact_radius(seed, n_in, magnitude, width):
    g = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(16, n_in, generator=g) * magnitude
    b = torch.randn(16, generator=g)
    box = _box((8, n_in), seed, 1.0, width)
    plain = F.linear(box, w, b)
    with intervals.bf16_radius():
        fast = F.linear(box, w, b)
    exact = F.linear(box.radius.double(), w.double().abs())  # |W| r in float64: exact for these inputs
    assert torch.equal(fast.center, plain.center)
    assert (fast.radius.double() >= exact).all(), "bf16 radius fell below the exact |W| r"
    assert (fast.radius.double() <= exact * LOOSEST + 1e-30).all(), "bf16 radius looser than documented"
    assert_encloses(fast, F.linear(points_in(box, 16, seed), w, b), what="linear, bf16 radius")


def test_without_the_inflation_the_rounded_product_undercuts():
    """The inflation factor is needed: the raw bf16 result is below the exact radius somewhere."""
    g = torch.Generator().manual_seed(0)
    r, w = torch.rand(64, 784, generator=g), torch.rand(100, 784, generator=g)
    raw = F.linear(r.bfloat16(), w.bfloat16()).double()
    exact = F.linear(r.double(), w.double())
    assert (raw < exact).any()
    bound = radius_product_bf16(F.linear, r, w, 784)
    assert (bound.double() >= exact).all()


def test_gradients_pass_through_the_bf16_product():
    r = torch.rand(4, 30, requires_grad=True)
    w = torch.rand(5, 30, requires_grad=True)
    radius_product_bf16(F.linear, r, w, 30).sum().backward()
    assert r.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    torch.testing.assert_close(r.grad, w.sum(0).expand(4, 30), rtol=0.03, atol=0)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    groups=st.sampled_from([1, 2]),
    endpoint_form=st.booleans(),
)
def test_conv2d_radius_is_never_below_the_exact_radius(seed, stride, padding, groups, endpoint_form):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 16 // groups, 3, 3, generator=g)
    b = torch.randn(8, generator=g)
    box = _box((2, 16, 9, 9), seed, 1.0, 0.1)
    if endpoint_form:  # lower/upper storage takes the (l + u, u - l, 1/2) route
        box = Interval(box.lower, box.upper)
    conv = lambda t, ww=w, bb=b: F.conv2d(t, ww, bb, stride, padding, 1, groups)  # noqa: E731
    plain = conv(box)
    with intervals.bf16_radius():
        fast = conv(box)
    exact = conv((box.upper.double() - box.lower.double()) / 2, w.double().abs(), None)
    torch.testing.assert_close(fast.center, plain.center, rtol=1e-6, atol=1e-6)
    assert (fast.radius.double() >= exact).all(), "bf16 conv radius fell below the exact |W| r"
    assert (fast.radius.double() <= exact * LOOSEST + 1e-6).all()
    assert_encloses(fast, torch.stack([conv(p) for p in points_in(box, 12, seed)]), what="conv2d, bf16 radius")


@pytest.mark.parametrize("nd", [1, 3])
def test_conv1d_and_conv3d_share_the_bound(nd):
    conv = {1: F.conv1d, 3: F.conv3d}[nd]
    g = torch.Generator().manual_seed(nd)
    w = torch.randn(4, 6, *(3,) * nd, generator=g)
    box = _box((2, 6, *(7,) * nd), nd, 1.0, 0.2)
    with intervals.bf16_radius():
        fast = conv(box, w, None, 1, 1)
    exact = conv(box.radius.double(), w.double().abs(), None, 1, 1)
    torch.testing.assert_close(fast.center, conv(box.center, w, None, 1, 1))
    assert (fast.radius.double() >= exact).all() and (fast.radius.double() <= exact * LOOSEST + 1e-6).all()
    assert_encloses(fast, torch.stack([conv(p, w, None, 1, 1) for p in points_in(box, 8, nd)]), what=f"conv{nd}d")


def test_network_soundness_and_gradients():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 4, 2, 1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 32),
        torch.nn.ReLU(), torch.nn.Linear(32, 10),
    )
    x = torch.rand(4, 1, 28, 28)
    box = Interval.linf_ball(x, 0.05)
    with intervals.bf16_radius():
        out = net(box)
    ref = net(box)
    assert (out.lower <= ref.lower + 1e-5).all() and (out.upper >= ref.upper - 1e-5).all()
    assert_encloses(out, torch.stack([net(p) for p in points_in(box, 16, 0)]), what="network, bf16 radius")
    # gradients: same direction as the float32 path's
    net.zero_grad()
    ref.upper.sum().backward()
    g_ref = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    with intervals.bf16_radius():
        net(box).upper.sum().backward()
    for p, gr in zip(net.parameters(), g_ref, strict=True):
        assert p.grad.dtype == torch.float32
        cos = F.cosine_similarity(p.grad.flatten(), gr.flatten(), dim=0)
        assert cos > 0.999, cos


def test_switch_scope_rigorous_and_other_dtypes():
    w = torch.randn(3, 5)
    box = _box((2, 5), 0, 1.0, 0.2)
    assert not intervals.is_bf16_radius()
    with intervals.bf16_radius():
        assert intervals.is_bf16_radius()
        with intervals.bf16_radius(False):
            assert not intervals.is_bf16_radius()
            assert torch.equal(F.linear(box, w).radius, F.linear(box, w).radius)
        assert intervals.is_bf16_radius()
        # rigorous mode ignores the switch: its result equals rigorous mode's own
        with intervals.rigorous():
            rig = F.linear(box, w)
        # float64 keeps the exact path
        box64 = Interval.from_center_radius(box.center.double(), box.radius.double())
        assert torch.equal(F.linear(box64, w.double()).radius, F.linear(box.radius.double(), w.double().abs()))
    with intervals.rigorous():
        assert torch.equal(F.linear(box, w).upper, rig.upper)
    assert not intervals.is_bf16_radius()


def test_inflation_covers_the_float32_sum_and_rejects_absurd_lengths():
    assert inflation(1) > 1 / (1 - 2**-8)
    assert inflation(4096) > inflation(1)
    assert inflation(10, scale=0.5) == pytest.approx(inflation(10) / 2)
    with pytest.raises(ValueError, match="too long"):
        inflation(2**23 + 2)
