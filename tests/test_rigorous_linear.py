"""Rigorous mode for the bilinear rules: bounds contain the exact rational result, zero tolerance.

References are computed with :class:`fractions.Fraction` (every float is an exact rational), so
no floating-point rounding enters the reference.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import intervals
from intervals import Interval


def _exact_affine(m: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None) -> list[Fraction]:
    rows = m.tolist()
    xs = [Fraction(v) for v in x.reshape(-1).tolist()]
    bs = [Fraction(v) for v in b.tolist()] if b is not None else [Fraction(0)] * len(rows)
    return [
        sum((Fraction(a) * xv for a, xv in zip(row, xs, strict=True)), Fraction(0)) + bb
        for row, bb in zip(rows, bs, strict=True)
    ]


def _assert_contains_exact(out: Interval, exact: list[Fraction]) -> None:
    # Infinite endpoints (float overflow) stay floats: they compare correctly with Fractions.
    lo = [Fraction(v) if abs(v) != float("inf") else v for v in out.lower.reshape(-1).tolist()]
    hi = [Fraction(v) if abs(v) != float("inf") else v for v in out.upper.reshape(-1).tolist()]
    assert not any(v != v for v in lo + hi), "NaN bound"
    for i, (a, e, z) in enumerate(zip(lo, exact, hi, strict=True)):
        assert a <= e <= z, f"element {i}: exact {float(e)!r} outside [{float(a)!r}, {float(z)!r}]"


def test_cancellation_defeats_default_mode_but_not_rigorous():
    # 1e8 + 1 - 1e8 rounds to 0 in float32; the exact dot product is 1.
    x = torch.tensor([1e8, 1.0, -1e8], dtype=torch.float32)
    w = torch.ones(1, 3, dtype=torch.float32)
    plain = F.linear(Interval.point(x), w)
    exact = _exact_affine(w.double(), x.double(), None)[0]
    assert Fraction(plain.upper.item()) < exact  # default mode misses the exact value here
    with intervals.rigorous():
        out = F.linear(Interval.point(x), w)
    _assert_contains_exact(out, [exact])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(seed=st.integers(0, 2**20), n=st.integers(1, 40), spread=st.sampled_from([1.0, 1e4, 1e-30, 1e20]))
def test_linear_rigorous_contains_exact(dtype, seed, n, spread):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(3, n, generator=g, dtype=torch.float64) * spread).to(dtype)
    b = torch.randn(3, generator=g, dtype=torch.float64).to(dtype)
    c = (torch.randn(n, generator=g, dtype=torch.float64) * spread).to(dtype)
    r = (torch.rand(n, generator=g, dtype=torch.float64) * spread * 0.1).to(dtype)
    box = Interval(c - r, c + r)
    with intervals.rigorous():
        out = F.linear(box, w, b)
        out_point_w = F.linear(Interval.point(c), w, b)
    _assert_contains_exact(out_point_w, _exact_affine(w.double(), c.double(), b.double()))
    for pt in (box.lower, box.upper, torch.where(w[0] > 0, box.upper, box.lower)):
        _assert_contains_exact(out, _exact_affine(w.double(), pt.double(), b.double()))


@given(seed=st.integers(0, 2**20))
def test_interval_weight_linear_rigorous(seed):
    g = torch.Generator().manual_seed(seed)
    wc = torch.randn(2, 7, generator=g) * 1e3
    w = Interval(wc - 0.5, wc + 0.5)
    x = Interval.point(torch.randn(7, generator=g) * 1e-3)
    with intervals.rigorous():
        out = F.linear(x, w)
    for wpt in (w.lower, w.upper, w.center):
        _assert_contains_exact(out, _exact_affine(wpt.double(), x.lower.double(), None))


def _conv_matrix(w: torch.Tensor, shape, **kw) -> torch.Tensor:
    n = torch.Size(shape).numel()
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return torch.stack([F.conv2d(basis[i], w.double(), None, **kw).reshape(-1) for i in range(n)], 1)


@given(seed=st.integers(0, 2**20), stride=st.integers(1, 2), padding=st.integers(0, 1))
def test_conv2d_rigorous_contains_exact(seed, stride, padding):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, 2, 3, 3, generator=g) * 1e4
    x = torch.randn(1, 2, 5, 5, generator=g)
    box = Interval.linf_ball(x, 1e-3)
    with intervals.rigorous():
        out = F.conv2d(box, w, None, stride=stride, padding=padding)
    m = _conv_matrix(w, x.shape, stride=stride, padding=padding)
    for pt in (box.lower, box.upper, x):
        _assert_contains_exact(out, _exact_affine(m, pt.double(), None))


def test_matmul_rigorous_contains_exact():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 6, generator=g) * 1e6
    b = torch.randn(6, 3, generator=g)
    with intervals.rigorous():
        out = Interval.point(a) @ b
    for i in range(4):
        exact = _exact_affine(b.t().double(), a[i].double(), None)
        _assert_contains_exact(out[i], exact)


def test_conv2d_rigorous_in_a_batch_of_16_contains_exact():
    """From batch 16 torch runs float32 CPU convolutions through NNPACK's Winograd kernels, outside
    Higham's bound: a batch-16 3x3 convolution missed the exact value by 0.014 before the guard."""
    torch.manual_seed(0)
    x = torch.randn(16, 4, 10, 10) * 1000
    w = torch.randn(1, 4, 3, 3)
    with intervals.rigorous():
        out = F.conv2d(Interval.from_center_radius(x, 0.0), w)
    xs, ws = x.double().numpy(), w.double().numpy()
    for b in range(16):  # every product of two float32 numbers is exact in float64
        exact = [sum((Fraction(t) for t in (xs[b, :, i:i + 3, j:j + 3] * ws[0]).ravel().tolist()), Fraction(0))
                 for i in range(8) for j in range(8)]
        _assert_contains_exact(out[b], exact)


@pytest.mark.parametrize("form", ["zero-radius box", "interval bias", "interval weight"])
def test_rigorous_linear_keeps_the_error_of_a_subnormal_centre(form):
    """``|xc| * gamma`` underflowed to 0 for a subnormal centre, dropping the centre's rounding error,
    which huge weights made large: two products near 2^-30 cancelling to -6.5e-19 gave [-5e-44, 5e-44]."""
    x = torch.tensor([[12345.0, 54321.0]]) * 2.0**-149
    w = torch.tensor([[1.23 * 2.0**100, -1.23 * 2.0**100 * 12345 / 54321 * 1.0000001]])
    with intervals.rigorous():
        if form == "zero-radius box":
            out = F.linear(Interval.from_center_radius(x, 0.0), w)
        elif form == "interval bias":
            out = F.linear(x, w, Interval.point(torch.zeros(1)))
        else:
            out = x @ Interval.point(w.t())
    _assert_contains_exact(out[0], _exact_affine(w.double(), x[0].double(), None))
