"""Soundness of the rules the per-family suites do not reach: 3-D convolution and pooling,
``conv_transpose1d``, the remaining monotone activations, and two structural ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from soundness import assert_encloses, boxes, points_in

from intervals import Interval

D = torch.float64

MONOTONE = {
    "celu": lambda t: F.celu(t, 0.7),
    "selu": F.selu,
    "logsigmoid": F.logsigmoid,
    "softsign": F.softsign,
    "hardsigmoid": F.hardsigmoid,
    "atan": torch.atan,
    "asinh": torch.asinh,
    "expm1": torch.expm1,
    "erf": torch.erf,
}


@pytest.mark.parametrize("name", sorted(MONOTONE))
@given(box=boxes(lo=-8.0, hi=8.0))
def test_monotone_activation_sound_and_exact(name, box):
    fn = MONOTONE[name]
    out = fn(box)
    assert_encloses(out, fn(points_in(box, 32)), what=name)
    assert torch.equal(out.lower, fn(box.lower)) and torch.equal(out.upper, fn(box.upper))


def _box(shape, seed, width=0.5):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(shape, generator=g, dtype=D)
    return Interval.from_center_radius(c, torch.rand(shape, generator=g, dtype=D) * width)


@given(seed=st.integers(0, 2**16), stride=st.integers(1, 2), padding=st.integers(0, 1))
def test_conv3d_and_pool3d_sound(seed, stride, padding):
    x = _box((1, 2, 5, 5, 5), seed)
    w = torch.randn(3, 2, 3, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=D)
    pts = points_in(x, 12, seed)
    ops = {
        "conv3d": lambda t: F.conv3d(t, w, None, stride, padding),
        "avg_pool3d": lambda t: F.avg_pool3d(t, 2, stride, padding),
        "max_pool3d": lambda t: F.max_pool3d(t, 2, stride, padding),
        "adaptive_avg_pool3d": lambda t: F.adaptive_avg_pool3d(t, (2, 3, 2)),
    }
    for name, op in ops.items():
        assert_encloses(op(x), torch.stack([op(p) for p in pts]), what=name)


@given(seed=st.integers(0, 2**16), stride=st.integers(1, 3))
def test_conv_transpose1d_sound(seed, stride):
    x = _box((2, 3, 6), seed)
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(3, 4, 3, generator=g, dtype=D), torch.randn(4, generator=g, dtype=D)
    op = lambda t: F.conv_transpose1d(t, w, b, stride)  # noqa: E731
    assert_encloses(op(x), torch.stack([op(p) for p in points_in(x, 16, seed)]), what="conv_transpose1d")


def test_diagonal_and_repeat_interleave_are_exact():
    x = _box((3, 4), 0)
    for op in (lambda t: t.diagonal(), lambda t: torch.diagonal(t, 1), lambda t: t.repeat_interleave(2, dim=0)):
        out = op(x)
        assert torch.equal(out.lower, op(x.lower)) and torch.equal(out.upper, op(x.upper))
