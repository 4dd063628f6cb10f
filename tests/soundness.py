"""Shared test machinery: hypothesis strategies for boxes and points inside them, and the
enclosure check with the documented default-mode tolerance.

Default mode computes endpoints with round-to-nearest arithmetic, so an endpoint may sit a few ulps
inside the exact bound; :func:`assert_encloses` therefore allows ``ULPS`` ulps of the larger of
the value's and the output's magnitude (scaled by ``scale`` for long sums). Rigorous mode allows
nothing (``tol=0``).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from intervals import Interval

ULPS = 64

MAGNITUDES = {
    "tiny": 1e-6,
    "unit": 1.0,
    "large": 1e3,
}


@st.composite
def boxes(draw, shape=None, dtype=torch.float64, lo=-10.0, hi=10.0, min_side=1, max_side=4, max_dims=2):
    """An Interval of random shape whose endpoints are drawn in [lo, hi].

    Widths range over degenerate (0), tiny, moderate and large; centres over negative, positive
    and straddling zero.
    """
    if shape is None:
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=min_side, max_side=max_side))
    a = draw(hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, allow_nan=False, allow_infinity=False)))
    kind = draw(st.sampled_from(["point", "tiny", "mid", "wide"]))
    if kind == "point":
        b = a.copy()
    else:
        scale = {"tiny": 1e-6, "mid": 0.5, "wide": (hi - lo) / 2}[kind]
        w = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1, allow_nan=False)))
        b = np.minimum(a + w * scale, hi)
    lower = torch.tensor(np.minimum(a, b), dtype=dtype)
    upper = torch.tensor(np.maximum(a, b), dtype=dtype)
    return Interval(lower, upper)


def scaled(n: int) -> int:
    """``n`` examples under the default "ci" profile, proportionally more under "thorough"."""
    from hypothesis import settings

    return max(n, n * settings.default.max_examples // 60)


def as_cr(box: Interval) -> Interval:
    """The same set held in centre/radius form (rules must handle both representations)."""
    return Interval.from_center_radius(box.center, box.radius)


def points_in(box: Interval, n: int = 16, seed: int = 0) -> torch.Tensor:
    """``n`` points inside ``box`` (stacked on a new leading dim): both corners-by-coordinate
    patterns, all-lower, all-upper, the centre, and uniform samples."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = box.lower, box.upper
    pts = [lo, hi, box.center.clamp(lo, hi)]
    for _ in range(max(n - 3, 0)):
        u = torch.rand(lo.shape, generator=g, dtype=lo.dtype)
        corner = torch.rand(lo.shape, generator=g) < 0.3
        u = torch.where(corner, (u > 0.5).to(lo.dtype), u)
        # lo + (hi - lo) * u can round an ulp past hi: clamp so every point is truly inside.
        pts.append(torch.minimum(torch.maximum(lo + (hi - lo) * u, lo), hi))
    return torch.stack(pts)


def corners(box: Interval, limit: int = 256) -> torch.Tensor:
    """All corners of a small box (at most ``limit``), stacked on a new leading dim."""
    lo, hi = box.lower.reshape(-1), box.upper.reshape(-1)
    n = lo.numel()
    if 2**n > limit:
        raise ValueError("box too large for exhaustive corners")
    pts = []
    for bits in itertools.product([0, 1], repeat=n):
        m = torch.tensor(bits, dtype=torch.bool)
        pts.append(torch.where(m, hi, lo).reshape(box.shape))
    return torch.stack(pts)


def assert_encloses(
    out: Interval, values: torch.Tensor, *, tol: float | None = None, scale: float = 1.0, what: str = ""
) -> None:
    """Every value (any leading batch of samples) lies in ``out`` up to the tolerance.

    ``tol=None`` uses ``ULPS * eps * scale * max(1, |value|, |bound|)``; ``tol=0`` is exact.
    """
    lo, hi = out.lower.detach(), out.upper.detach()
    v = values.detach().to(lo.dtype)
    assert not torch.isnan(lo).any() and not torch.isnan(hi).any(), f"{what}: NaN in output bounds"
    if tol is None:
        eps = torch.finfo(lo.dtype).eps
        mag = torch.maximum(v.abs(), torch.maximum(lo.abs().nan_to_num(0, 0, 0), hi.abs().nan_to_num(0, 0, 0)))
        slack = ULPS * eps * scale * torch.clamp(mag, min=1.0)
    else:
        slack = torch.full_like(v, tol)
    below = v < lo - slack
    above = v > hi + slack
    bad = below | above
    if bad.any():
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        pos = idx[1:] if v.dim() > lo.dim() else idx
        raise AssertionError(
            f"{what}: value {v[idx].item()!r} outside [{lo[pos].item()!r}, {hi[pos].item()!r}] at {idx}"
        )
