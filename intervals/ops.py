"""Custom torch ops for the interval layers that dominate IBP cost, registered with ``torch.library``.

``hypercert::interval_linear``              centre/radius linear layer with point weights (given ``|W|``)
``hypercert::interval_linear_fused``        the same, taking ``|W|`` from ``W`` itself (fused kernels)
``hypercert::interval_linear_fused_backward``  its gradients
``hypercert::interval_linear_iw``           centre/radius linear layer with interval weights (Rump's product)
``hypercert::interval_linear_iw_backward``  its gradients
``hypercert::interval_relu``                ReLU of a centre/radius box, saving nothing extra for backward

Each has a pure-torch reference implementation (the CPU path, and what CI tests), a fake (meta)
implementation so it composes with ``torch.compile``, and an explicit autograd formula. Rigorous
mode does not use them (its rules round outward explicitly). Device-specific fused kernels register
as further implementations of the same ops, so every caller dispatches to them: on a machine with a
CUDA device and triton installed, :func:`register_cuda_kernels` (run at import) registers the
Triton kernels of :mod:`intervals.triton_kernels` for the linear ops and their backward ops;
elsewhere nothing changes.

Example:
    >>> import torch
    >>> from intervals.ops import interval_linear
    >>> w = torch.eye(3)
    >>> c, r = interval_linear(torch.zeros(2, 3), torch.ones(2, 3), w, w.abs(), None)
    >>> r
    tensor([[1., 1., 1.],
            [1., 1., 1.]])
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cuda_kernels_registered",
    "fast_interval_relu",
    "interval_linear",
    "interval_linear_fused",
    "interval_linear_fused_backward",
    "interval_linear_fused_backward_reference",
    "interval_linear_fused_reference",
    "interval_linear_iw",
    "interval_linear_iw_backward",
    "interval_linear_iw_backward_reference",
    "interval_linear_iw_reference",
    "interval_linear_reference",
    "interval_relu",
    "interval_relu_reference",
    "register_cuda_kernels",
    "use_fused_linear",
]


def _flat2(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def _sum_to_bias(g: Tensor) -> Tensor:
    return g.reshape(-1, g.shape[-1]).sum(0)


def _backward_op_pays(*tensors: Tensor) -> bool:
    """Whether an autograd formula should call its backward op rather than the op's reference.

    Only a non-CPU device can have a fused kernel registered on the backward op; on CPU the op's
    implementation *is* the reference, so calling it directly gives the same numbers without the
    op's dispatch (about 10 us a call, see ``_custom_op_pays``).
    """
    return any(t.device.type != "cpu" for t in tensors)


def _pick(grads: list[Tensor], wanted: tuple[bool, ...]) -> list[Optional[Tensor]]:
    """Spread the gradients a backward op returned (only the wanted ones, in order) over the inputs."""
    it = iter(grads)
    return [next(it) if w else None for w in wanted]


# ---------------------------------------------------------------------------- point weights
def scaled_gemm(x: Tensor, w: Tensor, bias: Optional[Tensor], scale: float) -> Tensor:
    """``scale * x @ w.T + bias`` as one fused GEMM (bias and scale folded into ``addmm``)."""
    x2 = x.reshape(-1, x.shape[-1])
    if bias is None:
        out = torch.mm(x2, w.t()) if scale == 1.0 else torch.addmm(x2.new_zeros(()), x2, w.t(), beta=0, alpha=scale)
    else:
        out = torch.addmm(bias, x2, w.t(), alpha=scale)
    return out.reshape(*x.shape[:-1], w.shape[0])


def interval_linear_reference(
    center: Tensor, radius: Tensor, weight: Tensor, abs_weight: Tensor, bias: Optional[Tensor], scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Composite (autograd-by-torch) form of :func:`interval_linear`, used under ``torch.compile``."""
    return scaled_gemm(center, weight, bias, scale), scaled_gemm(radius, abs_weight, None, scale)


@torch.library.custom_op("hypercert::interval_linear", mutates_args=())
def interval_linear(
    center: Tensor, radius: Tensor, weight: Tensor, abs_weight: Tensor, bias: Optional[Tensor], scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """``(s W c + b, s |W| r)``: the image of the box ``[s(c - r), s(c + r)]`` under ``x -> W x + b``.

    ``abs_weight`` is ``|W|``, passed in so callers can cache it across calls and so autograd
    reaches ``W`` through it. ``scale`` folds a factor (e.g. 1/2 for sum/difference inputs
    ``l + u``, ``u - l``) into the GEMMs at no cost.
    """
    return interval_linear_reference(center, radius, weight, abs_weight, bias, scale)


@interval_linear.register_fake
def _interval_linear_fake(center, radius, weight, abs_weight, bias, scale=1.0):  # noqa: ANN001, ANN202
    shape = (*center.shape[:-1], weight.shape[0])
    return center.new_empty(shape), radius.new_empty(shape)


def _interval_linear_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    center, radius, weight, abs_weight, bias, scale = inputs
    ctx.save_for_backward(center, radius, weight, abs_weight)
    ctx.has_bias = bias is not None
    ctx.scale = scale


def _interval_linear_backward(ctx, grad_c: Tensor, grad_r: Tensor):  # noqa: ANN001, ANN202
    center, radius, weight, abs_weight = ctx.saved_tensors
    s = ctx.scale
    need = ctx.needs_input_grad
    g_center = g_radius = g_weight = g_abs = g_bias = None
    if need[0]:
        g_center = (grad_c @ weight) * s if s != 1.0 else grad_c @ weight
    if need[1]:
        g_radius = (grad_r @ abs_weight) * s if s != 1.0 else grad_r @ abs_weight
    if need[2]:
        g_weight = torch.mm(_flat2(grad_c).t(), _flat2(center))
        if s != 1.0:
            g_weight.mul_(s)
    if need[3]:
        g_abs = torch.mm(_flat2(grad_r).t(), _flat2(radius))
        if s != 1.0:
            g_abs.mul_(s)
    if ctx.has_bias and need[4]:
        g_bias = _sum_to_bias(grad_c)
    return g_center, g_radius, g_weight, g_abs, g_bias, None


interval_linear.register_autograd(_interval_linear_backward, setup_context=_interval_linear_setup)


# ---------------------------------------------------------------------------- point weights, |W| fused in
# Elements per block of the weight-gradient temporaries and of |W| (1 MiB of float32).
_BLOCK_ELEMENTS = 1 << 18
_MIN_BLOCK_ROWS = 64  # rows (or columns) per |W| block at least, so that each block's GEMM stays efficient


def _abs_blocks(weight: Tensor) -> Optional[tuple[int, int]]:
    """How to take ``|W|`` a block at a time: ``(0, rows)`` or ``(1, columns)``, or ``None`` for whole.

    A large ``W`` makes ``|W|`` a full extra write and read of weight-sized memory (and, for tens of
    megabytes, fresh pages to fault in) next to a GEMM that is often memory-bound; block by block the
    absolute values stay in cache. A tall ``W`` (a hypernetwork head: 78,000 x 100) is cut into row
    blocks, each giving its own output columns; a wide one (DM-large's 512 x 32,768) into column
    blocks, whose partial products are summed into one small output.
    Under ``torch.compile`` the whole form is traced (Inductor fuses the ``abs`` itself).
    """
    if weight.numel() <= 4 * _BLOCK_ELEMENTS or torch.compiler.is_compiling():
        return None
    n_out, n_in = weight.shape
    rows = _BLOCK_ELEMENTS // max(1, n_in)
    if rows >= _MIN_BLOCK_ROWS:
        return (0, rows) if rows < n_out else None
    # Column blocks round every partial product to the weight's dtype before summing them: fine
    # in float32/float64, but in half precision that would loosen the radius several-fold.
    if weight.element_size() < 4:
        return None
    cols = max(_MIN_BLOCK_ROWS, _BLOCK_ELEMENTS // max(1, n_out))
    return (1, cols) if cols < n_in else None


def _radius_product(radius: Tensor, weight: Tensor, scale: float) -> Tensor:
    """``s r |W|^T`` (the radius of a point-weight layer), ``|W|`` taken in blocks when that pays."""
    blocks = _abs_blocks(weight)
    if blocks is None:
        return scaled_gemm(radius, weight.abs(), None, scale)
    dim, size = blocks
    if dim == 0:
        parts = [scaled_gemm(radius, weight[i:i + size].abs(), None, scale) for i in range(0, weight.shape[0], size)]
        return torch.cat(parts, dim=-1)
    r2 = _flat2(radius)
    out = scaled_gemm(r2[:, :size], weight[:, :size].abs(), None, scale)
    for j in range(size, weight.shape[1], size):
        out.addmm_(r2[:, j:j + size], weight[:, j:j + size].abs().t(), alpha=scale)
    return out.reshape(*radius.shape[:-1], weight.shape[0])


def _radius_input_grad(grad_r: Tensor, weight: Tensor, scale: float) -> Tensor:
    """``s g_r |W|`` (the gradient of the radius product w.r.t. the input radius), blocked like
    :func:`_radius_product`."""
    blocks = _abs_blocks(weight)
    if blocks is None:
        out = grad_r @ weight.abs()
        return out * scale if scale != 1.0 else out
    dim, size = blocks
    g2 = _flat2(grad_r)
    if dim == 0:
        out = g2.new_zeros(g2.shape[0], weight.shape[1])
        for i in range(0, weight.shape[0], size):
            out.addmm_(g2[:, i:i + size], weight[i:i + size].abs(), alpha=scale)
    else:
        out = g2.new_empty(g2.shape[0], weight.shape[1])
        for j in range(0, weight.shape[1], size):
            out[:, j:j + size] = g2 @ weight[:, j:j + size].abs()
        if scale != 1.0:
            out.mul_(scale)
    return out.reshape(*grad_r.shape[:-1], weight.shape[1])


def interval_linear_fused_reference(
    center: Tensor, radius: Tensor, weight: Tensor, bias: Optional[Tensor], scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Torch form of :func:`interval_linear_fused`: two GEMMs, ``|W|`` taken whole or, for a large
    ``W``, a block at a time (:func:`_abs_blocks`)."""
    return scaled_gemm(center, weight, bias, scale), _radius_product(radius, weight, scale)


@torch.library.custom_op("hypercert::interval_linear_fused", mutates_args=())
def interval_linear_fused(
    center: Tensor, radius: Tensor, weight: Tensor, bias: Optional[Tensor], scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """``(s W c + b, s |W| r)`` like :func:`interval_linear`, with ``|W|`` derived from ``W`` inside.

    The op exists for fused kernels that take ``|W|`` tile by tile in registers (the Triton kernel on
    CUDA): no ``|W|`` tensor is written, read back or saved for backward. Its default implementation
    (CPU and any device without such a kernel) is :func:`interval_linear_fused_reference`.

    Example:
        >>> import torch
        >>> w = torch.tensor([[1.0, -2.0]])
        >>> interval_linear_fused(torch.zeros(1, 2), torch.ones(1, 2), w, None, 1.0)
        (tensor([[0.]]), tensor([[3.]]))
    """
    return interval_linear_fused_reference(center, radius, weight, bias, scale)


@interval_linear_fused.register_fake
def _interval_linear_fused_fake(center, radius, weight, bias, scale=1.0):  # noqa: ANN001, ANN202
    shape = (*center.shape[:-1], weight.shape[0])
    return center.new_empty(shape), radius.new_empty(shape)


def interval_linear_fused_backward_reference(
    grad_c: Tensor,
    grad_r: Tensor,
    center: Tensor,
    radius: Tensor,
    weight: Tensor,
    scale: float,
    need_center: bool,
    need_radius: bool,
    need_weight: bool,
) -> list[Tensor]:
    """Torch form of :func:`interval_linear_fused_backward`."""
    s = scale
    out: list[Tensor] = []
    if need_center:
        out.append((grad_c @ weight) * s if s != 1.0 else grad_c @ weight)
    if need_radius:
        out.append(_radius_input_grad(grad_r, weight, s))
    if need_weight:
        # d|W|/dW = sign(W) (0 at 0, as torch's abs backward). Row blocks keep the W-sized temporaries
        # (g_r^T r and sign(W)) small: for a wide layer (DM-large's 512 x 32768) each would be as large
        # as the weight gradient itself, and they would set the peak memory of the whole backward.
        gc, gr, c2, r2 = _flat2(grad_c), _flat2(grad_r), _flat2(center), _flat2(radius)
        g_weight = torch.mm(gc.t(), c2)
        rows = max(1, _BLOCK_ELEMENTS // max(1, weight.shape[1]))
        for i in range(0, weight.shape[0], rows):
            g_weight[i:i + rows].addcmul_(weight[i:i + rows].sign(), torch.mm(gr[:, i:i + rows].t(), r2))
        if s != 1.0:
            g_weight.mul_(s)
        out.append(g_weight)
    return out


@torch.library.custom_op("hypercert::interval_linear_fused_backward", mutates_args=())
def interval_linear_fused_backward(
    grad_c: Tensor,
    grad_r: Tensor,
    center: Tensor,
    radius: Tensor,
    weight: Tensor,
    scale: float,
    need_center: bool,
    need_radius: bool,
    need_weight: bool,
) -> list[Tensor]:
    """Gradients of :func:`interval_linear_fused` w.r.t. centre, radius and weight (bias: ``grad_c`` summed).

    ``g_center = s g_c W``, ``g_radius = s g_r |W|``, ``g_W = s (g_c^T c + sign(W) * (g_r^T r))``.
    Returns only the gradients asked for (``need_*``), in that order.
    """
    return interval_linear_fused_backward_reference(
        grad_c, grad_r, center, radius, weight, scale, need_center, need_radius, need_weight
    )


@interval_linear_fused_backward.register_fake
def _interval_linear_fused_backward_fake(  # noqa: ANN202
    grad_c, grad_r, center, radius, weight, scale, need_center, need_radius, need_weight  # noqa: ANN001
):
    out = []
    if need_center:
        out.append(grad_c.new_empty(center.shape))
    if need_radius:
        out.append(grad_r.new_empty(radius.shape))
    if need_weight:
        out.append(weight.new_empty(weight.shape))
    return out


def _interval_linear_fused_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    center, radius, weight, bias, scale = inputs
    ctx.save_for_backward(center, radius, weight)  # no |W|: the backward takes it from W again
    ctx.has_bias = bias is not None
    ctx.scale = scale


def _interval_linear_fused_autograd(ctx, grad_c: Tensor, grad_r: Tensor):  # noqa: ANN001, ANN202
    center, radius, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    wanted = (need[0], need[1], need[2])
    g_center = g_radius = g_weight = None
    if any(wanted):
        args = (grad_c, grad_r, center, radius, weight, ctx.scale, *wanted)
        use_op = _backward_op_pays(grad_c, weight)
        grads = interval_linear_fused_backward(*args) if use_op else interval_linear_fused_backward_reference(*args)
        g_center, g_radius, g_weight = _pick(grads, wanted)
    g_bias = _sum_to_bias(grad_c) if ctx.has_bias and need[3] else None
    return g_center, g_radius, g_weight, g_bias, None


interval_linear_fused.register_autograd(_interval_linear_fused_autograd, setup_context=_interval_linear_fused_setup)


# ---------------------------------------------------------------------------- interval weights
def interval_linear_iw_reference(
    x_center: Tensor,
    x_radius: Tensor,
    w_center: Tensor,
    w_radius: Tensor,
    b_center: Optional[Tensor],
    b_radius: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """Torch form of :func:`interval_linear_iw`: three ``F.linear`` calls."""
    c = F.linear(x_center, w_center, b_center)
    r = F.linear(x_radius, w_center.abs()) + F.linear(x_center.abs() + x_radius, w_radius)
    if b_radius is not None:
        r = r + b_radius
    return c, r


@torch.library.custom_op("hypercert::interval_linear_iw", mutates_args=())
def interval_linear_iw(
    x_center: Tensor,
    x_radius: Tensor,
    w_center: Tensor,
    w_radius: Tensor,
    b_center: Optional[Tensor],
    b_radius: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """Midpoint-radius product of an interval input and interval weights (and optional bias).

    ``c = Wc xc + bc``, ``r = |Wc| xr + Wr (|xc| + xr) + br``: three GEMMs, sound, at most 1.5x wider
    than the exact interval product (Rump 1999). Default implementation:
    :func:`interval_linear_iw_reference`.
    """
    return interval_linear_iw_reference(x_center, x_radius, w_center, w_radius, b_center, b_radius)


@interval_linear_iw.register_fake
def _interval_linear_iw_fake(x_center, x_radius, w_center, w_radius, b_center, b_radius):  # noqa: ANN001, ANN202
    shape = (*x_center.shape[:-1], w_center.shape[0])
    return x_center.new_empty(shape), x_center.new_empty(shape)


def _interval_linear_iw_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    x_center, x_radius, w_center, w_radius, b_center, b_radius = inputs
    ctx.save_for_backward(x_center, x_radius, w_center, w_radius)
    ctx.has_bc = b_center is not None
    ctx.has_br = b_radius is not None


def interval_linear_iw_backward_reference(
    grad_c: Tensor,
    grad_r: Tensor,
    x_center: Tensor,
    x_radius: Tensor,
    w_center: Tensor,
    w_radius: Tensor,
    need_xc: bool,
    need_xr: bool,
    need_wc: bool,
    need_wr: bool,
) -> list[Tensor]:
    """Torch form of :func:`interval_linear_iw_backward`."""
    xc, xr, wc, wr = x_center, x_radius, w_center, w_radius
    out: list[Tensor] = []
    gr_wr = grad_r @ wr if (need_xc or need_xr) else None
    if need_xc:
        out.append(grad_c @ wc + gr_wr * xc.sign())
    if need_xr:
        out.append(grad_r @ wc.abs() + gr_wr)
    if need_wc or need_wr:
        gc, gr = _flat2(grad_c), _flat2(grad_r)
        fxc, fxr = _flat2(xc), _flat2(xr)
        if need_wc:
            out.append(gc.t() @ fxc + wc.sign() * (gr.t() @ fxr))
        if need_wr:
            out.append(gr.t() @ (fxc.abs() + fxr))
    return out


@torch.library.custom_op("hypercert::interval_linear_iw_backward", mutates_args=())
def interval_linear_iw_backward(
    grad_c: Tensor,
    grad_r: Tensor,
    x_center: Tensor,
    x_radius: Tensor,
    w_center: Tensor,
    w_radius: Tensor,
    need_xc: bool,
    need_xr: bool,
    need_wc: bool,
    need_wr: bool,
) -> list[Tensor]:
    """Gradients of :func:`interval_linear_iw` w.r.t. ``xc, xr, Wc, Wr`` (biases: output grads summed).

    ``g_xc = g_c Wc + (g_r Wr) * sign(xc)``, ``g_xr = g_r |Wc| + g_r Wr``,
    ``g_Wc = g_c^T xc + sign(Wc) * (g_r^T xr)``, ``g_Wr = g_r^T (|xc| + xr)``.
    Returns only the gradients asked for (``need_*``), in that order.
    """
    return interval_linear_iw_backward_reference(
        grad_c, grad_r, x_center, x_radius, w_center, w_radius, need_xc, need_xr, need_wc, need_wr
    )


@interval_linear_iw_backward.register_fake
def _interval_linear_iw_backward_fake(  # noqa: ANN202
    grad_c, grad_r, x_center, x_radius, w_center, w_radius, need_xc, need_xr, need_wc, need_wr  # noqa: ANN001
):
    shapes = [(need_xc, x_center), (need_xr, x_radius), (need_wc, w_center), (need_wr, w_radius)]
    return [grad_c.new_empty(t.shape) for wanted, t in shapes if wanted]


def _interval_linear_iw_backward(ctx, grad_c: Tensor, grad_r: Tensor):  # noqa: ANN001, ANN202
    xc, xr, wc, wr = ctx.saved_tensors
    need = ctx.needs_input_grad
    wanted = (need[0], need[1], need[2], need[3])
    g_xc = g_xr = g_wc = g_wr = g_bc = g_br = None
    if any(wanted):
        args = (grad_c, grad_r, xc, xr, wc, wr, *wanted)
        use_op = _backward_op_pays(grad_c, wc)
        grads = interval_linear_iw_backward(*args) if use_op else interval_linear_iw_backward_reference(*args)
        g_xc, g_xr, g_wc, g_wr = _pick(grads, wanted)
    if ctx.has_bc and need[4]:
        g_bc = _sum_to_bias(grad_c)
    if ctx.has_br and need[5]:
        g_br = _sum_to_bias(grad_r)
    return g_xc, g_xr, g_wc, g_wr, g_bc, g_br


interval_linear_iw.register_autograd(_interval_linear_iw_backward, setup_context=_interval_linear_iw_setup)


# ---------------------------------------------------------------------------- ReLU in centre/radius form
def interval_relu_reference(center: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """ReLU of the box ``[c - r, c + r]`` as (centre, radius), in four memory passes.

    With ``h = (c + r) / 2`` the three cases (active ``c > r``, inactive ``c < -r``, straddling)
    collapse to ``radius' = clamp(h, 0, r)`` and ``centre' = max(c, radius')``: active units keep
    ``(c, r)`` (there ``h > r`` and ``c > r``), inactive ones get ``(0, 0)`` (``c < 0``), straddling ones
    ``(h, h)`` (``c <= h``). ``h`` is ``fl(c + r)`` halved (exact above the subnormal range), so by
    monotone rounding an active unit keeps its box bit for bit, an inactive one becomes ``[0, 0]``
    and a straddling one ``[0, fl(c + r)]``: exactly the endpoint rule. (A subnormal ``fl(c + r)``
    may lose its last bit in the halving: one ``denorm_min``, inside default mode's ulp-level
    tolerance; rigorous mode does not use this op.)
    """
    new_radius = torch.add(center, radius).mul_(0.5)
    new_radius.clamp_(min=torch.zeros((), dtype=new_radius.dtype, device=new_radius.device), max=radius)
    return torch.maximum(center, new_radius), new_radius


@torch.library.custom_op("hypercert::interval_relu", mutates_args=())
def interval_relu(center: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """ReLU of the box ``[c - r, c + r]``, returned again as (centre, radius).

    Forward: :func:`interval_relu_reference`. For backward only the outputs are saved (the next
    linear layer keeps them anyway): ``u > 0`` iff ``centre' > 0`` and ``l > 0`` iff
    ``centre' > radius'``.
    """
    return interval_relu_reference(center, radius)


@interval_relu.register_fake
def _interval_relu_fake(center: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(center), torch.empty_like(center)


def _interval_relu_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    ctx.save_for_backward(*output)


def _relu_input_grads(
    new_center: Tensor, new_radius: Tensor, grad_c: Tensor, grad_r: Tensor
) -> tuple[Tensor, Tensor]:
    """Gradients w.r.t. the input (centre, radius) of the box ReLU, from its output box, out of place.

    ``d(u)/d(c) = d(u)/d(r) = [u > 0]`` and ``d(l)/d(c) = -d(l)/d(r) = [l > 0]``, where ``u > 0`` iff
    ``centre' > 0`` and ``l > 0`` iff ``centre' > radius'``. Halving before the sums keeps gradients near
    the dtype's maximum finite.
    """
    a = (grad_c + grad_r) * 0.5 * (new_center > 0)
    b = (grad_c - grad_r) * 0.5 * (new_center > new_radius)
    return a + b, a - b


class _TracedIntervalRelu(torch.autograd.Function):
    """The box ReLU for ``torch.compile``: the reference forward with the op's own backward formula.

    Dynamo traces both into the graph, so Inductor fuses them; autograd of the reference's ``clamp``
    and ``maximum`` instead yields mask-heavy kernels (tie handling, both clamp bounds) that made
    compiled forward+backward slower than eager.
    """

    @staticmethod
    def forward(ctx, center: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        new_center, new_radius = interval_relu_reference(center, radius)
        ctx.save_for_backward(new_center, new_radius)
        return new_center, new_radius

    @staticmethod
    def backward(ctx, grad_c: Tensor, grad_r: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        return _relu_input_grads(*ctx.saved_tensors, grad_c, grad_r)


def _interval_relu_backward(ctx, grad_c: Tensor, grad_r: Tensor):  # noqa: ANN001, ANN202
    new_center, new_radius = ctx.saved_tensors
    if torch.is_grad_enabled():  # double backward: out= and in-place steps cannot be recorded
        return _relu_input_grads(new_center, new_radius, grad_c, grad_r)
    # The same formula in place. The masks are written as 0/1 floats straight away (comparison
    # with out=): multiplying by a bool mask would cast it to a float tensor first, an extra
    # full-size allocation per mask. The centre gradient reuses a mask's buffer.
    upper_active = torch.gt(new_center, 0, out=torch.empty_like(new_center))
    a = torch.add(grad_c, grad_r).mul_(upper_active).mul_(0.5)
    lower_active = torch.gt(new_center, new_radius, out=torch.empty_like(new_center))
    b = torch.sub(grad_c, grad_r).mul_(lower_active).mul_(0.5)
    return torch.add(a, b, out=upper_active), a.sub_(b)


interval_relu.register_autograd(_interval_relu_backward, setup_context=_interval_relu_setup)


# ---------------------------------------------------------------------------- dispatch
def records_grad(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd records an op on these tensors (grad mode on and one of them requires grad).

    ``requires_grad`` alone is not enough: a view of a Parameter reports it even under ``no_grad``.
    """
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _custom_op_pays(*tensors: Optional[Tensor]) -> bool:
    """Whether to go through the registered op rather than call the reference directly.

    On CPU the op's value is its lean autograd formula; without autograd (certification under
    ``no_grad``, or inputs and weights that need no gradient) its Python dispatch is pure overhead:
    tens of microseconds per call, a large share of a small network's forward. Non-CPU tensors always
    take the op, so device kernels registered on it are used. Under ``torch.compile`` the composite
    reference is traced instead.
    """
    if torch.compiler.is_compiling():
        return False
    if any(t is not None and t.device.type != "cpu" for t in tensors):
        return True
    return records_grad(*tensors)


def fast_interval_relu(center: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`interval_relu`, skipping the op's dispatch where it buys nothing (see ``_custom_op_pays``)."""
    if _custom_op_pays(center, radius):
        return interval_relu(center, radius)
    if torch.compiler.is_compiling() and records_grad(center, radius):
        return _TracedIntervalRelu.apply(center, radius)
    return interval_relu_reference(center, radius)


# ---------------------------------------------------------------------------- fused CUDA kernels
#: Input dtypes the Triton kernels take (others, e.g. float64, stay on the torch reference).
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_cuda_kernels_registered = False


def cuda_kernels_registered() -> bool:
    """Whether :func:`register_cuda_kernels` has registered the Triton kernels in this process."""
    return _cuda_kernels_registered


def use_fused_linear(center: Tensor, weight: Tensor) -> bool:
    """Whether a point-weight layer should call :func:`interval_linear_fused` (fused Triton kernel).

    True for CUDA tensors of a supported dtype once the kernels are registered, outside
    ``torch.compile`` (which traces the composite reference instead). Elsewhere the layer keeps the
    ``|W|``-passing :func:`interval_linear` path (and with it :func:`intervals.cached_abs_weights`).
    """
    return (
        _cuda_kernels_registered
        and center.is_cuda
        and center.dtype in _FUSED_DTYPES
        and weight.dtype == center.dtype
        and not torch.compiler.is_compiling()
    )


def _triton_implementations() -> dict[Any, Callable[..., Any]]:
    """The Triton-backed implementations of the linear ops and their backward ops, by op.

    Each checks that the kernels take its inputs (one supported dtype, all on a device they run on)
    and otherwise calls the op's torch reference, so e.g. float64 on CUDA keeps working. Importing
    :mod:`intervals.triton_kernels` imports triton.
    """
    from . import triton_kernels as tk

    def fused(center: Tensor, radius: Tensor, weight: Tensor, bias: Optional[Tensor], scale: float = 1.0):  # noqa: ANN202
        if not tk.supports(center, radius, weight, bias):
            return interval_linear_fused_reference(center, radius, weight, bias, scale)
        return tk.interval_linear_fwd(center, radius, weight, bias, scale)

    def fused_backward(  # noqa: ANN202
        grad_c: Tensor, grad_r: Tensor, center: Tensor, radius: Tensor, weight: Tensor, scale: float,
        need_center: bool, need_radius: bool, need_weight: bool,
    ):
        args = (grad_c, grad_r, center, radius, weight)
        if not tk.supports(*args):
            return interval_linear_fused_backward_reference(*args, scale, need_center, need_radius, need_weight)
        out: list[Tensor] = []
        if need_center or need_radius:  # one kernel computes both (each W tile read once)
            g_center, g_radius = tk.interval_linear_bwd_input(grad_c, grad_r, weight, scale)
            out += [g for g, wanted in ((g_center, need_center), (g_radius, need_radius)) if wanted]
        if need_weight:
            out.append(tk.interval_linear_bwd_weight(grad_c, grad_r, center, radius, weight, scale))
        return out

    def iw(  # noqa: ANN202
        x_center: Tensor, x_radius: Tensor, w_center: Tensor, w_radius: Tensor,
        b_center: Optional[Tensor], b_radius: Optional[Tensor],
    ):
        args = (x_center, x_radius, w_center, w_radius, b_center, b_radius)
        if not tk.supports(*args):
            return interval_linear_iw_reference(*args)
        return tk.interval_linear_iw_fwd(*args)

    def iw_backward(  # noqa: ANN202
        grad_c: Tensor, grad_r: Tensor, x_center: Tensor, x_radius: Tensor, w_center: Tensor, w_radius: Tensor,
        need_xc: bool, need_xr: bool, need_wc: bool, need_wr: bool,
    ):
        args = (grad_c, grad_r, x_center, x_radius, w_center, w_radius)
        if not tk.supports(*args):
            return interval_linear_iw_backward_reference(*args, need_xc, need_xr, need_wc, need_wr)
        out: list[Tensor] = []
        if need_xc or need_xr:
            g_xc, g_xr = tk.interval_linear_iw_bwd_input(grad_c, grad_r, x_center, w_center, w_radius)
            out += [g for g, wanted in ((g_xc, need_xc), (g_xr, need_xr)) if wanted]
        if need_wc or need_wr:
            g_wc, g_wr = tk.interval_linear_iw_bwd_weight(grad_c, grad_r, x_center, x_radius, w_center)
            out += [g for g, wanted in ((g_wc, need_wc), (g_wr, need_wr)) if wanted]
        return out

    return {
        interval_linear_fused: fused,
        interval_linear_fused_backward: fused_backward,
        interval_linear_iw: iw,
        interval_linear_iw_backward: iw_backward,
    }


def register_cuda_kernels() -> bool:
    """Register the Triton kernels as the ``"cuda"`` implementations of the linear ops; returns
    whether they are registered.

    Does nothing (and returns False) without a CUDA device or without triton, so importing
    :mod:`intervals` works everywhere and CPU behaviour never changes. A triton that is installed but
    fails to import gives a warning, not an error. Called once at import; later calls are no-ops.

    Example:
        >>> from intervals import ops
        >>> ops.register_cuda_kernels() == ops.cuda_kernels_registered()
        True
    """
    global _cuda_kernels_registered
    if _cuda_kernels_registered:
        return True
    if not torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return False
    try:
        impls = _triton_implementations()
    except Exception as exc:  # a broken triton install must not break `import intervals`
        warnings.warn(
            f"triton is installed but could not be imported ({exc!r}); interval linear layers on CUDA "
            "use the torch reference implementation",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    for op, fn in impls.items():
        op.register_kernel("cuda")(fn)
    _cuda_kernels_registered = True
    return True


register_cuda_kernels()
