"""Whole, unmodified ``nn.Module``s accept an Interval input and bound every sampled output."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from soundness import assert_encloses, corners
from soundness import points_in as _points_in
from torch import nn

from intervals import Interval, UnsupportedOperation


def points_in(box: Interval, n: int = 16, seed: int = 0) -> torch.Tensor:
    # soundness.points_in computes lo + (hi - lo) * u, which can round an ulp past hi; clamp.
    return torch.minimum(torch.maximum(_points_in(box, n, seed), box.lower), box.upper)


ACTIVATIONS = [
    lambda r: nn.ReLU(),
    lambda r: nn.LeakyReLU(r.choice([0.01, 0.2, -0.5])),
    lambda r: nn.ELU(r.choice([1.0, 0.5])),
    lambda r: nn.GELU(approximate=r.choice(["none", "tanh"])),
    lambda r: nn.SiLU(),
    lambda r: nn.Tanh(),
    lambda r: nn.Sigmoid(),
    lambda r: nn.Softplus(beta=r.choice([1.0, 2.0]), threshold=r.choice([20.0, 1.0])),
    lambda r: nn.Hardtanh(r.choice([-1.0, -0.5]), r.choice([1.0, 2.0])),
    lambda r: nn.Identity(),
]


def _randomise_bn(bn: nn.modules.batchnorm._BatchNorm, g: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters with negative entries."""
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.05)
        bn.weight.copy_(torch.randn(c, generator=g) * 1.5)
        bn.bias.copy_(torch.randn(c, generator=g))


def random_cnn(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    r = random.Random(seed)
    c0 = c = r.choice([1, 2])
    h0 = h = r.choice([6, 7, 8])
    layers: list[nn.Module] = []
    for _ in range(r.choice([1, 2])):
        c2 = r.choice([2, 3])
        k = r.choice([kk for kk in (1, 2, 3) if kk <= h])
        pad = r.choice([0, 1]) if k > 1 else 0
        mode = r.choice(["zeros", "reflect", "replicate", "circular"]) if pad else "zeros"
        stride = r.choice([1, 1, 2])
        layers.append(nn.Conv2d(c, c2, k, stride=stride, padding=pad, padding_mode=mode, bias=r.random() < 0.8))
        h = (h + 2 * pad - k) // stride + 1
        if r.random() < 0.6:
            layers.append(nn.BatchNorm2d(c2))
        layers.append(r.choice(ACTIVATIONS)(r))
        pool = r.choice(["max", "avg", "none"]) if h >= 3 else "none"
        if pool == "max":
            stride = r.choice([1, 2])
            layers.append(nn.MaxPool2d(2, stride=stride, ceil_mode=r.random() < 0.5))
            h = (h - 2) // stride + 1
        elif pool == "avg":
            layers.append(nn.AvgPool2d(2, stride=1, padding=r.choice([0, 1])))
            h = h - 1 + 2 * layers[-1].padding
        c = c2
    layers.append(nn.AdaptiveAvgPool2d(r.choice([1, 2])))
    layers.append(nn.Flatten())
    n = nn.Sequential(*layers).eval()(torch.zeros(1, c0, h0, h0)).shape[1]
    head: list[nn.Module] = [nn.Linear(n, 6)]
    if r.random() < 0.5:
        head.append(nn.BatchNorm1d(6))
    if r.random() < 0.5:
        head.append(nn.LayerNorm(6))
    head += [r.choice(ACTIVATIONS)(r), nn.Dropout(0.3), nn.Linear(6, 3)]
    return nn.Sequential(*layers, *head), (2, c0, h0, h0)


def random_conv1d(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    r = random.Random(1000 + seed)
    layers = [nn.Conv1d(2, 3, 3, padding=1, padding_mode=r.choice(["zeros", "reflect"])), nn.BatchNorm1d(3),
              r.choice(ACTIVATIONS)(r), nn.Conv1d(3, 2, 2, stride=2), r.choice(ACTIVATIONS)(r), nn.Flatten(),
              nn.Linear(12, 4), nn.LayerNorm(4), r.choice(ACTIVATIONS)(r), nn.Linear(4, 2)]
    return nn.Sequential(*layers), (3, 2, 12)


def random_mlp(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    r = random.Random(2000 + seed)
    d = r.choice([2, 3, 5])
    dims = [d] + [r.choice([3, 4, 6]) for _ in range(r.choice([1, 2, 3]))]
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers.append(nn.Linear(a, b))
        norm = r.choice(["bn", "ln", "none"])
        if norm == "bn":
            layers.append(nn.BatchNorm1d(b))
        elif norm == "ln":
            layers.append(nn.LayerNorm(b, elementwise_affine=r.random() < 0.7))
        layers.append(r.choice(ACTIVATIONS)(r))
        if r.random() < 0.3:
            layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(dims[-1], 2))
    return nn.Sequential(*layers), (2, d)


def prepare(net: nn.Module, seed: int, dtype: torch.dtype) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _randomise_bn(m, g)
        if isinstance(m, nn.LayerNorm) and m.weight is not None:
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return net.to(dtype).eval()


def random_box(shape, seed: int, dtype: torch.dtype, width: float) -> Interval:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    r = torch.rand(shape, generator=g, dtype=dtype) * width
    return Interval(x - r, x + r)


def check_module(net: nn.Module, box: Interval, n: int = 48, scale: float = 1.0) -> Interval:
    with torch.no_grad():
        out = net(box)
        assert isinstance(out, Interval), f"expected an Interval, got {type(out).__name__}"
        pts = points_in(box, n)
        if box.numel() <= 8:
            pts = torch.cat([pts, corners(box)])
        vals = torch.stack([net(p) for p in pts])
    assert out.shape == vals.shape[1:]
    assert torch.isfinite(out.lower).all() and torch.isfinite(out.upper).all()
    assert_encloses(out, vals, scale=scale)
    return out


BUILDERS = {"cnn": random_cnn, "conv1d": random_conv1d, "mlp": random_mlp}


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_random_sequential_is_sound(kind, seed):
    net, shape = BUILDERS[kind](seed)
    net = prepare(net, seed, torch.float64)
    for width in (1e-3, 0.1, 1.0):
        check_module(net, random_box(shape, seed, torch.float64, width))


@pytest.mark.parametrize("seed", range(4))
def test_random_sequential_float32(seed):
    net, shape = random_cnn(seed)
    net = prepare(net, seed, torch.float32)
    check_module(net, random_box(shape, seed, torch.float32, 0.05), scale=4)


@pytest.mark.parametrize("seed", range(6))
def test_tiny_mlp_all_corners(seed):
    net, _ = random_mlp(seed)
    net = prepare(net, seed, torch.float64)
    d = net[0].in_features
    box = random_box((1, d), seed, torch.float64, 0.5)
    check_module(net, box, n=64)  # every corner of the (1, d) box is sampled too


@pytest.mark.parametrize("kind", sorted(BUILDERS))
@pytest.mark.parametrize("seed", range(3))
def test_degenerate_box_matches_forward(kind, seed):
    net, shape = BUILDERS[kind](seed)
    net = prepare(net, seed, torch.float64)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
        for box in (Interval.point(x), Interval(x, x.clone()), Interval.linf_ball(x, 0.0)):
            out = net(box)
            # LayerNorm carries its centring round-off as width (amplified by 1/sqrt(eps))
            torch.testing.assert_close(out.lower, ref, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(out.upper, ref, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------- custom modules
class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                                   nn.Conv2d(2, 2, 3, padding=1))
        self.head = nn.Linear(2 * 16 + 2 * 4 + 1, 3)

    def forward(self, x):
        x = x + self.block(x)  # residual add of two Intervals
        y = torch.relu(x)
        flat = torch.flatten(y, 1)
        pooled = torch.flatten(F.avg_pool2d(y, 2), start_dim=1)
        ones = torch.ones(x.shape[0], 1, dtype=flat.dtype)  # a plain tensor joined to Intervals
        return self.head(torch.cat([flat, pooled, ones], dim=1))


class ReflectNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(2, 2, 3, padding=2, padding_mode="replicate", dilation=2)
        self.fc = nn.Linear(2 * 5 * 5, 2)

    def forward(self, x):
        return self.fc(F.elu(self.conv2(torch.tanh(self.conv(x)))).reshape(x.shape[0], -1))


@pytest.mark.parametrize("seed", range(3))
def test_custom_residual_module(seed):
    torch.manual_seed(seed)
    net = prepare(ResidualNet(), seed, torch.float64)
    box = random_box((2, 2, 4, 4), seed, torch.float64, 0.2)
    out = check_module(net, box)
    assert out.shape == (2, 3)
    assert bool((out.upper > out.lower).all())


@pytest.mark.parametrize("seed", range(3))
def test_reflect_padding_conv(seed):
    torch.manual_seed(seed)
    net = prepare(ReflectNet(), seed, torch.float64)
    check_module(net, random_box((2, 1, 5, 5), seed, torch.float64, 0.3))


# ---------------------------------------------------------------------------- unsupported ops
class SortNet(nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=-1).values


UNSUPPORTED = {
    "GroupNorm": (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4)), (1, 1, 5, 5), "group_norm"),
    "sort": (lambda: nn.Sequential(nn.Linear(3, 3), SortNet()), (2, 3), "sort"),
    "InstanceNorm": (lambda: nn.Sequential(nn.Conv1d(1, 4, 1), nn.InstanceNorm1d(4)), (2, 1, 3), "instance_norm"),
    "PReLU": (lambda: nn.Sequential(nn.Linear(3, 3), nn.PReLU()), (2, 3), "prelu"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_missing_rule_raises_naming_the_function(case):
    build, shape, name = UNSUPPORTED[case]
    net = build().double().eval()
    box = random_box(shape, 0, torch.float64, 0.1)
    with pytest.raises(UnsupportedOperation, match=name) as info:
        net(box)
    assert isinstance(info.value, TypeError)
    assert name in info.value.func_name


# ---------------------------------------------------------------------------- autograd
def test_bounds_backpropagate_to_parameters_and_input_box():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4, 5), nn.LayerNorm(5), nn.GELU(),
                        nn.Linear(5, 3))
    net = prepare(net, 0, torch.float64)
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    lo = (x - 0.05).requires_grad_()
    hi = (x + 0.05).requires_grad_()
    out = net(Interval(lo, hi))
    # a certified-training style loss: the worst-case margin plus the widths
    loss = (out.upper[:, 1:] - out.lower[:, :1]).sum() + (out.upper - out.lower).sum()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
        assert torch.isfinite(p.grad).all()
    for t in (lo, hi):
        assert t.grad is not None and t.grad.abs().sum() > 0
    # widening the box can only widen the output: d(width)/d(upper) >= 0 somewhere strictly
    assert float(hi.grad.sum()) > 0 and float(lo.grad.sum()) < 0


def test_requires_grad_on_interval_and_linf_ball():
    net = prepare(nn.Sequential(nn.Linear(4, 3), nn.Softplus(), nn.Linear(3, 2)), 1, torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    out = net(Interval.linf_ball(x, 0.1))
    (out.upper - out.lower).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    box = Interval(torch.zeros(2, 4, dtype=torch.float64), torch.ones(2, 4, dtype=torch.float64)).requires_grad_()
    assert box.requires_grad
    net(box).upper.sum().backward()
    assert box.upper.grad is not None and box.upper.grad.abs().sum() > 0


def test_softplus_low_threshold_jump_inside_a_network():
    # torch's softplus switches to the identity above threshold / beta and jumps *down* there
    # (log1p(e) = 1.313 at x = 1, then 1.0+ just above): the minimum sits right after the switch.
    net = nn.Sequential(nn.Linear(1, 1), nn.Softplus(beta=1.0, threshold=1.0)).double().eval()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(0.0)
    box = Interval(torch.tensor([[0.95]], dtype=torch.float64), torch.tensor([[1.3]], dtype=torch.float64))
    out = check_module(net, box, n=64)
    with torch.no_grad():
        just_above = net(torch.tensor([[1.0 + 1e-9]], dtype=torch.float64))
    assert float(out.lower) <= float(just_above)
