"""Structural rules: reshaping, indexing, concatenation, padding, dropout.

These move or copy elements without changing values, so applying the same function to both
endpoints (or to centre and radius) is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UnsupportedOperation
from ..registry import implements
from ._common import Interval, endpoints

_T = torch.Tensor


def _elementwise_structural(func: Any, views: bool = True):
    def rule(x: Interval, *args: Any, **kwargs: Any) -> Interval:
        return x._apply(lambda t: func(t, *args, **kwargs), views)

    return rule


# These always copy: their results share no memory with the input (the others may be views).
_COPYING = {
    torch.flip, _T.flip, torch.roll, _T.roll, _T.repeat, torch.clone, _T.clone, torch.tile, _T.tile,
    torch.index_select, _T.index_select, torch.gather, _T.gather, torch.take_along_dim, _T.take_along_dim,
    torch.fliplr, torch.flipud, torch.repeat_interleave, _T.repeat_interleave,
}


# Each spelling is registered with *its own* callable: ``Tensor.permute(1, 0)`` takes varargs but
# ``torch.permute(t, (1, 0))`` does not, so replaying a method call through the ``torch.*``
# function would reject valid calls.
for _f in (
    torch.reshape, _T.reshape, torch.flatten, _T.flatten, torch.permute, _T.permute,
    torch.transpose, _T.transpose, torch.squeeze, _T.squeeze, torch.unsqueeze, _T.unsqueeze,
    _T.expand, _T.contiguous, _T.__getitem__, torch.flip, _T.flip, torch.roll, _T.roll,
    torch.narrow, _T.narrow, torch.select, _T.select, torch.t, _T.t, torch.movedim, _T.movedim,
    torch.moveaxis, _T.moveaxis, _T.repeat, torch.clone, _T.clone, torch.tile, _T.tile,
    torch.swapaxes, _T.swapaxes, torch.swapdims, _T.swapdims, torch.unflatten, _T.unflatten,
    torch.index_select, _T.index_select, torch.gather, _T.gather, torch.take_along_dim,
    _T.take_along_dim, torch.fliplr, torch.flipud, torch.diagonal, _T.diagonal,
    torch.repeat_interleave, _T.repeat_interleave,
):
    implements(_f)(_elementwise_structural(_f, views=_f not in _COPYING))


@implements(_T.view)
def _view(x: Interval, *shape: Any, **kwargs: Any) -> Interval:
    dtype = kwargs.get("dtype", shape[0] if len(shape) == 1 and isinstance(shape[0], torch.dtype) else None)
    if dtype is not None and dtype != x.dtype:
        raise UnsupportedOperation("Tensor.view", f"reinterpreting a box's bits as {dtype} is not monotone")
    return x._apply(lambda t: t.view(*shape, **kwargs))


@implements(_T.expand_as)
def _expand_as(x: Interval, other: Any) -> Interval:
    return x._apply(lambda t: t.expand(other.shape))


@implements(_T.view_as)
def _view_as(x: Interval, other: Any) -> Interval:
    return x._apply(lambda t: t.view(other.shape))


@implements(_T.reshape_as)
def _reshape_as(x: Interval, other: Any) -> Interval:
    return x._apply(lambda t: t.reshape(other.shape))


def _split_like(func: Any):
    def rule(x: Interval, *args: Any, **kwargs: Any) -> tuple[Interval, ...]:
        los, his = func(x.lower, *args, **kwargs), func(x.upper, *args, **kwargs)
        parts = tuple(Interval._from_lu(a, b) for a, b in zip(los, his, strict=True))
        for part in parts:  # views of the box's endpoints
            x._alias_with(part)
        return parts

    return rule


for _f in (torch.unbind, _T.unbind, torch.split, _T.split, torch.chunk, _T.chunk):
    implements(_f)(_split_like(_f))


def _joined(func: Any):
    def rule(tensors: Sequence[Any], *args: Any, **kwargs: Any) -> Interval:
        pairs = [endpoints(t) for t in tensors]
        lo = func([p[0] for p in pairs], *args, **kwargs)
        hi = func([p[1] for p in pairs], *args, **kwargs)
        return Interval._from_lu(lo, hi)

    return rule


implements(torch.cat, torch.concat, torch.concatenate)(_joined(torch.cat))
implements(torch.stack)(_joined(torch.stack))
implements(torch.hstack)(_joined(torch.hstack))
implements(torch.vstack)(_joined(torch.vstack))


@implements(F.pad, torch._C._nn.pad)
def _pad(x: Interval, pad: Sequence[int], mode: str = "constant", value: float | None = None) -> Interval:
    return Interval._from_lu(F.pad(x.lower, pad, mode, value), F.pad(x.upper, pad, mode, value))


def _dropout_rule(name: str):
    def rule(x: Interval, p: float = 0.5, training: bool = True, inplace: bool = False) -> Interval:
        if training and p > 0:
            raise UnsupportedOperation(
                name, "dropout in training mode draws a random mask; call model.eval() before bounding"
            )
        return x

    return rule


for _f in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout):
    implements(_f)(_dropout_rule(f"torch.nn.functional.{_f.__name__}"))
