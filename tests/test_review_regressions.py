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
