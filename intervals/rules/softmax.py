"""Sound ``softmax`` and ``log_softmax`` bounds.

Per-endpoint mapping is not sound: ``softmax_i`` increases in ``x_i`` but decreases in every other
``x_j``. The tight bound of coordinate ``i`` takes ``x_i`` at one end and all others at the other::

    log_softmax_i >= l_i - log(exp(l_i) + sum_{j != i} exp(u_j))
    log_softmax_i <= u_i - log(exp(u_i) + sum_{j != i} exp(l_j))

Each is attained by a corner of the box, so the bound is exact per coordinate. The sums over
``j != i`` are computed as exclusive prefix/suffix log-sum-exps (O(n) memory, no cancellation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .. import rounding
from ..errors import UnsupportedOperation
from ..registry import implements
from ._common import Interval

_T = torch.Tensor


def _exclusive_logsumexp(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(sum_{j != i} exp(t_j))`` along ``dim`` for every ``i``."""
    t = t.movedim(dim, -1)
    ninf = torch.full_like(t[..., :1], -float("inf"))
    prefix = torch.logcumsumexp(t, -1)
    suffix = torch.logcumsumexp(t.flip(-1), -1).flip(-1)
    before = torch.cat([ninf, prefix[..., :-1]], -1)
    after = torch.cat([suffix[..., 1:], ninf], -1)
    return torch.logaddexp(before, after).movedim(-1, dim)


def _softplus(t: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(t))`` accurate to a few ulps everywhere (torch's returns ``t`` above 20, off by
    ``exp(-t)``, about 2e-9 at 20: far more than a float64 ulp)."""
    return t.clamp_min(0) + torch.log1p(torch.exp(-t.abs()))


def _widened_softplus(ex: torch.Tensor, t: torch.Tensor, n: int, down: bool = False) -> torch.Tensor:
    """``softplus(ex - t)`` (float64) moved up (``down``: down) by a bound on its rounding error.

    ``ex`` (an exclusive log-sum-exp of ``n`` terms) is off by a few ulps per term of ``1 + |ex|``
    and ``ex - t`` by an ulp of its operands: an error ``delta`` of the argument, which softplus
    scales by at most ``sigmoid(d + delta)``; the softplus itself adds a few ulps of its value.
    Widening by ``(n + 8) * 4`` ulps of each keeps both modes sound for logits of any magnitude.
    """
    tol = (n + 8) * 4 * 2.0**-52
    d = ex - t
    # an infinite ex makes d infinite and exact (no other terms, or an unbounded one)
    delta = tol * (1 + torch.where(torch.isfinite(ex), ex.abs(), 0.0) + t.abs())
    sp = _softplus(d)
    err = tol * (1 + sp) + torch.sigmoid(d + delta) * delta
    return sp - err if down else sp + err


def log_softmax_bounds(x: Interval, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight lower/upper bounds of ``log_softmax(x, dim)`` over the box ``x``."""
    lo, hi = x.lower, x.upper
    if lo.dim() == 0:  # a single logit: its log-probability is exactly 0
        zero = torch.zeros_like(lo)
        return zero, zero
    rigorous = rounding.is_rigorous()
    # float64 in both modes: the exclusive log-sum-exps lose ulps of the logits' magnitude, not of
    # the result's (a float32 logit of 1e6 has an ulp of 0.06), and the widening below covers that.
    lo, hi = lo.to(torch.float64), hi.to(torch.float64)
    # log_softmax is shift-invariant: subtract the row maximum so the rounding error scales with
    # the spread of the logits, not their magnitude (1e10 - logaddexp(1e10, ...) loses everything).
    shift = hi.detach().amax(dim, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    if rigorous:  # the shifted endpoints must still enclose the box: round them outward
        lo, hi = rounding.down(lo - shift), rounding.up(hi - shift)
    else:
        lo, hi = lo - shift, hi - shift
    # -inf logits (attention-style masks) become the most negative float, whose exp is exactly 0:
    # the values do not change, but the gradients stay finite instead of NaN; -inf is put back below.
    masked_lo, masked_hi = torch.isneginf(lo), torch.isneginf(hi)
    floor = torch.finfo(lo.dtype).min
    lo, hi = lo.clamp_min(floor), hi.clamp_min(floor)
    # l_i - log(exp(l_i) + exp(E_i)) = -softplus(E_i - l_i): the difference first, so that a log(2)
    # is never added to a huge logit and lost (-1e8 + 0.69 is -1e8 in float32).
    n = x.shape[dim]
    lower = -_widened_softplus(_exclusive_logsumexp(hi, dim), lo, n)
    upper = -_widened_softplus(_exclusive_logsumexp(lo, dim), hi, n, down=True)
    # An infinite endpoint gives inf - inf = NaN; the sound values there are -inf and 0.
    lower = torch.nan_to_num(lower, nan=-float("inf"), neginf=-float("inf"))
    upper = torch.clamp(torch.nan_to_num(upper, nan=0.0, neginf=-float("inf")), max=0.0)  # log of a probability
    lower = torch.where(masked_lo, -float("inf"), lower)
    upper = torch.where(masked_hi, -float("inf"), upper)
    if rigorous:
        return rounding.cast_outward(lower, upper, x.dtype)
    return lower.to(x.dtype), upper.to(x.dtype)


def _dim_of(name: str, dim: Any) -> int:
    if dim is None:
        raise UnsupportedOperation(name, "pass dim explicitly")
    return dim


def _cast(x: Interval, _stacklevel: Any, dtype: torch.dtype | None) -> Interval:
    # ``F.softmax(x, dim, _stacklevel, dtype)`` but ``torch.softmax(x, dim, dtype)`` and
    # ``Tensor.softmax(dim, dtype)``: one rule serves all, so a dtype may arrive third.
    if isinstance(_stacklevel, torch.dtype):
        dtype = _stacklevel
    return x if dtype is None else x.to(dtype)


def _log_softmax(x: Interval, dim: Any = None, _stacklevel: Any = 3, dtype: torch.dtype | None = None) -> Interval:
    x = _cast(x, _stacklevel, dtype)
    return Interval._from_lu(*log_softmax_bounds(x, _dim_of("log_softmax", dim)))


def _softmax(x: Interval, dim: Any = None, _stacklevel: Any = 3, dtype: torch.dtype | None = None) -> Interval:
    x = _cast(x, _stacklevel, dtype)
    lo, hi = log_softmax_bounds(x, _dim_of("softmax", dim))
    if rounding.is_rigorous():
        return Interval._from_lu(*rounding.outward_unary(torch.exp, lo, hi))
    return Interval._from_lu(torch.exp(lo), torch.exp(hi).clamp(max=1.0))


implements(F.log_softmax, torch.log_softmax, _T.log_softmax)(_log_softmax)
implements(F.softmax, torch.softmax, _T.softmax)(_softmax)
