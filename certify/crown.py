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
  ``nn.Flatten``, ``nn.Identity``, ``nn.Dropout`` in eval mode, :class:`certify.models.Normalize`) map
  ``A`` through their adjoint (``A W`` for a linear layer; ``F.conv_transpose2d`` for a convolution, never
  a dense Jacobian) and add ``A b`` to the offset.
* :class:`certify.models.Residual` (``body(x) + shortcut(x)``): ``A`` goes backward through the body's
  layers (with their own ReLU relaxations) and through the shortcut (the identity when there is none),
  and the two coefficient tensors and offsets are added.
* ``nn.ReLU`` with pre-activation bounds ``[l, u]``: stable neurons are exact (slope 1 or 0); an unstable
  neuron (``l < 0 < u``) has the upper line through ``(l, 0)`` and ``(u, u)`` (slope ``u / (u - l)``,
  intercept ``-l u / (u - l)``) and the adaptive lower line ``a x`` with ``a = 1`` if ``u >= -l`` else
  ``0`` (CROWN-Ada). For the upper bound, positive coefficients take the upper line and negative ones
  the lower line; for the lower bound the other way round.
* At the input box ``[x - eps, x + eps] ∩ [lo, hi]`` with centre ``c`` and radius ``r``:
  ``lower = A_L c - |A_L| r + b_L``, ``upper = A_U c + |A_U| r + b_U``.

``method="crown"`` obtains each ReLU's pre-activation bounds by running CROWN backward from that layer
(identity specification over its *unstable* neurons only: for a neuron that interval bounds already show
to be stable the relaxation is exact whatever its bounds, so tightening it would change nothing, and it
keeps its interval bounds, so a sample's bounds never depend on the rest of its batch), batched over the
samples and chunked over the neurons to bound memory (``budget``; the batch size is the caller's knob).
Inside a residual block, a ReLU's bounds come from the network input through everything before it: the
body up to it, then the layers before the block. The unstable neurons' CROWN bounds are used as they
are (as auto_LiRPA does; ``intersect_intermediate=True`` intersects them with the interval bounds first,
sound and sometimes tighter). ``method="crown-ibp"`` takes them from interval bound propagation. The
final bounds are intersected with interval bounds, so they are never looser than IBP.

**Patches** (``conv_mode="patches"``, the default; the representation of auto_LiRPA's patches mode):
the specification of an intermediate bound is one neuron ``(c, i, j)`` of a convolutional feature map,
and its coefficients on every earlier feature map are zero outside the neuron's receptive field. Such an
``A`` is kept as one small window per row, ``(B, S, ph, pw, C)``, plus where the window lies (the neuron's
grid position, and the accumulated stride and padding offset of the layers crossed). A convolution maps a
window through the transposed convolution of the window alone (size ``(ph - 1) s + d (k - 1) + 1``; run
as one GEMM with the window's matrix while that is small), a ReLU multiplies by its relaxation gathered
at the window's positions, and the input box is gathered the same way at the end. Entries that fall on
zero padding are masked before they can reach a bias or another layer. This is exactly the dense
computation with the zeros left out: on DM-small the windows are at most ``16x4x4`` against a dense
``16x13x13`` map, and full CROWN at batch 128 takes seconds instead of minutes. A window that grows as
large as its feature map is converted to the dense form; ``conv_mode="dense"`` keeps every ``A`` dense
(the reference the tests compare with).

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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from intervals import Interval, UnsupportedOperation, is_rigorous

from .models import Normalize, Residual

__all__ = [
    "CONV_MODES",
    "CROWN_METHODS",
    "SUPPORTED_LAYERS",
    "UnsupportedLayer",
    "check_supported",
    "crown_bounds",
    "alters_forward",
]

#: The CROWN variants: how ReLU pre-activation bounds are obtained.
CROWN_METHODS = ("crown", "crown-ibp")

#: How coefficients on convolutional feature maps are stored: per-neuron windows or dense maps.
CONV_MODES = ("patches", "dense")

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
    Normalize,
    Residual,
)

# Layers that mix coordinates: interval bounds through two of them in a row are no longer exact.
_MIXING = (nn.Linear, nn.Conv2d, nn.AvgPool2d)

#: Default memory budget: elements per coefficient tensor in one backward pass (chunked over neurons).
#: Kept at 4 MB of float32, which is also the fastest on CPU and the steadiest (DM-small, batch 128,
#: repeated calls: 2.6-2.8 s, against 2.5-3.9 s at 8 MB and 3.7 s at 16 MB): larger temporaries are too
#: often fresh memory from the system, whose page faults cost as much as the arithmetic on them.
DEFAULT_BUDGET = 2**20

#: See :func:`_prime_allocator`: the size of the block it frees (under glibc's 32 MB ceiling).
_PRIME_BYTES = 24 * 2**20
_primed = False


class UnsupportedLayer(UnsupportedOperation, ValueError):
    """A model or layer that CROWN cannot bound (catchable as ``UnsupportedOperation`` and ``ValueError``)."""

    def __init__(self, message: str, layer: str = "") -> None:
        self.func_name = layer
        Exception.__init__(self, message)


# ------------------------------------------------------------------------------------ model structure
@dataclass(eq=False)
class _Node:
    """One layer of the flattened model; a :class:`Residual` holds its two branches as node lists.

    ``in_shape``/``out_shape`` (per sample) and, for a ReLU, ``relax`` (its relaxation) are filled in by
    the forward pass of one :func:`crown_bounds` call (nodes are rebuilt on every call).
    """

    name: str
    layer: nn.Module
    body: list[_Node] | None = None
    shortcut: list[_Node] = field(default_factory=list)
    in_shape: torch.Size = torch.Size()
    out_shape: torch.Size = torch.Size()
    relax: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def alters_forward(module: nn.Module) -> bool:
    """Whether calling ``module`` runs more than its class's ``forward``: forward (pre-)hooks on it or
    global ones, or a ``forward`` assigned to the instance.

    Code that reads a layer's parameters instead of calling it (CROWN, the specification folded into a
    last ``nn.Linear``) would bypass these (``torch.nn.utils.prune`` masks weights in a hook), so it
    must not take that shortcut.
    """
    from torch.nn.modules import module as module_mod

    return bool(
        module._forward_hooks or module._forward_pre_hooks or "forward" in vars(module)
        or module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks
    )


#: Layers whose output is their input or a view of it: an in-place layer after them still writes the input.
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Flatten)


def _check_no_inplace(branch: list[_Node], where: str) -> None:
    """Refuse an in-place ReLU that can receive a residual block's input (first in a branch, or after
    pass-through layers): it overwrites the input the other branch reads (``relu(x)`` instead of ``x``),
    which CROWN's out-of-place relaxation does not model. Later in-place ReLUs see fresh tensors."""
    for node in branch:
        if node.body is None and isinstance(node.layer, nn.ReLU) and node.layer.inplace:
            raise UnsupportedLayer(
                f"CROWN does not support nn.ReLU(inplace=True) on a residual block's input (layer {node.name}, "
                f"{where}): it overwrites the input the other branch reads; use inplace=False",
                "ReLU",
            )
        if node.body is not None or not isinstance(node.layer, _PASS_THROUGH):
            return


def _walk(module: nn.Module, name: str) -> list[_Node]:
    """The nodes of ``module`` (named ``name``): nested ``nn.Sequential``s flattened, each layer checked."""
    if alters_forward(module):
        where = f"layer {name}" if name else "the model"
        raise UnsupportedLayer(
            f"CROWN reads layers' parameters and would bypass the forward hooks or the instance-level forward of "
            f"{where} ({type(module).__name__}); remove them (e.g. torch.nn.utils.prune.remove) or use method='ibp'",
            type(module).__name__,
        )
    if type(module) is nn.Sequential:
        prefix = f"{name}." if name else ""
        return [node for child, layer in module.named_children() for node in _walk(layer, prefix + child)]
    if type(module) is Residual:
        shortcut = [] if module.shortcut is None else _walk(module.shortcut, f"{name}.shortcut")
        body = _walk(module.body, f"{name}.body")
        for branch in (body, shortcut):
            _check_no_inplace(branch, f"residual block {name or 'at the top'}")
        return [_Node(name, module, body, shortcut)]
    _check_layer(module, name)
    return [_Node(name, module)]


def _layers(model: nn.Module) -> list[_Node]:
    """The nodes of an ``nn.Sequential`` model, after checking that every layer is supported."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayer(
            f"CROWN supports nn.Sequential models only, got {type(model).__name__}; use method='ibp'",
            type(model).__name__,
        )
    return _walk(model, "")


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


# -------------------------------------------------------------------------------------------- patches
@dataclass(eq=False)
class _Patches:
    """Coefficients of ``S`` linear functions of a ``(C, H, W)`` map, each non-zero on one window only.

    Row ``s`` of sample ``b`` is ``p[b, s]``, a window stored channels-last (``(ph, pw, C)``: gathering a
    map's values at the windows then copies whole rows of ``C`` contiguous values), placed with its
    top-left corner at ``(gi * stride[0] - offset[0], gj * stride[1] - offset[1])``: ``(gi, gj)`` is the
    row's neuron on the specification's ``grid``, ``stride``/``offset`` accumulate the strides and
    paddings crossed since. ``dirty``: some entries may lie off the map (on zero padding); they must be
    masked before a bias or another layer reads them (a ReLU's zero-padded relaxation and the zero-padded
    input box ignore them anyway).
    """

    p: torch.Tensor
    gi: torch.Tensor
    gj: torch.Tensor
    grid: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    dirty: bool = False

    @property
    def window(self) -> tuple[int, int]:
        """``(ph, pw)``."""
        return self.p.shape[2], self.p.shape[3]

    def moved(self, p: torch.Tensor, stride: tuple[int, int], offset: tuple[int, int], dirty: bool) -> _Patches:
        """The same rows with new windows ``p`` at a new placement."""
        return _Patches(p, self.gi, self.gj, self.grid, stride, offset, dirty)

    def same_windows(self, other: object) -> bool:
        """Whether ``other`` has its windows at the same places (so gathered tensors can be shared)."""
        return (
            isinstance(other, _Patches)
            and other.gi is self.gi
            and (other.grid, other.stride, other.offset, other.window)
            == (self.grid, self.stride, self.offset, self.window)
        )


#: A coefficient tensor: dense ``(B, S, *shape)`` or per-row windows.
_Coef = torch.Tensor | _Patches


def _window_index(a: _Patches, hw: tuple[int, int]) -> tuple[tuple[int, int, int, int], int, torch.Tensor]:
    """Where the windows of ``a`` lie on an ``hw`` map zero-padded to hold them all.

    Returns the padding ``(left, right, top, bottom)``, the padded width, and each window entry's flat
    index into the padded map, ``(B, S, ph, pw)``.
    """
    (h, w), (ph, pw) = hw, a.window
    (gh, gw), (sy, sx), (oy, ox) = a.grid, a.stride, a.offset
    top, left = max(oy, 0), max(ox, 0)
    bottom, right = max(0, (gh - 1) * sy - oy + ph - h), max(0, (gw - 1) * sx - ox + pw - w)
    wp = left + w + right
    rows = (a.gi * sy - oy + top).unsqueeze(-1) + torch.arange(ph, device=a.gi.device)
    cols = (a.gj * sx - ox + left).unsqueeze(-1) + torch.arange(pw, device=a.gj.device)
    return (left, right, top, bottom), wp, rows.unsqueeze(-1) * wp + cols.unsqueeze(-2)


def _gather(maps: list[torch.Tensor], a: _Patches) -> list[torch.Tensor]:
    """Each ``(B, C, H, W)`` map (one per sample) at the windows of ``a``: ``(B, S, ph, pw, C)``, zero off-map.

    One ``index_select`` of whole channel rows per map (ten times faster on CPU than gathering along a
    non-leading dimension).
    """
    b, c, h, w = maps[0].shape
    s, (ph, pw) = a.p.shape[1], a.window
    pads, wp, idx = _window_index(a, (h, w))
    size = (h + pads[2] + pads[3]) * wp
    rows = (idx + size * torch.arange(b, device=idx.device).view(b, 1, 1, 1)).reshape(-1)
    out = []
    for m in maps:
        src = F.pad(m, pads).permute(0, 2, 3, 1).reshape(b * size, c)
        out.append(src.index_select(0, rows).view(b, s, ph, pw, c))
    return out


def _clean(a: _Patches, hw: tuple[int, int]) -> _Patches:
    """``a`` with its off-map entries (zero padding of an ``hw`` map) set to zero."""
    if not a.dirty:
        return a
    (h, w), (ph, pw) = hw, a.window
    rows = (a.gi * a.stride[0] - a.offset[0]).unsqueeze(-1) + torch.arange(ph, device=a.gi.device)
    cols = (a.gj * a.stride[1] - a.offset[1]).unsqueeze(-1) + torch.arange(pw, device=a.gj.device)
    inside = ((rows >= 0) & (rows < h)).unsqueeze(-1) & ((cols >= 0) & (cols < w)).unsqueeze(-2)
    return a.moved(a.p * inside.unsqueeze(-1).to(a.p.dtype), a.stride, a.offset, False)


def _to_dense(a: _Patches, shape: torch.Size) -> torch.Tensor:
    """The dense ``(B, S, C, H, W)`` form of ``a``: each window scattered to its place, off-map entries dropped."""
    b, s, ph, pw, c = a.p.shape
    h, w = shape[-2:]
    (left, _, top, bottom), wp, idx = _window_index(a, (h, w))
    full = a.p.new_zeros(b, s, (top + h + bottom) * wp, c)
    full = full.scatter(2, idx.reshape(b, s, ph * pw, 1).expand(b, s, ph * pw, c), a.p.reshape(b, s, ph * pw, c))
    return full.view(b, s, -1, wp, c)[:, :, top : top + h, left : left + w].permute(0, 1, 4, 2, 3)


def _one_hot_patches(idx: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> _Patches:
    """Rows ``e_n`` for the flat neuron indices ``idx`` (``(B, S)``) of a ``(C, H, W)`` map, as 1x1 windows."""
    c, h, w = shape
    pos = idx % (h * w)
    p = F.one_hot(idx // (h * w), c).to(dtype)
    return _Patches(p[:, :, None, None, :], pos // w, pos % w, (h, w), (1, 1), (0, 0))


def _add_coef(x: _Coef, y: _Coef, shape: torch.Size) -> _Coef:
    """``x + y`` for two coefficient tensors of the same rows on a ``shape`` map (windows merged if possible)."""
    if isinstance(x, _Patches) and isinstance(y, _Patches) and x.stride == y.stride and x.gi is y.gi:
        oy, ox = max(x.offset[0], y.offset[0]), max(x.offset[1], y.offset[1])
        places = [(oy - a.offset[0], ox - a.offset[1], a) for a in (x, y)]
        ph = max(top + a.window[0] for top, _, a in places)
        pw = max(left + a.window[1] for _, left, a in places)
        px, py = (
            F.pad(a.p, (0, 0, left, pw - left - a.window[1], top, ph - top - a.window[0])) for top, left, a in places
        )
        return x.moved(px + py, x.stride, (oy, ox), x.dirty or y.dirty)
    if isinstance(x, _Patches):
        x = _to_dense(x, shape)
    if isinstance(y, _Patches):
        y = _to_dense(y, shape)
    return x + y


def _row_numel(a: _Coef) -> int:
    """Elements per row (per sample and specification) of a coefficient tensor."""
    t = a.p if isinstance(a, _Patches) else a
    return math.prod(t.shape[2:])


# ---------------------------------------------------------------------------------------- affine adjoints
def _diagonal(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of a per-channel affine layer (BatchNorm in eval mode, Normalize), ``(C,)`` or ``(1,)``."""
    if isinstance(layer, Normalize):
        return layer.scale_shift(2)
    scale = torch.rsqrt(layer.running_var + layer.eps)
    if layer.weight is not None:
        scale = scale * layer.weight
    shift = -layer.running_mean * scale
    if layer.bias is not None:
        shift = shift + layer.bias
    return scale, shift


def _conv_geometry(layer: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """``(stride, padding, dilation)`` of a Conv2d as pairs (``padding="valid"`` is no padding)."""
    padding = (0, 0) if isinstance(layer.padding, str) else tuple(layer.padding)
    return tuple(layer.stride), padding, tuple(layer.dilation)


#: A window's transposed convolution runs as one GEMM with its (window in x window out) matrix while the
#: matrix has at most this many entries and costs at most ``_WINDOW_GEMM_RATIO`` times the convolution's
#: multiply-adds: on CPU, ``conv_transpose2d`` of many tiny images (e.g. DM-small's 16x4x4 -> 1x10x10
#: windows) is an order of magnitude slower per multiply-add than a GEMM (0.33 s against 0.05 s).
_WINDOW_GEMM_ENTRIES = 2**20
_WINDOW_GEMM_RATIO = 16

#: A dense convolution adjoint with at most this many input channels (and no groups) runs as GEMM + fold.
_FOLD_CHANNELS = 4


def _window_matrix(
    weight: torch.Tensor,
    window: tuple[int, int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor | None:
    """``conv_transpose2d`` of one channels-last window ``(ph, pw, C)`` as a matrix ``(ph pw C, ph', pw', C')``.

    ``None`` where the GEMM would cost much more than the convolution (see ``_WINDOW_GEMM_RATIO``). Built
    by transposed-convolving the identity, so it is the convolution's own arithmetic, and differentiable.
    """
    ph, pw, c = window
    k_out = c * ph * pw
    kh, kw = weight.shape[-2:]
    out_h, out_w = (ph - 1) * stride[0] + dilation[0] * (kh - 1) + 1, (pw - 1) * stride[1] + dilation[1] * (kw - 1) + 1
    conv_macs = k_out * weight.shape[1] * kh * kw
    if k_out * weight.shape[1] * groups * out_h * out_w > min(_WINDOW_GEMM_ENTRIES, _WINDOW_GEMM_RATIO * conv_macs):
        return None
    eye = torch.eye(k_out, dtype=weight.dtype, device=weight.device).reshape(k_out, ph, pw, c).permute(0, 3, 1, 2)
    return F.conv_transpose2d(eye, weight, None, stride, 0, 0, groups, dilation).permute(0, 2, 3, 1)


def _transposed_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    size: tuple[int, int],
) -> torch.Tensor:
    """The adjoint of a convolution: ``conv_transpose2d(x, weight)`` with output size ``size``.

    With few input channels (a first layer) it runs as a GEMM to kernel columns and a col2im (``F.fold``):
    CPU ``conv_transpose2d`` with 1-4 output channels is three times slower (11 ms against 3.5 ms for
    DM-small's first conv on 640 maps).
    """
    kh, kw = weight.shape[-2:]
    if groups == 1 and weight.shape[1] <= _FOLD_CHANNELS:
        cols = x.flatten(2).transpose(1, 2) @ weight.flatten(1)  # (N, H W, C' kh kw)
        return F.fold(cols.transpose(1, 2), size, (kh, kw), dilation, padding, stride)
    h, w = x.shape[-2:]
    out_pad = (
        size[0] - ((h - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + 1),
        size[1] - ((w - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + 1),
    )
    return F.conv_transpose2d(x, weight, None, stride, padding, out_pad, groups, dilation)


def _conv_patches(
    a: _Patches,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    in_shape: torch.Size,
    out_shape: torch.Size,
) -> tuple[_Coef, torch.Tensor | None]:
    """A convolution's adjoint on windows: each window transposed-convolved on its own (no padding: the
    window simply moves by the padding), as one GEMM or one batched ``conv_transpose2d``."""
    a = _clean(a, out_shape[-2:])
    b, s, ph, pw, c = a.p.shape
    n = b * s
    kh, kw = weight.shape[-2:]
    if ph == pw == 1 and groups == 1 and dilation == (1, 1):  # one position: the kernel itself
        back = (a.p.reshape(n, c) @ weight.permute(0, 2, 3, 1).reshape(c, -1)).view(n, *weight.shape[2:], -1)
    else:
        matrix = _window_matrix(weight, (ph, pw, c), stride, dilation, groups)
        if matrix is not None:
            back = (a.p.reshape(n, -1) @ matrix.reshape(matrix.shape[0], -1)).view(n, *matrix.shape[1:])
        else:
            x = a.p.reshape(n, ph, pw, c).permute(0, 3, 1, 2)
            size = (
                (ph - 1) * stride[0] + dilation[0] * (kh - 1) + 1,
                (pw - 1) * stride[1] + dilation[1] * (kw - 1) + 1,
            )
            back = _transposed_conv(x, weight, stride, (0, 0), dilation, groups, size).permute(0, 2, 3, 1)
    d = None if bias is None else a.p.sum((2, 3)) @ bias
    placed = a.moved(
        back.reshape(b, s, *back.shape[1:]),
        (a.stride[0] * stride[0], a.stride[1] * stride[1]),
        (a.offset[0] * stride[0] + padding[0], a.offset[1] * stride[1] + padding[1]),
        padding != (0, 0),
    )
    if back.shape[1] * back.shape[2] >= in_shape[-2] * in_shape[-1]:  # as large as the map: go dense
        return _to_dense(placed, in_shape), d
    return placed, d


def _patches_back(
    layer: nn.Module, a: _Patches, in_shape: torch.Size, out_shape: torch.Size
) -> tuple[_Coef, torch.Tensor | None] | None:
    """The adjoint of ``layer`` on windows, or ``None`` when it has no window form (then it goes dense)."""
    if isinstance(layer, nn.Conv2d):
        st, pad, dil = _conv_geometry(layer)
        return _conv_patches(a, layer.weight, layer.bias, st, pad, dil, layer.groups, in_shape, out_shape)
    if isinstance(layer, nn.AvgPool2d):
        pair = nn.modules.utils._pair
        k, pad = pair(layer.kernel_size), pair(layer.padding)
        st = pair(layer.stride if layer.stride is not None else layer.kernel_size)
        if layer.ceil_mode or (any(pad) and not layer.count_include_pad):
            return None  # the divisor varies with the position: no convolution form
        c = out_shape[0]
        divisor = layer.divisor_override or k[0] * k[1]
        w = a.p.new_full((c, 1, *k), 1.0 / divisor)
        return _conv_patches(a, w, None, st, pad, (1, 1), c, in_shape, out_shape)
    if isinstance(layer, (nn.BatchNorm2d, Normalize)):
        a = _clean(a, out_shape[-2:])
        scale, shift = _diagonal(layer)
        return a.moved(a.p * scale, a.stride, a.offset, False), (a.p.sum((2, 3)) * shift).sum(-1)
    if isinstance(layer, (nn.Identity, nn.Dropout)):
        return a, None
    return None


def _affine_back(
    layer: nn.Module, a: _Coef, in_shape: torch.Size, out_shape: torch.Size
) -> tuple[_Coef, torch.Tensor | None]:
    """``(A', d)`` with ``A · layer(z) = A' · z + d`` for an affine ``layer``; ``a`` is ``(B, S, *out_shape)``."""
    if isinstance(a, _Patches):
        out = _patches_back(layer, a, in_shape, out_shape)
        if out is not None:
            return out
        a = _to_dense(a, out_shape)
    b, s = a.shape[:2]
    if isinstance(layer, nn.Linear):
        bias = None if layer.bias is None else (a * layer.bias).flatten(2).sum(-1)
        return a @ layer.weight, bias
    if isinstance(layer, nn.Conv2d):
        stride, padding, dilation = _conv_geometry(layer)
        flat = a.reshape(b * s, *out_shape)
        back = _transposed_conv(flat, layer.weight, stride, padding, dilation, layer.groups, in_shape[-2:])
        bias = None if layer.bias is None else torch.einsum("bschw,c->bs", a, layer.bias)
        return back.reshape(b, s, *in_shape), bias
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d, Normalize)):
        scale, shift = _diagonal(layer)
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


def _relu_relaxation(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CROWN ReLU relaxation as ``(lower slope, lower slope - upper slope, upper intercept)``.

    Upper line: slope ``u / (u - l)``, intercept ``-l u / (u - l)`` on unstable neurons; lower line: slope
    1 if ``u >= -l`` else 0 (adaptive); stable neurons: both lines are the ReLU itself (slope 1 or 0). The
    slope gap is what the backward step needs (see :func:`_back_relu`); it is zero on stable neurons.
    """
    unstable = (lower < 0) & (upper > 0)
    active = lower >= 0
    denom = torch.where(unstable, upper - lower, torch.ones_like(upper))
    up_slope = torch.where(unstable, upper / denom, active.to(upper.dtype))
    up_icpt = torch.where(unstable, -lower * upper / denom, torch.zeros_like(upper))
    low_slope = torch.where(unstable, (upper >= -lower).to(upper.dtype), active.to(upper.dtype))
    return low_slope, low_slope - up_slope, up_icpt


def _add(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
    if y is None:
        return x
    return y if x is None else x + y


def _rowdot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sum(x * y)`` over all but the first two dimensions (``y`` may broadcast over them), without forming
    ``x * y`` (a batched GEMV instead: five times faster on CPU)."""
    b, s = x.shape[:2]
    if y.shape[1] == 1 and s != 1:  # one row of y for every specification
        return torch.bmm(x.reshape(b, s, -1), y.reshape(y.shape[0], -1, 1).expand(b, -1, 1)).squeeze(-1)
    return torch.einsum("bsk,bsk->bs", x.reshape(b, s, -1), y.expand_as(x).reshape(b, s, -1))


def _relax_at(a: _Coef, relax: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The relaxation tensors ``(B, *shape)`` laid out like ``a``: gathered at its windows, or unsqueezed."""
    if isinstance(a, _Patches):
        return tuple(_gather(list(relax), a))
    return tuple(t.unsqueeze(1) for t in relax)


def _concretize(a: _Coef, box: Interval, lower: bool, cache: list | None = None) -> torch.Tensor:
    """``min`` (or ``max``) of ``A · x`` over ``box`` (centre ``c``, radius ``r``): ``A c ∓ |A| r``, ``(B, S)``.

    ``cache`` (a list) keeps the box gathered at ``a``'s windows for the other side, which has the same ones.
    """
    if isinstance(a, _Patches):
        cache = [] if cache is None else cache
        if not (cache and cache[0].same_windows(a)):
            cache[:] = [a, *_gather([box.center, box.radius], a)]
        c, r = cache[1], cache[2]
        val, rad = _rowdot(a.p, c), _rowdot(a.p.abs(), r)
    else:
        b, s = a.shape[:2]
        flat = a.reshape(b, s, -1)
        val = torch.bmm(flat, box.center.reshape(b, -1, 1)).squeeze(-1)
        rad = torch.bmm(flat.abs(), box.radius.reshape(b, -1, 1)).squeeze(-1)
    return val - rad if lower else val + rad


# ------------------------------------------------------------------------------------ backward passes
@dataclass
class _Lin:
    """Linear lower and upper bounds ``A · z + d`` (``None``: that side is not needed).

    ``a_l is a_u`` until the first ReLU: the affine adjoints are then computed once for both sides.
    """

    a_l: _Coef | None
    a_u: _Coef | None
    d_l: torch.Tensor | None = None
    d_u: torch.Tensor | None = None


#: Where a backward pass starts: ``(nodes, upto)`` pairs, innermost first; it crosses ``nodes[:upto]``
#: of each in turn (a layer inside a Residual's body: the body up to it, then the layers before the block).
_Path = list[tuple[list[_Node], int]]


def _back_affine(node: _Node, lin: _Lin) -> _Lin:
    shared = lin.a_l is lin.a_u
    a_l, a_u, d_l, d_u = lin.a_l, lin.a_u, lin.d_l, lin.d_u
    if a_l is not None:
        a_l, d = _affine_back(node.layer, a_l, node.in_shape, node.out_shape)
        d_l = _add(d_l, d)
        if shared:
            a_u, d_u = a_l, _add(d_u, d)
    if a_u is not None and not shared:
        a_u, d = _affine_back(node.layer, a_u, node.in_shape, node.out_shape)
        d_u = _add(d_u, d)
    return _Lin(a_l, a_u, d_l, d_u)


def _back_relu(node: _Node, lin: _Lin) -> _Lin:
    """ReLU adjoint. With the relaxation's lower line ``lo x`` and upper line ``up x + c``, the lower bound
    takes the lower line for positive coefficients and the upper one for negative ones (whose intercept
    enters the offset): ``A+ lo + A- up = A lo - A- (lo - up)``, offset ``A- c``; the upper bound the other
    way round: ``A lo - A+ (lo - up)``, offset ``A+ c``. Written so, each side costs two new tensors (the
    product ``A lo`` is updated in place: autograd keeps ``A`` and ``lo``, not the product)."""
    assert node.relax is not None
    a_l, a_u, d_l, d_u = lin.a_l, lin.a_u, lin.d_l, lin.d_u
    first = a_l if a_l is not None else a_u
    if first is None:
        return lin
    lo, gap, icpt = _relax_at(first, node.relax)
    shared = a_l is a_u
    base: torch.Tensor | None = None
    if a_l is not None:
        coef = a_l.p if isinstance(a_l, _Patches) else a_l
        neg = coef.clamp(max=0)
        base = coef * lo
        new = torch.addcmul(base, neg, gap, value=-1) if shared else base.addcmul_(neg, gap, value=-1)
        d_l = _add(d_l, _rowdot(neg, icpt))
        a_l = a_l.moved(new, a_l.stride, a_l.offset, False) if isinstance(a_l, _Patches) else new
    if a_u is not None:
        if not (shared or first is a_u or (isinstance(first, _Patches) and first.same_windows(a_u))):
            lo, gap, icpt = _relax_at(a_u, node.relax)
        coef = a_u.p if isinstance(a_u, _Patches) else a_u
        pos = coef.clamp(min=0)
        base = base if shared and base is not None else coef * lo
        new = base.addcmul_(pos, gap, value=-1)
        d_u = _add(d_u, _rowdot(pos, icpt))
        a_u = a_u.moved(new, a_u.stride, a_u.offset, False) if isinstance(a_u, _Patches) else new
    return _Lin(a_l, a_u, d_l, d_u)


def _back_residual(node: _Node, lin: _Lin, peak: list[int]) -> _Lin:
    """``A · (body(z) + shortcut(z))``: both branches backward from the same ``A``, then added."""
    assert node.body is not None
    start = _Lin(lin.a_l, lin.a_u)
    body = _back_nodes(node.body, len(node.body), start, peak)
    short = _back_nodes(node.shortcut, len(node.shortcut), start, peak)
    a_l = None if body.a_l is None else _add_coef(body.a_l, short.a_l, node.in_shape)
    if body.a_u is None:
        a_u = None
    elif body.a_u is body.a_l and short.a_u is short.a_l:
        a_u = a_l
    else:
        a_u = _add_coef(body.a_u, short.a_u, node.in_shape)
    d_l = _add(_add(lin.d_l, body.d_l), short.d_l)
    d_u = _add(_add(lin.d_u, body.d_u), short.d_u)
    return _Lin(a_l, a_u, d_l, d_u)


def _back_nodes(nodes: list[_Node], upto: int, lin: _Lin, peak: list[int]) -> _Lin:
    """``lin`` (on the output of ``nodes[:upto]``) carried back to the input of ``nodes``."""
    for node in reversed(nodes[:upto]):
        if node.body is not None:
            lin = _back_residual(node, lin, peak)
        elif isinstance(node.layer, nn.ReLU):
            lin = _back_relu(node, lin)
        else:
            lin = _back_affine(node, lin)
        for a in (lin.a_l, lin.a_u):
            if a is not None:
                peak[0] = max(peak[0], _row_numel(a))
    return lin


def _backward(
    path: _Path,
    box: Interval,
    spec: _Coef,
    need_lower: bool = True,
    need_upper: bool = True,
    peak: list[int] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """CROWN bounds ``(B, S)`` of ``spec · z`` over ``box``, ``z`` the point where ``path`` starts.

    ``peak[0]``, when given, is raised to the largest number of coefficient elements per row seen.
    """
    lin = _Lin(spec if need_lower else None, spec if need_upper else None)
    peak = [0] if peak is None else peak
    for nodes, upto in path:
        lin = _back_nodes(nodes, upto, lin, peak)
    box_at: list = []  # the box gathered at the windows once for both sides
    lower = upper = None
    if lin.a_l is not None:
        lower = _concretize(lin.a_l, box, lower=True, cache=box_at)
        lower = lower if lin.d_l is None else lower + lin.d_l
    if lin.a_u is not None:
        upper = _concretize(lin.a_u, box, lower=False, cache=box_at)
        upper = upper if lin.d_u is None else upper + lin.d_u
    return lower, upper


def _intersect(
    lower: torch.Tensor, upper: torch.Tensor, ibp_lower: torch.Tensor, ibp_upper: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lower, upper] ∩ [ibp_lower, ibp_upper]``; where rounding crosses them (or CROWN's are NaN, from
    an infinite box), the IBP bounds are kept."""
    lo, up = torch.maximum(lower, ibp_lower), torch.minimum(upper, ibp_upper)
    crossed = ~(lo <= up)
    return torch.where(crossed, ibp_lower, lo), torch.where(crossed, ibp_upper, up)


def _tighten(
    path: _Path,
    box: Interval,
    lower: torch.Tensor,
    upper: torch.Tensor,
    budget: int,
    widest: int,
    conv_mode: str,
    intersect: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN bounds of the unstable neurons where ``path`` starts (intersected with ``[lower, upper]`` if asked).

    Chunked over the neurons so that one coefficient tensor holds about ``budget`` elements: the first
    chunk assumes dense rows of ``widest`` elements; later ones use the largest row the first one met
    (windows are much smaller than dense maps).
    """
    b, shape = lower.shape[0], lower.shape[1:]
    n = math.prod(shape)
    lf, uf = lower.reshape(b, n), upper.reshape(b, n)
    unstable = (lf < 0) & (uf > 0)
    k = int(unstable.sum(1).max()) if b else 0
    if k == 0:
        return lower, upper
    # per sample, the indices of its unstable neurons first (padding: stable ones, bounded but not used)
    idx = torch.argsort((~unstable).to(torch.uint8), dim=1, stable=True)[:, :k]
    patches = conv_mode == "patches" and len(shape) == 3
    peak = [0]
    chunk = max(1, budget // (2 * b * widest))
    parts_l, parts_u = [], []
    start = 0
    while start < k:
        sub = idx[:, start : start + chunk]

        def run(sub: torch.Tensor = sub) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            if patches:
                spec: _Coef = _one_hot_patches(sub, shape, lower.dtype)
            else:
                spec = F.one_hot(sub, n).to(lower.dtype).reshape(b, sub.shape[1], *shape)
            return _backward(path, box, spec, peak=peak)

        # with autograd on, recompute each chunk in the backward pass instead of keeping its coefficients
        cl, cu = checkpoint(run, use_reentrant=False) if torch.is_grad_enabled() else run()
        parts_l.append(cl)
        parts_u.append(cu)
        start += sub.shape[1]
        if patches and peak[0]:
            chunk = max(1, budget // (2 * b * peak[0]))
    il, iu = lf.gather(1, idx), uf.gather(1, idx)
    cl, cu = torch.cat(parts_l, 1), torch.cat(parts_u, 1)
    if intersect:
        cl, cu = _intersect(cl, cu, il, iu)
    # the padding rows (stable neurons of samples with fewer unstable ones) keep their interval bounds, so
    # that a sample's bounds never depend on the other samples of the batch
    pad = ~unstable.gather(1, idx)
    cl, cu = torch.where(pad, il, cl), torch.where(pad, iu, cu)
    lf, uf = lf.scatter(1, idx, cl), uf.scatter(1, idx, cu)
    return lf.reshape(lower.shape), uf.reshape(upper.shape)


# ------------------------------------------------------------------------------------- forward pass
@dataclass
class _Forward:
    """State of the forward pass: the box, options, and whether interval bounds are still exact."""

    box: Interval
    method: str
    budget: int
    conv_mode: str
    intersect_intermediate: bool = False
    mixing: int = 0
    seen_relu: bool = False
    widest: int = 1

    def run(self, nodes: list[_Node], h: Interval, outer: _Path) -> Interval:
        """Interval bounds through ``nodes`` (the ReLUs' tightened by CROWN), recording shapes and relaxations.

        ``outer``: the path from the input of ``nodes`` back to the network input.
        """
        for i, node in enumerate(nodes):
            node.in_shape = h.shape[1:]
            if node.body is not None:
                h = self._residual(node, h, [(nodes, i)] + outer)
            else:
                if isinstance(node.layer, nn.ReLU):
                    h = self._relu(node, h, [(nodes, i)] + outer)
                elif isinstance(node.layer, _MIXING):
                    self.mixing += 1
                h = node.layer(h)
            if h.shape[0] != self.box.shape[0]:
                kind = type(node.layer).__name__
                raise UnsupportedLayer(f"CROWN: layer {node.name} changed the batch dimension", kind)
            node.out_shape = h.shape[1:]
            self.widest = max(self.widest, math.prod(node.out_shape))
        return h

    def _relu(self, node: _Node, h: Interval, path: _Path) -> Interval:
        lower, upper = h.lower, h.upper
        # IBP is exact for one affine map (and diagonal ones around it): CROWN would change nothing
        if self.method == "crown" and (self.seen_relu or self.mixing > 1):
            ibp_lower, ibp_upper = lower, upper
            lower, upper = _tighten(path, self.box, lower, upper, self.budget, self.widest, self.conv_mode,
                                    self.intersect_intermediate)
            # CROWN's float bounds of a (nearly) fixed neuron can cross by rounding, and an infinite box
            # makes them NaN (inf - inf): keep IBP's there
            crossed = ~(lower <= upper)
            lower, upper = torch.where(crossed, ibp_lower, lower), torch.where(crossed, ibp_upper, upper)
            h = Interval._from_lu(lower, upper)
        node.relax = _relu_relaxation(lower, upper)
        self.seen_relu = True
        return h

    def _residual(self, node: _Node, h: Interval, outer: _Path) -> Interval:
        assert node.body is not None
        mixing, seen = self.mixing, self.seen_relu
        body = self.run(node.body, h, outer)
        body_mixing, body_seen = self.mixing, self.seen_relu
        self.mixing, self.seen_relu = mixing, seen
        short = self.run(node.shortcut, h, outer)
        if body.shape != short.shape:
            raise UnsupportedLayer(
                f"CROWN: the body and shortcut of Residual {node.name} give shapes {tuple(body.shape)} and "
                f"{tuple(short.shape)} (broadcasting is not supported)",
                "Residual",
            )
        # two branches summed: interval bounds are no longer exact
        self.mixing, self.seen_relu = max(body_mixing, self.mixing, 2), body_seen or self.seen_relu
        return body + short


def _prime_allocator(device: torch.device) -> None:
    """Once per process on CPU, allocate and free a 24 MB block (untouched: no page is faulted in).

    Why: glibc's ``malloc`` serves a block above its ``mmap`` threshold (initially 128 KB) with fresh
    pages from the system, faulted in on first touch, and returns it on free; freeing such a block raises
    the threshold to its size. CROWN's chunks allocate and free many same-sized temporaries of a few MB,
    so until some larger block has been freed every one of them is fresh memory: DM-small at batch 128
    then faults in about 3 GB in its first call (4.5 s against 2.6 s for the next ones). Freeing one
    24 MB block first lets glibc keep and reuse them (first call 3.5 s). Other allocators ignore this.
    """
    global _primed
    if _primed or device.type != "cpu":
        return
    _primed = True
    del_me = torch.empty(_PRIME_BYTES, dtype=torch.uint8)
    del del_me


def crown_bounds(
    model: nn.Module,
    box: Interval,
    spec: torch.Tensor | None = None,
    method: str = "crown",
    need_lower: bool = True,
    need_upper: bool = True,
    intersect: bool = True,
    budget: int = DEFAULT_BUDGET,
    conv_mode: str = "patches",
    intersect_intermediate: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """CROWN lower and upper bounds of ``spec · model(x)`` for every ``x`` in ``box`` (Zhang et al. 2018).

    Args:
        model: an ``nn.Sequential`` (nested ones are flattened) of :data:`SUPPORTED_LAYERS`, including
            :class:`certify.models.Residual` blocks whose branches are made of them.
        box: the input box, batch first.
        spec: ``(B, S, *out_shape)`` specification; ``None`` bounds the outputs themselves, and the
            results then have the output's shape ``(B, *out_shape)``; otherwise they are ``(B, S)``.
        method: ``"crown"`` (intermediate bounds by CROWN) or ``"crown-ibp"`` (by IBP).
        need_lower, need_upper: skip the half that is not needed (returned as ``None``).
        intersect: intersect the result with the interval bounds (never looser than IBP). ``False``
            returns the raw CROWN bounds of the last layer.
        intersect_intermediate: also intersect the CROWN pre-activation bounds of the unstable neurons
            with their interval bounds before relaxing them (sound, sometimes tighter). ``False``, the
            default, is the published algorithm as auto_LiRPA runs it: interval bounds only pick the
            unstable neurons, whose bounds are then CROWN's alone.
        budget: memory budget, in elements per coefficient tensor, for the intermediate bounds.
        conv_mode: ``"patches"`` (per-neuron windows for intermediate bounds of convolutional layers) or
            ``"dense"``; the same bounds up to float rounding, ``"patches"`` is much faster.

    Raises:
        UnsupportedLayer: for a non-``Sequential`` model or an unsupported layer, naming it.
        ValueError: for an unknown method or inside :func:`intervals.rigorous` (CROWN is not
            outward-rounded).
    """
    if method not in CROWN_METHODS:
        raise ValueError(f"unknown CROWN method {method!r}; available: {', '.join(CROWN_METHODS)}")
    if conv_mode not in CONV_MODES:
        raise ValueError(f"unknown conv_mode {conv_mode!r}; available: {', '.join(CONV_MODES)}")
    if is_rigorous():
        raise ValueError(
            "CROWN bounds are not outward-rounded: not available inside intervals.rigorous(); use method='ibp'"
        )
    nodes = _layers(model)
    _prime_allocator(box.device)
    forward = _Forward(box, method, budget, conv_mode, intersect_intermediate, widest=math.prod(box.shape[1:]))
    # a copy: a top-level nn.ReLU(inplace=True) changes its input box in place, and the backward pass
    # concretises over the input box
    h = forward.run(nodes, box.snapshot(), [])
    b = box.shape[0]
    out_shape = h.shape[1:]
    n_out = math.prod(out_shape)
    if spec is None:
        eye = torch.eye(n_out, dtype=box.dtype, device=box.device).reshape(n_out, *out_shape)
        s_spec = eye.unsqueeze(0).expand(b, *eye.shape)
    else:
        s_spec = spec.to(box.dtype)
        if s_spec.dim() < 2 or s_spec.shape[0] != b or s_spec.shape[2:] != out_shape:
            raise ValueError(f"spec must have shape (B={b}, S, *{tuple(out_shape)}), got {tuple(spec.shape)}")
    lower, upper = _backward([(nodes, len(nodes))], box, s_spec, need_lower, need_upper)
    if intersect:
        # interval bounds of spec · h, h the (tightened) IBP output box: centre/radius form
        flat = s_spec.reshape(b, s_spec.shape[1], -1)
        # an unbounded box can hold NaN in centre/radius form (0 * inf in a radius product, inf - inf in a
        # centre): such a coordinate is unbounded, centre 0 and radius inf; the same NaN from a zero spec
        # coefficient times an infinite radius is replaced by inf too (sound: its true share is 0)
        unbounded = ~(h.center.isfinite() & h.radius.isfinite())
        hc, hr = h.center.masked_fill(unbounded, 0.0), h.radius.masked_fill(unbounded, math.inf)
        c = torch.bmm(flat, hc.reshape(b, -1, 1)).squeeze(-1)
        r = torch.bmm(flat.abs(), hr.reshape(b, -1, 1)).squeeze(-1).nan_to_num(nan=math.inf, posinf=math.inf)
        if lower is not None and upper is not None:
            lower, upper = _intersect(lower, upper, c - r, c + r)
        elif lower is not None:  # fmax/fmin: a NaN CROWN bound (an infinite box) yields to the interval one
            lower = torch.fmax(lower, c - r)
        elif upper is not None:
            upper = torch.fmin(upper, c + r)
    # NaN (inf - inf on an unbounded box) means "no bound": say so soundly
    lower = None if lower is None else lower.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    upper = None if upper is None else upper.nan_to_num(nan=math.inf, posinf=math.inf, neginf=-math.inf)
    if spec is None:
        lower = None if lower is None else lower.reshape(b, *out_shape)
        upper = None if upper is None else upper.reshape(b, *out_shape)
    return lower, upper
