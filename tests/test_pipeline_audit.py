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
    assert float(lower.detach().min()) <= _true_margin(net, x_adv, 0) + 1e-6  # default mode: ulp-level slack
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
    lower = float(margin_bounds(net, x, y, 0.01).detach().min())
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


# ---------------------------------------------------------------------------- continual run checkpoints
@pytest.fixture(scope="module")
def bn_run(tmp_path_factory: pytest.TempPathFactory):
    """A finished 2-task Split Digits run whose target has per-task batch norm."""
    from continual.runner import RunConfig, run

    out = tmp_path_factory.mktemp("bnrun") / "run"
    cfg = RunConfig(method="hnet", benchmark="split-digits", benchmark_options={"num_tasks": 2}, target="small-conv",
                    target_options={"widths": [4], "kernel_sizes": [3], "pools": [2], "fc": [8]},
                    iterations=4, eval_every=4, batch_size=16, method_options={"emb_dim": 4, "hnet_hidden": [8]})
    run(cfg, out, progress=False, log=lambda s: None)
    return out


def _tampered(run, tmp_path, edit_config=None, edit_state=None):  # noqa: ANN001, ANN202
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    if edit_config is not None:
        config = json.loads((copy / "config.json").read_text())
        edit_config(config)
        (copy / "config.json").write_text(json.dumps(config))
    if edit_state is not None:
        state = torch.load(copy / "checkpoint.pt", weights_only=True)
        edit_state(state)
        torch.save(state, copy / "checkpoint.pt")
    return copy


def test_the_run_loads_and_records_its_config(bn_run):
    from certify.continual_runs import load_run

    assert torch.load(bn_run / "checkpoint.pt", weights_only=True)["config"]["seed"] == 0
    assert [m.task for m in load_run(bn_run)] == [0, 1]


@pytest.mark.parametrize("edit", [{"seed": 1}, {"iterations": 8}], ids=["seed", "iterations"])
def test_a_checkpoint_copied_into_another_runs_directory_is_refused(bn_run, tmp_path, edit):
    """Networks of the same shapes fitted, so the copy was certified on the other run's tasks."""
    from certify.continual_runs import load_run

    copy = _tampered(bn_run, tmp_path, edit_config=lambda c: c.update(edit))
    key = next(iter(edit))
    with pytest.raises(ValueError, match=f"belongs to another run.*differs from the run's config.json in {key}"):
        load_run(copy)


def test_a_checkpoint_missing_batch_norm_statistics_is_refused(bn_run, tmp_path):
    """A task without its statistics row was normalised with mean 0, variance 1: another network."""
    from certify.continual_runs import load_run

    def first_task_only(state):  # noqa: ANN001, ANN202
        for k in list(state["method"]):
            if "running_" in k or "num_batches_tracked" in k:
                state["method"][k] = state["method"][k][:1].clone()

    with pytest.raises(ValueError, match="statistics for 1 task.*2 are finished"):
        load_run(_tampered(bn_run, tmp_path, edit_state=first_task_only))


@pytest.mark.parametrize("task", [None, "1", 7, -1, True], ids=["missing", "text", "too many", "negative", "bool"])
def test_a_checkpoint_with_a_bad_task_count_is_a_value_error(bn_run, tmp_path, task):
    from certify.continual_runs import load_run

    def set_task(state):  # noqa: ANN001, ANN202
        if task is None:
            del state["task"]
        else:
            state["task"] = task

    with pytest.raises(ValueError, match="task count is"):
        load_run(_tampered(bn_run, tmp_path, edit_state=set_task))


def test_resuming_refuses_a_checkpoint_of_another_config(bn_run, tmp_path):
    """The runner applies the same check when it resumes."""
    import json

    from continual.runner import RunConfig, run

    copy = _tampered(bn_run, tmp_path, edit_config=lambda c: c.update(seed=3))
    cfg = RunConfig.from_dict(json.loads((copy / "config.json").read_text()))
    with pytest.raises(ValueError, match="belongs to another run"):
        run(cfg, copy, progress=False, log=lambda s: None)


# ---------------------------------------------------------------------------- certify-robustness and evaluate
_FAST = ["--methods", "ibp", "--n", "8", "--no-progress"]


def test_the_demo_model_is_not_trained_on_a_data_file_it_then_scores(tmp_path, capsys):
    """A .pt/.npz file has no training split: the demo model was trained on the very samples it reported."""
    from certify.cli import main

    path = tmp_path / "data.pt"
    torch.save({"x": torch.rand(20, 1, 8, 8), "y": torch.arange(20) % 10}, path)
    assert main(["--dataset", str(path), *_FAST]) == 2
    err = capsys.readouterr().err
    assert "no training split" in err and "--model" in err


@pytest.mark.parametrize("flags", [["--dataset", "mnist"], ["--split", "train"], ["--arch", "dm-large"],
                                   ["--num-classes", "7"], ["--download"]], ids=lambda f: f[0])
def test_flags_a_run_directory_does_not_use_are_refused(bn_run, capsys, flags):
    """They were silently ignored: `--split train` still evaluated the test split."""
    from certify.cli import main

    assert main(["--model", str(bn_run), *flags, *_FAST]) == 2
    err = capsys.readouterr().err
    assert f"{flags[0]}: not used with --model RUN_DIR" in err


def test_a_tie_is_not_a_correct_clean_answer():
    """Attacks and certificates count a tie with another class as a break; clean accuracy counted it
    as correct (argmax picks the first maximum), so 'robust' could exceed the clean figure's meaning."""
    from certify.evaluation import evaluate

    net = nn.Linear(2, 3).eval()
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([1.0, 1.0, 0.0]))  # classes 0 and 1 tie everywhere
    x, y = torch.rand(4, 2), torch.zeros(4, dtype=torch.long)
    report = evaluate(net, (x, y), [0.0], ["ibp", "fgsm"], progress=False)
    assert all(not r.clean_correct for r in report.records)
    assert report.summary()[0]["clean"] == 0.0


# ---------------------------------------------------------------------------- CROWN (a second review)
def test_crown_refuses_a_layer_whose_forward_was_replaced_on_the_instance():
    """``layer.forward = ...`` keeps the type and adds no hook; CROWN read the weights and missed it
    (a violation of 0.37), and the fold into a last Linear would too."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    net[2].forward = lambda x: nn.Linear.forward(net[2], x) * 3
    x, y = torch.rand(4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(UnsupportedLayer, match="instance-level forward of layer 2"):
        margin_bounds(net, x, y, 0.05, method="crown")
    lower = margin_bounds(net, x, y, 0.05)  # IBP calls the model, so the tripled layer is bounded
    with torch.no_grad():
        z = net(x)
    assert (lower[:, 0] <= z[:, 0] - z[:, 1] + 1e-6).all()


@pytest.mark.parametrize("body", [[nn.ReLU(inplace=True), nn.Linear(2, 2)],
                                  [nn.Identity(), nn.ReLU(inplace=True), nn.Linear(2, 2)]],
                         ids=["first", "after Identity"])
def test_crown_refuses_an_inplace_relu_on_a_residual_blocks_input(body):
    """The block's input is overwritten before the shortcut reads it; CROWN models ``x`` there."""
    from certify.models import Residual

    net = nn.Sequential(nn.Linear(2, 2), Residual(nn.Sequential(*body)), nn.Linear(2, 2)).eval()
    with pytest.raises(UnsupportedLayer, match=r"ReLU\(inplace=True\) on a residual block's input \(layer 1.body"):
        margin_bounds(net, torch.rand(3, 2), torch.zeros(3, dtype=torch.long), 0.1, method="crown-ibp")


def test_crown_takes_an_inplace_relu_inside_a_residual_body():
    """Behind a Linear the ReLU sees a fresh tensor (the usual torchvision block): same bounds as out of place."""
    from certify.models import Residual

    def net(inplace: bool) -> nn.Sequential:
        torch.manual_seed(0)
        body = nn.Sequential(nn.Linear(2, 2), nn.ReLU(inplace=inplace), nn.Linear(2, 2))
        return nn.Sequential(nn.Linear(2, 2), Residual(body), nn.Linear(2, 2)).eval()

    x, y = torch.rand(3, 2), torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(margin_bounds(net(True), x, y, 0.1, method="crown"),
                               margin_bounds(net(False), x, y, 0.1, method="crown"))


def test_crown_keeps_interval_bounds_where_its_own_float32_bounds_cross():
    """Inputs near 1e3, eps 1e-4 and biases cancelling ``W x``: CROWN's float32 bounds of a nearly fixed
    neuron crossed by rounding, and building the intermediate box raised ``lower > upper``."""
    from certify.crown import crown_bounds
    from intervals import Interval

    torch.manual_seed(0)
    for _ in range(40):
        x = torch.randn(1, 8) * 1e3
        l1, l2, l3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 2)
        with torch.no_grad():
            l1.bias.copy_(-(x @ l1.weight.T)[0] + torch.randn(16) * 1e-4)
            l2.bias.copy_(-(torch.relu(l1(x)) @ l2.weight.T)[0])
        net = nn.Sequential(l1, nn.ReLU(), l2, nn.ReLU(), l3).eval()
        box = Interval.linf_ball(x, 1e-4)
        lower, upper = crown_bounds(net, box, method="crown")
        ibp = net(box)
        assert (lower >= ibp.lower).all() and (upper <= ibp.upper).all()  # never looser than IBP


@pytest.mark.parametrize("method", ["crown", "crown-ibp"])
def test_crown_of_an_unbounded_box_is_the_interval_answer_not_nan(method):
    from certify.crown import crown_bounds
    from intervals import Interval

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    with torch.no_grad():
        net[0].weight[0, 0] = 0.0  # 0 * inf in a radius product
    box = Interval.linf_ball(torch.zeros(1, 3, dtype=torch.float64), float("inf"))
    lower, upper = crown_bounds(net, box, method=method)
    assert not lower.isnan().any() and not upper.isnan().any()
    assert (lower == -float("inf")).all() and (upper == float("inf")).all()



@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp"])
def test_a_half_unbounded_box_gives_minus_infinity_not_nan(method):
    """[0, inf) boxes turned into NaN centres (inf - inf) inside IBP; margins came out NaN."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    lower = margin_bounds(net, torch.zeros(1, 3), torch.tensor([0]), float("inf"), method=method, lo=0.0)
    assert lower.isneginf().all()


def test_a_run_certifies_after_a_config_field_is_added_or_its_device_changed(bn_run, tmp_path):
    """A checkpoint recorded before a RunConfig field existed (simulated: 'device' removed from both files),
    or a run trained elsewhere whose config.json now names the CPU, is still the same run."""
    import json

    from certify.continual_runs import load_run

    def drop_device(c):  # noqa: ANN001, ANN202
        c.pop("device")

    def drop_recorded_device(state):  # noqa: ANN001, ANN202
        state["config"].pop("device")

    copy = _tampered(bn_run, tmp_path, edit_config=drop_device, edit_state=drop_recorded_device)
    assert [m.task for m in load_run(copy)] == [0, 1]

    def trained_on_cuda(state):  # noqa: ANN001, ANN202
        state["config"]["device"] = "cuda"

    other = _tampered(bn_run, tmp_path / "b", edit_state=trained_on_cuda)
    assert json.loads((other / "config.json").read_text())["device"] == "cpu"
    assert [m.task for m in load_run(other)] == [0, 1]
