"""continual.metrics: the accuracy-matrix metrics on hand-computed matrices (GEM's BWT/FWT, Chaudhry et al.'s
forgetting), serialisation (dict, CSV, JSON, atomic writes), mean ± std over seeds, the PNG plots, and one test per
kind of bad input, checking its message."""

from __future__ import annotations

import doctest
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import continual.metrics as cm
from continual.metrics import (
    AccuracyMatrix,
    RunResults,
    aggregate_runs,
    format_mean_std,
    mean_std,
    plot_accuracy_matrix,
    plot_task_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# A[i, j]: after training task i, accuracy on task j. The entries above the diagonal are measured before the task
# is trained (what forward transfer reads).
GEM = [[0.90, 0.20, 0.10],
       [0.80, 0.95, 0.30],
       [0.70, 0.90, 1.00]]
BASELINE = [0.1, 0.1, 0.1]


def test_doctests():
    result = doctest.testmod(cm, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10 and result.failed == 0


# ---------------------------------------------------------------------------- hand-computed metrics
def test_metrics_of_a_hand_computed_matrix():
    A = AccuracyMatrix(GEM)
    assert A.average_accuracy() == pytest.approx((0.70 + 0.90 + 1.00) / 3)
    assert A.average_accuracy(after=0) == pytest.approx(0.90)
    assert A.average_accuracy(after=1) == pytest.approx((0.80 + 0.95) / 2)
    # BWT = ((A[2,0] - A[0,0]) + (A[2,1] - A[1,1])) / 2 = (-0.20 - 0.05) / 2
    assert A.bwt() == pytest.approx(-0.125)
    # FWT = ((A[0,1] - b1) + (A[1,2] - b2)) / 2 = (0.10 + 0.20) / 2
    assert A.fwt(BASELINE) == pytest.approx(0.15)
    # forgetting = ((max(0.90, 0.80) - 0.70) + (0.95 - 0.90)) / 2
    assert A.forgetting() == pytest.approx(0.125)
    A.random_init = BASELINE
    assert A.fwt() == pytest.approx(0.15)
    assert A.summary() == pytest.approx({"average_accuracy": 13 / 15, "bwt": -0.125, "forgetting": 0.125,
                                         "fwt": 0.15})


def test_forgetting_uses_the_best_earlier_accuracy_and_differs_from_bwt():
    # Task 0 improves while task 1 is trained (0.5 -> 0.9), then drops to 0.6; task 1 ends higher than it started.
    A = AccuracyMatrix([[0.5, None, None],
                        [0.9, 0.8, None],
                        [0.6, 0.85, 0.7]])
    assert A.bwt() == pytest.approx(((0.6 - 0.5) + (0.85 - 0.8)) / 2)  # +0.075: "positive transfer"
    assert A.forgetting() == pytest.approx(((0.9 - 0.6) + (0.8 - 0.85)) / 2)  # 0.125: task 0 lost 30 points
    # Entries measured before a task was trained do not count as knowledge that could be forgotten.
    A[0, 1] = 1.0
    assert A.forgetting() == pytest.approx(0.125)


def test_no_forgetting_and_single_task():
    A = AccuracyMatrix([[1.0, None], [1.0, 1.0]])
    assert (A.bwt(), A.forgetting(), A.average_accuracy()) == (0.0, 0.0, 1.0)
    single = AccuracyMatrix([[0.7]])
    assert single.average_accuracy() == 0.7
    assert math.isnan(single.bwt()) and math.isnan(single.forgetting()) and math.isnan(single.fwt([0.1]))
    assert single.summary() == {"average_accuracy": 0.7}


def test_filling_a_matrix_step_by_step():
    A = AccuracyMatrix(3, task_names=["p0", "p1", "p2"])
    assert repr(A) == "AccuracyMatrix(3 tasks, 0 entries measured)" and not A.is_complete()
    for i, row in enumerate(GEM):
        A.record_row(i, row[: i + 1])
        if i + 1 < 3:
            A.record(i, i + 1, row[i + 1])
    assert A.is_complete() and A.is_measured(1, 2) and not A.is_measured(0, 2)
    assert A[2, 1] == 0.9 and len(A) == A.num_tasks == 3
    A[1, 0] = None  # un-measure
    assert not A.is_complete() and math.isnan(A.values[1, 0])
    values = A.values
    values[0, 0] = 0.0
    assert A[0, 0] == 0.9  # .values is a copy


@pytest.mark.parametrize(("call", "message"), [
    (lambda A: A.bwt(), "bwt needs A[1, 1] (task 1 after training task 1), which was not measured"),
    (lambda A: A.forgetting(), "forgetting needs A[1, 1] (task 1 after training task 1), which was not measured"),
    (lambda A: A.average_accuracy(after=1), "average_accuracy needs A[1, 1] (task 1 after training task 1), which "
                                            "was not measured"),
    (lambda A: A.fwt(BASELINE), "fwt needs A[0, 1] (task 1 after training task 0), which was not measured"),
    (lambda A: A.fwt(), "fwt needs the accuracy of a randomly initialised model on each task: pass random_init_acc "
                        "or set AccuracyMatrix.random_init"),
    (lambda A: A.fwt([0.1, 0.1]), "random_init_acc: 2 values for 3 tasks (give one per task; the first is not used)"),
    (lambda A: A.fwt([0.1, 10.0, 0.1]), "random_init_acc[1]: accuracies are fractions in [0, 1], got 10.0 "
                                        "(a percentage?)"),
])
def test_metrics_name_the_missing_entry(call, message):
    A = AccuracyMatrix([[0.9, None, None], [0.8, None, None], [0.7, 0.9, 1.0]])
    with pytest.raises(ValueError) as err:
        call(A)
    assert one_line(err) == message


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda: AccuracyMatrix(0), ValueError, "AccuracyMatrix: need at least 1 task, got 0"),
    (lambda: AccuracyMatrix([[0.5, 0.5]]), ValueError, "values must be a non-empty square T x T matrix, got shape "
                                                       "(1, 2)"),
    (lambda: AccuracyMatrix([]), ValueError, "non-empty square"),
    (lambda: AccuracyMatrix([[97.5]]), ValueError, "A[0, 0]: accuracies are fractions in [0, 1], got 97.5 "
                                                   "(a percentage?)"),
    (lambda: AccuracyMatrix([[-0.1]]), ValueError, "A[0, 0]: accuracies are fractions in [0, 1], got -0.1"),
    (lambda: AccuracyMatrix([["high"]]), ValueError, "AccuracyMatrix values must be rows of numbers or None"),
    (lambda: AccuracyMatrix(2, task_names=["a"]), ValueError, "AccuracyMatrix: 1 task names for 2 tasks"),
    (lambda: AccuracyMatrix(2, random_init=[0.1]), ValueError, "random_init: 1 values for 2 tasks"),
    (lambda: AccuracyMatrix(2).__setitem__((2, 0), 0.5), IndexError, "A[2, 0] is outside the 2 x 2 matrix"),
    (lambda: AccuracyMatrix(2).__setitem__((0, 1), 1.5), ValueError, "A[0, 1]: accuracies are fractions in [0, 1], "
                                                                     "got 1.5 (a percentage?)"),
    (lambda: AccuracyMatrix(2)[0], TypeError, "index an AccuracyMatrix with A[i, j], got 0"),
    (lambda: AccuracyMatrix(2).record_row(0, [0.1, 0.2, 0.3]), ValueError, "3 accuracies for a 2-task matrix"),
    (lambda: AccuracyMatrix.from_dict({"rows": []}), ValueError, "expected a mapping with key 'values'"),
])
def test_bad_matrices(make, error, message):
    with pytest.raises(error) as err:
        make()
    assert message in one_line(err)


# ---------------------------------------------------------------------------- serialisation
def test_dict_round_trip_keeps_nan_names_and_baseline():
    A = AccuracyMatrix([[0.5, None], [0.25, 0.75]], task_names=["a", "b"], random_init=[0.1, 0.2])
    data = A.to_dict()
    assert data == {"values": [[0.5, None], [0.25, 0.75]], "task_names": ["a", "b"], "random_init": [0.1, 0.2]}
    assert AccuracyMatrix.from_dict(json.loads(json.dumps(data))) == A
    assert A != AccuracyMatrix([[0.5, None], [0.25, 0.75]])


def test_csv_content(tmp_path):
    A = AccuracyMatrix([[0.9, 0.2, None], [0.8, 0.95, None], [0.7, 0.9, 1.0]], task_names=["t0", "t1", "t2"])
    path = A.to_csv(tmp_path / "sub" / "A.csv")
    assert path.read_text() == ("after_task,t0,t1,t2\n"
                                "t0,0.9,0.2,\n"
                                "t1,0.8,0.95,\n"
                                "t2,0.7,0.9,1.0\n")
    import csv
    rows = list(csv.reader(path.open()))
    assert [[float(v) if v else None for v in row[1:]] for row in rows[1:]] == A.to_dict()["values"]


def test_table_text():
    text = AccuracyMatrix(GEM, random_init=BASELINE).table()
    lines = text.splitlines()
    assert lines[0].split() == ["after", "\\", "on", "task", "0", "task", "1", "task", "2"]
    assert lines[3].split() == ["task", "2", "70.00", "90.00", "100.00"]
    assert lines[-1] == ("average accuracy 86.67 %, BWT -12.50, FWT +15.00, forgetting 12.50 (percentage points)")
    partial = AccuracyMatrix(2)
    partial.record(0, 0, 0.5)
    assert partial.table(digits=1).splitlines()[1].split() == ["task", "0", "50.0", "-"]


def full_run() -> RunResults:
    A = AccuracyMatrix(GEM, task_names=["a", "b", "c"], random_init=BASELINE)
    C = AccuracyMatrix([[0.9, None, None], [0.4, 0.9, None], [0.3, 0.4, 0.9]])
    inference = AccuracyMatrix(3)
    inference.record_row(2, [0.5, 0.625, 1.0])
    robust = AccuracyMatrix([[0.6, None, None], [0.5, 0.6, None], [0.5, 0.55, 0.6]])
    return RunResults(A, C, inference, [1.5, 2.0, 2.5], {"method": "hint", "seed": 3, "eps": [0.01, 0.1]},
                      {"pgd eps=0.1": robust})


def test_run_results_json_round_trip(tmp_path):
    run = full_run()
    path = run.to_json(tmp_path / "out" / "run.json")
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["format"] == "hypercert.continual.RunResults"
    back = RunResults.from_json(path)
    assert back == run
    assert back.task_incremental.task_names == ["a", "b", "c"] and back.task_incremental.random_init == BASELINE
    assert back.task_inference_accuracy == [0.5, 0.625, 1.0] and back.num_tasks == 3
    assert back.settings == {"method": "hint", "seed": 3, "eps": [0.01, 0.1]}
    assert sorted(back.matrices) == ["pgd eps=0.1"]
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temporary file left behind
    # Overwriting goes through the same atomic rename.
    RunResults(AccuracyMatrix([[0.5]])).to_json(path)
    assert RunResults.from_json(path).num_tasks == 1
    assert RunResults(AccuracyMatrix([[0.5]])).task_inference_accuracy is None


def test_run_results_summary_and_aggregate():
    run = full_run()
    summary = run.summary()
    assert summary["task_incremental/average_accuracy"] == pytest.approx(13 / 15)
    assert summary["task_incremental/fwt"] == pytest.approx(0.15)
    assert summary["class_incremental/bwt"] == pytest.approx(((0.3 - 0.9) + (0.4 - 0.9)) / 2)
    assert summary["task_inference/average_accuracy"] == pytest.approx((0.5 + 0.625 + 1.0) / 3)
    assert "task_inference/bwt" not in summary  # needs the diagonal, which was not measured
    assert summary["pgd eps=0.1/forgetting"] == pytest.approx(0.075)
    assert summary["train_seconds"] == 6.0
    other = full_run()
    other.task_incremental[2, 2] = 0.7
    agg = aggregate_runs([run, other])
    mean, std = agg["task_incremental/average_accuracy"]
    assert mean == pytest.approx((2.6 + 2.3) / 6) and std == pytest.approx(0.1 / math.sqrt(2))
    assert agg["train_seconds"] == (6.0, 0.0)
    # Only metrics every run has are aggregated.
    assert "class_incremental/bwt" not in aggregate_runs([run, RunResults(AccuracyMatrix(GEM))])


@pytest.mark.parametrize(("make", "message"), [
    (lambda: RunResults([[0.5]]), "RunResults.task_incremental must be an AccuracyMatrix, got list"),
    (lambda: RunResults(AccuracyMatrix(2), AccuracyMatrix(3)), "RunResults: class_incremental has 3 tasks, "
                                                               "task_incremental has 2"),
    (lambda: RunResults(AccuracyMatrix(2), matrices={"pgd": [[0.1]]}), "RunResults: pgd must be an AccuracyMatrix"),
    (lambda: RunResults(AccuracyMatrix(2), train_seconds=[1.0, -1.0]), "train_seconds must be at most 2 finite "
                                                                       "non-negative numbers"),
    (lambda: RunResults(AccuracyMatrix(1), train_seconds=[1.0, 1.0]), "train_seconds must be at most 1"),
    (lambda: RunResults(AccuracyMatrix(1), settings=[1]), "RunResults: settings must be a dict, got list"),
])
def test_bad_run_results(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert message in one_line(err)


def test_bad_result_files(tmp_path):
    run = RunResults(AccuracyMatrix([[0.5]]), settings={"when": object()})
    target = tmp_path / "run.json"
    with pytest.raises(ValueError) as err:
        run.to_json(target)
    assert "RunResults.settings must be JSON-serialisable" in one_line(err) and not target.exists()
    with pytest.raises(ValueError) as err:
        RunResults(AccuracyMatrix([[0.5]]), settings={"x": float("nan")}).to_json(target)
    assert "JSON-serialisable with finite numbers" in one_line(err)
    good = RunResults(AccuracyMatrix([[0.5]])).to_dict()
    for content, message in [
        ("{not json", "not valid JSON"),
        (json.dumps({"values": [[0.5]]}), "not a hypercert.continual.RunResults record (missing or wrong 'format')"),
        (json.dumps({**good, "version": 99}), "version 99 is not supported (expected 1)"),
        (json.dumps({k: v for k, v in good.items() if k != "task_incremental"}), "missing 'task_incremental'"),
        (json.dumps({**good, "task_incremental": {"values": [[2.0]]}}), "A[0, 0]: accuracies are fractions"),
    ]:
        target.write_text(content)
        with pytest.raises(ValueError) as err:
            RunResults.from_json(target)
        assert one_line(err).startswith(f"{target}: ") and message in str(err.value)
    with pytest.raises(FileNotFoundError):
        RunResults.from_json(tmp_path / "missing.json")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "A.csv"
    path.write_text("old\n")

    def broken(f):
        f.write("half a fi")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        cm._atomic_write(path, broken, binary=False)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["A.csv"]


# ---------------------------------------------------------------------------- mean ± std
def test_mean_std_and_format():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([1.0, 2.0, 3.0], ddof=0) == pytest.approx((2.0, math.sqrt(2 / 3)))
    mean, std = mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)
    assert mean_std([0.5], ddof=0) == (0.5, 0.0)
    assert mean_std(np.array([0.25, 0.75])) == pytest.approx((0.5, math.sqrt(0.125)))
    assert format_mean_std([0.9751, 0.9762, 0.9770]) == "97.61 ± 0.10"
    assert format_mean_std([0.5]) == "50.00"
    assert format_mean_std([-0.001, -0.003], digits=1) == "-0.2 ± 0.1"
    assert format_mean_std([1.0, 3.0], scale=1.0, digits=0, sep=" +- ") == "2 +- 1"
    for values, message in [([], "mean_std: no values"), ([0.5, float("nan")], "mean_std: NaN among the values")]:
        with pytest.raises(ValueError) as err:
            mean_std(values)
        assert message in one_line(err)
    with pytest.raises(ValueError) as err:
        aggregate_runs([])
    assert one_line(err) == "aggregate_runs: no runs"


# ---------------------------------------------------------------------------- plots
@pytest.mark.parametrize("plot", [plot_accuracy_matrix, plot_task_curves])
@pytest.mark.parametrize("num_tasks", [1, 3, 12])
def test_plots_write_png_files(plot, num_tasks, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    rng = np.random.default_rng(num_tasks)
    values = np.tril(rng.uniform(0.0, 1.0, (num_tasks, num_tasks)))
    values[np.triu_indices(num_tasks, 1)] = np.nan
    if num_tasks > 1:
        values[0, 1] = 0.1  # one measured entry above the diagonal (a dotted segment / an extra cell)
    A = AccuracyMatrix(values, task_names=[f"T{j}" for j in range(num_tasks)] if num_tasks == 3 else None)
    path = plot(A, tmp_path / "plots" / f"{plot.__name__}.png", title="test")
    assert path == tmp_path / "plots" / f"{plot.__name__}.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_plots_do_not_touch_pyplot_or_the_backend(tmp_path):
    """Plotting draws on a bare Figure (Agg canvas): pyplot is never imported and no backend is switched, so a
    user's interactive session is left alone. Checked in a fresh interpreter, where nothing imported pyplot yet."""
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    code = ("import sys; from continual.metrics import AccuracyMatrix, plot_accuracy_matrix, plot_task_curves; "
            f"A = AccuracyMatrix({GEM!r}); plot_accuracy_matrix(A, {str(tmp_path / 'a.png')!r}); "
            f"plot_task_curves(A, {str(tmp_path / 'b.png')!r}); print('matplotlib.pyplot' in sys.modules)")
    env = {**os.environ, "MPLBACKEND": "", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False", out.stderr
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0


def test_plots_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes "from matplotlib.figure import" fail
    with pytest.raises(ImportError) as err:
        plot_task_curves(AccuracyMatrix(GEM), tmp_path / "curves.png")
    assert one_line(err) == "plotting needs matplotlib: pip install matplotlib"
    assert not (tmp_path / "curves.png").exists()


def test_table_without_metrics_for_flag_matrices():
    m = AccuracyMatrix([[1.0, None], [0.0, 1.0]])
    assert "average accuracy" in m.table()
    bare = m.table(metrics=False)
    assert "average accuracy" not in bare and "BWT" not in bare and "100.00" in bare


def test_the_universal_inside_box_flags_get_no_accuracy_metrics():
    """A 0/1 flag matrix had 'average accuracy', 'bwt' and 'forgetting' in the run summary."""
    flags = AccuracyMatrix([[1.0, None], [1.0, 0.0]])
    run = RunResults(AccuracyMatrix([[0.9, None], [0.8, 0.9]]),
                     matrices={"universal inside box": flags, "universal": AccuracyMatrix([[0.7, None], [0.6, 0.5]])})
    keys = run.summary()
    assert not any(k.startswith("universal inside box/") for k in keys)
    assert "universal/average_accuracy" in keys
