"""Bilinear rules: ``F.linear``, ``matmul``, ``F.conv1d/2d/3d``, ``F.conv_transpose1d/2d``.

All of them are bilinear maps ``B(x, w)`` (sums of products), handled by one routine in
centre/radius form. With ``x = xc + dx``, ``|dx| <= xr`` and ``w = wc + dw``, ``|dw| <= wr``::

    B(x, w) - B(xc, wc) = B(dx, wc) + B(xc, dw) + B(dx, dw)
    |B(x, w) - B(xc, wc)| <= B(xr, |wc|) + B(|xc| + xr, wr)

so the output centre is ``B(xc, wc)`` and the radius ``B(xr, |wc|) + B(|xc| + xr, wr)`` (Rump's
midpoint-radius product): two GEMMs/convolutions for point weights, three for interval weights,
each at GEMM speed. It is at most 1.5x wider than the exact interval product and exact when either
factor is a point.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from .. import ops, precision, rounding
from ..registry import implements
from ._common import Interval, is_iv

_T = torch.Tensor
Bilinear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _parts(v: Any) -> tuple[Any, Any]:
    """(centre, radius) of an Interval, (v, None) for a tensor/None."""
    if is_iv(v):
        return v.center, v.radius
    return v, None


def bilinear(
    op: Bilinear, x: Any, w: Any, bias: Any = None, *, terms: int, add_bias: Callable | None = None
) -> Interval:
    """Sound image of the bilinear map ``op(x, w) (+ bias)`` with interval or point arguments.

    Args:
        op: the bilinear function on plain tensors, without bias.
        x, w: an :class:`Interval` or a tensor each (at least one of x, w, bias an Interval).
        bias: optional tensor or Interval added to the output (broadcast by ``add_bias``).
        terms: length of the dot product behind each output (rigorous-mode error bound).
        add_bias: ``(out, b) -> out + b`` with the right broadcasting (default: plain ``+``).
    """
    if add_bias is None:
        add_bias = torch.add
    if rounding.is_rigorous():
        return _bilinear_rigorous(op, x, w, bias, terms, add_bias)
    xc, xr = _parts(x)
    wc, wr = _parts(w)
    bc, br = _parts(bias)
    c = op(xc, wc)
    if xr is not None and wr is not None:
        r = op(xr, wc.abs()) + op(xc.abs() + xr, wr)
    elif xr is not None:
        r = op(xr, wc.abs())
    elif wr is not None:
        r = op(xc.abs(), wr)
    else:
        r = torch.zeros_like(c)
    if bc is not None:
        c = add_bias(c, bc)
        if br is not None:
            r = add_bias(r, br)
    return Interval._from_cr(c, r)


def _bilinear_rigorous(op: Bilinear, x: Any, w: Any, bias: Any, terms: int, add_bias: Callable) -> Interval:
    # Computed centre c^ = fl(B(xc, wc) + bc) satisfies |c^ - c| <= g (B(|xc|, |wc|) + |bc|) with
    # g = gamma_{n+1} (Higham, any summation order). The radius terms are sums of non-negative
    # products, so each computed value is >= exact * (1 - gamma_{n+6}); dividing that out (via
    # the factor 1 + 2 gamma) and adding an underflow allowance gives a certain upper bound.
    xc, xr = _parts(x)
    wc, wr = _parts(w)
    bc, br = _parts(bias)
    dtype = (xc if isinstance(xc, torch.Tensor) else wc).dtype
    g = rounding.gamma(terms + 1, dtype)
    inflate = 1.0 + 2.0 * rounding.gamma(terms + 6, dtype)
    tiny = 4 * (terms + 6) * rounding.denorm_min(dtype)
    with rounding.summation_guard():
        c = op(xc, wc)
        # |xc| g underflows for a subnormal |xc| (while |xc| |W| with huge weights does not), losing up to
        # half a denorm_min per element: one denorm_min more per element keeps the centre's error covered,
        # in the same single product as the radius
        xr_eff = xc.abs() * g + rounding.denorm_min(dtype)
        rad = op(xr_eff if xr is None else xr + xr_eff, wc.abs())
        if wr is not None:
            rad = rad + op(xc.abs() if xr is None else xc.abs() + xr, wr)
    if bc is not None:
        c = add_bias(c, bc)
        rad = add_bias(rad, bc.abs() * g + (br if br is not None else 0.0))
    rad = rounding.up(rad * inflate + tiny)
    # Higham's bound assumes no overflow: a partial sum may overflow although the exact result is
    # finite, so a non-finite centre leaves the result unbounded.
    finite = torch.isfinite(c)
    inf = torch.full_like(c, float("inf"))
    return Interval._from_lu(
        torch.where(finite, rounding.down(c - rad), -inf), torch.where(finite, rounding.up(c + rad), inf)
    )


_ABS_CACHE: WeakIdKeyDictionary | None = None


@contextlib.contextmanager
def cached_abs_weights() -> Iterator[None]:
    """Within the block, reuse ``|W|`` of each point weight across calls (opt-in).

    Interval layers need ``|W|`` on every call; for a large fully connected layer computing it
    costs about as much as the layer's GEMM. When bounding many batches with fixed weights, wrap
    the loop in this context: ``|W|`` is computed once per weight and recomputed after an ordinary
    in-place update (which bumps the tensor's version counter). Updates through ``weight.data``
    do not bump it, so do not modify weights through ``.data`` inside the block. The cache is not
    used while autograd records a graph through the weight, and is dropped on exit.

    Example:
        >>> import torch, intervals
        >>> layer = torch.nn.Linear(3, 2)
        >>> with torch.no_grad(), intervals.cached_abs_weights():
        ...     boxes = [layer(intervals.Interval.linf_ball(torch.rand(4, 3), 0.1)) for _ in range(3)]
    """
    global _ABS_CACHE
    outer = _ABS_CACHE
    _ABS_CACHE = WeakIdKeyDictionary() if outer is None else outer
    try:
        yield
    finally:
        _ABS_CACHE = outer


def abs_weight(weight: torch.Tensor) -> torch.Tensor:
    """``|W|``, from the :func:`cached_abs_weights` cache when one is active and usable."""
    cache = _ABS_CACHE
    if cache is None or (torch.is_grad_enabled() and weight.requires_grad) or torch.compiler.is_compiling():
        return weight.abs()
    if weight.is_inference():  # inference tensors have no version counter: never cache them
        return weight.abs()
    hit = cache.get(weight)
    if hit is not None and hit[0] == weight._version:
        return hit[1]
    result = weight.detach().abs()
    cache[weight] = (weight._version, result)
    return result


def _sum_diff(x: Interval) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Inputs for a point-weight layer: ``(c, r, 1)``, or from endpoint form ``(l + u, u - l, 1/2)``.

    ``W (l + u) / 2``: the factor 1/2 is folded into the layer (GEMM ``alpha`` or the weights)
    instead of two extra passes over the activations; scaling by 1/2 is exact in binary floating
    point.
    """
    if x._c is not None:
        return x._c, x.radius, 1.0
    lo, hi = x._l, x._u
    return lo + hi, hi - lo, 0.5


# ---------------------------------------------------------------------------- linear / matmul
@implements(F.linear)
def _linear(x: Any, weight: Any, bias: Any = None) -> Interval:
    if not rounding.is_rigorous() and is_iv(x):
        if not is_iv(weight) and not is_iv(bias):
            # Point weights: centre through the plain layer (bias folded in), radius through |W|.
            c_in, r_in, scale = _sum_diff(x)
            if precision.bf16_radius_applies(c_in, r_in, weight):
                c = ops.scaled_gemm(c_in, weight, bias, scale)
                r = precision.radius_product_bf16(F.linear, r_in, abs_weight(weight), weight.shape[-1], scale)
                return Interval._from_cr(c, r)
            if ops._custom_op_pays(c_in, r_in, weight, bias):
                # Training, or a device with fused kernels (CUDA: |W| taken tile by tile in registers):
                # the fused op saves only its inputs (no |W|) and builds the weight gradient without
                # W-sized temporaries, so peak memory stays near plain's.
                return Interval._from_cr(*ops.interval_linear_fused(c_in, r_in, weight, bias, scale))
            # Certification on CPU (no gradients): |W| is recomputed on every call (a large one a block
            # at a time, in cache) unless the caller opted into cached_abs_weights(); a version-keyed
            # cache would go stale under `weight.data` updates.
            if _ABS_CACHE is None:
                return Interval._from_cr(*ops.interval_linear_fused_reference(c_in, r_in, weight, bias, scale))
            c, r = ops.interval_linear_reference(c_in, r_in, weight, abs_weight(weight), bias, scale)
            return Interval._from_cr(c, r)
        if is_iv(weight):
            bc, br = _parts(bias)
            return Interval._from_cr(*ops.interval_linear_iw(x.center, x.radius, weight.center, weight.radius, bc, br))
    return bilinear(F.linear, x, weight, bias, terms=weight.shape[-1])


def _inner_dim(a: Any) -> int:
    return a.shape[-1]


@implements(torch.matmul, _T.matmul, _T.__matmul__, torch.mm, _T.mm, torch.bmm, _T.bmm)
def _matmul(a: Any, b: Any) -> Interval:
    return bilinear(torch.matmul, a, b, terms=_inner_dim(a))


@implements(_T.__rmatmul__)
def _rmatmul(a: Any, b: Any) -> Interval:
    return bilinear(torch.matmul, b, a, terms=_inner_dim(b))


# ---------------------------------------------------------------------------- convolutions
def _channel_bias(nd: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def add(out: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return out + b.reshape((-1,) + (1,) * nd)

    return add


def _conv_rule(conv: Callable[..., torch.Tensor], nd: int):
    def rule(
        x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1
    ) -> Interval:
        op = lambda a, w: conv(a, w, None, stride, padding, dilation, groups)  # noqa: E731
        terms = math.prod(weight.shape[1:])
        if not is_iv(weight) and not is_iv(bias) and not rounding.is_rigorous() and is_iv(x):
            c_in, r_in, scale = _sum_diff(x)
            if scale != 1.0:
                # The factor 1/2 goes on the fresh sum and difference (a layer's input is smaller than
                # its output), not on the weights: halving a subnormal weight rounds, and a product
                # with a huge input would carry that error far past an ulp of the result.
                c_in, r_in = c_in.mul_(scale), r_in.mul_(scale)
            if precision.bf16_radius_applies(c_in, r_in, weight):
                radius = precision.radius_product_bf16(op, r_in, abs_weight(weight), terms, 1.0)
            else:
                radius = op(r_in, abs_weight(weight))
            return Interval._from_cr(conv(c_in, weight, bias, stride, padding, dilation, groups), radius)
        return bilinear(op, x, weight, bias, terms=terms, add_bias=_channel_bias(nd))

    return rule


implements(F.conv1d, torch.conv1d)(_conv_rule(F.conv1d, 1))
implements(F.conv2d, torch.conv2d)(_conv_rule(F.conv2d, 2))
implements(F.conv3d, torch.conv3d)(_conv_rule(F.conv3d, 3))


def _conv_transpose_rule(conv_t: Callable[..., torch.Tensor], nd: int):
    def rule(
        x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
        output_padding: Any = 0, groups: int = 1, dilation: Any = 1,
    ) -> Interval:
        op = lambda a, w: conv_t(a, w, None, stride, padding, output_padding, groups, dilation)  # noqa: E731
        # weight: (C_in, C_out/groups, *k); each output sums over C_in/groups * prod(k) products.
        terms = (weight.shape[0] // groups) * math.prod(weight.shape[2:])
        return bilinear(op, x, weight, bias, terms=terms, add_bias=_channel_bias(nd))

    return rule


implements(F.conv_transpose1d, torch.conv_transpose1d)(_conv_transpose_rule(F.conv_transpose1d, 1))
implements(F.conv_transpose2d, torch.conv_transpose2d)(_conv_transpose_rule(F.conv_transpose2d, 2))
