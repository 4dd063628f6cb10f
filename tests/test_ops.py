"""The torch.library custom ops: gradcheck/opcheck, agreement with the composite rules, soundness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from soundness import assert_encloses, points_in

import intervals.ops as ops
from intervals import Interval
from intervals.ops import interval_relu

D = torch.float64


def test_interval_relu_gradcheck_and_opcheck():
    g = torch.Generator().manual_seed(0)
    # centres spread over all three regimes: inactive, active and straddling 0
    c = (torch.randn(64, generator=g, dtype=D) * 2).requires_grad_()
    r = torch.rand(64, generator=g, dtype=D).add(0.05).requires_grad_()
    assert torch.autograd.gradcheck(interval_relu, (c, r))
    assert torch.autograd.gradgradcheck(interval_relu, (c, r))  # double backward (gradient penalties)
    results = torch.library.opcheck(interval_relu, (c, r))
    assert all(v == "SUCCESS" for v in results.values()), results


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_interval_relu_backward_matches_the_masked_formula_near_the_dtype_maximum(dtype):
    """The backward's in-place form (masks written by comparisons) equals the plain masked formula,
    bit for bit, for gradients near the dtype's maximum too (halving comes before the sums)."""
    from intervals.ops import interval_relu_reference

    g = torch.Generator().manual_seed(5)
    c, r = torch.randn(512, generator=g).to(dtype), torch.rand(512, generator=g).to(dtype)
    big = torch.finfo(dtype).max * 0.75
    grads = [torch.randn(512, generator=g).sign().to(dtype) * big, torch.randn(512, generator=g).to(dtype)]
    c, r = c.requires_grad_(), r.requires_grad_()
    nc, nr = interval_relu(c, r)
    got = torch.autograd.grad((nc, nr), (c, r), grads)
    with torch.no_grad():
        nc, nr = interval_relu_reference(c, r)
    a = (grads[0] + grads[1]) * 0.5 * (nc > 0)
    b = (grads[0] - grads[1]) * 0.5 * (nc > nr)
    for x, e in zip(got, (a + b, a - b), strict=True):
        assert torch.isfinite(x).all()
        assert torch.equal(x, e)


def test_interval_relu_matches_endpoint_rule_and_is_sound():
    g = torch.Generator().manual_seed(1)
    c = torch.randn(200, generator=g, dtype=D)
    r = torch.rand(200, generator=g, dtype=D)
    nc, nr = interval_relu(c, r)
    box = Interval.from_center_radius(c, r)
    torch.testing.assert_close(nc - nr, F.relu(c - r), rtol=0, atol=1e-15)
    torch.testing.assert_close(nc + nr, F.relu(c + r), rtol=0, atol=1e-15)
    assert_encloses(Interval.from_center_radius(nc, nr), F.relu(points_in(box, 64)), what="interval_relu")


def test_reference_forms_match_the_custom_ops():
    from intervals.ops import interval_linear, interval_linear_reference, interval_relu_reference

    g = torch.Generator().manual_seed(2)
    c, r = torch.randn(5, 7, generator=g, dtype=D), torch.rand(5, 7, generator=g, dtype=D)
    w, b = torch.randn(3, 7, generator=g, dtype=D), torch.randn(3, generator=g, dtype=D)
    for got, want in zip(interval_relu(c, r), interval_relu_reference(c, r), strict=True):
        torch.testing.assert_close(got, want)
    for scale in (1.0, 0.5):
        got = interval_linear(c, r, w, w.abs(), b, scale)
        want = interval_linear_reference(c, r, w, w.abs(), b, scale)
        for a, e in zip(got, want, strict=True):
            torch.testing.assert_close(a, e)


def test_compile_bounds_matches_eager_and_backpropagates():
    from intervals.compile import compile_bounds

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    box = Interval.linf_ball(torch.rand(4, 6), 0.1, lo=0.0, hi=1.0)
    eager = net(box)
    compiled = compile_bounds(net, dynamic=False)(box)
    torch.testing.assert_close(compiled.lower, eager.lower, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.upper, eager.upper, rtol=1e-5, atol=1e-6)
    (compiled.upper - compiled.lower).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    assert grads[0].abs().sum() > 0
    net.zero_grad()
    (eager.upper - eager.lower).sum().backward()
    # Compiled, the box ReLU's backward is the op's own formula traced into the graph
    # (ops._TracedIntervalRelu): the same gradients as eager's registered op.
    for g, p in zip(grads, net.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


def test_compiled_training_uses_the_traced_relu_backward(monkeypatch):
    """Under torch.compile (compile_bounds' default dynamic=True) gradients flow through
    ops._TracedIntervalRelu's backward: a deliberately doubled backward doubles them."""
    from intervals.compile import compile_bounds

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    box = Interval.linf_ball(torch.rand(3, 6), 0.3)

    def first_weight_grad(bounds) -> torch.Tensor:  # noqa: ANN001
        net.zero_grad()
        bounds(box).upper.sum().backward()
        return net[0].weight.grad.clone()

    eager = first_weight_grad(net)
    torch.testing.assert_close(first_weight_grad(compile_bounds(net)), eager)
    real = ops._relu_input_grads
    monkeypatch.setattr(ops, "_relu_input_grads", lambda *a: tuple(2 * g for g in real(*a)))
    torch._dynamo.reset()
    try:
        torch.testing.assert_close(first_weight_grad(compile_bounds(net)), 2 * eager)
    finally:
        torch._dynamo.reset()


def test_traced_relu_function_gradients():
    g = torch.Generator().manual_seed(0)
    c = (torch.randn(64, generator=g, dtype=D) * 2).requires_grad_()
    r = torch.rand(64, generator=g, dtype=D).add(0.05).requires_grad_()
    assert torch.autograd.gradcheck(ops._TracedIntervalRelu.apply, (c, r))
    assert torch.autograd.gradgradcheck(ops._TracedIntervalRelu.apply, (c, r))


def test_the_registered_ops_are_skipped_only_where_they_buy_nothing(monkeypatch):
    """Certification under no_grad calls the reference directly (same numbers, no op dispatch);
    a forward that needs gradients goes through the ops and their autograd formulas."""
    calls: list[str] = []
    for name in ("interval_linear", "interval_linear_fused", "interval_relu"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    box = Interval.linf_ball(torch.randn(4, 5), 0.2)
    with torch.no_grad():
        quick = net(box)
    assert calls == []
    trained = net(box)
    # training: the fused linear op (it saves no |W|) and the ReLU op with their autograd formulas
    assert calls == ["interval_linear_fused", "interval_relu", "interval_linear_fused"]
    torch.testing.assert_close(quick.lower, trained.lower, rtol=0, atol=0)
    torch.testing.assert_close(quick.upper, trained.upper, rtol=0, atol=0)
    calls.clear()
    frozen = torch.nn.Sequential(torch.nn.Linear(5, 7).requires_grad_(False), torch.nn.ReLU())
    frozen(box)  # nothing needs a gradient: no op either
    assert calls == []
    assert ops._custom_op_pays(torch.zeros(1, device="meta"))  # other devices always take the op


def test_training_saves_no_abs_weight_and_matches_the_abs_weight_path():
    """The training path keeps no |W| for backward (W-sized tensors saved are the parameter itself),
    and its gradients equal those of the op that takes |W| as an input."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 300)
    box = Interval.linf_ball(torch.randn(8, 64), 0.1)
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(box)
    w_sized = [t for t in saved if t.shape == layer.weight.shape]
    assert w_sized and all(t.data_ptr() == layer.weight.data_ptr() for t in w_sized)
    loss = (out.upper - out.lower).square().sum() + out.center.sum()
    grads = torch.autograd.grad(loss, [layer.weight, layer.bias])
    c, r = ops.interval_linear(box.center, box.radius, layer.weight, layer.weight.abs(), layer.bias)
    ref = torch.autograd.grad((2 * r).square().sum() + c.sum(), [layer.weight, layer.bias])
    for g, e in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, e)


def test_fused_backward_row_blocks_give_the_same_weight_gradient(monkeypatch):
    torch.manual_seed(1)
    g_c, g_r, c, r = (torch.randn(6, 5, dtype=D) for _ in range(4))
    w = torch.randn(5, 5, dtype=D)
    whole = ops.interval_linear_fused_backward_reference(g_c, g_r, c, r, w, 0.5, False, False, True)[0]
    monkeypatch.setattr(ops, "_BLOCK_ELEMENTS", 7)  # one row per block
    blocked = ops.interval_linear_fused_backward_reference(g_c, g_r, c, r, w, 0.5, False, False, True)[0]
    expect = 0.5 * (g_c.t() @ c + w.sign() * (g_r.t() @ r))
    torch.testing.assert_close(whole, expect, rtol=0, atol=1e-12)
    torch.testing.assert_close(blocked, expect, rtol=0, atol=1e-12)


@pytest.mark.parametrize("endpoints", [False, True], ids=["centre-radius", "endpoints"])
@pytest.mark.parametrize(
    ("shape", "block_elements", "expect"),
    [((11, 7), 14, (0, 2)),  # tall: 11 rows, blocks of 2 and a last one of 1
     ((3, 23), 15, (1, 5))],  # wide: 23 columns, blocks of 5 and a last one of 3
)
def test_large_weights_take_abs_in_blocks_with_the_same_bounds_and_gradients(
    monkeypatch, shape, block_elements, expect, endpoints
):
    """Above 4 blocks' worth of weights the fused op's CPU form takes |W| a block at a time: row
    blocks for a tall weight, column blocks (partial products summed) for a wide one; here forced down
    to tiny blocks. The same box, still sound, and the same gradients, with and without autograd.
    An endpoint-form box reaches the layer as (l + u, u - l) with the factor 1/2 folded into the
    products, so the blocked forms' scale handling is checked too, against a dense float64 form."""
    torch.manual_seed(3)
    n_out, n_in = shape
    layer = torch.nn.Linear(n_in, n_out).double()
    box = Interval.from_center_radius(torch.randn(4, n_in, dtype=D), torch.rand(4, n_in, dtype=D))
    if endpoints:
        box = Interval(box.lower, box.upper)
    w, bias = layer.weight.detach(), layer.bias.detach()
    dense_c = box.center @ w.t() + bias
    dense_r = box.radius @ w.abs().t()

    def run() -> tuple[Interval, Interval, tuple[torch.Tensor, ...]]:
        c, r = box.center.clone().requires_grad_(), box.radius.clone().requires_grad_()
        if endpoints:
            lo, hi = box.lower.clone().requires_grad_(), box.upper.clone().requires_grad_()
            out = layer(Interval(lo, hi))
            loss = (out.upper - out.lower).square().sum() + out.center.sum()
            with torch.no_grad():
                certify_path = layer(box)
            return out, certify_path, torch.autograd.grad(loss, [lo, hi, layer.weight, layer.bias])
        out = layer(Interval.from_center_radius(c, r))
        loss = (out.upper - out.lower).square().sum() + out.center.sum()
        with torch.no_grad():
            certify_path = layer(box)
        return out, certify_path, torch.autograd.grad(loss, [c, r, layer.weight, layer.bias])

    assert ops._abs_blocks(layer.weight) is None
    whole, _, g_whole = run()
    monkeypatch.setattr(ops, "_BLOCK_ELEMENTS", block_elements)
    monkeypatch.setattr(ops, "_MIN_BLOCK_ROWS", 2)
    assert ops._abs_blocks(layer.weight) == expect
    calls: list[str] = []

    def spy(name: str):  # noqa: ANN202
        original = getattr(ops, name)
        return lambda *args: calls.append(name) or original(*args)

    for name in ("_radius_product", "_radius_input_grad"):
        monkeypatch.setattr(ops, name, spy(name))
    blocked, no_grad, g_blocked = run()
    assert calls.count("_radius_product") == 2 and "_radius_input_grad" in calls  # the blocked forms ran
    for b in (blocked, no_grad):
        torch.testing.assert_close(b.lower, whole.lower, rtol=0, atol=1e-13)
        torch.testing.assert_close(b.upper, whole.upper, rtol=0, atol=1e-13)
        torch.testing.assert_close(b.center, dense_c, rtol=0, atol=1e-13)
        torch.testing.assert_close(b.radius, dense_r, rtol=0, atol=1e-13)
    for g, e in zip(g_blocked, g_whole, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)
    with torch.no_grad():
        assert_encloses(blocked, layer(points_in(box, 64)), what="blocked linear")
        assert_encloses(no_grad, layer(points_in(box, 64)), what="blocked linear, no autograd")


def test_half_precision_wide_weights_are_not_cut_into_column_blocks(monkeypatch):
    """Column blocks would round each partial product to the half dtype before summing: not taken."""
    monkeypatch.setattr(ops, "_BLOCK_ELEMENTS", 15)
    monkeypatch.setattr(ops, "_MIN_BLOCK_ROWS", 2)
    w = torch.randn(3, 23)
    assert ops._abs_blocks(w) == (1, 5)
    assert ops._abs_blocks(w.double()) == (1, 5)
    assert ops._abs_blocks(w.bfloat16()) is None and ops._abs_blocks(w.half()) is None
    assert ops._abs_blocks(torch.randn(11, 7).bfloat16()) == (0, 2)  # row blocks: one GEMM per output column


def test_training_path_linear_layer_encloses_every_point_of_the_box():
    """The layer rule's training path (fused op, parameters requiring gradients) is sound, sums and
    differences of endpoint-form boxes included."""
    torch.manual_seed(2)
    layer = torch.nn.Linear(9, 5).double()
    for box in (Interval.from_center_radius(torch.randn(3, 9, dtype=D), torch.rand(3, 9, dtype=D)),
                Interval(torch.zeros(3, 9, dtype=D), torch.rand(3, 9, dtype=D))):  # centre/radius and endpoints
        out = layer(box)
        assert out.lower.requires_grad
        with torch.no_grad():
            assert_encloses(out, layer(points_in(box, 64)), what="training-path linear")
