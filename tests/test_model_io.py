"""Model files: weights only, architecture from code, clear errors for corrupt or mismatched files."""

from __future__ import annotations

import os
import pickle
import re

import pytest
import torch
from torch import nn

from certify.model_io import load_model, resolve_factory, save_model
from certify.models import build_model

KW = {"in_channels": 1, "in_size": 8, "num_classes": 10}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", **KW)


def factory(width: int = 7) -> nn.Module:
    """A user factory named as ``tests.test_model_io:factory``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_rebuilds_from_the_recorded_architecture(tmp_path, suffix):
    net = _model()
    path = save_model(net, tmp_path / f"m{suffix}", arch="mlp", arch_kwargs=KW, metadata={"eps": 0.1})
    back = load_model(path)
    assert not back.training
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(back(x), net(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_bare_state_dict_needs_an_architecture(tmp_path):
    net = _model()
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="does not record its architecture"):
        load_model(tmp_path / "bare.pt")
    back = load_model(tmp_path / "bare.pt", "mlp", **KW)
    assert torch.equal(back[1].weight, net[1].weight)
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    assert torch.equal(load_model(tmp_path / "wrapped.pt", "mlp", **KW)[1].weight, net[1].weight)


def test_module_function_factory(tmp_path):
    net = factory(5)
    save_model(net, tmp_path / "f.pt", arch="tests.test_model_io:factory", arch_kwargs={"width": 5})
    # the file records the factory, but only the caller may choose code to run
    with pytest.raises(ValueError, match="never chooses code to run: pass arch='tests.test_model_io:factory'"):
        load_model(tmp_path / "f.pt")
    back = load_model(tmp_path / "f.pt", arch="tests.test_model_io:factory")
    assert back[1].out_features == 5  # the file's arch_kwargs apply to the factory the caller named
    with pytest.raises(ValueError, match="cannot import the factory module"):
        resolve_factory("no_such_module_xyz:build")
    with pytest.raises(ValueError, match="has no callable"):
        resolve_factory("tests.test_model_io:nothing_here")
    with pytest.raises(ValueError, match="unknown architecture 'resnet'.*mlp"):
        resolve_factory("resnet")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the hostile file is protocol 4 on purpose
def test_loading_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(ValueError, match="corrupt or not a weights file"):
        load_model(path, "mlp", **KW)
    assert not marker.exists()


def test_corrupt_missing_and_mismatched_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "nope.pt", "mlp")
    good = save_model(_model(), tmp_path / "good.pt", arch="mlp", arch_kwargs=KW)
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="trunc.pt: corrupt"):
        load_model(tmp_path / "trunc.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 50)
    with pytest.raises(ValueError, match="junk.safetensors: corrupt"):
        load_model(tmp_path / "junk.safetensors", "mlp", **KW)
    with pytest.raises(ValueError, match="does not fit architecture 'dm-small'.*missing"):
        load_model(good, "dm-small", in_channels=1, in_size=28, num_classes=10)
    with pytest.raises(ValueError, match=r"1.weight has shape \(100, 64\) in the file, \(100, 144\)"):
        load_model(good, "mlp", in_channels=1, in_size=12, num_classes=10)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="no state dict"):
        load_model(tmp_path / "list.pt", "mlp", **KW)


def test_nan_weights_are_refused(tmp_path):
    net = _model()
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    save_model(net, tmp_path / "nan.pt", arch="mlp", arch_kwargs=KW)
    with pytest.raises(ValueError, match="1.weight contains NaN"):
        load_model(tmp_path / "nan.pt")


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(TypeError):
        save_model(_model(), tmp_path / "m.pt", arch="mlp", metadata={"t": torch.zeros(1)})
    assert not (tmp_path / "m.pt").exists()


def test_output_paths_that_cannot_become_files_are_refused_with_their_reason(tmp_path, monkeypatch):
    from certify.model_io import check_output_file, check_outputs

    check_output_file(tmp_path / "new" / "deeper" / "r.json", "--json")  # missing folders: the writer makes them
    (tmp_path / "f").write_text("x")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    cases = [
        ("", "--json: empty path"),
        (".", "--json . is a directory; give a file path, e.g. results.json"),
        (tmp_path, f"--json {tmp_path} is a directory"),
        (tmp_path / "f" / "r.json", f"{tmp_path / 'f'} is a file, not a directory"),
        (tmp_path / "gone" / "r.json", f"{tmp_path / 'gone'} is a dangling link"),
        (tmp_path / ("x" * 300), "File name too long"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            check_output_file(path, "--json")
    # as a non-root user: a read-only folder, then a read-only file in a writable folder
    monkeypatch.setattr(os, "access", lambda *a: False)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path} is not writable")):
        check_output_file(tmp_path / "r.json", "--json")
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) != str(tmp_path / "f"))
    with pytest.raises(ValueError, match="the file is not writable"):
        check_output_file(tmp_path / "f", "--json")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--a and --b name the same file"):
        check_outputs({"--a": (tmp_path / "x.json", "a.json"), "--c": (None, "c"), "--b": (tmp_path / "x.json", "b")})
