"""Structural rules (indexing, reshaping, joining, splitting, padding, dropout) are exact.

They only move or copy elements, so the image of a box is the box of the moved endpoints: the
output endpoints must equal the op applied to the input endpoints bit for bit, and every point of
the input box must map inside with zero tolerance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from soundness import as_cr, assert_encloses, boxes, points_in, scaled

from intervals import Interval, UnsupportedOperation

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SHAPES3 = hnp.array_shapes(min_dims=3, max_dims=3, min_side=2, max_side=4)


def box3(dtype=torch.float64):
    return SHAPES3.flatmap(lambda s: boxes(shape=s, dtype=dtype))


def check_exact(op, box: Interval, n: int = 10) -> None:
    out = op(box)
    assert isinstance(out, Interval), f"expected an Interval, got {type(out).__name__}"
    ref_lo, ref_hi = op(box.lower), op(box.upper)
    assert out.shape == ref_lo.shape
    assert out.dtype == box.dtype
    assert torch.equal(out.lower, ref_lo), "lower endpoint differs from op(lower)"
    assert torch.equal(out.upper, ref_hi), "upper endpoint differs from op(upper)"
    for p in points_in(box, n):
        assert_encloses(out, op(p), tol=0)


# Every op below must accept a tensor as well as an Interval (the same call is replayed on points).
OPS = {
    "getitem_int": lambda x: x[0],
    "getitem_neg": lambda x: x[-1, :, 0],
    "getitem_slice": lambda x: x[:, 1:],
    "getitem_step": lambda x: x[..., ::2],
    "getitem_none": lambda x: x[None, 0, ..., None],
    "getitem_tensor": lambda x: x[torch.tensor([1, 0, 1])],
    "getitem_tensor2": lambda x: x[:, torch.tensor([0, 0])],
    "getitem_bool": lambda x: x[torch.arange(x.shape[0]) % 2 == 0],
    "reshape_varargs": lambda x: x.reshape(x.shape[0] * x.shape[1], -1),
    "reshape_tuple": lambda x: x.reshape((-1,)),
    "torch_reshape": lambda x: torch.reshape(x, (x.shape[0], -1)),
    "view": lambda x: x.view(-1, x.shape[-1]),
    "view_tuple": lambda x: x.view((x.shape[0], -1)),
    "view_as": lambda x: x.view_as(torch.empty(x.numel())),
    "reshape_as": lambda x: x.reshape_as(torch.empty(x.shape[0], x.numel() // x.shape[0])),
    "flatten": lambda x: x.flatten(),
    "flatten_1": lambda x: x.flatten(1),
    "torch_flatten": lambda x: torch.flatten(x, 0, 1),
    "torch_flatten_kw": lambda x: torch.flatten(x, start_dim=1, end_dim=2),
    "unflatten": lambda x: x.unflatten(-1, (x.shape[-1], 1)),
    "permute_varargs": lambda x: x.permute(2, 0, 1),
    "permute_tuple": lambda x: x.permute((1, 2, 0)),
    "torch_permute": lambda x: torch.permute(x, (2, 1, 0)),
    "transpose": lambda x: x.transpose(0, 2),
    "torch_transpose": lambda x: torch.transpose(x, -1, 1),
    "t": lambda x: x[0].t(),
    "T2": lambda x: x[0].T,
    "mT": lambda x: x.mT,
    "swapaxes": lambda x: x.swapaxes(0, 1),
    "movedim": lambda x: torch.movedim(x, 0, -1),
    "squeeze": lambda x: x[:, :1].squeeze(1),
    "squeeze_all": lambda x: x[:1, :, :1].squeeze(),
    "torch_squeeze": lambda x: torch.squeeze(x[:1], 0),
    "unsqueeze": lambda x: x.unsqueeze(1),
    "torch_unsqueeze": lambda x: torch.unsqueeze(x, dim=-1),
    "expand": lambda x: x.unsqueeze(0).expand(3, -1, -1, -1),
    "expand_tuple": lambda x: x[:, :1].expand((x.shape[0], 5, x.shape[2])),
    "expand_as": lambda x: x.expand_as(torch.empty(2, *x.shape)),
    "contiguous": lambda x: x.transpose(0, 1).contiguous(),
    "flip": lambda x: x.flip(0, 2),
    "torch_flip": lambda x: torch.flip(x, (1,)),
    "roll": lambda x: torch.roll(x, 1, 2),
    "narrow": lambda x: x.narrow(1, 1, 1),
    "select": lambda x: x.select(2, -1),
    "repeat": lambda x: x.repeat(2, 1, 3),
    "tile": lambda x: torch.tile(x, (2,)),
    "index_select": lambda x: torch.index_select(x, 1, torch.tensor([1, 0, 1])),
    "gather": lambda x: torch.gather(x, 2, torch.zeros(x.shape[:2] + (1,), dtype=torch.long)),
    "clone": lambda x: x.clone(),
}


@pytest.mark.parametrize("name", sorted(OPS))
@settings(max_examples=scaled(15))
@given(box=box3(), cr=st.booleans())
def test_structural_op_exact(name, box, cr):
    check_exact(OPS[name], as_cr(box) if cr else box)


@settings(max_examples=scaled(15))
@given(box=box3(torch.float32))
def test_structural_float32(box):
    for name in ("getitem_tensor", "permute_varargs", "expand", "torch_flatten"):
        check_exact(OPS[name], box)


def test_varargs_method_spellings():
    # Regression: method spellings with varargs were replayed through torch.* (tuple-only) functions.
    box = Interval(torch.zeros(2, 3), torch.ones(2, 3))
    assert box.permute(1, 0).shape == (3, 2)
    assert box.reshape(3, 2).shape == (3, 2)
    assert box.flip(0, 1).shape == (2, 3)
    assert box.tile(2, 1).shape == (4, 3)
    assert torch.nn.Unflatten(1, (3, 1))(box).shape == (2, 3, 1)


# ---------------------------------------------------------------------------- joining
@settings(max_examples=scaled(40))
@given(
    box=box3(),
    other=st.integers(0, 2**31 - 1),
    dim=st.integers(-3, 2),
    order=st.permutations(["iv", "iv2", "tensor"]),
    stack=st.booleans(),
)
def test_cat_stack_mix_intervals_and_tensors(box, other, dim, order, stack):
    g = torch.Generator().manual_seed(other)
    t = torch.randn(box.shape, generator=g, dtype=box.dtype)
    box2 = Interval(t - 1, t + torch.rand(box.shape, generator=g, dtype=box.dtype))
    parts = {"iv": box, "iv2": as_cr(box2), "tensor": t}
    items = [parts[k] for k in order]
    fn = torch.stack if stack else torch.cat
    out = fn(items, dim=dim)
    assert isinstance(out, Interval)
    lows = [p.lower if isinstance(p, Interval) else p for p in items]
    highs = [p.upper if isinstance(p, Interval) else p for p in items]
    assert torch.equal(out.lower, fn(lows, dim=dim))
    assert torch.equal(out.upper, fn(highs, dim=dim))
    # the plain tensor's slot is a degenerate box equal to the tensor
    k = order.index("tensor")
    if stack:
        d = dim % (box.dim() + 1)
        tl, tu = out.lower.select(d, k), out.upper.select(d, k)
    else:
        d = dim % box.dim()
        n = box.shape[d]
        tl, tu = out.lower.narrow(d, k * n, n), out.upper.narrow(d, k * n, n)
    assert torch.equal(tl, t) and torch.equal(tu, t)
    # points of the joint box (one point per Interval) map inside
    for p, q in zip(points_in(box, 6), points_in(parts["iv2"], 6, seed=1), strict=True):
        pts = {"iv": p, "iv2": q, "tensor": t}
        assert_encloses(out, fn([pts[k] for k in order], dim=dim), tol=0)


def test_cat_positional_and_variants():
    a = Interval(torch.zeros(2, 3), torch.ones(2, 3))
    t = torch.full((2, 1), 5.0)
    out = torch.cat((a, t), 1)
    assert out.shape == (2, 4)
    assert torch.equal(out.upper[:, 3], torch.full((2,), 5.0))
    assert torch.equal(out.lower[:, :3], torch.zeros(2, 3))
    assert torch.hstack([t, a]).shape == (2, 4)
    assert torch.vstack([a, torch.zeros(1, 3)]).shape == (3, 3)
    assert torch.concat([a, a], dim=0).shape == (4, 3)


# ---------------------------------------------------------------------------- splitting
@settings(max_examples=scaled(40))
@given(box=box3(), dim=st.integers(-3, 2), k=st.integers(1, 3), cr=st.booleans(), which=st.sampled_from(
    ["split_int", "split_sizes", "chunk", "unbind", "torch_split", "torch_chunk", "torch_unbind"]))
def test_split_chunk_unbind_exact(box, dim, k, cr, which):
    x = as_cr(box) if cr else box
    n = box.shape[dim]
    sizes = [min(k, n), n - min(k, n)] if n > k else [n]
    fns = {
        "split_int": lambda v: v.split(k, dim),
        "split_sizes": lambda v: v.split(sizes, dim=dim),
        "chunk": lambda v: v.chunk(k, dim),
        "unbind": lambda v: v.unbind(dim),
        "torch_split": lambda v: torch.split(v, k, dim=dim),
        "torch_chunk": lambda v: torch.chunk(v, k, dim=dim),
        "torch_unbind": lambda v: torch.unbind(v, dim=dim),
    }
    fn = fns[which]
    outs = fn(x)
    lows, highs = fn(x.lower), fn(x.upper)
    assert isinstance(outs, tuple) and len(outs) == len(lows)
    for o, lo, hi in zip(outs, lows, highs, strict=True):
        assert isinstance(o, Interval)
        assert torch.equal(o.lower, lo) and torch.equal(o.upper, hi)
    for p in points_in(x, 6):
        for o, v in zip(outs, fn(p), strict=True):
            assert_encloses(o, v, tol=0)


def test_iterating_an_interval_yields_rows():
    box = Interval(torch.arange(6.0).reshape(3, 2), torch.arange(6.0).reshape(3, 2) + 1)
    rows = list(box)
    assert len(rows) == 3 and all(isinstance(r, Interval) for r in rows)
    assert torch.equal(rows[2].lower, torch.tensor([4.0, 5.0]))


# ---------------------------------------------------------------------------- padding
@settings(max_examples=scaled(40))
@given(
    shape=hnp.array_shapes(min_dims=3, max_dims=4, min_side=2, max_side=5),
    data=st.data(),
    mode=st.sampled_from(["constant", "reflect", "replicate", "circular"]),
    cr=st.booleans(),
)
def test_pad_exact(shape, data, mode, cr):
    box = data.draw(boxes(shape=shape))
    nsp = len(shape) - 2  # spatial dims the non-constant modes pad
    pads = []
    for d in range(nsp):
        size = shape[-1 - d]
        hi = size - 1 if mode in ("reflect", "circular") else 3
        pads += [data.draw(st.integers(0, hi)), data.draw(st.integers(0, hi))]
    value = data.draw(st.floats(-5, 5)) if mode == "constant" else None
    if mode == "constant":
        op = lambda v: F.pad(v, tuple(pads), mode="constant", value=value)  # noqa: E731
    else:
        op = lambda v: F.pad(v, tuple(pads), mode)  # noqa: E731
    check_exact(op, as_cr(box) if cr else box)


def test_pad_constant_value_region_is_a_point():
    box = Interval(torch.zeros(1, 2, 3), torch.ones(1, 2, 3))
    out = F.pad(box, (2, 1), value=-7.5)
    assert out.shape == (1, 2, 6)
    for sl in (slice(0, 2), slice(5, 6)):
        assert torch.all(out.lower[..., sl] == -7.5) and torch.all(out.upper[..., sl] == -7.5)
    assert torch.equal(out.upper[..., 2:5], torch.ones(1, 2, 3))
    # positional value argument
    out2 = F.pad(box, (1, 1), "constant", 3.0)
    assert torch.all(out2.lower[..., 0] == 3.0)


# ---------------------------------------------------------------------------- dropout
DROPOUTS = [F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout]


@pytest.mark.parametrize("fn", DROPOUTS, ids=lambda f: f.__name__)
def test_dropout_eval_is_identity(fn):
    lo = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    box = Interval(lo, lo + torch.rand_like(lo))
    out = fn(box, 0.5, training=False)
    assert isinstance(out, Interval)
    assert torch.equal(out.lower, box.lower) and torch.equal(out.upper, box.upper)


@pytest.mark.parametrize("fn", DROPOUTS, ids=lambda f: f.__name__)
def test_dropout_training_raises(fn):
    box = Interval(torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4))
    with pytest.raises(UnsupportedOperation, match=fn.__name__) as info:
        fn(box, 0.3, training=True)
    assert "eval" in str(info.value)


def test_dropout_training_with_p_zero_is_identity():
    box = Interval(torch.zeros(3), torch.ones(3))
    out = F.dropout(box, 0.0, training=True)
    assert torch.equal(out.upper, box.upper)


def test_dropout_modules():
    box = Interval(torch.zeros(2, 5), torch.ones(2, 5))
    m = torch.nn.Dropout(0.5)
    with pytest.raises(UnsupportedOperation, match="dropout"):
        m(box)  # modules start in training mode
    m.eval()
    out = m(box)
    assert torch.equal(out.lower, box.lower) and torch.equal(out.upper, box.upper)
