"""In-place semantics: a box changed in place behaves as torch's tensor would, or the change is refused.

torch's in-place ops change a tensor that other names may hold (``identity = x; relu_(x)``) and every
view of it. Bounds that ignored ``inplace=True`` described another network than the one that runs:
the pre-activation residual block below got bounds its real outputs left by 0.4 (found in a review).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from soundness import assert_encloses
from torch import nn

from intervals import Interval, IntervalError, UnsupportedInPlace, UnsupportedOperation

D = torch.float64


class _PreActBlock(nn.Module):
    """``relu_(x)`` first, then ``x`` (now relu'd) added back: torch's own pre-activation pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):  # noqa: ANN001, ANN201
        identity = x
        out = self.fc(self.relu(x))
        return out + identity


def _points(box: Interval, n: int = 4000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return box.lower + (box.upper - box.lower) * torch.rand(n, *box.shape[1:], generator=g, dtype=box.dtype)


@pytest.mark.parametrize("seed", range(10))
def test_an_in_place_relu_whose_input_is_added_back_is_bounded_as_it_runs(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 2), _PreActBlock(), nn.Linear(2, 2)).to(D).eval()
    box = Interval.linf_ball(torch.zeros(1, 2, dtype=D), 1.0)
    out = net(box)
    with torch.no_grad():
        images = net(_points(box))  # the real network, relu_ and all
    assert_encloses(out, images, what="pre-activation block")


def test_augmented_assignment_changes_the_box_every_holder_sees():
    x = Interval(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0]))
    identity = x
    x += 1.0
    assert identity is x
    torch.testing.assert_close(identity.lower, torch.tensor([0.0, 1.0]))
    x *= torch.tensor([2.0, -1.0])
    torch.testing.assert_close(identity.upper, torch.tensor([4.0, -1.0]))
    x.sub_(torch.ones(2), alpha=2)
    torch.testing.assert_close(identity.lower, torch.tensor([-2.0, -5.0]))


@pytest.mark.parametrize(
    "act", [F.relu, F.leaky_relu, F.elu, F.selu, F.celu, F.relu6, F.hardtanh, F.hardsigmoid, F.silu],
    ids=lambda f: f.__name__,
)
def test_every_inplace_flag_changes_the_box_itself(act):
    x = Interval(torch.linspace(-3, 1, 5), torch.linspace(-1, 3, 5))
    expected = act(x)
    got = act(x, inplace=True)
    assert got is x
    torch.testing.assert_close(x.lower, expected.lower)
    torch.testing.assert_close(x.upper, expected.upper)


def test_hardtanh_underscore_is_in_place():
    x = Interval(torch.tensor([-3.0]), torch.tensor([3.0]))
    assert F.hardtanh_(x) is x
    torch.testing.assert_close(x.upper, torch.tensor([1.0]))


@pytest.mark.parametrize("make_view", [lambda b: b[:2], lambda b: b.reshape(2, 2), lambda b: b.detach(),
                                       lambda b: b.unbind(0)[0], lambda b: b.flatten()],
                         ids=["slice", "reshape", "detach", "unbind", "flatten"])
def test_in_place_on_a_box_sharing_memory_with_a_live_box_is_refused(make_view):
    """torch would change both; a box only changes itself, so the change is refused instead."""
    base = Interval(-torch.ones(4), torch.ones(4))
    view = make_view(base)
    for target in (base, view):
        with pytest.raises(UnsupportedInPlace, match="relu in place on an Interval that shares memory .*inplace=False"):
            F.relu(target, inplace=True)
        with pytest.raises(UnsupportedOperation, match="shares memory"):
            target += 1.0
    torch.testing.assert_close(base.lower, -torch.ones(4))  # nothing changed
    del view, target
    F.relu(base, inplace=True)  # the view is gone: nothing else can see the change
    torch.testing.assert_close(base.lower, torch.zeros(4))


def test_copies_do_not_block_in_place_changes():
    base = Interval(-torch.ones(4), torch.ones(4))
    copies = [base.clone(), base.flip(0), base ** 1, base * 1.0]
    F.relu(base, inplace=True)
    for c in copies:
        torch.testing.assert_close(c.lower, -torch.ones(4))  # copies keep their values, as tensors would


def test_a_sequential_with_inplace_relus_after_views_runs():
    """The usual layouts: the box a Flatten viewed is gone when the next in-place ReLU runs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.ReLU(inplace=True),
                        nn.Linear(8, 3), nn.ReLU(inplace=True), nn.Linear(3, 2)).to(D).eval()
    box = Interval.linf_ball(torch.rand(1, 1, 4, 4, dtype=D), 0.1)
    out = net(box)
    with torch.no_grad():
        images = net(_points(box, 500))
    assert_encloses(out, images, what="in-place ReLUs around a Flatten")


def test_a_tensor_cannot_become_a_box_in_place():
    """Python would quietly fall back to ``t = t + box``, and other holders of ``t`` keep the old values."""
    t = torch.zeros(2)
    alias = t
    with pytest.raises(IntervalError, match="a tensor cannot hold an Interval in place"):
        t += Interval.point(torch.ones(2))
    assert alias is t and not t.any()


def test_a_conversion_that_changes_nothing_returns_the_same_box():
    x = Interval.point(torch.ones(2))
    assert x.to(torch.float32) is x  # as torch returns the tensor itself
    assert x.to(D) is not x


def test_the_certified_training_trace_records_pre_activation_boxes_under_inplace_relus():
    """The warm-up regulariser reads every ReLU's input box; an in-place ReLU changed the recorded box
    into its output (all lower bounds clipped at 0) before the copy was taken."""
    from certify.training import _relu_trace

    torch.manual_seed(0)
    inplace = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 6), nn.ReLU(inplace=True),
                            nn.Linear(6, 2))
    plain = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ReLU) else m for m in inplace])
    box = Interval.linf_ball(torch.rand(3, 4), 0.5)
    before = (box.lower.clone(), box.upper.clone())
    out_a, pre_a = _relu_trace(inplace, box)
    out_b, pre_b = _relu_trace(plain, box)
    for a, b in zip(pre_a + [out_a], pre_b + [out_b], strict=True):
        torch.testing.assert_close(a.lower, b.lower)
        torch.testing.assert_close(a.upper, b.upper)
    assert (pre_a[0].lower < 0).any()  # a pre-activation box, not a ReLU output
    torch.testing.assert_close(box.lower, before[0])  # the input box is untouched


@pytest.mark.parametrize("method", ["crown", "crown-ibp"])
def test_crown_concretises_over_the_input_box_when_the_first_layer_is_an_inplace_relu(method):
    """The in-place ReLU changed CROWN's own input box into relu(box) before the backward pass used it."""
    from certify.crown import crown_bounds

    torch.manual_seed(0)
    layers = [nn.Identity(), nn.ReLU(inplace=True), nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)]
    net = nn.Sequential(*layers).to(D).eval()
    box = Interval.linf_ball(torch.zeros(1, 3, dtype=D), 1.0)
    lower, upper = crown_bounds(net, box, method=method)
    torch.testing.assert_close(box.lower, -torch.ones(1, 3, dtype=D))
    plain = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ReLU) else m for m in layers]).to(D).eval()
    expect = crown_bounds(plain, Interval.linf_ball(torch.zeros(1, 3, dtype=D), 1.0), method=method)
    torch.testing.assert_close(lower, expect[0])
    torch.testing.assert_close(upper, expect[1])


# ---------------------------------------------------------------------------- a second review's findings
def test_power_assignment_changes_the_box_every_holder_sees():
    """``x **= 2`` fell back to ``x = x ** 2``: a holder of the old box kept the old values (torch: pow_)."""
    x = Interval(torch.tensor([-1.0, 2.0]), torch.tensor([1.0, 3.0]))
    identity = x
    x **= 2
    assert identity is x
    torch.testing.assert_close(identity.lower, torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(x.pow_(0.5).upper, torch.tensor([1.0, 3.0]))
    t = torch.ones(2)
    with pytest.raises(IntervalError, match="cannot hold an Interval in place"):
        t.pow_(Interval.point(torch.ones(2)))


def test_in_place_results_keep_the_left_operands_dtype_as_torch_does():
    """torch rounds an in-place result back to the receiver's dtype; the box had switched to float64
    and held ``1 + 1e-9`` where the float32 network computes exactly 1."""
    x = Interval.point(torch.ones(2))
    x += torch.full((2,), 1e-9, dtype=D)
    t = torch.ones(2)
    t += torch.full((2,), 1e-9, dtype=D)
    assert x.dtype == torch.float32
    assert bool(x.contains(t).all())


def test_an_in_place_result_may_not_grow_the_box():
    x = Interval.point(torch.ones(2))
    with pytest.raises(IntervalError, match=r"shape \(3, 2\) does not fit the box's \(2,\)"):
        x += torch.zeros(3, 2)
    with pytest.raises(RuntimeError):  # torch refuses the same
        torch.ones(2).add_(torch.zeros(3, 2))


def test_copy_copy_shares_as_a_tensors_copy_does():
    import copy

    x = Interval(-torch.ones(2), torch.ones(2))
    y = copy.copy(x)
    with pytest.raises(UnsupportedOperation, match="shares memory"):
        y += 1.0  # torch would change x as well
    z = x.snapshot()
    z += 1.0  # an independent box
    torch.testing.assert_close(x.lower, -torch.ones(2))


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_boxes_with_views_pickle_and_deepcopy_into_independent_boxes(how):
    """The memory-sharing bookkeeping (weak references) could not be pickled, and deepcopy carried it over."""
    import copy
    import io

    base = Interval(-torch.ones(2, 3), torch.ones(2, 3))
    view = base.reshape(6)
    for box in (base, view):
        if how == "pickle":
            buffer = io.BytesIO()
            torch.save(box, buffer)
            buffer.seek(0)
            twin = torch.load(buffer, weights_only=False)
        else:
            twin = copy.deepcopy(box)
        F.relu(twin, inplace=True)  # an independent box: nothing else can see the change
        torch.testing.assert_close(twin.lower, torch.zeros(box.shape))
    torch.testing.assert_close(base.lower, -torch.ones(2, 3))
