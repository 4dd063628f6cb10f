"""Normalisation rules: ``F.batch_norm`` with given (eval) statistics and ``F.layer_norm``.

Batch norm with fixed statistics is a per-channel affine map and is exact. Batch norm in training
mode computes its statistics from the batch itself, so the output of one sample depends on where
every other sample lies in its box: there is no per-sample interval rule, and the rule refuses.

Layer norm is bounded by composing sound pieces: the centring ``d = x - mean(x)`` exactly (it is
linear), then ``var = mean(d^2)`` and ``(var + eps)^-1/2`` with interval arithmetic, and finally the
fact that a standardised coordinate never exceeds ``sqrt(n - 1)`` in magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .. import ops, rounding
from ..errors import UnsupportedOperation
from ..registry import implements
from ._common import Interval, is_iv
from .arithmetic import add, clamp, mul, sub
from .elementwise import _rsqrt, _square


def _channel_view(t: torch.Tensor | None, nd: int) -> torch.Tensor | None:
    if t is None:
        return None
    return t.reshape((1, -1) + (1,) * (nd - 2))


@implements(F.batch_norm)
def _batch_norm(
    x: Interval,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: Any = None,
    bias: Any = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Interval:
    if training or running_mean is None or running_var is None:
        raise UnsupportedOperation(
            "torch.nn.functional.batch_norm",
            "training-mode statistics depend on the whole batch; call model.eval() or pass the "
            "statistics explicitly (F.batch_norm(x, mean, var, w, b, training=False))",
        )
    nd = x.dim()
    mean, var = _channel_view(running_mean, nd), _channel_view(running_var, nd)
    w = _channel_view(weight, nd) if not is_iv(weight) else weight.reshape((1, -1) + (1,) * (nd - 2))
    b = _channel_view(bias, nd) if not is_iv(bias) else bias.reshape((1, -1) + (1,) * (nd - 2))
    if rounding.is_rigorous() or is_iv(weight) or is_iv(bias):
        inv_std = _rsqrt(Interval.point(var) + eps)
        scale = inv_std if w is None else mul(inv_std, w)
        y = mul(sub(x, mean), scale)
        return y if b is None else add(y, b)
    scale = torch.rsqrt(var + eps)
    if w is not None:
        scale = scale * w
    # inf * 0 (an unbounded input in a zero-weight channel) gives a NaN radius, which every
    # conversion to endpoints reads as unbounded: sound, and no extra pass on the hot path.
    radius = x.radius * scale.abs()
    # (c - mean) * scale, as torch computes it: folding -mean * scale into a shift first would
    # cancel catastrophically when |mean| is large against the standard deviation.
    centred = x.center - mean
    operands = (centred, scale) if b is None else (centred, scale, b)
    if ops.records_grad(*operands) or any(t.dtype != centred.dtype for t in operands):
        center = centred * scale if b is None else torch.addcmul(b, centred, scale)
    else:  # the product lands in `centred`'s own fresh buffer: one allocation instead of two
        center = centred.mul_(scale) if b is None else torch.addcmul(b, centred, scale, out=centred)
    return Interval._from_cr(center, radius)


@implements(F.layer_norm)
def _layer_norm(
    x: Interval, normalized_shape: Sequence[int], weight: Any = None, bias: Any = None, eps: float = 1e-5
) -> Interval:
    if x.dtype in (torch.float16, torch.bfloat16):
        # Like torch's own kernel, take the statistics in float32: squared deviations overflow
        # float16 at a spread of about 256 (and every output would collapse to 0). The box is cast
        # back outward in rigorous mode (Interval.to), to nearest otherwise.
        up = lambda t: t.float() if isinstance(t, (torch.Tensor, Interval)) else t  # noqa: E731
        return _layer_norm(x.float(), normalized_shape, up(weight), up(bias), eps).to(x.dtype)
    dims = tuple(range(-len(normalized_shape), 0))
    n = math.prod(normalized_shape)
    if rounding.is_rigorous():
        mean_x = x.mean(dims, keepdim=True)
        # d_i = x_i - mean(x), with x_i's own contribution cancelled exactly: widen via interval
        # subtraction (looser than the centre/radius form below, but every step is rigorous).
        d = sub(x, mean_x)
    else:
        c, r = x.center, x.radius
        if n > 1:
            s = r.sum(dims, keepdim=True)
            # The centring c - mean(c) cancels: its rounding error is absolute (gamma_{n+1} max|c|
            # for the mean and the subtraction, any summation order), and 1/sqrt(var + eps)
            # amplifies it by up to 1/sqrt(eps) when the group is (nearly) constant. Carry that
            # error, and the relative rounding of the radius sum, in the radius so the true d
            # stays enclosed.
            u = torch.finfo(c.dtype).eps / 2
            slack = (n + 3) * u * (c.abs().amax(dims, keepdim=True) + 2 * r.amax(dims, keepdim=True))
            d = Interval._from_cr(c - c.mean(dims, keepdim=True), r * (1.0 - 2.0 / n) + s / n + slack)
        else:
            d = Interval._from_cr(torch.zeros_like(c), torch.zeros_like(r))
    var = _square(d).mean(dims, keepdim=True)
    inv_std = _rsqrt(add(var, eps))
    z = mul(d, inv_std)
    cap = math.sqrt(max(n - 1, 0))
    if rounding.is_rigorous():
        cap = float(rounding.up(torch.tensor(cap, dtype=torch.float64)))
    z = clamp(z, -cap, cap)
    if weight is not None:
        z = mul(z, weight)
    if bias is not None:
        z = add(z, bias)
    return z
