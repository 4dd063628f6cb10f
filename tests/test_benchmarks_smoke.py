"""Smoke tests of the model zoo and the two benchmark scripts (a few seconds in total)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from benchmarks import digits_demo, ibp_speed
from certify import MODELS, build_model
from intervals import Interval

# (in_channels, in_size) each registered model is exercised with.
SHAPES = {"mlp": (1, 28), "dm-small": (1, 28), "dm-medium": (1, 28), "dm-large": (3, 32), "cnn7": (3, 32)}


def _tol(t: torch.Tensor) -> torch.Tensor:
    # Plain and interval passes round differently; allow a few float32 ulps of the magnitude.
    return 1e-5 * (1.0 + t.abs())


def test_every_model_has_a_shape() -> None:
    assert set(MODELS) == set(SHAPES)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_runs_on_tensors_and_intervals(name: str) -> None:
    torch.manual_seed(0)
    c, s = SHAPES[name]
    model = build_model(name, in_channels=c, in_size=s).eval()
    x = torch.rand(2, c, s, s)
    with torch.no_grad():
        plain = model(x)
        out = model(Interval.linf_ball(x, 0.01, lo=0.0, hi=1.0))
    assert plain.shape == (2, 10)
    assert isinstance(out, Interval) and out.shape == (2, 10)
    assert bool((out.lower <= plain + _tol(plain)).all()) and bool((plain <= out.upper + _tol(plain)).all())
    assert bool((out.lower <= out.upper).all())


def test_architecture_facts() -> None:
    # DM-small/medium use no padding (DeepMind's 'VALID'); DM-large/CNN7 padding 1 and FC(512).
    assert build_model("dm-small")[5].in_features == 32 * 10 * 10
    assert build_model("dm-medium")[9].in_features == 64 * 4 * 4
    large = build_model("dm-large", 3, 32)
    assert [m.out_channels for m in large if isinstance(m, torch.nn.Conv2d)] == [64, 64, 128, 128, 128]
    assert large[-3].in_features == 128 * 16 * 16 and large[-3].out_features == 512
    cnn7 = build_model("cnn7", 3, 32)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in cnn7) == 5
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in cnn7) == 1
    assert build_model("mlp", hidden=(7, 5))[3].out_features == 5
    with pytest.raises(KeyError, match="registered"):
        build_model("resnet-1000")


def test_digits_demo_runs_and_is_consistent(tmp_path: Path) -> None:
    out = tmp_path / "digits.json"
    rc = digits_demo.main(
        ["--epochs", "3", "--eps", "0.005,0.02", "--examples", "1", "--pgd-steps", "5", "--json", str(out)]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["n_test"] == 450 and 0 < report["correct"] <= report["n_test"]
    assert [r["eps"] for r in report["results"]] == [0.005, 0.02]
    for r in report["results"]:
        assert r["certified"] <= report["correct"]
        assert r["certified"] <= r["pgd_robust"]
        assert r["naive_only"] == 0  # the folded specification is never looser than lower_y - upper_j
    assert report["certified"] == report["results"][0]["certified"]


def test_digits_margin_bounds_hold_on_sampled_points() -> None:
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = digits_demo.load_data(0)
    model = digits_demo.build_mlp()
    digits_demo.train(model, x_tr[:256], y_tr[:256], epochs=2)
    x, y, eps = x_te[:16], y_te[:16], 0.03
    lower = digits_demo.certify_margins(model, x, y, eps)
    others = digits_demo.other_classes(y, 10)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    with torch.no_grad():
        for _ in range(20):
            xs = lo + (hi - lo) * torch.rand_like(x)
            z = model(xs)
            margin = z.gather(1, y[:, None]) - z.gather(1, others)
            assert bool((margin >= lower - _tol(margin)).all())
        # Rigorous mode bounds are never tighter than the float ones (up to rounding).
        with digits_demo.rigorous():
            lower_rig = digits_demo.certify_margins(model, x, y, eps)
    assert bool((lower_rig <= lower + _tol(lower)).all())
    spec = digits_demo.spec_matrix(y, 10)
    assert spec.shape == (16, 9, 10) and bool((spec.sum(-1) == 0).all())


def test_worst_case_logits() -> None:
    out = Interval(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[3.0, 4.0, 5.0]]))
    z = ibp_speed.worst_case_logits(out, torch.tensor([1]))
    assert z.tolist() == [[3.0, 1.0, 5.0]]


def test_ibp_speed_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "speed.json"
    rc = ibp_speed.main(["--repeats", "1", "--warmup", "0", "--spin-up", "0", "--models", "mlp", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "MLP 784-100-100-10" in printed and "targets:" in printed and "torch" in printed
    report = json.loads(out.read_text())
    assert report["meta"]["threads"] >= 1 and report["meta"]["memory_method"]
    assert report["meta"]["allocator"] == "glibc default"
    (res,) = report["results"]
    assert set(res["median_ms"]) == set(ibp_speed.OPS)
    assert all(v > 0 for v in res["median_ms"].values())
    assert res["peak_rss"]["plain"]["delta"] >= 0 and res["peak_rss"]["ibp"]["delta"] > 0
    assert res["saved_bytes"]["ibp"] > res["saved_bytes"]["plain"] > 0


@pytest.mark.parametrize(
    "module", ["ibp_speed", "crown_speed", "continual_step", "digits_demo", "train_mnist_certified"]
)
def test_benchmarks_refuse_a_directory_as_json_before_running(module: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    mod = importlib.import_module(f"benchmarks.{module}")
    with pytest.raises(SystemExit) as info:
        mod.main(["--json", str(tmp_path)])
    assert info.value.code == 2
    assert f"--json {tmp_path} is a directory; give a file path" in capsys.readouterr().err


def test_train_mnist_certified_checks_model_and_checkpoint_paths_first(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import train_mnist_certified

    for flag in ("--save-model", "--checkpoint"):
        with pytest.raises(SystemExit) as info:
            train_mnist_certified.main([flag, str(tmp_path)])
        assert info.value.code == 2 and f"{flag} {tmp_path} is a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_mnist_certified.main(["--json", str(tmp_path / "a"), "--save-model", str(tmp_path / "a")])
    assert "--json and --save-model name the same file" in capsys.readouterr().err


def test_ibp_speed_per_layer_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "speed.json"
    rc = ibp_speed.main(["--repeats", "1", "--warmup", "0", "--spin-up", "0", "--models", "mlp", "--no-memory",
                         "--layers", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "per-layer forward" in printed and "1: Linear(in_features=784" in printed
    (res,) = json.loads(out.read_text())["results"]
    layers = res["layers"]
    assert layers[0]["layer"].startswith("input box") and len(layers) == 1 + 6  # box + the MLP's 6 modules
    assert all(r["ibp_ms"] > 0 for r in layers) and all(r["plain_ms"] > 0 for r in layers[1:])


def test_ibp_speed_tuned_malloc_is_recorded(tmp_path: Path) -> None:
    """--tuned-malloc changes this process's allocator, so it runs in a subprocess of its own."""
    import subprocess
    import sys

    out = tmp_path / "speed.json"
    cmd = [sys.executable, "-m", "benchmarks.ibp_speed", "--tuned-malloc", "--repeats", "1", "--warmup", "0",
           "--spin-up", "0", "--models", "mlp", "--no-memory", "--threads", "1", "--json", str(out)]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "allocator: glibc, mmap and trim thresholds 1 GiB" in proc.stdout
    assert "tuned-malloc" in json.loads(out.read_text())["meta"]["allocator"]


def test_train_mnist_certified_smoke(tmp_path: Path) -> None:
    """The certified-training recipe end to end on tiny MNIST-format files (resumable, JSON written)."""
    from fixtures_data import write_mnist

    from benchmarks import train_mnist_certified

    for split in ("train", "test"):
        write_mnist(tmp_path / "mnist", split=split, n=40)
    out = tmp_path / "r.json"
    argv = ["--data-dir", str(tmp_path), "--epochs", "2", "--test-n", "20", "--methods", "ibp,crown-ibp,pgd",
            "--pgd-steps", "3", "--threads", "1", "--no-progress", "--checkpoint", str(tmp_path / "ck.pt"),
            "--json", str(out)]
    assert train_mnist_certified.main(argv) == 0
    data = json.loads(out.read_text())
    assert [h["epoch"] for h in data["history"]] == [1, 2]
    row = data["summary"][0]
    assert row["n"] == 20 and row["certified"]["ibp"] <= row["certified"]["crown-ibp"] <= row["robust"]["pgd"]
    # a second run finds the finished checkpoint and only evaluates
    assert train_mnist_certified.main(argv) == 0
    assert [h["epoch"] for h in json.loads(out.read_text())["history"]] == [1, 2]


def test_continual_repro_smoke(tmp_path: Path) -> None:
    from benchmarks import continual_repro

    out = tmp_path / "rows.json"
    argv = ["--iterations", "10,20", "--option", "eval_every=10", "--option", "target_options.hidden=[16]",
            "--out", str(tmp_path / "runs"), "--threads", "1", "--no-progress", "--json", str(out)]
    assert continual_repro.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["iterations"]) for r in rows] == [("hnet", 10), ("hnet", 20), ("hypermask", 10),
                                                              ("hypermask", 20)]
    assert all(0.0 <= r["average_accuracy"] <= 1.0 and r["tasks"] == 5 for r in rows)
    # accuracy against iterations: a check every 10 iterations, averaged over the 5 tasks
    assert [step for step, _ in rows[1]["validation_curve"]] == [10, 20]
    assert all(0.0 <= acc <= 1.0 for r in rows for _, acc in r["validation_curve"])


def test_continual_repro_reports_hints_universal_embedding(tmp_path: Path) -> None:
    from benchmarks import continual_repro

    out = tmp_path / "rows.json"
    argv = ["--methods", "hint", "--iterations", "10", "--option", "eval_every=10", "--option",
            "target_options.hidden=[16]", "--option", "benchmark_options.num_tasks=2", "--option",
            "method_options.nested=true", "--out", str(tmp_path / "runs"), "--threads", "1", "--no-progress",
            "--json", str(out)]
    assert continual_repro.main(argv) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert 0.0 <= row["universal_accuracy"] <= 1.0
    matrix = json.loads((Path(row["run_dir"]) / "results.json").read_text())["matrices"]["universal"]
    assert matrix  # one row per task: the universal weights of the boxes so far, on every task so far


def test_continual_robust_smoke_and_resume(tmp_path: Path) -> None:
    """Robust matrices after every task, kept through a kill and a resume."""
    from benchmarks import continual_robust
    from continual.cli import default_config
    from continual.runner import RunConfig, run

    argv = ["--iterations", "20", "--n", "10", "--methods", "ibp,pgd", "--pgd-steps", "3", "--out",
            str(tmp_path / "run"), "--threads", "1", "--no-progress", "--option", "method_options.eps=0.07"]
    assert continual_robust.main(argv) == 0
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert data["settings"]["config"]["method_options"]["eps"] == 0.07  # --option reached the training config
    assert set(data["matrices"]) == {"clean", "certified ibp eps=0.05", "pgd eps=0.05"}
    for stem in ("clean", "certified_ibp_eps_0.05", "pgd_eps_0.05"):  # each matrix as CSV and heatmap
        assert (tmp_path / "run" / f"{stem}.csv").read_text().strip()
        if importlib.util.find_spec("matplotlib") is not None:
            assert (tmp_path / "run" / f"{stem}_matrix.png").stat().st_size > 0
    cfg = RunConfig.from_dict({**default_config("shield", "split-digits"), "iterations": 20, "eval_every": 20})
    hook = continual_robust.robust_hook(0.05, ["ibp"], 10, continual_robust.AttackConfig(steps=3))
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "k", progress=False, log=lambda s: None, after_task=hook,
            stop_after=lambda t, s: (t, s) == (2, 20))
    resumed = run(cfg, tmp_path / "k", progress=False, log=lambda s: None, after_task=hook)
    ref = run(cfg, tmp_path / "ref", progress=False, log=lambda s: None, after_task=hook)
    assert resumed.matrices == ref.matrices and resumed.task_incremental == ref.task_incremental


def test_ibp_speed_bf16_radius_rows(capsys: pytest.CaptureFixture[str]) -> None:
    """``--bf16-radius`` times the bf16 path beside the others and reports its looseness (>= 1x: never tighter)."""
    rc = ibp_speed.main(["--repeats", "1", "--warmup", "0", "--spin-up", "0", "--models", "dm-small", "--no-memory",
                         "--bf16-radius"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "intervals.bf16_radius()" in printed and "width vs fp32" in printed
    res = ibp_speed.time_case(ibp_speed.CASES["dm-small"], 1, 0, bf16=True)
    assert {"ibph_fwd", "ibph_fwdbwd"} <= set(res["median_ms"])
    assert 1.0 <= res["ratio"]["bf16_width"] < 1.2


def test_continual_step_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import continual_step

    out = tmp_path / "steps.json"
    assert continual_step.main(["--benchmark", "split-digits", "--methods", "hnet", "hint", "--tasks", "1", "3",
                                "--repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["method"], r["task"]) for r in rows] == [("hnet", 1), ("hnet", 3), ("hint", 1), ("hint", 3)]
    for r in rows:
        assert r["step_ms"] > 0 and r["target_fb_ms"] > 0
        # task 1 has no earlier task to regularise; from task 2 on both forms agree and are timed
        assert ("reg_ms" in r) == (r["task"] > 1)
        if r["task"] > 1:
            assert r["reg_materialised_ms"] > 0 and r["reg_rel_diff"] < 1e-4
    assert "materialised" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # argparse's usage error
        continual_step.main(["--tasks", "0"])
    assert exc.value.code == 2


@pytest.mark.parametrize("method", ["shield", "hint"])
def test_certified_samples_survive_every_attack_on_every_task(tmp_path: Path, method: str) -> None:
    """The issue's law on trained continual models: after every task, on every task so far, each sample
    certified by IBP or CROWN is clean-correct and survives PGD and APGD-CE (``evaluate`` raises
    ``SoundnessViolation`` otherwise, per sample), with a real share of samples certified."""
    from benchmarks import continual_robust
    from certify.attacks import AttackConfig
    from continual.cli import default_config
    from continual.runner import RunConfig, run

    cfg = RunConfig.from_dict({**default_config(method, "split-digits"), "iterations": 100, "eval_every": 100,
                               "benchmark_options": {"num_tasks": 2}})
    hook = continual_robust.robust_hook(0.05, ["ibp", "crown", "pgd", "apgd-ce"], 80, AttackConfig(steps=10))
    res = run(cfg, tmp_path / method, progress=False, log=lambda s: None, after_task=hook)
    m = res.matrices
    for i, j in [(0, 0), (1, 0), (1, 1)]:
        certified = max(m["certified ibp eps=0.05"][i, j], m["certified crown eps=0.05"][i, j])
        robust = min(m["pgd eps=0.05"][i, j], m["apgd-ce eps=0.05"][i, j])
        assert 0.3 < certified <= robust <= m["clean"][i, j], (method, i, j)
