"""Regression tests for problems a review of the certification pipeline found (model files, run
checkpoints, the margin fold): each failed before its fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from certify import certified, margin_bounds
from certify.crown import UnsupportedLayer


class _MaskedLinear(nn.Linear):
    """A Linear whose forward applies a mask: its ``weight`` attribute is not what it computes with."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        self.register_buffer("mask", torch.ones(n_out, n_in))

    def forward(self, x):  # noqa: ANN001, ANN201
        return F.linear(x, self.weight * self.mask, self.bias)


def _masked_net() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reviewer's example: folding ``weight`` certified (0.3, 0.9), class 0, at eps 0.1; the masked
    network computes ``z = (x_0 - 0.25, 0)`` and (0.2, 0.9), inside the ball, flips it to class 1."""
    head = _MaskedLinear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        head.bias.copy_(torch.tensor([-0.25, 0.0]))
        head.mask.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    net = nn.Sequential(nn.Identity(), head).eval()
    return net, torch.tensor([[0.3, 0.9]]), torch.tensor([0]), torch.tensor([[0.2, 0.9]])


def _true_margin(net: nn.Module, x: torch.Tensor, y: int) -> float:
    with torch.no_grad():
        z = net(x)[0]
    return float(z[y] - torch.cat([z[:y], z[y + 1:]]).max())


def test_a_linear_subclass_with_its_own_forward_is_not_folded():
    net, x, y, x_adv = _masked_net()
    assert _true_margin(net, x_adv, 0) < 0  # a real counterexample inside the ball
    lower = margin_bounds(net, x, y, 0.1, lo=0.0, hi=1.0)
    assert float(lower.min()) <= _true_margin(net, x_adv, 0) + 1e-6  # default mode: ulp-level slack
    assert not bool(certified(net, x, y, 0.1, lo=0.0, hi=1.0)[0])


def test_a_sequential_subclass_with_its_own_forward_is_not_sliced():
    class Flipped(nn.Sequential):
        def forward(self, x):  # noqa: ANN001, ANN201
            return super().forward(x).flip(-1)

    net = Flipped(nn.Linear(2, 2)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        net[0].bias.zero_()
    x, y = torch.tensor([[0.5, 0.6]]), torch.tensor([0])
    # z = flip(W x) = (x1, 2 x0): class 1 everywhere in the ball. Folding into net[0] behind the slice
    # net[:-1] (an empty Flipped, which flips the *input*) gave W flip(x) = (2 x1, x0): class 0 certified.
    assert _true_margin(net, x, 0) < 0
    lower = float(margin_bounds(net, x, y, 0.01).min())
    assert lower <= _true_margin(net, x, 0) + 1e-6
    assert not bool(certified(net, x, y, 0.01)[0])


@pytest.mark.parametrize("where", ["last layer", "model"])
def test_forward_hooks_are_run_by_ibp_and_refused_by_crown(where):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    hooked = net[-1] if where == "last layer" else net
    # the hook flips the logits' order: a certificate that skips it certifies the wrong class
    handle = hooked.register_forward_hook(lambda module, args, out: -out)
    try:
        x = torch.rand(8, 3)
        y = net(x).argmax(1)
        lower = margin_bounds(net, x, y, 0.01)
        for _ in range(20):
            xp = (x + torch.empty_like(x).uniform_(-0.01, 0.01))
            z = net(xp)
            true = z.gather(1, y.unsqueeze(1)) - z
            true = true[torch.arange(3).expand(8, 3) != y.unsqueeze(1)].reshape(8, 2)
            assert (lower <= true + 1e-6).all()
        for method in ("crown", "crown-ibp"):
            with pytest.raises(UnsupportedLayer, match="forward hooks"):
                margin_bounds(net, x, y, 0.01, method=method)
    finally:
        handle.remove()
    margin_bounds(net, x, y, 0.01, method="crown")  # hooks removed: CROWN takes it again


# ---------------------------------------------------------------------------- model files
def test_a_model_file_naming_a_factory_runs_no_code(tmp_path):
    """A file recording ``module:function`` (here ``subprocess:run`` with a shell command as its
    keyword arguments) used to have that function imported and called by ``load_model(path)``."""
    import json

    from certify.model_io import FORMAT, load_model

    marker = tmp_path / "ran"
    info = {"arch": "subprocess:run", "arch_kwargs": {"args": f"touch {marker}", "shell": True}, "metadata": {}}
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "info": json.dumps(info), "state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="never chooses code to run"):
        load_model(path)
    assert not marker.exists()


def _damaged_files() -> dict[str, object]:
    import json

    from certify.model_io import FORMAT
    from certify.models import build_model

    state = build_model("mlp", in_channels=1, in_size=8, num_classes=10).state_dict()
    info = json.dumps({"arch": "mlp", "arch_kwargs": {"in_channels": 1, "in_size": 8, "num_classes": 10}})
    return {
        "its info field is not JSON text": {"format": FORMAT, "info": None, "state_dict": state},
        "its info is list, not a JSON object": {"format": FORMAT, "info": "[1, 2]", "state_dict": state},
        "info.arch_kwargs is list": {"format": FORMAT, "info": json.dumps({"arch": "mlp", "arch_kwargs": [1]}),
                                     "state_dict": state},
        "its state_dict is NoneType": {"format": FORMAT, "info": info},
        "its state_dict is list": {"format": FORMAT, "info": info, "state_dict": [1, 2]},
        "state_dict entry '1.weight' is list": {
            "format": FORMAT, "info": info, "state_dict": {**state, "1.weight": [1]}},
        "1.weight has dtype torch.int64 in the file": {
            "format": FORMAT, "info": info, "state_dict": {k: (v * 100).long() for k, v in state.items()}},
        "1.weight has dtype torch.complex64 in the file": {
            "format": FORMAT, "info": info, "state_dict": {k: v.to(torch.complex64) for k, v in state.items()}},
    }


@pytest.mark.parametrize("message", list(_damaged_files()))
def test_a_damaged_model_file_is_a_one_line_value_error(tmp_path, message):
    """Each of these crashed with a traceback (AttributeError, TypeError, KeyError) or, for integer and
    complex weights, was silently cast into a different model."""
    from certify.model_io import load_model

    path = tmp_path / "m.pt"
    torch.save(_damaged_files()[message], path)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_model(path)
    assert "\n" not in str(info.value)
