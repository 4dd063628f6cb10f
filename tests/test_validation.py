"""Input validation and the construction API of :class:`Interval`.

Every invalid input raises :class:`IntervalError` (a ``ValueError``) whose message says what is
wrong, how many elements are affected and where the first one is.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from soundness import boxes

import intervals
from intervals import Interval, IntervalError, UnsupportedOperation

NAN = float("nan")


def raises(match: str):
    return pytest.raises(IntervalError, match=match)


def test_interval_error_is_a_value_error():
    assert issubclass(IntervalError, ValueError)
    assert issubclass(UnsupportedOperation, TypeError)
    assert intervals.IntervalError is IntervalError


# ---------------------------------------------------------------------------- invalid construction
def test_lower_above_upper_names_count_index_and_values():
    with raises(r"lower > upper in 2 element\(s\), first at index \(1,\)") as info:
        Interval(torch.tensor([0.0, 2.0, 3.0, 1.0]), torch.tensor([1.0, 1.0, 3.0, 0.0]))
    assert "lower=2" in str(info.value) and "upper=1" in str(info.value)


def test_lower_above_upper_multidim_index():
    lo = torch.zeros(3, 4)
    hi = torch.ones(3, 4)
    lo[2, 1] = 5.0
    with raises(r"1 element\(s\), first at index \(2, 1\)"):
        Interval(lo, hi)


@pytest.mark.parametrize(
    "call, what, count, index",
    [
        (lambda: Interval(torch.tensor([[0.0, NAN], [NAN, 1.0]]), torch.ones(2, 2)), "lower", 2, "(0, 1)"),
        (lambda: Interval(torch.zeros(3), torch.tensor([1.0, NAN, 1.0])), "upper", 1, "(1,)"),
        (lambda: Interval(torch.tensor([1.0, NAN])), "lower", 1, "(1,)"),
        (lambda: Interval.from_center_radius(torch.tensor([NAN, 1.0, NAN]), 0.1), "center", 2, "(0,)"),
        (lambda: Interval.from_center_radius(torch.zeros(2), torch.tensor([0.0, NAN])), "radius", 1, "(1,)"),
        (lambda: Interval.point(torch.tensor([0.0, 0.0, NAN])), "point", 1, "(2,)"),
        (lambda: Interval.linf_ball(torch.tensor([[0.0], [NAN]]), 0.1), "x", 1, "(1, 0)"),
        (lambda: Interval.linf_ball(torch.zeros(2, 3), torch.tensor([[0.1], [NAN]])), "eps", 1, "(1, 0)"),
    ],
    ids=["lower", "upper", "point-ctor", "center", "radius", "point", "linf-x", "linf-eps"],
)
def test_nan_is_rejected(call, what, count, index):
    with raises("NaN") as info:
        call()
    msg = str(info.value)
    assert what in msg
    assert f"{count} element(s)" in msg
    assert f"first at index {index}" in msg


def test_nan_upper_is_caught_even_when_lower_is_fine_everywhere():
    # NaN compares False both ways, so an order check alone would let it through
    with raises("upper contains NaN"):
        Interval(torch.zeros(2), torch.tensor([NAN, NAN]))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: Interval.from_center_radius(torch.zeros(3), torch.tensor([0.1, -0.1, -1.0])),
         r"radius must be >= 0: 2 negative element\(s\), first at index \(1,\)"),
        (lambda: Interval.from_center_radius(torch.zeros(3), -0.5), "radius must be >= 0"),
        (lambda: Interval.linf_ball(torch.zeros(3), -0.1), "eps must be >= 0"),
        (lambda: Interval.linf_ball(torch.zeros(2, 2), torch.tensor([[0.1], [-1e-9]])),
         r"eps must be >= 0: 1 negative element\(s\), first at index \(1, 0\)"),
        (lambda: Interval.linf_ball(torch.zeros(3), NAN), "eps contains NaN"),
        (lambda: Interval.linf_ball(torch.zeros(3), -math.inf), "eps must be >= 0"),
    ],
    ids=["radius-tensor", "radius-float", "eps-float", "eps-tensor", "eps-nan", "eps-neg-inf"],
)
def test_negative_or_nan_radius_and_eps(call, match):
    with raises(match):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: Interval(torch.zeros(3), torch.ones(4)), r"shapes differ: \(3,\) vs \(4,\)"),
        (lambda: Interval(torch.zeros(2, 3), torch.ones(3)), r"shapes differ: \(2, 3\) vs \(3,\)"),
        (lambda: Interval(torch.zeros(3), torch.ones(3, dtype=torch.float64)),
         "dtypes differ: torch.float32 vs torch.float64"),
        (lambda: Interval.from_center_radius(torch.zeros(3), torch.zeros(2)),
         r"radius shape \(2,\) does not broadcast"),
        (lambda: Interval.from_center_radius(torch.zeros(3), torch.zeros(3, dtype=torch.float64)), "dtypes differ"),
        (lambda: Interval.linf_ball(torch.zeros(2, 3), torch.zeros(4)), r"eps shape \(4,\) does not broadcast"),
        (lambda: Interval.linf_ball(torch.zeros(3), torch.zeros(2, 3)), r"eps shape \(2, 3\) does not broadcast"),
    ],
    ids=["shape", "shape-broadcastable", "dtype", "cr-shape", "cr-dtype", "eps-shape", "eps-larger"],
)
def test_mismatched_shapes_and_dtypes(call, match):
    with raises(match):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mismatched_devices():
    with raises("devices differ"):
        Interval(torch.zeros(3), torch.ones(3, device="cuda"))
    with raises("devices differ"):
        Interval.from_center_radius(torch.zeros(3), torch.ones(3, device="cuda"))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: Interval.linf_ball(torch.tensor([0.5, -0.1, -0.2]), 0.1, lo=0.0, hi=1.0),
         r"x lies below lo in 2 element\(s\), first at index \(1,\)"),
        (lambda: Interval.linf_ball(torch.tensor([[0.5, 1.0], [1.1, 0.0]]), 0.1, lo=0.0, hi=1.0),
         r"x lies above hi in 1 element\(s\), first at index \(1, 0\)"),
        (lambda: Interval.linf_ball(torch.zeros(2), 0.1, lo=torch.tensor([-1.0, 0.5])), r"below lo in 1 .*\(1,\)"),
        (lambda: Interval.linf_ball(torch.zeros(2), 0.1, lo=1.0, hi=-1.0), r"lower > upper in 2"),
        (lambda: Interval.linf_ball(torch.zeros(2), 0.1, lo=NAN), "lo contains NaN"),
        (lambda: Interval.linf_ball(torch.zeros(2), 0.1, hi=torch.tensor([1.0, NAN])), r"hi contains NaN: 1 .*\(1,\)"),
    ],
    ids=["below-lo", "above-hi", "tensor-lo", "lo-above-hi", "nan-lo", "nan-hi"],
)
def test_linf_ball_domain(call, match):
    with raises(match):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: Interval(torch.tensor([0, 1]), torch.tensor([1, 2])),
        lambda: Interval(torch.tensor([0, 1])),
        lambda: Interval(torch.tensor([True]), torch.tensor([True])),
        lambda: Interval.point(torch.tensor([0, 1])),
        lambda: Interval.from_center_radius(torch.tensor([0, 1]), 1),
        lambda: Interval.linf_ball(torch.tensor([0, 1]), 0.5),
        lambda: Interval(torch.zeros(2, dtype=torch.complex64)),
    ],
    ids=["int", "int-point-ctor", "bool", "point", "center", "linf-int-x", "complex"],
)
def test_non_floating_bounds_are_rejected(call):
    with raises("floating point") as info:
        call()
    assert re.search(r"int64|bool|complex64", str(info.value))


def test_linf_ball_int_x_would_have_truncated_eps():
    # Regression: x as int64 made eps=0.5 an integer 0, silently returning the point box.
    with raises("floating point"):
        Interval.linf_ball(torch.tensor([3, 4]), 0.5)


def test_non_tensor_inputs():
    with raises("Interval"):
        Interval(Interval(torch.zeros(1)), torch.zeros(1))
    with raises("str"):
        Interval("abc")
    # array-likes are fine and become the default float dtype
    box = Interval([0, 1], [1, 2])
    assert box.dtype == torch.get_default_dtype()


# ---------------------------------------------------------------------------- construction API
@settings(max_examples=40)
@given(box=boxes(max_dims=3))
def test_center_radius_roundtrip(box):
    c, r = box.center, box.radius
    assert torch.all(r >= 0)
    cr = Interval.from_center_radius(c, r)
    # the centre/radius box contains the original endpoints up to one rounding each
    tol = 4 * torch.finfo(box.dtype).eps * torch.clamp(torch.maximum(box.lower.abs(), box.upper.abs()), min=1.0)
    assert torch.all(cr.lower <= box.lower + tol) and torch.all(cr.upper >= box.upper - tol)
    torch.testing.assert_close(box.width, box.upper - box.lower, rtol=0, atol=0)
    torch.testing.assert_close(box.width, 2 * r, rtol=1e-12, atol=1e-12)
    # the midpoint lies in the box (halving a subnormal may round it to 0: allow that underflow)
    tiny = 2 * torch.finfo(box.dtype).smallest_normal * torch.finfo(box.dtype).eps
    assert torch.all((box.lower - tiny <= c) & (c <= box.upper + tiny))


def test_from_center_radius_broadcasts_radius():
    box = Interval.from_center_radius(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([0.5, 1.0]))
    assert torch.equal(box.lower, torch.tensor([[-0.5, 0.0], [1.5, 2.0]]))
    assert torch.equal(box.upper, torch.tensor([[0.5, 2.0], [2.5, 4.0]]))
    assert box.shape == (2, 2) and box.radius.shape == (2, 2)
    scalar = Interval.from_center_radius(torch.zeros(3), 0.25)
    assert torch.equal(scalar.upper, torch.full((3,), 0.25))


def test_linf_ball_clamped_and_per_sample_eps():
    x = torch.tensor([[0.05, 0.5, 0.97], [0.3, 0.0, 1.0]], dtype=torch.float64)
    eps = torch.tensor([[0.1], [0.5]], dtype=torch.float64)
    box = Interval.linf_ball(x, eps, lo=0.0, hi=1.0)
    assert box.shape == x.shape and box.dtype == torch.float64
    assert torch.equal(box.lower, torch.clamp(x - eps, 0, 1))
    assert torch.equal(box.upper, torch.clamp(x + eps, 0, 1))
    assert float(box.lower[1, 0]) == 0.0 and float(box.upper[1, 0]) == pytest.approx(0.8)
    assert torch.all(box.contains(x))
    # unclamped: symmetric around x
    free = Interval.linf_ball(x, 0.25)
    assert torch.allclose(free.center, x) and torch.allclose(free.radius, torch.full_like(x, 0.25))
    # eps = 0 is a point
    assert Interval.linf_ball(x, 0.0).is_point()
    # tensor-valued domain
    box = Interval.linf_ball(x, 0.5, lo=torch.zeros(3, dtype=torch.float64), hi=torch.tensor([1.0, 0.6, 1.0]).double())
    assert float(box.upper[0, 1]) == pytest.approx(0.6)


def test_point_and_properties():
    x = torch.tensor([[1.0, -2.0, 3.5]], dtype=torch.float64)
    p = Interval.point(x)
    assert p.is_point()
    assert torch.equal(p.lower, x) and torch.equal(p.upper, x)
    assert torch.equal(p.center, x) and torch.equal(p.radius, torch.zeros_like(x))
    assert torch.equal(p.width, torch.zeros_like(x))
    box = Interval(torch.tensor([[-1.0, 0.0], [2.0, 2.0]]), torch.tensor([[1.0, 3.0], [2.0, 6.0]]))
    assert torch.equal(box.center, torch.tensor([[0.0, 1.5], [2.0, 4.0]]))
    assert torch.equal(box.radius, torch.tensor([[1.0, 1.5], [0.0, 2.0]]))
    assert torch.equal(box.width, torch.tensor([[2.0, 3.0], [0.0, 4.0]]))
    assert box.shape == torch.Size([2, 2]) and box.dtype == torch.float32 and box.device.type == "cpu"
    assert box.ndim == 2 and box.dim() == 2 and box.numel() == 4 and len(box) == 2 and box.size(1) == 2
    assert not box.is_point()
    # a centre/radius box derives endpoints
    cr = Interval.from_center_radius(torch.tensor([1.0]), torch.tensor([0.5]))
    assert torch.equal(cr.lower, torch.tensor([0.5])) and torch.equal(cr.upper, torch.tensor([1.5]))


def test_center_does_not_overflow():
    big = torch.finfo(torch.float32).max
    box = Interval(torch.tensor([big * 0.9]), torch.tensor([big]))
    assert torch.isfinite(box.center).all() and torch.isfinite(box.radius).all()


def test_contains_points_and_intervals():
    box = Interval(torch.tensor([0.0, -1.0, 2.0]), torch.tensor([1.0, 1.0, 2.0]))
    assert box.contains(torch.tensor([0.5, -1.0, 2.0])).tolist() == [True, True, True]
    assert box.contains(torch.tensor([1.5, 1.0, 2.1])).tolist() == [False, True, False]
    assert box.contains(0.0).tolist() == [True, True, False]
    inner = Interval(torch.tensor([0.2, -1.0, 2.0]), torch.tensor([0.3, 2.0, 2.0]))
    assert box.contains(inner).tolist() == [True, False, True]
    assert box.contains(box).all()


def test_intersection_and_hull():
    a = Interval(torch.tensor([0.0, 0.0]), torch.tensor([2.0, 1.0]))
    b = Interval(torch.tensor([1.0, -1.0]), torch.tensor([3.0, 0.5]))
    i = a.intersection(b)
    assert i.lower.tolist() == [1.0, 0.0] and i.upper.tolist() == [2.0, 0.5]
    h = a.hull(b)
    assert h.lower.tolist() == [0.0, -1.0] and h.upper.tolist() == [3.0, 1.0]
    assert a.hull(torch.tensor([5.0, -3.0])).upper.tolist() == [5.0, 1.0]
    c = Interval(torch.tensor([5.0, 0.0]), torch.tensor([6.0, 0.2]))
    with raises(r"intersection is empty.*1 element\(s\), first at index \(0,\)"):
        a.intersection(c)


def test_to_detach_clone():
    lo = torch.tensor([0.1, 0.2], requires_grad=True)
    box = Interval(lo, lo + 1)
    assert box.requires_grad
    d = box.to(torch.float64)
    assert d.dtype == torch.float64 and torch.equal(d.lower, lo.detach().double())
    assert box.double().dtype == torch.float64 and d.float().dtype == torch.float32
    det = box.detach()
    assert not det.requires_grad and torch.equal(det.upper, box.upper.detach())
    cl = box.detach().clone()
    cl.lower.add_(5.0)  # the clone owns its storage
    assert float(box.lower[0].detach()) == pytest.approx(0.1)
    assert box.cpu().device.type == "cpu"
    # a centre/radius box survives to() and detach()
    cr = Interval.from_center_radius(torch.zeros(2), torch.ones(2))
    assert torch.equal(cr.to(torch.float64).upper, torch.ones(2, dtype=torch.float64))
    assert torch.equal(cr.detach().lower, -torch.ones(2))


def test_repr_and_bool():
    small = Interval(torch.zeros(3), torch.ones(3))
    assert "Interval" in repr(small) and "lower" in repr(small)
    big = Interval.from_center_radius(torch.zeros(4, 5), 0.5)
    r = repr(big)
    assert "shape=(4, 5)" in r and "max width 1" in r
    assert "Interval" in repr(Interval(torch.tensor(1.0)))
    assert "Interval" in repr(Interval(torch.zeros(0), torch.zeros(0)))
    with pytest.raises(UnsupportedOperation, match="__bool__"):
        bool(small)


def test_scalar_and_empty_intervals():
    s = Interval(torch.tensor(-1.0), torch.tensor(2.0))
    assert s.shape == () and float(s.center) == 0.5
    e = Interval(torch.zeros(0, 3), torch.zeros(0, 3))
    assert e.shape == (0, 3) and e.numel() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_infinite_bounds_are_allowed_and_keep_a_finite_center(dtype):
    inf = math.inf
    box = Interval(torch.tensor([-inf, 0.0, -inf, 1.0, inf, -inf], dtype=dtype),
                   torch.tensor([inf, inf, 5.0, 2.0, inf, -inf], dtype=dtype))
    inside = torch.tensor([1e30, 5.0, -1e30, 1.5, inf, -inf], dtype=dtype)
    assert bool(box.contains(inside).all())
    # Regression: (l + u) / 2 was NaN for [-inf, inf] and +-inf for half-lines, so every
    # centre/radius rule downstream produced NaN bounds.
    assert torch.isfinite(box.center).all()
    assert not torch.isnan(box.radius).any()
    assert torch.equal(box.radius[[0, 1, 2, 4, 5]], torch.full((5,), inf, dtype=dtype))
    cr = Interval.from_center_radius(box.center, box.radius)
    assert bool(cr.contains(box).all())
    assert float(cr.lower[3]) == 1.0 and float(cr.upper[3]) == 2.0
