"""``certify-robustness`` end to end on digits, and every bad input mapped to exit code 2 (1 for soundness)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import certify.evaluation as ev
from certify.cli import main
from certify.models import build_model

FAST = ["--no-progress", "--pgd-steps", "5", "--threads", "1"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo model trained once by the CLI itself, saved for the other tests."""
    out = tmp_path_factory.mktemp("cli")
    model = out / "demo.safetensors"
    code = main(["--n", "60", "--methods", "ibp,crown,pgd", "--eps", "0.02,0.05", "--save-model", str(model),
                 "--out", str(out / "report.json"), "--csv", str(out / "records.csv"), *FAST])
    assert code == 0
    return out, model


def test_demo_run_writes_a_consistent_report(demo, capsys):
    out, model = demo
    report = json.loads((out / "report.json").read_text())
    assert [row["eps"] for row in report["summary"]] == [0.02, 0.05]
    for row in report["summary"]:
        assert row["n"] == 60
        assert row["certified"]["ibp"] <= row["certified"]["crown"] <= row["robust"]["pgd"] <= row["clean"]
    assert report["summary"][0]["clean"] > 0.8  # the demo model learned something
    assert report["summary"][1]["certified"]["crown"] > 0.3  # and is certifiably robust at the default eps
    lines = (out / "records.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 60 and lines[0].startswith("eps,index,label")
    assert model.exists()


def test_saved_model_reloads_with_identical_results(demo, tmp_path, capsys):
    out, model = demo
    code = main(["--model", str(model), "--n", "60", "--methods", "ibp,crown,pgd", "--eps", "0.02,0.05",
                 "--out", str(tmp_path / "again.json"), *FAST])
    assert code == 0
    first = json.loads((out / "report.json").read_text())["summary"]
    again = json.loads((tmp_path / "again.json").read_text())["summary"]
    assert first == again
    printed = capsys.readouterr().out
    assert "certified:crown" in printed and "clean" in printed


def test_npz_dataset_and_registry_architecture(tmp_path, capsys):
    torch.manual_seed(0)
    net = build_model("dm-small", in_channels=1, in_size=28, num_classes=10)
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    x = np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(6) % 10)
    code = main(["--model", str(tmp_path / "bare.pt"), "--arch", "dm-small", "--dataset", str(tmp_path / "d.npz"),
                 "--num-classes", "10", "--eps", "0.01", "--methods", "ibp,crown-ibp,fgsm", *FAST])
    assert code == 0
    assert "certified:crown-ibp" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--eps", "-0.1"], "--eps must be a finite number >= 0"),
        (["--eps", "abc"], "not a number"),
        (["--methods", "ibp,deepfool"], "unknown method 'deepfool'"),
        (["--n", "0"], "--n must be >= 1"),
        (["--dataset", "imagenet22k"], "imagenet22k"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
        (["--model", "/nonexistent/model.pt", "--arch", "mlp"], "model file not found"),
        (["--model", "MODEL", "--arch", "resnet"], "unknown architecture 'resnet'"),
        (["--model", "MODEL", "--arch", "dm-small"], "cannot build architecture 'dm-small'"),
        (["--model", "MODEL", "--arch", "mlp", "--num-classes", "7"], "does not fit architecture 'mlp'"),
        (["--model", "CORRUPT", "--arch", "mlp"], "corrupt"),
    ],
)
def test_bad_input_exits_2_with_a_one_line_message(demo, tmp_path, capsys, argv, message):
    _, model = demo
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    argv = [str(model) if a == "MODEL" else str(corrupt) if a == "CORRUPT" else a for a in argv]
    assert main([*argv, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("certify-robustness")


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as exc:
        main(["--batch-size", "many"])
    assert exc.value.code == 2


def test_a_soundness_violation_exits_1(demo, monkeypatch, capsys):
    _, model = demo
    # an unsound bound: every margin "certified" positive, so misclassified or attacked samples contradict it
    monkeypatch.setattr(ev, "margin_bounds", lambda model, x, y, *a, **k: torch.ones(len(y), 1))
    assert main(["--model", str(model), "--n", "200", "--methods", "ibp,pgd", "--eps", "0.3", *FAST]) == 1
    assert "SOUNDNESS VIOLATION" in capsys.readouterr().err


def test_help_teaches_and_the_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "certify.cli", "--help"], capture_output=True, text=True, check=True)
    for needle in ("--methods", "exit codes", "autoattack", "aa-fast", "module:function", "crown-ibp"):
        assert needle in out.stdout


@pytest.fixture(scope="module")
def continual_run(tmp_path_factory):
    from continual.runner import RunConfig, run

    out = tmp_path_factory.mktemp("crun") / "run"
    cfg = RunConfig(method="hnet", benchmark="split-digits", target_options={"hidden": [16]}, iterations=30,
                    eval_every=15, batch_size=32, method_options={"emb_dim": 8, "hnet_hidden": [16]})
    run(cfg, out, progress=False, log=lambda s: None)
    return out


def test_every_task_of_a_continual_run(continual_run, tmp_path, capsys):
    out = tmp_path / "tasks.json"
    code = main(["--model", str(continual_run), "--task", "all", "--eps", "0.02", "--methods", "ibp,crown,pgd",
                 "--out", str(out), "--csv", str(tmp_path / "records.csv"), *FAST])
    assert code == 0
    report = json.loads(out.read_text())
    assert sorted(report["tasks"]) == ["0", "1", "2", "3", "4"]
    for t in range(5):  # one per-sample CSV per task
        rows = (tmp_path / f"records_task{t}.csv").read_text().splitlines()
        assert rows[0].startswith("eps,index,label") and len(rows) > 1
    for rep in report["tasks"].values():
        row = rep["summary"][0]
        assert row["certified"]["ibp"] <= row["certified"]["crown"] <= row["robust"]["pgd"] <= row["clean"]
    assert "mean over tasks" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["hint", "shield"])
def test_every_task_of_a_hint_or_shield_run(method, tmp_path, capsys):
    """certify-robustness --task all reads HINT and SHIELD runs like the others (each task's network: HINT's
    box-centre weights, SHIELD's generated weights), with the consistency law checked on every sample."""
    from continual.runner import RunConfig, run

    opts = {"emb_dim": 8, "hnet_hidden": [16], "eps": 0.5 if method == "hint" else 0.05}
    cfg = RunConfig(method=method, benchmark="split-digits", benchmark_options={"num_tasks": 2},
                    target_options={"hidden": [16]}, iterations=40, eval_every=20, batch_size=32,
                    method_options=opts)
    run(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    out = tmp_path / "tasks.json"
    code = main(["--model", str(tmp_path / "run"), "--task", "all", "--eps", "0.02", "--methods", "ibp,crown,pgd",
                 "--out", str(out), *FAST])
    assert code == 0
    report = json.loads(out.read_text())
    assert sorted(report["tasks"]) == ["0", "1"]
    for rep in report["tasks"].values():
        row = rep["summary"][0]
        assert row["certified"]["ibp"] <= row["certified"]["crown"] <= row["robust"]["pgd"] <= row["clean"]
        assert row["clean"] > 0.6  # a trained network per task (chance: 0.5)


@pytest.mark.parametrize(("task", "message"), [("7", "task 7 does not exist"), ("x", "expected 'all'")])
def test_bad_task_selection_exits_2(continual_run, capsys, task, message):
    assert main(["--model", str(continual_run), "--task", task, "--methods", "ibp", *FAST]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--out", "--csv"])
def test_unusable_output_paths_exit_2_before_any_work(continual_run, tmp_path, capsys, flag):
    """A directory (or a path under a file) given as --out/--csv is refused up front, not after a long
    evaluation whose results would then be lost."""
    assert main(["--model", str(continual_run), "--task", "all", "--methods", "ibp", flag, str(tmp_path), *FAST]) == 2
    err = capsys.readouterr()
    assert f"{flag} {tmp_path} is a directory; give a file path" in err.err and "task 0" not in err.out
    (tmp_path / "afile").write_text("x")
    assert main(["--methods", "ibp", flag, str(tmp_path / "afile" / "r.json"), *FAST]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert main(["--methods", "ibp", flag, str(tmp_path / ("x" * 300 + ".json")), *FAST]) == 2  # OS refuses the name
    assert "File name too long" in capsys.readouterr().err


def test_output_paths_of_a_continual_run_are_checked_per_task_and_must_differ(continual_run, tmp_path, capsys):
    (tmp_path / "rec_task2.csv").mkdir()  # the file task 2's records would go to
    args = ["--model", str(continual_run), "--task", "all", "--methods", "ibp", *FAST]
    assert main([*args, "--csv", str(tmp_path / "rec.csv")]) == 2
    err = capsys.readouterr()
    assert "--csv (task 2)" in err.err and "is a directory" in err.err and "task 0" not in err.out
    same = str(tmp_path / "r_task0.csv")
    assert main([*args, "--csv", str(tmp_path / "r.csv"), "--out", same]) == 2
    assert "name the same file" in capsys.readouterr().err
    assert main(["--methods", "ibp", "--out", str(tmp_path / "r"), "--csv", str(tmp_path / "r"), *FAST]) == 2
    assert "--out and --csv name the same file" in capsys.readouterr().err


def test_task_without_a_run_dir_exits_2(capsys):
    assert main(["--task", "0", "--methods", "ibp", *FAST]) == 2
    assert "--task needs --model RUN_DIR" in capsys.readouterr().err
