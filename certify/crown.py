"""CROWN: linear bound propagation for ``nn.Sequential`` ReLU networks over L-inf boxes.

Reference: H. Zhang, T.-W. Weng, P.-Y. Chen, C.-J. Hsieh, L. Daniel, "Efficient Neural Network
Robustness Certification with General Activation Functions", NeurIPS 2018 (arXiv:1811.00866); the
algorithm behind auto_LiRPA's ``method="CROWN"`` (backward mode). CROWN-IBP (intermediate bounds by
interval bound propagation, last layer by CROWN) is from H. Zhang et al., "Towards Stable and Efficient
Training of Verifiably Robust Neural Networks", ICLR 2020 (arXiv:1906.06316).

For a specification matrix ``C`` (``(B, S, K)``: the identity for output bounds, rows ``e_y - e_j``
for margins) the bound ``C f(x)`` is propagated *backward* as linear functions of each layer's input:
lower and upper coefficient tensors ``A`` of shape ``(B, S, *layer_shape)`` and offsets ``(B, S)``.

* Affine layers (``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm1d/2d`` in eval mode, ``nn.AvgPool2d``,
  ``nn.Flatten``, ``nn.Identity``, ``nn.Dropout`` in eval mode) map ``A`` through their adjoint
  (``A W`` for a linear layer; ``F.conv_transpose2d`` for a convolution, never a dense Jacobian) and add
  ``A b`` to the offset.
* ``nn.ReLU`` with pre-activation bounds ``[l, u]``: stable neurons are exact (slope 1 or 0); an unstable
  neuron (``l < 0 < u``) has the upper line through ``(l, 0)`` and ``(u, u)`` (slope ``u / (u - l)``,
  intercept ``-l u / (u - l)``) and the adaptive lower line ``a x`` with ``a = 1`` if ``u >= -l`` else
  ``0`` (CROWN-Ada). For the upper bound, positive coefficients take the upper line and negative ones
  the lower line; for the lower bound the other way round.
* At the input box ``[x - eps, x + eps] ∩ [lo, hi]`` with centre ``c`` and radius ``r``:
  ``lower = A_L c - |A_L| r + b_L``, ``upper = A_U c + |A_U| r + b_U``.

``method="crown"`` obtains each ReLU's pre-activation bounds by running CROWN backward from that layer
(identity specification over its *unstable* neurons only: for a neuron that interval bounds already show
to be stable the relaxation is exact whatever its bounds, so tightening it would change nothing),
batched over the samples and chunked over the neurons to bound memory. ``method="crown-ibp"`` takes them
from interval bound propagation. Every bound is intersected with interval bounds, so it is never looser
than IBP.

Example:
    >>> import torch
    >>> from intervals import Interval
    >>> from certify.crown import crown_bounds
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x = torch.rand(5, 4)
    >>> lower, upper = crown_bounds(net, Interval.linf_ball(x, 0.05))
    >>> lower.shape, bool((lower <= net(x)).all() and (net(x) <= upper).all())
    (torch.Size([5, 3]), True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from intervals import Interval, UnsupportedOperation, is_rigorous

__all__ = ["CROWN_METHODS", "UnsupportedLayer", "check_supported", "crown_bounds", "SUPPORTED_LAYERS"]

#: The CROWN variants: how ReLU pre-activation bounds are obtained.
CROWN_METHODS = ("crown", "crown-ibp")

#: Layer types CROWN propagates through (exact types: a subclass may override ``forward``).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Flatten,
    nn.AvgPool2d,
    nn.ReLU,
    nn.Identity,
    nn.Dropout,
)

# Layers that mix coordinates: interval bounds through two of them in a row are no longer exact.
_MIXING = (nn.Linear, nn.Conv2d, nn.AvgPool2d)

#: Default memory budget: elements per coefficient tensor in one backward pass (chunked over neurons).
DEFAULT_BUDGET = 2**25


class UnsupportedLayer(UnsupportedOperation, ValueError):
    """A model or layer that CROWN cannot bound (catchable as ``UnsupportedOperation`` and ``ValueError``)."""

    def __init__(self, message: str, layer: str = "") -> None:
        self.func_name = layer
        Exception.__init__(self, message)


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of a (possibly nested) ``nn.Sequential``, flattened, after checking each is supported."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayer(
            f"CROWN supports nn.Sequential models only, got {type(model).__name__}; use method='ibp'",
            type(model).__name__,
        )
    out: list[tuple[str, nn.Module]] = []

    def walk(seq: nn.Sequential, prefix: str) -> None:
        for name, layer in seq.named_children():
            full = f"{prefix}{name}"
            if type(layer) is nn.Sequential:
                walk(layer, full + ".")
                continue
            _check_layer(layer, full)
            out.append((full, layer))

    walk(model, "")
    return out


def _check_layer(layer: nn.Module, name: str) -> None:
    kind = type(layer).__name__
    if type(layer) not in SUPPORTED_LAYERS:
        raise UnsupportedLayer(f"CROWN does not support nn.{kind} (layer {name}); use method='ibp'", kind)
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise UnsupportedLayer(
                f"CROWN supports nn.Conv2d with padding_mode='zeros' only, got {layer.padding_mode!r} "
                f"(layer {name}); use method='ibp'",
                kind,
            )
        if isinstance(layer.padding, str) and layer.padding != "valid":
            raise UnsupportedLayer(
                f"CROWN does not support nn.Conv2d with padding={layer.padding!r} (layer {name}); use method='ibp'",
                kind,
            )
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and (layer.training or layer.running_mean is None):
        raise UnsupportedLayer(
            f"CROWN needs nn.{kind} in eval mode with running statistics (layer {name}); call model.eval()",
            kind,
        )
    if isinstance(layer, nn.Dropout) and layer.training and layer.p > 0:
        raise UnsupportedLayer(f"CROWN needs nn.Dropout in eval mode (layer {name}); call model.eval()", kind)
    if isinstance(layer, nn.Flatten) and layer.start_dim == 0:
        raise UnsupportedLayer(f"CROWN does not support nn.Flatten(start_dim=0) (layer {name})", kind)


def check_supported(model: nn.Module) -> None:
    """Raise :class:`UnsupportedLayer` naming the first layer of ``model`` that CROWN cannot handle."""
    _layers(model)


# ---------------------------------------------------------------------------------------- affine adjoints
def _affine_back(
    layer: nn.Module, a: torch.Tensor, in_shape: torch.Size, out_shape: torch.Size
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(A', d)`` with ``A · layer(z) = A' · z + d`` for an affine ``layer``; ``a`` is ``(B, S, *out_shape)``."""
    b, s = a.shape[:2]
    if isinstance(layer, nn.Linear):
        bias = None if layer.bias is None else (a * layer.bias).flatten(2).sum(-1)
        return a @ layer.weight, bias
    if isinstance(layer, nn.Conv2d):
        w = layer.weight
        stride, dilation = layer.stride, layer.dilation
        padding = (0, 0) if isinstance(layer.padding, str) else layer.padding
        kh, kw = w.shape[-2:]
        (hi, wi), (ho, wo) = in_shape[-2:], out_shape[-2:]
        out_pad = (
            hi - ((ho - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + 1),
            wi - ((wo - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + 1),
        )
        flat = a.reshape(b * s, *out_shape)
        back = F.conv_transpose2d(flat, w, None, stride, padding, out_pad, layer.groups, dilation)
        bias = None if layer.bias is None else torch.einsum("bschw,c->bs", a, layer.bias)
        return back.reshape(b, s, *in_shape), bias
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = torch.rsqrt(layer.running_var + layer.eps)
        if layer.weight is not None:
            scale = scale * layer.weight
        shift = -layer.running_mean * scale
        if layer.bias is not None:
            shift = shift + layer.bias
        view = (-1,) + (1,) * (len(in_shape) - 1)
        return a * scale.view(view), (a * shift.view(view)).flatten(2).sum(-1)
    if isinstance(layer, nn.AvgPool2d):
        k = list(nn.modules.utils._pair(layer.kernel_size))
        st = list(nn.modules.utils._pair(layer.stride if layer.stride is not None else layer.kernel_size))
        pad = list(nn.modules.utils._pair(layer.padding))
        flat = a.reshape(b * s, *out_shape)
        like = flat.new_zeros(()).expand(b * s, *in_shape)
        back = torch.ops.aten.avg_pool2d_backward(
            flat, like, k, st, pad, layer.ceil_mode, layer.count_include_pad, layer.divisor_override
        )
        return back.reshape(b, s, *in_shape), None
    if isinstance(layer, nn.Flatten):
        return a.reshape(b, s, *in_shape), None
    if isinstance(layer, (nn.Identity, nn.Dropout)):
        return a, None
    raise UnsupportedLayer(f"CROWN does not support nn.{type(layer).__name__}", type(layer).__name__)


def _relu_relaxation(
    lower: torch.Tensor, upper: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upper slope, upper intercept and (adaptive) lower slope of the CROWN ReLU relaxation."""
    unstable = (lower < 0) & (upper > 0)
    active = lower >= 0
    denom = torch.where(unstable, upper - lower, torch.ones_like(upper))
    up_slope = torch.where(unstable, upper / denom, active.to(upper.dtype))
    up_icpt = torch.where(unstable, -lower * upper / denom, torch.zeros_like(upper))
    low_slope = torch.where(unstable, (upper >= -lower).to(upper.dtype), active.to(upper.dtype))
    return up_slope, up_icpt, low_slope


def _add(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
    if y is None:
        return x
    return y if x is None else x + y


def _backward(
    layers: list[tuple[str, nn.Module]],
    shapes: list[torch.Size],
    relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
    box: Interval,
    spec: torch.Tensor,
    upto: int,
    need_lower: bool = True,
    need_upper: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """CROWN bounds ``(B, S)`` of ``spec · (layers[:upto] applied to the input)`` over ``box``.

    ``spec`` is ``(B, S, *shapes[upto])``; ``relu_bounds[i]`` are the pre-activation bounds of ReLU ``i``.
    """
    b, s = spec.shape[:2]
    a_l = spec if need_lower else None
    a_u = spec if need_upper else None
    d_l: torch.Tensor | None = None
    d_u: torch.Tensor | None = None
    for i in range(upto - 1, -1, -1):
        layer = layers[i][1]
        if isinstance(layer, nn.ReLU):
            up_s, up_b, lo_s = _relu_relaxation(*relu_bounds[i])
            up_s, up_b, lo_s = up_s.unsqueeze(1), up_b.unsqueeze(1), lo_s.unsqueeze(1)
            if a_l is not None:
                pos, neg = a_l.clamp(min=0), a_l.clamp(max=0)
                d_l = _add(d_l, (neg * up_b).flatten(2).sum(-1))
                a_l = pos * lo_s + neg * up_s
            if a_u is not None:
                pos, neg = a_u.clamp(min=0), a_u.clamp(max=0)
                d_u = _add(d_u, (pos * up_b).flatten(2).sum(-1))
                a_u = pos * up_s + neg * lo_s
            continue
        both = a_l is not None and a_u is not None and a_l is not a_u
        if a_l is not None and a_u is not None and a_l is a_u:  # identical until the first ReLU
            a_new, d = _affine_back(layer, a_l, shapes[i], shapes[i + 1])
            a_l = a_u = a_new
            d_l, d_u = _add(d_l, d), _add(d_u, d)
        elif both:
            a_new, d = _affine_back(layer, torch.cat([a_l, a_u], 1), shapes[i], shapes[i + 1])
            a_l, a_u = a_new[:, :s], a_new[:, s:]
            if d is not None:
                d_l, d_u = _add(d_l, d[:, :s]), _add(d_u, d[:, s:])
        elif a_l is not None:
            a_l, d = _affine_back(layer, a_l, shapes[i], shapes[i + 1])
            d_l = _add(d_l, d)
        elif a_u is not None:
            a_u, d = _affine_back(layer, a_u, shapes[i], shapes[i + 1])
            d_u = _add(d_u, d)
    centre = box.center.reshape(b, -1, 1)
    radius = box.radius.reshape(b, -1, 1)
    lower = upper = None
    if a_l is not None:
        flat = a_l.reshape(b, s, -1)
        lower = (torch.bmm(flat, centre) - torch.bmm(flat.abs(), radius)).squeeze(-1)
        lower = lower if d_l is None else lower + d_l
    if a_u is not None:
        flat = a_u.reshape(b, s, -1)
        upper = (torch.bmm(flat, centre) + torch.bmm(flat.abs(), radius)).squeeze(-1)
        upper = upper if d_u is None else upper + d_u
    return lower, upper


def _intersect(
    lower: torch.Tensor, upper: torch.Tensor, ibp_lower: torch.Tensor, ibp_upper: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lower, upper] ∩ [ibp_lower, ibp_upper]``; where rounding crosses them, the IBP bounds are kept."""
    lo, up = torch.maximum(lower, ibp_lower), torch.minimum(upper, ibp_upper)
    crossed = lo > up
    return torch.where(crossed, ibp_lower, lo), torch.where(crossed, ibp_upper, up)


def _tighten(
    layers: list[tuple[str, nn.Module]],
    shapes: list[torch.Size],
    relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
    box: Interval,
    upto: int,
    lower: torch.Tensor,
    upper: torch.Tensor,
    budget: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN bounds of the unstable neurons of ``layers[:upto]``'s output, intersected with ``[lower, upper]``."""
    b, shape = lower.shape[0], lower.shape[1:]
    n = math.prod(shape)
    lf, uf = lower.reshape(b, n), upper.reshape(b, n)
    unstable = (lf < 0) & (uf > 0)
    k = int(unstable.sum(1).max()) if b else 0
    if k == 0:
        return lower, upper
    # per sample, the indices of its unstable neurons first (padding: stable ones, still sound to bound)
    idx = torch.argsort((~unstable).to(torch.uint8), dim=1, stable=True)[:, :k]
    widest = max(math.prod(sh) for sh in shapes[: upto + 1])
    chunk = max(1, budget // (2 * b * widest))
    parts_l, parts_u = [], []
    for start in range(0, k, chunk):
        sub = idx[:, start : start + chunk]

        def run(sub: torch.Tensor = sub) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            spec = F.one_hot(sub, n).to(lower.dtype).reshape(b, sub.shape[1], *shape)
            return _backward(layers, shapes, relu_bounds, box, spec, upto)

        # with autograd on, recompute each chunk in the backward pass instead of keeping its coefficients
        cl, cu = checkpoint(run, use_reentrant=False) if torch.is_grad_enabled() else run()
        parts_l.append(cl)
        parts_u.append(cu)
    cl, cu = _intersect(torch.cat(parts_l, 1), torch.cat(parts_u, 1), lf.gather(1, idx), uf.gather(1, idx))
    lf, uf = lf.scatter(1, idx, cl), uf.scatter(1, idx, cu)
    return lf.reshape(lower.shape), uf.reshape(upper.shape)


def crown_bounds(
    model: nn.Module,
    box: Interval,
    spec: torch.Tensor | None = None,
    method: str = "crown",
    need_lower: bool = True,
    need_upper: bool = True,
    intersect: bool = True,
    budget: int = DEFAULT_BUDGET,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """CROWN lower and upper bounds of ``spec · model(x)`` for every ``x`` in ``box`` (Zhang et al. 2018).

    Args:
        model: an ``nn.Sequential`` (nested ones are flattened) of :data:`SUPPORTED_LAYERS`.
        box: the input box, batch first.
        spec: ``(B, S, *out_shape)`` specification; ``None`` bounds the outputs themselves, and the
            results then have the output's shape ``(B, *out_shape)``; otherwise they are ``(B, S)``.
        method: ``"crown"`` (intermediate bounds by CROWN) or ``"crown-ibp"`` (by IBP).
        need_lower, need_upper: skip the half that is not needed (returned as ``None``).
        intersect: intersect with the interval bounds (never looser than IBP). ``False`` returns the
            raw CROWN bounds of the last layer (intermediate bounds are always intersected).
        budget: memory budget, in elements per coefficient tensor, for the intermediate bounds.

    Raises:
        UnsupportedLayer: for a non-``Sequential`` model or an unsupported layer, naming it.
        ValueError: for an unknown method or inside :func:`intervals.rigorous` (CROWN is not
            outward-rounded).
    """
    if method not in CROWN_METHODS:
        raise ValueError(f"unknown CROWN method {method!r}; available: {', '.join(CROWN_METHODS)}")
    if is_rigorous():
        raise ValueError("CROWN bounds are not outward-rounded: not available inside intervals.rigorous(); "
                         "use method='ibp'")
    layers = _layers(model)
    shapes: list[torch.Size] = [box.shape[1:]]
    relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    h = box
    mixing, seen_relu = 0, False
    for i, (_, layer) in enumerate(layers):
        if isinstance(layer, nn.ReLU):
            lower, upper = h.lower, h.upper
            # IBP is exact for one affine map (and diagonal ones around it): CROWN would change nothing
            if method == "crown" and (seen_relu or mixing > 1):
                lower, upper = _tighten(layers, shapes, relu_bounds, box, i, lower, upper, budget)
                h = Interval(lower, upper)
            relu_bounds[i] = (lower, upper)
            seen_relu = True
        elif isinstance(layer, _MIXING):
            mixing += 1
        h = layer(h)
        if h.shape[0] != box.shape[0]:
            raise UnsupportedLayer(f"CROWN: layer {layers[i][0]} changed the batch dimension", type(layer).__name__)
        shapes.append(h.shape[1:])
    b = box.shape[0]
    out_shape = shapes[-1]
    n_out = math.prod(out_shape)
    if spec is None:
        eye = torch.eye(n_out, dtype=box.dtype, device=box.device).reshape(n_out, *out_shape)
        s_spec = eye.unsqueeze(0).expand(b, *eye.shape)
    else:
        s_spec = spec.to(box.dtype)
        if s_spec.dim() < 2 or s_spec.shape[0] != b or s_spec.shape[2:] != out_shape:
            raise ValueError(
                f"spec must have shape (B={b}, S, *{tuple(out_shape)}), got {tuple(spec.shape)}"
            )
    lower, upper = _backward(layers, shapes, relu_bounds, box, s_spec, len(layers), need_lower, need_upper)
    if intersect:
        # interval bounds of spec · h, h the (tightened) IBP output box: centre/radius form
        flat = s_spec.reshape(b, s_spec.shape[1], -1)
        c = torch.bmm(flat, h.center.reshape(b, -1, 1)).squeeze(-1)
        r = torch.bmm(flat.abs(), h.radius.reshape(b, -1, 1)).squeeze(-1)
        if lower is not None and upper is not None:
            lower, upper = _intersect(lower, upper, c - r, c + r)
        elif lower is not None:
            lower = torch.maximum(lower, c - r)
        elif upper is not None:
            upper = torch.minimum(upper, c + r)
    if spec is None:
        lower = None if lower is None else lower.reshape(b, *out_shape)
        upper = None if upper is None else upper.reshape(b, *out_shape)
    return lower, upper
