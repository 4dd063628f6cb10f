"""Regression tests for soundness and robustness problems found in an adversarial review."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import pytest
import torch
import torch.nn.functional as F

import intervals
from intervals import Interval, UnsupportedOperation


def _contains_exact(out: Interval, exact: float | Fraction) -> bool:
    return Fraction(out.lower.item()) <= exact <= Fraction(out.upper.item())


@pytest.mark.parametrize("logit", [1000.0, 1e6, 1e10])
def test_log_softmax_large_logits(logit):
    # the rule used to lose every digit to the logits' magnitude (1e10 - logaddexp(1e10, ...))
    x = torch.full((1, 3), logit)
    out = F.log_softmax(Interval.point(x), -1)
    torch.testing.assert_close(out.lower, F.log_softmax(x, -1), rtol=1e-6, atol=1e-6)
    sm = F.softmax(Interval.point(x), -1)
    torch.testing.assert_close(sm.upper, torch.full((1, 3), 1 / 3), rtol=1e-6, atol=1e-6)
    with intervals.rigorous():
        out64 = F.log_softmax(Interval.point(x.double()), -1)
    exact = -mpmath.log(3)
    assert out64.lower[0, 0].item() <= exact <= out64.upper[0, 0].item()


def test_rigorous_tensor_operands_are_rounded_outward():
    with intervals.rigorous():
        y = Interval.point(torch.tensor([-0.1])) + torch.tensor(0.1, dtype=torch.float64)
        z = Interval.point(torch.tensor([-16777216.0])) + torch.tensor([16777217])
        c = Interval(torch.tensor([0.0]), torch.tensor([0.05])).clamp(min=0.1)
        h = F.hardtanh(Interval.point(torch.tensor([0.0])), min_val=0.1)
    assert _contains_exact(y, Fraction(0.1) - Fraction(float(torch.tensor(-0.1).neg())))
    assert _contains_exact(z, Fraction(1))
    assert c.lower.item() <= 0.1 and h.lower.item() <= 0.1


def test_rigorous_linf_ball_does_not_round_eps_inward():
    with intervals.rigorous():
        box = Interval.linf_ball(torch.tensor([0.7]), 0.7)
        dom = Interval.linf_ball(torch.tensor([0.5]), 0.45, lo=0.1)
    assert Fraction(box.lower.item()) <= Fraction(float(torch.tensor(0.7))) - Fraction(0.7)
    assert Fraction(dom.lower.item()) <= Fraction(0.1)


def test_box_made_outside_rigorous_mode_is_converted_outward_inside():
    b = Interval.from_center_radius(torch.tensor([1.0], dtype=torch.float64), 2.0**-60)
    with intervals.rigorous():
        y = b - 1.0
    assert y.lower.item() <= -(2.0**-60) and y.upper.item() >= 2.0**-60
    box = Interval.point(torch.tensor([[1.4e-45]]))
    with intervals.rigorous():
        out = F.linear(box, torch.tensor([[1e30]]))
    exact = Fraction(float(torch.tensor(1.4e-45))) * Fraction(float(torch.tensor(1e30)))
    assert _contains_exact(out, exact)


def test_batch_norm_large_mean_is_accurate():
    bn = torch.nn.BatchNorm1d(1).eval()
    bn.running_mean.fill_(1000.0)
    bn.running_var.fill_(1e-4)
    x = torch.tensor([[1000.01]])
    out = bn(Interval.point(x))
    # the float64 value; (torch's own float32 kernel folds -mean * scale into a shift and is 0.2% off)
    exact = bn.double()(x.double()).float()
    torch.testing.assert_close(out.center, exact, rtol=1e-5, atol=1e-5)


def test_subnormal_centre_does_not_collapse_the_box():
    x = torch.tensor([6e-8], dtype=torch.float16)
    box = Interval.point(x)
    assert (box.center - box.radius <= x).all() and (box.center + box.radius >= x).all()
    assert box.radius.item() >= 0 and (box.center + box.radius).item() > 0


def test_constructors_copy_the_callers_tensors():
    lo, hi = torch.zeros(3), torch.ones(3)
    box = Interval(lo, hi)
    hi.sub_(5)
    assert (box.upper == 1).all()


def test_comparisons_raise_and_upper_takes_lower_dtype():
    x = Interval(torch.zeros(2), torch.ones(2))
    with pytest.raises(UnsupportedOperation, match="__eq__"):
        x == x  # noqa: B015
    with pytest.raises(UnsupportedOperation, match="__ne__"):
        x != 1  # noqa: B015
    y = Interval(torch.zeros(1, dtype=torch.float64), [2.0])
    assert y.dtype == torch.float64 and y.half().dtype == torch.float16
    assert math.isfinite(float(y.upper))


def test_gelu_silu_unbounded_below_give_no_nan():
    box = Interval(torch.tensor([-float("inf"), -float("inf")]), torch.tensor([-10.0, float("inf")]))
    for fn in (F.gelu, F.silu, lambda t: F.gelu(t, approximate="tanh")):
        out = fn(box)
        assert not torch.isnan(out.lower).any() and not torch.isnan(out.upper).any()
        assert out.contains(fn(torch.tensor([-50.0, 3.0]))).all()


def test_nan_operands_out_kwarg_and_rpow():
    x = Interval(torch.zeros(2), torch.ones(2))
    nan = float("nan")
    for bad in (lambda: x * nan, lambda: x + nan, lambda: x / nan, lambda: x**nan):
        with pytest.raises(intervals.IntervalError, match="NaN"):
            bad()
    with pytest.raises(UnsupportedOperation, match="out="):
        torch.add(x, 1, out=torch.empty(2))
    y = 2**x
    assert torch.equal(y.lower, torch.ones(2)) and torch.equal(y.upper, torch.full((2,), 2.0))
    z = torch.pow(0.5, x)
    assert torch.equal(z.lower, torch.full((2,), 0.5)) and torch.equal(z.upper, torch.ones(2))
    with pytest.raises(UnsupportedOperation, match="positive number"):
        (-2) ** x


def test_zero_dim_softmax_and_empty_mean():
    x = Interval(torch.tensor(1.0), torch.tensor(2.0))
    assert F.softmax(x, 0).lower.item() == 1.0 and F.log_softmax(x, 0).upper.item() == 0.0
    empty = Interval(torch.zeros(0), torch.zeros(0)).mean()
    assert empty.lower.item() == -float("inf") and empty.upper.item() == float("inf")


@pytest.mark.parametrize("fn", [F.softmax, F.log_softmax])
def test_masked_logits_give_finite_gradients_and_sound_values(fn):
    lo = torch.tensor([[0.0, 1.0, -2.0, 0.5]], requires_grad=True)
    mask = torch.tensor([[0.0, -float("inf"), 0.0, -float("inf")]])
    box = Interval(lo, lo.detach() + 0.3) + mask
    out = fn(box, -1)
    (out.lower.clamp(min=-50).sum() + out.upper.clamp(min=-50).sum()).backward()
    assert torch.isfinite(lo.grad).all()
    for t in (0.0, 0.3):
        assert out.contains(fn(lo.detach() + t + mask, -1)).all()
    if fn is F.log_softmax:
        assert torch.isneginf(out.upper[0, 1]) and torch.isneginf(out.lower[0, 3])


# ---------------------------------------------------------------------------- second audit
@pytest.mark.parametrize("rig", [False, True])
def test_negative_zero_lower_end_is_not_an_inverted_box(rig):
    # rsqrt(-0.0) = -inf: a box [-0.0, 1] used to come out as [1, -inf]
    box = Interval(torch.tensor([-0.0]), torch.tensor([1.0]))
    with intervals.rigorous() if rig else torch.no_grad():
        for out in (torch.rsqrt(box), box**-0.5, box**-1.5):
            assert out.lower.item() <= 1.0 and out.upper.item() == math.inf


@pytest.mark.parametrize("rig", [False, True])
def test_softmax_over_a_huge_logit_range(rig):
    # every coordinate at -1e15 but one box reaching 0: exactly -log(n) at that corner; the rule
    # used to return -3.0 (rigorous) and -2.8 (default) for -4.6
    n = 100
    lo = torch.full((n,), -1e15, dtype=torch.float64)
    hi = lo.clone()
    hi[0] = 0
    with intervals.rigorous() if rig else torch.no_grad():
        out = torch.log_softmax(Interval(lo, hi), 0)
        sm = torch.softmax(Interval(lo, hi), 0)
    assert out.lower[0] <= -math.log(n) <= out.upper[0]
    assert sm.lower[0] <= 1 / n <= sm.upper[0]


def test_softmax_float32_spread_keeps_the_log2():
    # -1e8 + log(2) is -1e8 in float32: the lower bound of coordinate 0 used to be 0, not -log 2
    box = Interval(torch.tensor([-1e8, -1e8]), torch.tensor([0.0, -1e8]))
    out = torch.log_softmax(box, 0)
    assert out.lower[0] <= -math.log(2) and out.lower[0] > -0.7


def test_overflowed_centre_gives_an_unbounded_side_not_inf_inf():
    box = Interval.from_center_radius(torch.tensor([2e38]), torch.tensor([1e38])) + torch.tensor([2e38])
    assert box.lower.item() == -math.inf and box.upper.item() == math.inf  # 3e38 (finite) is inside


def test_avg_pool_negative_divisor_is_refused():
    box = Interval(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    with pytest.raises(UnsupportedOperation, match="divisor_override=-1"):
        F.avg_pool2d(box, 2, divisor_override=-1)
    with pytest.raises(UnsupportedOperation, match="divisor_override"):
        torch.nn.AvgPool2d(2, divisor_override=-2)(box)


@pytest.mark.parametrize("rig", [False, True])
def test_half_layer_norm_with_a_wide_spread(rig):
    # d^2 overflowed float16 (600^2 > 65504): every output collapsed to [0, 0]
    x = torch.tensor([[0.0, 600.0]]).half()
    with intervals.rigorous() if rig else torch.no_grad():
        out = F.layer_norm(Interval(x, x), (2,))
    ref = F.layer_norm(x.float(), (2,))
    assert torch.all(out.lower.float() <= ref + 1e-3) and torch.all(out.upper.float() >= ref - 1e-3)
    assert out.upper[0, 1] > 0.9


def test_softsign_and_softplus_at_extremes():
    out = F.softsign(Interval(torch.tensor([-1.0]), torch.tensor([math.inf])))
    assert out.upper.item() == 1.0 and out.lower.item() == -0.5
    # a large threshold keeps the log form up to 1000: log1p(exp(100)) overflowed to inf
    sp = F.softplus(Interval(torch.tensor([100.0]), torch.tensor([101.0])), 1.0, 1000.0)
    assert 99.9 < sp.lower.item() <= 100.0 and 101.0 <= sp.upper.item() < 101.1


def test_conv_with_subnormal_weights_on_a_huge_input():
    # halving a subnormal weight rounds (3 * 2^-149 / 2 -> 2^-148): times 1e30 that was 33% off
    conv = torch.nn.Conv1d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(3 * 2.0**-149)
    x = torch.full((1, 1, 1), 1e30)
    out = conv(Interval(x, x))
    exact = Fraction(3) * Fraction(2) ** -149 * Fraction(1e30)
    # default mode: within a few float32 ulps of the exact product (the old rule was 33% off)
    assert abs(Fraction(out.lower.item()) - exact) <= 4 * 2.0**-23 * exact
    assert abs(Fraction(out.upper.item()) - exact) <= 4 * 2.0**-23 * exact


def test_nan_tensor_operands_are_refused():
    box = Interval(torch.tensor([0.5, -2.0, 0.0]), torch.tensor([1.0, 3.0, 0.0]))
    nan = torch.full((3,), math.nan)
    for op in (torch.mul, torch.add, torch.div, torch.maximum, torch.fmin):
        with pytest.raises(intervals.IntervalError, match="NaN"):
            op(box, nan)
    with pytest.raises(intervals.IntervalError, match="NaN"):
        torch.clamp(box, nan, None)
    # inf times a box touching 0: 0 * inf counts as 0, never NaN
    out = Interval(torch.zeros(1), torch.ones(1)) * math.inf
    assert out.lower.item() == 0.0 and out.upper.item() == math.inf
    # ... and for a tensor or a box with an infinite value (fmin used to skip the 0 * inf product)
    box = Interval(torch.tensor([0.0, -1.0]), torch.tensor([1.0, 0.0]))
    inf = torch.full((2,), math.inf)
    for other in (inf, Interval(inf, inf)):
        for rig in (False, True):
            with intervals.rigorous() if rig else torch.no_grad():
                out = box * other
            assert out.lower[0] <= 0 <= out.upper[0] and out.lower[1] <= 0 <= out.upper[1], (rig, out)


def test_every_registered_tensor_method_is_a_box_method_and_others_name_themselves():
    box = Interval(torch.zeros(2, 3), torch.ones(2, 3))
    assert torch.equal(box.cumsum(1).upper, torch.ones(2, 3).cumsum(1))
    assert torch.equal(box.erf().upper, torch.ones(2, 3).erf())
    assert box.mm(torch.ones(3, 2)).upper.shape == (2, 2)
    with pytest.raises(UnsupportedOperation, match="Tensor.sort"):
        box.sort()
    assert not hasattr(box, "sort")  # still an AttributeError for duck-typing code
    with pytest.raises(AttributeError, match="no_such_thing"):
        box.no_such_thing  # noqa: B018


# ---------------------------------------------------------------------------- casts and promotion (a core review)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.bool])
def test_casting_a_box_to_a_non_float_dtype_is_refused(dtype):
    """Endpoint by endpoint, float -> uint8 turned [-1, 1] into [255, 1] and -> bool [-1, 1] into
    [True, True] although 0.0 maps to False: these casts are not monotone."""
    box = Interval(torch.tensor([-1.0]), torch.tensor([1.0]))
    with pytest.raises(UnsupportedOperation, match=f"casting a box to {dtype}"):
        box.to(dtype)
    with pytest.raises(UnsupportedOperation):
        box.sum(dtype=dtype)


def test_viewing_a_box_as_another_dtype_is_refused():
    box = Interval(torch.tensor([-1.0, 0.5]), torch.tensor([1.0, 2.0]))
    with pytest.raises(UnsupportedOperation, match="reinterpreting a box's bits as torch.int32"):
        box.view(torch.int32)
    assert box.view(torch.float32).shape == (2,) and box.view(2, 1).shape == (2, 1)


def test_a_one_element_float64_exponent_promotes_as_in_torch():
    """torch computes ``x ** tensor([0.5], float64)`` in float64; the rule took ``.item()`` and stayed in
    float32, so ``(x ** e - 1.4142135) * 1e8`` on [2, 2] gave [0, 0] against torch's 6.24."""
    x = torch.full((1,), 2.0)
    e = torch.tensor([0.5], dtype=torch.float64)
    want, got = x ** e, Interval.point(x) ** e
    assert got.dtype == want.dtype == torch.float64
    # default mode: within an ulp of torch's float64 pow (the float32 result was 2.4e-8 off)
    torch.testing.assert_close(got.lower, want, rtol=4e-16, atol=0)
    torch.testing.assert_close(got.upper, want, rtol=4e-16, atol=0)
    assert (Interval.point(x) ** torch.tensor(0.5, dtype=torch.float64)).dtype == torch.float32  # 0-dim: no
