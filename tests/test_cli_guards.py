"""Guards of the command-line tools: nothing is lost (no output overwrites an input, everything is
validated before long work) and a user mistake is a one-line error with exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from certify.cli import main as certify_main
from certify.cli_checks import check_device, eps_value, positive_int, refuse_overwriting_inputs
from certify.model_io import save_model
from certify.models import build_model

FAST = ["--no-progress", "--pgd-steps", "3", "--threads", "1", "--n", "10", "--methods", "ibp,pgd"]


def _last_err(capsys: pytest.CaptureFixture[str], prog: str = "certify-robustness") -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith(prog), err[-1]
    return err[-1]


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained digits MLP saved with its architecture (enough for every guard below)."""
    torch.manual_seed(0)
    net = build_model("mlp", in_channels=1, in_size=8, num_classes=10)
    path = tmp_path_factory.mktemp("guards") / "digits_model.pt"
    save_model(net, path, arch="mlp", arch_kwargs={"in_channels": 1, "in_size": 8, "num_classes": 10})
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from continual.runner import RunConfig, run

    out = tmp_path_factory.mktemp("grun") / "run"
    cfg = RunConfig(method="hnet", benchmark="split-digits", benchmark_options={"num_tasks": 2},
                    target_options={"hidden": [8]}, iterations=4, eval_every=4, batch_size=16,
                    method_options={"emb_dim": 4, "hnet_hidden": [8]})
    run(cfg, out, progress=False, log=lambda s: None)
    return out


# ------------------------------------------------------------------------------ shared validators
def test_argparse_types_refuse_bad_values() -> None:
    assert positive_int("2") == 2 and eps_value("0.3") == 0.3
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
    for bad in ("nan", "inf", "-0.1", "1.5", "abc"):
        with pytest.raises(argparse.ArgumentTypeError):
            eps_value(bad)


def test_check_device_names_the_problem() -> None:
    assert check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device 'nosuch'"):
        check_device("nosuch")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_device("cuda")


def test_refuse_overwriting_inputs(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    with pytest.raises(ValueError, match="is the --model file"):
        refuse_overwriting_inputs({"--out": tmp_path / "." / "m.pt"}, {"--model": model})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / "run" / "old_report.json").write_text("{}")
    refuse_overwriting_inputs({"--out": tmp_path / "run" / "old_report.json"}, {"--model": tmp_path / "run"})
    with pytest.raises(ValueError, match="would overwrite checkpoint.pt of the --model directory"):
        refuse_overwriting_inputs({"--csv": tmp_path / "run" / "checkpoint.pt"}, {"--model": tmp_path / "run"},
                                  protected_names=["checkpoint.pt"])
    # in a data directory: data files are protected, a tool's own earlier weights are not
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    (data / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"x")
    (data / "dm_small.pt").write_bytes(b"x")
    refuse_overwriting_inputs({"--save-model": data / "dm_small.pt"}, {"--data-dir": data})
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz of the --data-dir directory"):
        refuse_overwriting_inputs({"--json": data / "mnist" / "t10k-images-idx3-ubyte.gz"}, {"--data-dir": data})
    with pytest.raises(ValueError, match="results.json"):  # not written yet, but the run will write it
        refuse_overwriting_inputs({"--out": tmp_path / "run" / "results.json"}, {"--model": tmp_path / "run"},
                                  protected_names=["results.json"])
    refuse_overwriting_inputs({"--out": tmp_path / "run" / "report.json"}, {"--model": tmp_path / "run"})


# ------------------------------------------------------------------------- certify-robustness: item 1
@pytest.mark.parametrize("flag", ["--out", "--csv"])
def test_certify_refuses_an_output_naming_the_model_file(digits_model: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], flag: str) -> None:
    model = tmp_path / "demo.pt"
    shutil.copy(digits_model, model)
    before = model.read_bytes()
    assert certify_main(["--model", str(model), flag, str(model), *FAST]) == 2
    err = _last_err(capsys)
    assert "is the --model file" in err
    assert model.read_bytes() == before
    assert "evaluating" not in capsys.readouterr().out


@pytest.mark.parametrize(("name", "flag"), [("checkpoint.pt", "--out"), ("config.json", "--out"),
                                            ("results.json", "--out")])
def test_certify_refuses_an_output_overwriting_a_file_of_the_run(run_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 name: str, flag: str) -> None:
    target = run_dir / name
    before = target.read_bytes()
    assert certify_main(["--model", str(run_dir), flag, str(target), *FAST]) == 2
    assert f"would overwrite {name}" in _last_err(capsys)
    assert target.read_bytes() == before


def test_certify_may_rewrite_its_own_report_in_a_run_dir(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the run's files are protected: a report the same command wrote before may be replaced."""
    argv = ["--model", str(run_dir), "--csv", str(run_dir / "records.csv"), "--out", str(run_dir / "rep.json"), *FAST]
    try:
        assert certify_main(argv) == 0
        assert certify_main(argv) == 0
        assert certify_main(["--model", str(run_dir), "--out", str(run_dir / "accuracy.csv"), *FAST]) == 2
        assert "would overwrite accuracy.csv" in _last_err(capsys)
    finally:
        for f in [run_dir / "rep.json", *run_dir.glob("records_task*.csv")]:
            f.unlink(missing_ok=True)


def test_certify_save_model_may_not_overwrite_the_dataset_file(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # only the demo path (no --model) writes --save-model: with --model it is refused before anything runs
    model = tmp_path / "m.pt"
    model.write_bytes(b"not read")
    assert certify_main(["--model", str(model), "--save-model", str(model), *FAST]) == 2
    assert "with --model there is nothing to save" in _last_err(capsys)
    assert model.read_bytes() == b"not read"


# ------------------------------------------------------------------------- certify-robustness: item 7
def test_certify_model_data_mismatch_is_one_line(digits_model: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    np.savez(tmp_path / "mnistlike.npz", x=x, y=np.arange(4))
    assert certify_main(["--model", str(digits_model), "--dataset", str(tmp_path / "mnistlike.npz"), *FAST]) == 2
    assert "does not fit the inputs" in _last_err(capsys)


@pytest.mark.parametrize(("device", "message"), [("nosuch", "unknown device 'nosuch'"),
                                                 ("cuda:99", "cuda")])
def test_certify_bad_device(digits_model: Path, capsys: pytest.CaptureFixture[str], device: str,
                            message: str) -> None:
    assert certify_main(["--model", str(digits_model), "--device", device, *FAST]) == 2
    assert message in _last_err(capsys)


@pytest.mark.parametrize(("task", "message"), [("1-0", "reversed"), ("0,0", "listed twice"),
                                               ("", "expected 'all'")])
def test_certify_bad_task_ranges(run_dir: Path, capsys: pytest.CaptureFixture[str], task: str, message: str) -> None:
    assert certify_main(["--model", str(run_dir), "--task", task, *FAST]) == 2
    assert message in _last_err(capsys)


def test_certify_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import certify.data as data

    def offline(*args: object, **kwargs: object) -> None:
        raise data.DownloadError("cannot download mnist: network unreachable")

    monkeypatch.setattr(data, "_download", offline)
    assert certify_main(["--dataset", "mnist", "--data-dir", str(tmp_path), "--download", *FAST]) == 2
    assert "network unreachable" in _last_err(capsys)


def test_certify_unsupported_op_is_exit_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    (tmp_path / "sortnet.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.l = torch.nn.Linear(64, 10)\n"
        "    def forward(self, x):\n"
        "        return torch.sort(self.l(x.flatten(1)), dim=1).values\n"
        "def build(**kw):\n"
        "    return Net()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("sortnet", None)
    import sortnet  # type: ignore[import-not-found]

    save_model(sortnet.build(), tmp_path / "sort.pt", arch="sortnet:build")
    assert certify_main(["--model", str(tmp_path / "sort.pt"), "--arch", "sortnet:build", *FAST]) == 2
    err = _last_err(capsys)
    assert "torch.sort" in err and "ibp" in err
    assert "evaluating" not in capsys.readouterr().out


def test_certify_run_dir_with_a_foreign_checkpoint(run_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["method"] = "hypermask"
    (other / "config.json").write_text(json.dumps(cfg))
    assert certify_main(["--model", str(other), *FAST]) == 2
    assert "does not fit the 'hypermask' run" in _last_err(capsys)
    (other / "config.json").write_text('{"method": ')
    assert certify_main(["--model", str(other), *FAST]) == 2
    assert "corrupt " + str(other / "config.json") in _last_err(capsys)


def test_certify_eps_beyond_the_data_range(digits_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certify_main(["--model", str(digits_model), "--eps", "1.5", *FAST]) == 2
    assert "exceeds the data's range" in _last_err(capsys)


# --------------------------------------------------------------------- benchmarks.train_mnist_certified
@pytest.fixture()
def tiny_mnist(tmp_path: Path) -> Path:
    from fixtures_data import write_mnist

    for split in ("train", "test"):
        write_mnist(tmp_path / "mnist", split=split, n=40)
    return tmp_path


def _no_training(monkeypatch: pytest.MonkeyPatch, module: object) -> None:
    """Make any training call fail the test: validation must come first."""
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the command line was validated")

    monkeypatch.setattr(module, "train_certified", boom)


def _exit2(fn, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        fn(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize(("argv", "message"), [
    (["--methods", "ibp,nosuch"], "unknown method 'nosuch'"),
    (["--eps", "-0.1"], "--eps"),
    (["--eps", "nan"], "--eps"),
    (["--eps", "2"], "[0, 1]"),
    (["--eps-train", "-1"], "--eps-train"),
    (["--batch-size", "0"], "--batch-size"),
    (["--threads", "0"], "--threads"),
    (["--pgd-steps", "0"], "--pgd-steps"),
    (["--test-n", "0"], "--test-n"),
    (["--train-n", "0"], "--train-n"),
    (["--epochs", "0"], "--epochs"),
    (["--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
])
def test_train_mnist_certified_validates_everything_before_training(tiny_mnist: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    argv: list[str], message: str) -> None:
    from benchmarks import train_mnist_certified as tmc

    _no_training(monkeypatch, tmc)
    base = ["--data-dir", str(tiny_mnist), "--epochs", "1", "--no-progress", "--threads", "1"]
    assert message in _exit2(tmc.main, [*base, *argv], capsys)


def test_train_mnist_certified_truncated_gz_is_one_line(tiny_mnist: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import train_mnist_certified as tmc

    _no_training(monkeypatch, tmc)
    gz = next((tiny_mnist / "mnist").glob("train-images*.gz"))
    gz.write_bytes(gz.read_bytes()[:50])
    assert "corrupt gzip" in _exit2(tmc.main, ["--data-dir", str(tiny_mnist), "--no-progress"], capsys)


def test_train_mnist_certified_refuses_a_checkpoint_of_other_data_or_settings(tiny_mnist: Path,
                                                                             capsys: pytest.CaptureFixture[str]
                                                                             ) -> None:
    from benchmarks import train_mnist_certified as tmc

    ckpt = tiny_mnist / "ck.pt"
    base = ["--data-dir", str(tiny_mnist), "--epochs", "1", "--test-n", "5", "--methods", "ibp", "--threads", "1",
            "--no-progress", "--checkpoint", str(ckpt)]
    assert tmc.main([*base, "--train-n", "20"]) == 0
    capsys.readouterr()
    assert "different data (20 samples, now 30)" in _exit2(tmc.main, [*base, "--train-n", "30"], capsys)
    assert "different training config" in _exit2(tmc.main, [*base, "--train-n", "20", "--eps-train", "0.2"], capsys)
    ckpt.write_bytes(b"")
    assert "corrupt training checkpoint" in _exit2(tmc.main, base, capsys)
    torch.save({"state_dict": {}}, ckpt)
    assert "not a hypercert training checkpoint" in _exit2(tmc.main, base, capsys)


def test_train_mnist_certified_json_may_not_overwrite_a_data_file(tiny_mnist: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import train_mnist_certified as tmc

    gz = next((tiny_mnist / "mnist").glob("train-images*.gz"))
    before = gz.read_bytes()
    assert "--data-dir" in _exit2(tmc.main, ["--data-dir", str(tiny_mnist), "--json", str(gz)], capsys)
    assert gz.read_bytes() == before


def test_train_mnist_certified_help_shows_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import train_mnist_certified as tmc

    with pytest.raises(SystemExit):
        tmc.main(["--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in out and "python -m benchmarks.train_mnist_certified" in out


# ----------------------------------------------------------------------------------- continual-train
TINY_TOML = ('iterations = 4\neval_every = 4\nbatch_size = 16\n[target_options]\nhidden = [8]\n'
             '[benchmark_options]\nnum_tasks = 2\n[method_options]\nemb_dim = 4\nhnet_hidden = [8]\n')


def _train(argv: list[str]) -> int:
    from continual.cli import train_main

    return train_main([*argv, "--no-progress", "--threads", "1"])


def test_continual_train_toml_method_gets_its_own_defaults(tmp_path: Path) -> None:
    """A TOML naming the method (no --method flag) gets that method's defaults, not another's."""
    from continual.cli import default_config

    toml = tmp_path / "c.toml"
    toml.write_text('method = "hint"\n' + TINY_TOML)
    assert _train(["--config", str(toml), "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    hint = default_config("hint", "split-digits")["method_options"]
    assert saved["method"] == "hint"
    assert saved["method_options"]["eps"] == hint["eps"]  # HINT's own option, absent from hnet's defaults
    assert saved["method_options"]["kappa_decay"] == pytest.approx(5e-5 * 4)  # follows the TOML's iterations


def test_continual_train_flag_contradicting_the_toml_is_refused(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('method = "hint"\nbenchmark = "split-digits"\n' + TINY_TOML)
    assert _train(["--method", "hnet", "--config", str(toml), "--out", str(tmp_path / "run")]) == 2
    assert "--method hnet contradicts method = 'hint'" in _last_err(capsys, "continual-train")
    assert _train(["--benchmark", "split-mnist", "--config", str(toml), "--out", str(tmp_path / "run")]) == 2
    assert "--benchmark split-mnist contradicts" in _last_err(capsys, "continual-train")
    assert not (tmp_path / "run").exists()
    assert _train(["--out", str(tmp_path / "run")]) == 2
    assert "--method is required" in _last_err(capsys, "continual-train")


@pytest.mark.parametrize("toml_keys", ['benchmark = "split-mnist"\n', 'method = "hint"\n'])
def test_a_run_started_under_the_old_precedence_still_resumes(tmp_path: Path, toml_keys: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Before flags/TOML precedence, `--method hnet --config T` took hnet's split-digits defaults under
    the whole TOML (its method/benchmark keys included); such a run must resume with that config."""
    import json

    from continual import cli

    toml = tmp_path / "c.toml"
    # leaves batch_size and the hidden sizes to the defaults, which differ between the two benchmarks
    toml.write_text(toml_keys + 'iterations = 4\neval_every = 4\n[benchmark_options]\nnum_tasks = 2\n')
    argv = ["--method", "hnet", "--config", str(toml), "--out", str(tmp_path / "run")]
    args = cli._train_parser().parse_args(argv)
    legacy = cli._legacy_config(args, cli._read_toml(toml))
    assert legacy is not None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(legacy.to_dict()))
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"started")
    assert cli._config(args) == legacy
    assert "resuming" in capsys.readouterr().err
    # a fresh directory gets the current precedence (or its refusal of a contradiction)
    fresh = cli._train_parser().parse_args([*argv[:-1], str(tmp_path / "fresh")])
    if "method" in toml_keys:
        with pytest.raises(ValueError, match="contradicts"):
            cli._config(fresh)
    else:
        assert cli._config(fresh) != legacy


def test_continual_train_help_documents_the_precedence(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _train(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "explicit flags win over the TOML" in out and "TOML wins over the defaults" in out


@pytest.mark.parametrize(("toml_extra", "extra", "message"), [
    ("", ["--device", "nosuch"], "unknown device 'nosuch'"),
    ("[benchmark_options]\nnum_tasks = 0\n", [], "num_tasks"),
    ("[benchmark_options]\nnosuch = 1\n", [], "bad benchmark_options"),
    ("[method_options]\nnosuch = 1\n", [], "bad option for method"),
    ("", ["--benchmark", "split-mnist", "--data-dir", "/nonexistent/data"], "/nonexistent/data"),
])
def test_a_failed_continual_train_leaves_the_run_dir_reusable(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              toml_extra: str, extra: list[str], message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('iterations = 4\neval_every = 4\nbatch_size = 16\n' + toml_extra)
    out = tmp_path / "run"
    assert _train(["--method", "hnet", "--config", str(bad), "--out", str(out), *extra]) == 2
    assert message in _last_err(capsys, "continual-train")
    assert not (out / "config.json").exists()
    good = tmp_path / "good.toml"
    good.write_text(TINY_TOML)
    assert _train(["--method", "hnet", "--config", str(good), "--out", str(out)]) == 0


def test_a_run_dir_whose_config_was_left_without_a_checkpoint_is_reused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"method": "hnet", "iterations": 999}))
    toml = tmp_path / "c.toml"
    toml.write_text(TINY_TOML)
    assert _train(["--method", "hnet", "--config", str(toml), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["iterations"] == 4


@pytest.mark.parametrize(("extra", "message"), [(["--threads", "0"], "--threads"),
                                                (["--device", "cuda:99"], "cuda")])
def test_continual_train_bad_threads_or_device(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               extra: list[str], message: str) -> None:
    from continual.cli import train_main

    try:
        code = train_main(["--method", "hnet", "--out", str(tmp_path / "run"), "--no-progress", *extra])
    except SystemExit as exc:  # argparse's own type check
        code = exc.code
    assert code == 2
    assert message in _last_err(capsys, "continual-train")


def test_continual_train_out_naming_a_file_or_a_corrupt_config(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep")
    assert _train(["--method", "hnet", "--out", str(afile)]) == 2
    assert "is a file, not a run directory" in _last_err(capsys, "continual-train")
    assert afile.read_text() == "keep"
    out = tmp_path / "run"
    toml = tmp_path / "c.toml"
    toml.write_text(TINY_TOML)
    assert _train(["--method", "hnet", "--config", str(toml), "--out", str(out)]) == 0
    (out / "config.json").write_text("{not json")
    assert _train(["--method", "hnet", "--config", str(toml), "--out", str(out)]) == 2
    assert f"corrupt {out / 'config.json'}" in _last_err(capsys, "continual-train")


def test_continual_eval_help_describes_the_run_dir(capsys: pytest.CaptureFixture[str]) -> None:
    from continual.cli import eval_main

    with pytest.raises(SystemExit):
        eval_main(["--help"])
    assert "written by continual-train --out" in capsys.readouterr().out


# ------------------------------------------------------------------- continual_repro / continual_robust
@pytest.mark.parametrize(("argv", "message"), [
    (["--methods", "hnet,nosuch"], "--methods: unknown 'nosuch'"),
    (["--benchmarks", "split-imagenet"], "--benchmarks: unknown 'split-imagenet'"),
    (["--iterations", "10,0"], "--iterations: must be >= 1"),
    (["--iterations", "ten"], "--iterations: not an integer"),
    (["--seeds", "0,x"], "--seeds: not an integer"),
    (["--option", "method_options.beta=abc"], "expected a number"),
    (["--option", "method=hint"], "use --methods"),
    (["--option", "nokey"], "key=value"),
    (["--option", "iterations=0"], "iterations must be a positive integer"),
    (["--benchmarks", "split-mnist", "--data-dir", "/nonexistent/data"], "/nonexistent/data"),
    (["--threads", "0"], "--threads"),
])
def test_continual_repro_validates_every_run_before_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str],
                                                              argv: list[str], message: str) -> None:
    from benchmarks import continual_repro

    monkeypatch.setattr(continual_repro, "run", lambda *a, **k: pytest.fail("a run started"))
    base = ["--out", str(tmp_path / "runs"), "--no-progress", "--option", "target_options.hidden=[8]"]
    assert message in _exit2(continual_repro.main, [*base, *argv], capsys)


@pytest.mark.parametrize(("argv", "message"), [
    (["--eps", "-1"], "--eps"),
    (["--eps", "nan"], "--eps"),
    (["--methods", "ibp,nosuch"], "unknown method 'nosuch'"),
    (["--pgd-steps", "0"], "--pgd-steps"),
    (["--n", "0"], "--n"),
    (["--iterations", "0"], "--iterations"),
    (["--method", "ewc"], "unknown method 'ewc'"),
    (["--benchmark", "nosuch"], "unknown benchmark 'nosuch'"),
    (["--option", "method_options.eps=big"], "expected a number"),
])
def test_continual_robust_validates_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str], argv: list[str],
                                                    message: str) -> None:
    from benchmarks import continual_robust

    monkeypatch.setattr(continual_robust, "run", lambda *a, **k: pytest.fail("training started"))
    base = ["--out", str(tmp_path / "run"), "--no-progress", "--iterations", "4"]
    assert message in _exit2(continual_robust.main, [*base, *argv], capsys)


def test_continual_option_value_kinds() -> None:
    from benchmarks.continual_repro import apply_option

    cfg = {"method_options": {"beta": 0.01, "nested": False, "hidden": [8]}, "lr": 1e-3}
    apply_option(cfg, "method_options.beta=0.5")
    apply_option(cfg, "method_options.newkey=abc")  # unknown keys are the method's to judge
    with pytest.raises(ValueError, match="expected true or false"):
        apply_option(cfg, "method_options.nested=1")
    with pytest.raises(ValueError, match="expected a JSON list"):
        apply_option(cfg, "method_options.hidden=8")
    with pytest.raises(ValueError, match="lr is not a table"):
        apply_option(cfg, "lr.x=1")


# ------------------------------------------------------------------ digits_demo, ibp_speed, crown_speed
@pytest.mark.parametrize(("argv", "message"), [(["--eps", "nan"], "--eps"), (["--eps", "1.5"], "[0, 1]"),
                                               (["--pgd-steps", "0"], "--pgd-steps"), (["--epochs", "-1"], "--epochs"),
                                               (["--threads", "0"], "--threads")])
def test_digits_demo_bad_values_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    from benchmarks import digits_demo

    assert message in _exit2(digits_demo.main, argv, capsys)


def test_ibp_speed_threads_0_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import ibp_speed

    assert "--threads" in _exit2(ibp_speed.main, ["--threads", "0"], capsys)


@pytest.mark.parametrize(
    "module, argv, flag",
    [
        ("continual_step", ["--tasks", "1", "0"], "--tasks"),
        ("continual_step", ["--repeats", "x"], "--repeats"),
        ("continual_step", ["--threads", "0"], "--threads"),
        ("gpu_kernels", ["--repeats", "0"], "--repeats"),
        ("gpu_kernels", ["--warmup", "-1"], "--warmup"),
        ("gpu_kernels", ["--balance", "0"], "--balance"),
        ("gpu_kernels", ["--widths", "64", "0"], "--widths"),
    ],
)
def test_timing_benchmarks_refuse_bad_counts(module: str, argv: list[str], flag: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    assert flag in _exit2(importlib.import_module(f"benchmarks.{module}").main, argv, capsys)


def test_crown_speed_explicit_data_dir_must_hold_mnist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import crown_speed

    err = _exit2(crown_speed.main, ["--models", "mlp", "--data-dir", "/nonexistent/data"], capsys)
    assert "--data-dir /nonexistent/data" in err and "(None)" not in err
    from fixtures_data import write_mnist

    write_mnist(tmp_path / "mnist", split="test", n=4)
    gz = next((tmp_path / "mnist").glob("t10k-images*.gz"))
    gz.write_bytes(gz.read_bytes()[:40])  # truncated: corrupt
    assert "cannot read MNIST" in _exit2(crown_speed.main, ["--models", "mlp", "--data-dir", str(tmp_path)], capsys)


def test_crown_speed_default_fallback_is_announced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import crown_speed

    monkeypatch.setattr(crown_speed, "default_data_dir", lambda: tmp_path / "nothing")
    out = tmp_path / "r.json"
    assert crown_speed.main(["--models", "mlp", "--batch", "2", "--repeats", "1", "--warmup", "0",
                             "--json", str(out)]) == 0
    assert "uniform random inputs" in capsys.readouterr().err
    assert json.loads(out.read_text())["results"][0]["inputs"] == "uniform"
    assert "needs MNIST" in _exit2(crown_speed.main, ["--models", "mlp", "--ibp-train-steps", "2"], capsys)


def test_crown_speed_weights_are_checked_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import crown_speed

    base = ["--models", "mlp", "--batch", "2", "--repeats", "1", "--warmup", "0"]
    assert "model file not found" in _exit2(crown_speed.main, [*base, "--weights", str(tmp_path / "no.pt")], capsys)
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "corrupt" in _exit2(crown_speed.main, [*base, "--weights", str(tmp_path / "empty.pt")], capsys)
    torch.save(build_model("dm-small", 1, 28, 10).state_dict(), tmp_path / "small.pt")
    assert "does not fit architecture 'mlp'" in _exit2(crown_speed.main,
                                                       [*base, "--weights", str(tmp_path / "small.pt")], capsys)
    torch.save(build_model("mlp", 1, 28, 10).state_dict(), tmp_path / "mlp.pt")
    assert "is the --weights file" in _exit2(
        crown_speed.main, [*base, "--weights", str(tmp_path / "mlp.pt"), "--json", str(tmp_path / "mlp.pt")], capsys)
    assert crown_speed.main([*base, "--weights", str(tmp_path / "mlp.pt")]) == 0


def test_crown_speed_usage_names_the_module(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import crown_speed

    _exit2(crown_speed.main, ["--threads", "0"], capsys)
    with pytest.raises(SystemExit):
        crown_speed.main(["--help"])
    assert "usage: python -m benchmarks.crown_speed" in capsys.readouterr().out


def test_probe_names_an_output_that_does_not_fit_the_labels() -> None:
    from certify.cli import _probe

    model = torch.nn.Linear(4, 2)
    x, y = torch.rand(3, 4), torch.tensor([0, 1, 5])
    with pytest.raises(ValueError, match=r"output shape \(1, 2\) does not fit the labels of toy \(classes 0..5\)"):
        _probe(model, x, y, [0.1], ["ibp"], 0.0, 1.0, "toy")


def test_probe_lets_a_bug_in_the_bounds_surface() -> None:
    # only user errors (no rule for a function, a bad value) become one-line messages; anything else
    # raised while bounding is a bug and keeps its traceback
    from certify import cli

    model = torch.nn.Linear(4, 3)
    x, y = torch.rand(3, 4), torch.tensor([0, 1, 2])

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("internal")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "margin_bounds", broken)
        with pytest.raises(RuntimeError, match="internal"):
            cli._probe(model, x, y, [0.1], ["ibp"], 0.0, 1.0, "toy")


def test_toml_method_must_be_a_string() -> None:
    from continual.cli import _choose

    with pytest.raises(ValueError, match="method in the --config file must be a string, got 3"):
        _choose("--method", None, {"method": 3}, "method", None)
