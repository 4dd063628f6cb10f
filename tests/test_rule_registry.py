"""Every registered rule, one table: each torch function in :data:`intervals.registry.RULES` has a
case here, and every case is checked for soundness in both representations and in rigorous mode.

A case says how to call the function with a box (or, in its place, a point inside the box): the
output box must enclose the function's value at every sampled point (corners included). The other
operands are fixed tensors (or boxes derived from the first, whose points are then derived alike).
Registering a rule without adding a case fails :func:`test_every_rule_has_a_case`.

Default mode is also run on float32 boxes against float64 images (torch's float32 kernels), with
the documented tolerance. Rigorous mode: a float32 box, the points' images computed in float64; the
rigorous bound must enclose them up to float64 rounding only (a few float64 ulps: a million times
less than one float32 ulp), unless the rule refuses rigorous mode with
:class:`~intervals.UnsupportedOperation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from soundness import as_cr, assert_encloses, boxes, points_in, scaled

import intervals
from intervals import Interval, UnsupportedOperation
from intervals.registry import RULES, func_name

D = torch.float64
T = torch.Tensor


def _fixed(*shape: int, seed: int = 7, lo: float = -2.0, hi: float = 2.0, dtype: torch.dtype = D) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + sum(shape))
    return (lo + (hi - lo) * torch.rand(shape, generator=g, dtype=D)).to(dtype)


@dataclass(frozen=True)
class Case:
    """``call(f, x, k)``: apply ``f`` with ``x`` (a box, or a point in its place); ``k(t)`` converts a
    fixed operand ``t`` to the dtype in use. The box has ``shape`` and lies in ``[lo, hi]``."""

    call: Callable[[Any, Any, Callable[[torch.Tensor], torch.Tensor]], Any]
    shape: tuple[int, ...] = (3, 4)
    lo: float = -3.0
    hi: float = 3.0
    ref: Callable[[Any, Any, Callable[[torch.Tensor], torch.Tensor]], Any] | None = None  # for the points


def case(
    call: Callable[..., Any], shape: tuple[int, ...] = (3, 4), lo: float = -3.0, hi: float = 3.0,
    ref: Callable[..., Any] | None = None,
) -> Case:
    return Case(call, shape, lo, hi, ref)


A34 = _fixed(3, 4, seed=1)
POS34 = _fixed(3, 4, seed=2, lo=0.5, hi=2.0)
W54 = _fixed(5, 4, seed=3)
B5 = _fixed(5, seed=4)
M45 = _fixed(4, 5, seed=5)
M23 = _fixed(2, 3, seed=6)
IDX = torch.tensor([2, 0, 3])
IDX2 = torch.tensor([[0, 3], [1, 1], [2, 0]])


def _derived(x: Any) -> Any:
    """A second operand derived from the first (a box from a box, a point from the point alike)."""
    return x * 0.5 + 1.0


ARITH: dict[str, list[Case]] = {}


def _register(names: list[str], cases: list[Case]) -> None:
    for n in names:
        ARITH.setdefault(n, []).extend(cases)


_register(
    ["torch.add", "Tensor.add", "Tensor.__add__"],
    [
        case(lambda f, x, k: f(x, k(A34))),
        case(lambda f, x, k: f(x, 2.5)),
        case(lambda f, x, k: f(x, _derived(x))),
    ],
)
_register(["torch.add", "Tensor.add"], [case(lambda f, x, k: f(x, k(A34), alpha=-1.5))])
_register(["torch.add"], [case(lambda f, x, k: f(k(A34), x))])
_register(["Tensor.__radd__"], [case(lambda f, x, k: f(x, 2.5)), case(lambda f, x, k: f(x, k(A34)))])
_register(
    ["torch.sub", "torch.subtract", "Tensor.sub", "Tensor.subtract", "Tensor.__sub__"],
    [case(lambda f, x, k: f(x, k(A34))), case(lambda f, x, k: f(x, -1.25)), case(lambda f, x, k: f(x, _derived(x)))],
)
_register(["torch.sub", "torch.subtract"], [case(lambda f, x, k: f(k(A34), x, alpha=2.0))])
_register(["Tensor.__rsub__", "torch.rsub"], [case(lambda f, x, k: f(x, 2.5)), case(lambda f, x, k: f(x, k(A34)))])
_register(
    ["torch.mul", "torch.multiply", "Tensor.mul", "Tensor.multiply", "Tensor.__mul__"],
    [case(lambda f, x, k: f(x, k(A34))), case(lambda f, x, k: f(x, -0.75)), case(lambda f, x, k: f(x, x - 1.0))],
)
_register(["torch.mul", "torch.multiply"], [case(lambda f, x, k: f(k(A34), x))])
_register(["Tensor.__rmul__"], [case(lambda f, x, k: f(x, -0.75)), case(lambda f, x, k: f(x, k(A34)))])
_register(
    ["torch.div", "torch.divide", "torch.true_divide", "Tensor.div", "Tensor.divide", "Tensor.true_divide",
     "Tensor.__truediv__"],
    [
        case(lambda f, x, k: f(x, k(POS34))),
        case(lambda f, x, k: f(x, -3.0)),
        case(lambda f, x, k: f(x, _derived(x)), lo=0.5),
    ],
)
_register(["torch.div", "torch.divide", "torch.true_divide"], [case(lambda f, x, k: f(k(A34), x), lo=0.25)])
_register(
    ["Tensor.__rdiv__"],
    [case(lambda f, x, k: f(x, 2.0), lo=0.25), case(lambda f, x, k: f(x, -1.0), lo=-3.0, hi=-0.5)],
)
_register(["torch.neg", "torch.negative", "Tensor.neg", "Tensor.negative"], [case(lambda f, x, k: f(x))])
_register(
    ["torch.reciprocal", "Tensor.reciprocal"],
    [case(lambda f, x, k: f(x), lo=0.25), case(lambda f, x, k: f(x), lo=-4.0, hi=-0.5)],
)
_register(
    ["torch.sum", "Tensor.sum", "torch.mean", "Tensor.mean"],
    [
        case(lambda f, x, k: f(x)),
        case(lambda f, x, k: f(x, 1)),
        case(lambda f, x, k: f(x, dim=0, keepdim=True)),
        case(lambda f, x, k: f(x, None, True)),
    ],
)
_register(
    ["torch.amax", "Tensor.amax", "torch.amin", "Tensor.amin"],
    [case(lambda f, x, k: f(x, 1)), case(lambda f, x, k: f(x, (0, 1)))],
)
_register(["torch.cumsum", "Tensor.cumsum"], [case(lambda f, x, k: f(x, 1)), case(lambda f, x, k: f(x, 0))])
_register(
    ["torch.logsumexp", "Tensor.logsumexp"],
    [case(lambda f, x, k: f(x, 1)), case(lambda f, x, k: f(x, 0, keepdim=True))],
)
_register(
    ["torch.maximum", "Tensor.maximum", "torch.fmax", "torch.minimum", "Tensor.minimum", "torch.fmin"],
    [case(lambda f, x, k: f(x, k(A34))), case(lambda f, x, k: f(x, _derived(x)))],
)
_register(["torch.maximum", "torch.fmax", "torch.minimum", "torch.fmin"], [case(lambda f, x, k: f(k(A34), x))])
_register(
    ["torch.clamp", "torch.clip", "Tensor.clamp", "Tensor.clip"],
    [
        case(lambda f, x, k: f(x, -1.0, 1.5)),
        case(lambda f, x, k: f(x, min=0.5)),
        case(lambda f, x, k: f(x, max=-0.5)),
        case(lambda f, x, k: f(x, k(A34 - 1), k(A34 + 1))),
    ],
)

UNARY_ANY = [
    "torch.exp", "Tensor.exp", "torch.expm1", "Tensor.expm1", "torch.sigmoid", "Tensor.sigmoid",
    "torch.nn.functional.sigmoid", "torch.tanh", "Tensor.tanh", "torch.nn.functional.tanh", "torch.atan",
    "Tensor.atan", "torch.arctan", "torch.asinh", "Tensor.asinh", "torch.arcsinh", "torch.erf", "Tensor.erf",
    "torch.special_erf", "torch.nn.functional.log_sigmoid", "torch.nn.functional.softsign", "torch.relu",
    "Tensor.relu", "torch.nn.functional.relu", "torch.abs", "torch.absolute", "Tensor.abs", "Tensor.absolute",
    "torch.square", "Tensor.square", "torch.nn.functional.selu", "torch.nn.functional.relu6",
    "torch.nn.functional.hardsigmoid", "torch.nn.functional.silu",
]
_register(UNARY_ANY, [case(lambda f, x, k: f(x), lo=-8.0, hi=8.0)])
_register(["torch.log", "Tensor.log"], [case(lambda f, x, k: f(x), lo=1e-3, hi=50.0)])
_register(["torch.log1p", "Tensor.log1p"], [case(lambda f, x, k: f(x), lo=-0.999, hi=50.0)])
_register(["torch.sqrt", "Tensor.sqrt"], [case(lambda f, x, k: f(x), lo=0.0, hi=50.0)])
def _negative_zero_end(x: Any) -> Any:
    """A box (or point) on [-0.0, ...]: -min(x, 0) has a -0.0 lower end wherever x reaches 0 or more."""
    return -(x.clamp(max=0.0))


# rsqrt(-0.0) = -inf in IEEE arithmetic, +inf for the real number 0: the points' values use +0.0
_register(
    ["torch.rsqrt", "Tensor.rsqrt"],
    [
        case(lambda f, x, k: f(x), lo=1e-3, hi=50.0),
        case(lambda f, x, k: f(_negative_zero_end(x)), lo=-50.0, hi=5.0,
             ref=lambda f, x, k: f(_negative_zero_end(x) + 0.0)),
    ],
)
_register(
    ["torch.pow", "Tensor.pow"],
    [
        case(lambda f, x, k: f(x, 2)),
        case(lambda f, x, k: f(x, 3)),
        case(lambda f, x, k: f(x, -2), lo=0.25),
        case(lambda f, x, k: f(x, 0.5), lo=0.0),
        case(lambda f, x, k: f(x, 1.5), lo=0.0),
        case(lambda f, x, k: f(x[0, 0], k(torch.tensor([[2.0]])))),  # a one-element exponent broadcasts
        case(lambda f, x, k: f(_negative_zero_end(x), -0.5), lo=-50.0, hi=5.0,
             ref=lambda f, x, k: f(_negative_zero_end(x) + 0.0, -0.5)),
    ],
)
_register(["torch.nn.functional.leaky_relu"], [case(lambda f, x, k: f(x, 0.1)), case(lambda f, x, k: f(x, 1.7))])
_register(["torch.nn.functional.elu"], [case(lambda f, x, k: f(x, 0.7), lo=-8.0, hi=8.0)])
_register(["torch.nn.functional.celu"], [case(lambda f, x, k: f(x, 0.6), lo=-8.0, hi=8.0)])
_register(
    ["torch.nn.functional.softplus"],
    [
        case(lambda f, x, k: f(x), lo=-30.0, hi=30.0),
        case(lambda f, x, k: f(x, beta=2.0, threshold=5.0), lo=-8.0, hi=8.0),
        case(lambda f, x, k: f(x, 1.0, 1000.0), lo=-5.0, hi=150.0),  # the log form far past exp's overflow
    ],
)
_register(
    ["torch.nn.functional.hardtanh"],
    [case(lambda f, x, k: f(x)), case(lambda f, x, k: f(x, -0.5, 0.75))],
)
# In-place forms change their receiver (a box as a tensor): each gets a private copy, with the cases of
# the out-of-place form (in-place semantics and aliasing: tests/test_in_place.py).
def _on_a_copy(cases: list[Case]) -> list[Case]:
    return [replace(c, call=lambda f, x, k, _call=c.call: _call(f, x.clone(), k)) for c in cases]


for _out_of_place, _in_place in (("Tensor.__add__", ["Tensor.__iadd__", "Tensor.add_"]),
                                 ("Tensor.__sub__", ["Tensor.__isub__", "Tensor.sub_"]),
                                 ("Tensor.__mul__", ["Tensor.__imul__", "Tensor.mul_"]),
                                 ("Tensor.__truediv__", ["Tensor.__idiv__", "Tensor.div_"])):
    _register(_in_place, _on_a_copy(ARITH[_out_of_place]))
_register(["Tensor.add_", "Tensor.sub_"], _on_a_copy([case(lambda f, x, k: f(x, k(A34), alpha=-1.5))]))
# scalar exponents only: a [[2.]] exponent would grow the receiver, which in place torch refuses too
_register(["Tensor.pow_"], _on_a_copy(ARITH["Tensor.pow"][:5]))
_register(["torch.nn.functional.hardtanh_"], [case(lambda f, x, k: f(x.clone(), -0.5, 0.75))])
# torch's own GELU (float64 included) computes 1 + erf / 1 + tanh, which cancels for x < -2: the
# points' values come from the cancellation-free forms instead.
def _gelu_ref(f: Any, x: torch.Tensor, k: Any) -> torch.Tensor:
    return 0.5 * x * torch.special.erfc(-x / math.sqrt(2.0))


def _gelu_tanh_ref(f: Any, x: torch.Tensor, k: Any) -> torch.Tensor:
    return x * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))


_register(
    ["torch.nn.functional.gelu"],
    [
        case(lambda f, x, k: f(x), lo=-8.0, hi=8.0, ref=_gelu_ref),
        case(lambda f, x, k: f(x, approximate="tanh"), lo=-8.0, hi=8.0, ref=_gelu_tanh_ref),
        # long rows reach torch's vectorised float32 kernels
        case(lambda f, x, k: f(x), shape=(2, 40), lo=-6.0, hi=1.0, ref=_gelu_ref),
    ],
)

# ---------------------------------------------------------------------------- linear maps
_register(
    ["torch.nn.functional.linear"],
    [
        case(lambda f, x, k: f(x, k(W54), k(B5))),
        case(lambda f, x, k: f(x, k(W54))),
        case(lambda f, x, k: f(k(A34), x, k(B5)), shape=(5, 4)),  # interval weights, point input
        case(lambda f, x, k: f(k(A34), x * 0.1, _derived(x)[:, 0]), shape=(5, 4)),  # interval weights and bias
        case(lambda f, x, k: f(x, x * 0.3), shape=(4, 4)),  # input and weights both intervals
    ],
)
_register(
    ["torch.matmul", "Tensor.matmul", "Tensor.__matmul__", "torch.mm", "Tensor.mm"],
    [case(lambda f, x, k: f(x, k(M45))), case(lambda f, x, k: f(k(M23), x)), case(lambda f, x, k: f(x, x.t() * 0.5))],
)
_register(["torch.matmul", "Tensor.matmul", "Tensor.__matmul__"], [case(lambda f, x, k: f(x, k(B5[:4])))])
_register(
    ["torch.bmm", "Tensor.bmm"],
    [case(lambda f, x, k: f(x, k(_fixed(2, 4, 3, seed=8))), shape=(2, 3, 4)),
     case(lambda f, x, k: f(k(_fixed(2, 2, 3, seed=9)), x), shape=(2, 3, 4))],
)
_register(["Tensor.__rmatmul__"], [case(lambda f, x, k: f(x, k(M23)))])

CONV_W1 = _fixed(4, 2, 3, seed=10)
CONV_W2 = _fixed(4, 2, 3, 3, seed=11)
CONV_W3 = _fixed(3, 2, 2, 2, 2, seed=12)
_register(
    ["torch.conv1d"],
    [case(lambda f, x, k: f(x, k(CONV_W1), k(B5[:4]), 2, 1), shape=(2, 2, 7)),
     case(lambda f, x, k: f(x, k(CONV_W1[:, :1]), None, 1, 2, 2, 2), shape=(1, 2, 7))],
)
_register(
    ["torch.conv2d"],
    [case(lambda f, x, k: f(x, k(CONV_W2), k(B5[:4]), 1, 1), shape=(2, 2, 5, 5)),
     case(lambda f, x, k: f(x, k(CONV_W2[:, :1]), None, 2, 0, 1, 2), shape=(1, 2, 6, 6)),
     case(lambda f, x, k: f(k(_fixed(1, 2, 5, 5, seed=13)), x), shape=(4, 2, 3, 3))],  # interval kernel
)
_register(["torch.conv3d"], [case(lambda f, x, k: f(x, k(CONV_W3), None, 1, 1), shape=(1, 2, 4, 4, 4))])
_register(
    ["torch.conv_transpose1d"],
    [case(lambda f, x, k: f(x, k(_fixed(2, 3, 3, seed=14)), None, 2, 1, 1), shape=(1, 2, 5))],
)
_register(
    ["torch.conv_transpose2d"],
    [case(lambda f, x, k: f(x, k(_fixed(2, 3, 3, 3, seed=15)), k(B5[:3]), 2, 1, 1), shape=(1, 2, 4, 4)),
     case(lambda f, x, k: f(x, k(_fixed(4, 1, 2, 2, seed=16)), None, 1, 0, 0, 2), shape=(1, 4, 3, 3))],
)

# ---------------------------------------------------------------------------- normalisation
BN_MEAN, BN_VAR = _fixed(3, seed=17), _fixed(3, seed=18, lo=0.2, hi=2.0)
BN_W, BN_B = _fixed(3, seed=19), _fixed(3, seed=20)
_register(
    ["torch.nn.functional.batch_norm"],
    [case(lambda f, x, k: f(x, k(BN_MEAN), k(BN_VAR), k(BN_W), k(BN_B), False, 0.1, 1e-5), shape=(2, 3, 4)),
     case(lambda f, x, k: f(x, k(BN_MEAN), k(BN_VAR)), shape=(4, 3))],
)
_register(
    ["torch.nn.functional.layer_norm"],
    [case(lambda f, x, k: f(x, (4,), k(B5[:4]), k(A34[0]))), case(lambda f, x, k: f(x, (3, 4)))],
)

# ---------------------------------------------------------------------------- pooling
_register(["torch.avg_pool1d"], [case(lambda f, x, k: f(x, 2, 1, 1), shape=(1, 2, 5))])
_register(["torch.nn.functional.avg_pool2d"], [
    case(lambda f, x, k: f(x, 2, 1, 1), shape=(1, 2, 5, 5)),
    case(lambda f, x, k: f(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), shape=(1, 1, 6, 6)),
])
_register(["torch.nn.functional.avg_pool3d"], [case(lambda f, x, k: f(x, 2), shape=(1, 1, 4, 4, 4))])
_register(["torch.adaptive_avg_pool1d"], [case(lambda f, x, k: f(x, 3), shape=(1, 2, 7))])
_register(["torch.nn.functional.adaptive_avg_pool2d"], [case(lambda f, x, k: f(x, (2, 3)), shape=(1, 2, 5, 7))])
_register(["torch.nn.functional.adaptive_avg_pool3d"], [case(lambda f, x, k: f(x, 2), shape=(1, 1, 3, 4, 5))])
_register(["torch.nn.functional.max_pool1d"], [case(lambda f, x, k: f(x, 3, 2, 1), shape=(1, 2, 7))])
_register(["torch.nn.functional.max_pool2d"], [
    case(lambda f, x, k: f(x, 2), shape=(1, 2, 4, 4)),
    case(lambda f, x, k: f(x, 3, 2, 1, 2, ceil_mode=True), shape=(1, 1, 7, 7)),
])
_register(["torch.nn.functional.max_pool3d"], [case(lambda f, x, k: f(x, 2, 1), shape=(1, 1, 3, 3, 3))])
_register(["torch.nn.functional.adaptive_max_pool1d"], [case(lambda f, x, k: f(x, 3), shape=(1, 2, 7))])
_register(["torch.nn.functional.adaptive_max_pool2d"], [case(lambda f, x, k: f(x, (2, 3)), shape=(1, 2, 5, 7))])
_register(["torch.nn.functional.adaptive_max_pool3d"], [case(lambda f, x, k: f(x, 2), shape=(1, 1, 3, 4, 5))])

# ---------------------------------------------------------------------------- structure
S = {
    "torch.reshape": lambda f, x, k: f(x, (4, 3)),
    "Tensor.reshape": lambda f, x, k: f(x, 2, 6),
    "Tensor.view": lambda f, x, k: f(x, 12),
    "torch.flatten": lambda f, x, k: f(x),
    "Tensor.flatten": lambda f, x, k: f(x, 0, 1),
    "torch.permute": lambda f, x, k: f(x, (1, 0)),
    "Tensor.permute": lambda f, x, k: f(x, 1, 0),
    "torch.transpose": lambda f, x, k: f(x, 0, 1),
    "Tensor.transpose": lambda f, x, k: f(x, -1, 0),
    "torch.squeeze": lambda f, x, k: f(x.unsqueeze(1)),
    "Tensor.squeeze": lambda f, x, k: f(x.unsqueeze(0), 0),
    "torch.unsqueeze": lambda f, x, k: f(x, 1),
    "Tensor.unsqueeze": lambda f, x, k: f(x, -1),
    "Tensor.expand": lambda f, x, k: f(x.unsqueeze(0), 2, 3, 4),
    "Tensor.contiguous": lambda f, x, k: f(x.t()),
    "Tensor.__getitem__": lambda f, x, k: f(x, (slice(None, None, 2), IDX)),
    "torch.flip": lambda f, x, k: f(x, (0, 1)),
    "Tensor.flip": lambda f, x, k: f(x, 1),
    "torch.roll": lambda f, x, k: f(x, 1, 1),
    "Tensor.roll": lambda f, x, k: f(x, (1, -1), (0, 1)),
    "torch.narrow": lambda f, x, k: f(x, 1, 1, 2),
    "Tensor.narrow": lambda f, x, k: f(x, 0, 0, 2),
    "torch.select": lambda f, x, k: f(x, 1, 2),
    "Tensor.select": lambda f, x, k: f(x, 0, -1),
    "torch.t": lambda f, x, k: f(x),
    "Tensor.t": lambda f, x, k: f(x),
    "torch.movedim": lambda f, x, k: f(x, 0, 1),
    "Tensor.movedim": lambda f, x, k: f(x, 1, 0),
    "torch.moveaxis": lambda f, x, k: f(x, 0, -1),
    "Tensor.moveaxis": lambda f, x, k: f(x, -1, 0),
    "Tensor.repeat": lambda f, x, k: f(x, 2, 1),
    "torch.clone": lambda f, x, k: f(x),
    "Tensor.clone": lambda f, x, k: f(x),
    "torch.tile": lambda f, x, k: f(x, (2, 1)),
    "Tensor.tile": lambda f, x, k: f(x, (1, 2)),
    "torch.swapaxes": lambda f, x, k: f(x, 0, 1),
    "Tensor.swapaxes": lambda f, x, k: f(x, 1, 0),
    "torch.swapdims": lambda f, x, k: f(x, 0, 1),
    "Tensor.swapdims": lambda f, x, k: f(x, 1, 0),
    "torch.unflatten": lambda f, x, k: f(x, 1, (2, 2)),
    "Tensor.unflatten": lambda f, x, k: f(x, 1, (2, 2)),
    "torch.index_select": lambda f, x, k: f(x, 1, IDX),
    "Tensor.index_select": lambda f, x, k: f(x, 1, IDX),
    "torch.gather": lambda f, x, k: f(x, 1, IDX2),
    "Tensor.gather": lambda f, x, k: f(x, 1, IDX2),
    "torch.take_along_dim": lambda f, x, k: f(x, IDX2, 1),
    "Tensor.take_along_dim": lambda f, x, k: f(x, IDX2, dim=1),
    "torch.fliplr": lambda f, x, k: f(x),
    "torch.flipud": lambda f, x, k: f(x),
    "torch.diagonal": lambda f, x, k: f(x, 1),
    "Tensor.diagonal": lambda f, x, k: f(x, 0, 0, 1),
    "torch.repeat_interleave": lambda f, x, k: f(x, 2, 0),
    "Tensor.repeat_interleave": lambda f, x, k: f(x, 2, dim=1),
    "Tensor.expand_as": lambda f, x, k: f(x[:1], k(A34)),
    "Tensor.view_as": lambda f, x, k: f(x, k(A34).reshape(2, 6)),
    "Tensor.reshape_as": lambda f, x, k: f(x, k(A34).reshape(12)),
    "torch.unbind": lambda f, x, k: f(x, 1),
    "Tensor.unbind": lambda f, x, k: f(x),
    "torch.functional.split": lambda f, x, k: f(x, 3, 1),
    "Tensor.split": lambda f, x, k: f(x, [1, 2], 0),
    "torch.chunk": lambda f, x, k: f(x, 2, 1),
    "Tensor.chunk": lambda f, x, k: f(x, 3),
    "torch.cat": lambda f, x, k: f([x, _derived(x)], 1),
    "torch.concat": lambda f, x, k: f([x, x * 2.0], 0),
    "torch.concatenate": lambda f, x, k: f((x, _derived(x)), -1),
    "torch.stack": lambda f, x, k: f([x, _derived(x)], 1),
    "torch.hstack": lambda f, x, k: f([x, x * -1.0]),
    "torch.vstack": lambda f, x, k: f([_derived(x), x]),
    "torch.nn.functional.dropout": lambda f, x, k: f(x, 0.5, training=False),
    "torch.nn.functional.dropout1d": lambda f, x, k: f(x, 0.5, training=False),
    "torch.nn.functional.dropout2d": lambda f, x, k: f(x.unsqueeze(0), 0.5, training=False),
    "torch.nn.functional.dropout3d": lambda f, x, k: f(x.unsqueeze(0).unsqueeze(0), 0.5, training=False),
    "torch.nn.functional.alpha_dropout": lambda f, x, k: f(x, 0.5, training=False),
    "torch.nn.functional.feature_alpha_dropout": lambda f, x, k: f(x, 0.5, training=False),
}
for _n, _call in S.items():
    _register([_n], [case(_call)])
_register(
    ["torch.nn.functional.pad"],
    [
        case(lambda f, x, k: f(x, (1, 2), value=0.5)),
        case(lambda f, x, k: f(x, (1, 1, 2, 0))),
        case(lambda f, x, k: f(x, (2, 1), mode="reflect"), shape=(1, 2, 4)),
        case(lambda f, x, k: f(x, (1, 1, 1, 1), mode="replicate"), shape=(1, 1, 3, 4)),
        case(lambda f, x, k: f(x, (2, 1), mode="circular"), shape=(1, 2, 4)),
    ],
)
_register(
    ["torch.nn.functional.softmax", "torch.softmax", "Tensor.softmax", "torch.nn.functional.log_softmax",
     "torch.log_softmax", "Tensor.log_softmax"],
    [
        case(lambda f, x, k: f(x, 1), lo=-6.0, hi=6.0),
        case(lambda f, x, k: f(x, 0), lo=-6.0, hi=6.0),
        case(lambda f, x, k: f(x, 1), lo=-1e9, hi=1e9),  # huge logits: no log(2) lost next to them
    ],
)

CASES = ARITH
REGISTERED = sorted({func_name(f) for f in RULES})
FUNCS: dict[str, list[Any]] = {}
for _f in RULES:
    FUNCS.setdefault(func_name(_f), []).append(_f)


def test_every_rule_has_a_case():
    missing = [n for n in REGISTERED if n not in CASES]
    assert not missing, f"registered rules without a soundness case in {__name__}: {missing}"
    stale = [n for n in CASES if n not in FUNCS]
    assert not stale, f"cases for functions that have no registered rule: {stale}"


def _outputs(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _check(f: Any, c: Case, box: Interval, n_points: int, seed: int, tol: Callable[[torch.Tensor], torch.Tensor] | None,
           ref_dtype: torch.dtype) -> None:
    def k(t: torch.Tensor) -> torch.Tensor:
        return t.to(box.dtype)

    def k_ref(t: torch.Tensor) -> torch.Tensor:  # the very operand values the box saw, in ref_dtype
        return t.to(box.dtype).to(ref_dtype)

    # A Tensor method reaches a box as ``box.method(...)``, i.e. through __torch_function__ (calling
    # the C method descriptor with a non-tensor ``self`` is a TypeError in torch itself).
    on_box = f
    if func_name(f).startswith("Tensor."):
        def on_box(*args: Any, **kwargs: Any) -> Any:
            return Interval.__torch_function__(f, (Interval,), args, kwargs)

    outs = _outputs(c.call(on_box, box, k))
    pts = points_in(box, n_points, seed).to(ref_dtype)
    ref = c.ref or c.call
    images = [_outputs(ref(f, p.clone(), k_ref)) for p in pts]
    name = func_name(f)
    assert len(outs) == len(images[0]), f"{name}: {len(outs)} output boxes for {len(images[0])} outputs"
    for j, out in enumerate(outs):
        assert isinstance(out, Interval), f"{name}: output {j} is {type(out).__name__}, not an Interval"
        vals = torch.stack([im[j] for im in images])
        shapes = f"box shape {tuple(out.shape)} vs value shape {tuple(vals.shape[1:])}"
        assert out.shape == vals.shape[1:], f"{name}: {shapes}"
        if tol is None:
            assert_encloses(out, vals, what=name)
        else:
            lo, hi = out.lower.to(ref_dtype), out.upper.to(ref_dtype)
            slack = tol(vals)
            bad = (vals < lo - slack) | (vals > hi + slack)
            assert not bad.any(), (
                f"{name} (rigorous): value {vals[bad][0].item()!r} outside "
                f"[{lo.expand_as(vals)[bad][0].item()!r}, {hi.expand_as(vals)[bad][0].item()!r}]"
            )


def _params() -> list[Any]:
    out = []
    for name in REGISTERED:
        for i, c in enumerate(CASES.get(name, [])):
            for j, f in enumerate(FUNCS[name]):
                out.append(pytest.param(f, c, id=f"{name}-{i}" + (f"-{j}" if j else "")))
    return out


PARAMS = _params()


@pytest.mark.parametrize("f, c", PARAMS)
@settings(max_examples=scaled(3))
@given(data=st.data())
def test_rule_sound(f, c, data):
    box = data.draw(boxes(shape=c.shape, lo=c.lo, hi=c.hi), label="box")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    _check(f, c, box, 10, seed, None, D)
    _check(f, c, as_cr(box), 6, seed + 1, None, D)


@pytest.mark.parametrize("f, c", PARAMS)
@settings(max_examples=scaled(3))
@given(data=st.data())
def test_rule_sound_float32(f, c, data):
    """Default mode on float32 boxes (torch's float32 kernels, vectorised ones included), against the
    points' float64 images, with the documented default-mode tolerance."""
    box = data.draw(boxes(shape=c.shape, lo=c.lo, hi=c.hi, dtype=torch.float32), label="box")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    _check(f, c, box, 10, seed, None, D)


def _f64_slack(vals: torch.Tensor) -> torch.Tensor:
    # float64 rounding of the reference values only: a million times below one float32 ulp.
    return 64 * torch.finfo(D).eps * vals.abs().clamp(min=torch.finfo(torch.float32).tiny)


@pytest.mark.parametrize("f, c", PARAMS)
@settings(max_examples=scaled(3))
@given(data=st.data())
def test_rule_sound_rigorous(f, c, data):
    box = data.draw(boxes(shape=c.shape, lo=c.lo, hi=c.hi, dtype=torch.float32), label="box")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    with intervals.rigorous():
        try:
            _check(f, c, box, 10, seed, _f64_slack, D)
        except UnsupportedOperation:
            pass  # refusing rigorous mode is allowed; a wrong bound is not
