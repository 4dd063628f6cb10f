"""Output and margin bounds over L-inf input boxes, and the certificate built on them.

A certificate for ``(x, y)`` at radius ``eps`` is ``lower(z_y - z_j) > 0`` for every ``j != y``,
computed on the *margins* through a specification matrix ``C`` (rows ``e_y - e_j``), not by
comparing output bounds (``argmax(lower) == y`` is not a certificate). When the network ends in an
``nn.Linear``, ``C`` is folded into that layer (``W' = C W``, ``b' = C b``), which is exact for the
last layer and tighter than subtracting output bounds.

Methods: ``"ibp"`` (interval bound propagation through :mod:`intervals`); ``"crown"`` (CROWN, Zhang et
al. 2018: backward linear bound propagation, intermediate bounds by CROWN too) and ``"crown-ibp"``
(intermediate bounds by IBP, last layer by CROWN), see :mod:`certify.crown`. The CROWN methods take
``nn.Sequential`` models of the layers in :data:`certify.crown.SUPPORTED_LAYERS`, apply ``C`` in the
backward pass, and are intersected with the IBP bounds (never looser).

Example:
    >>> import torch
    >>> from certify.bounds import certified, margin_bounds
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    >>> margin_bounds(net, x, y, eps=0.01).shape
    torch.Size([5, 2])
    >>> certified(net, x, y, eps=0.01).dtype
    torch.bool
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from intervals import Interval, IntervalError, is_rigorous

from . import crown as _crown

__all__ = [
    "METHODS", "compute_bounds", "margin_bounds", "certified", "fold_margins", "fold_spec_margins", "spec_matrix",
    "other_classes",
]

#: Bound methods available to :func:`compute_bounds` and :func:`margin_bounds`.
METHODS = ("ibp", "crown", "crown-ibp")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r}; available: {', '.join(METHODS)}")


def compute_bounds(
    model: nn.Module,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    method: str = "ibp",
    lo: float | torch.Tensor | None = None,
    hi: float | torch.Tensor | None = None,
) -> Interval:
    """Sound bounds of ``model``'s outputs over ``{x' : |x' - x|_inf <= eps} ∩ [lo, hi]``.

    Differentiable: a loss on the returned bounds backpropagates to the model's parameters.
    ``method="crown"``/``"crown-ibp"`` (see :mod:`certify.crown`) are intersected with IBP.
    """
    _check_method(method)
    box = Interval.linf_ball(x, eps, lo=lo, hi=hi)
    if method == "ibp":
        return model(box)
    lower, upper = _crown.crown_bounds(model, box, method=method)
    return Interval(lower, upper)


def spec_matrix(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``C`` of shape ``(B, K-1, K)``: for sample ``b``, rows ``e_{y_b} - e_j`` for every ``j != y_b``."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    c = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    keep = ~F.one_hot(y, num_classes).bool()
    return c[keep].reshape(len(y), num_classes - 1, num_classes)


def other_classes(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, K-1)`` indices ``j != y_b`` in the row order of :func:`spec_matrix`."""
    idx = torch.arange(num_classes, device=y.device).expand(len(y), num_classes)
    return idx[idx != y.unsqueeze(1)].reshape(len(y), num_classes - 1)


def _check_labels(y: torch.Tensor, batch: int, num_classes: int | None) -> None:
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise IntervalError(f"labels y must be an integer tensor, got {getattr(y, 'dtype', type(y).__name__)}")
    if y.shape != (batch,):
        raise IntervalError(f"labels y must have shape ({batch},) to match x, got {tuple(y.shape)}")
    if num_classes is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise IntervalError(f"labels y must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")


def margin_bounds(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    method: str = "ibp",
    lo: float | torch.Tensor | None = None,
    hi: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Sound lower bounds ``(B, K-1)`` of ``z_y - z_j`` for every ``j != y`` (order of :func:`other_classes`).

    For an ``nn.Sequential`` ending in ``nn.Linear`` (exact types, no hooks or patched forward) the specification
    is folded into that layer; any other model gets ``lower(z_y) - upper(z_j)`` (sound, looser). Inside
    :func:`intervals.rigorous` the folded weights ``W_y - W_j`` are formed as outward-rounded
    intervals, so the float differences cannot round the certificate into unsoundness.

    ``method="crown"``/``"crown-ibp"`` propagate ``C`` backward through the whole network (CROWN,
    :mod:`certify.crown`) and return the larger of that and the IBP margin bound.
    """
    _check_method(method)
    if method == "ibp":
        return _ibp_margin_bounds(model, x, y, eps, lo, hi)
    _crown.check_supported(model)
    ibp = _ibp_margin_bounds(model, x, y, eps, lo, hi)  # also validates the labels
    c = spec_matrix(y, ibp.shape[1] + 1, ibp.dtype)
    box = Interval.linf_ball(x, eps, lo=lo, hi=hi)
    lower, _ = _crown.crown_bounds(model, box, spec=c, method=method, need_upper=False, intersect=False)
    return torch.maximum(lower, ibp)


def _ibp_margin_bounds(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    lo: float | torch.Tensor | None,
    hi: float | torch.Tensor | None,
) -> torch.Tensor:
    """IBP margin lower bounds, the specification folded into a last ``nn.Linear``.

    The fold reads the last layer's ``weight`` and ``bias`` and runs ``model[:-1]``, so it is taken
    only where that is what calling the model does: a plain ``nn.Sequential`` ending in a plain
    ``nn.Linear`` (exact types: a subclass may override ``forward``), neither with forward hooks or an
    instance-level ``forward``.
    """
    foldable = type(model) is nn.Sequential and len(model) and type(model[-1]) is nn.Linear
    altered = foldable and (_crown.alters_forward(model) or _crown.alters_forward(model[-1]))
    last = model[-1] if foldable and not altered else None
    k = last.out_features if last is not None else None
    _check_labels(y, x.shape[0], k)
    box = Interval.linf_ball(x, eps, lo=lo, hi=hi)
    if k is None:
        out = model(box)
        others = other_classes(y, out.shape[-1])
        lower_y = out.lower.gather(1, y.unsqueeze(1))
        return lower_y - out.upper.gather(1, others)
    h = model[:-1](box)
    others = other_classes(y, k)
    if is_rigorous():
        w_spec = Interval.point(last.weight[y].unsqueeze(1).expand(-1, k - 1, -1)) - last.weight[others]
        margin = torch.bmm(w_spec, h.unsqueeze(-1)).squeeze(-1)
        if last.bias is not None:
            margin = margin + (Interval.point(last.bias[y].unsqueeze(1).expand(-1, k - 1)) - last.bias[others])
        return margin.lower
    return fold_margins(last, h, y)


def fold_margins(last: nn.Linear, h: Interval, y: torch.Tensor) -> torch.Tensor:
    """Margin lower bounds ``(B, K-1)`` of ``last`` applied to the box ``h``, with ``C`` folded into it."""
    return fold_spec_margins(last.weight, last.bias, h, y)


def fold_spec_margins(weight: torch.Tensor, bias: torch.Tensor | None, h: Interval, y: torch.Tensor) -> torch.Tensor:
    """Lower bounds ``(B, K-1)`` of ``z_y - z_j`` (``j != y``, order of :func:`other_classes`) for
    ``z = weight h + bias`` over the box ``h``.

    ``W'_j = W_y - W_j`` and ``b'_j = b_y - b_j`` in float arithmetic (not outward-rounded), then
    ``W' h_c + b' - |W'| h_r``: exact for one affine layer, tighter than ``lower(z_y) - upper(z_j)``.
    Differentiable in the weights and the box.
    """
    k = weight.shape[0]
    if k < 2:
        raise ValueError(f"margins need at least 2 classes, got a last layer with {k} output(s)")
    others = other_classes(y, k)
    w_spec = weight[y].unsqueeze(1) - weight[others]  # (B, K-1, H): row j is W_y - W_j
    # an unbounded box can hold inf or NaN in centre/radius form: such a coordinate is centre 0, radius inf
    unbounded = ~(h.center.isfinite() & h.radius.isfinite())
    center, radius = h.center.masked_fill(unbounded, 0.0), h.radius.masked_fill(unbounded, math.inf)
    out = torch.bmm(w_spec, center.unsqueeze(-1)).squeeze(-1)
    out = out - torch.bmm(w_spec.abs(), radius.unsqueeze(-1)).squeeze(-1)
    if bias is not None:
        out = out + (bias[y].unsqueeze(1) - bias[others])
    return out.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)  # 0 * inf: no bound there


def certified(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    method: str = "ibp",
    lo: float | torch.Tensor | None = None,
    hi: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean ``(B,)``: True where every margin lower bound is positive (a sound certificate)."""
    with torch.no_grad():
        return (margin_bounds(model, x, y, eps, method, lo, hi) > 0).all(dim=1)
