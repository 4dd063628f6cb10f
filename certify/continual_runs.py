"""The narrow door from :mod:`certify` to continual-learning runs: one ordinary ``nn.Module`` per task.

:func:`load_run` reads a ``continual-train`` run directory (``config.json`` + ``checkpoint.pt``,
weights only), rebuilds the method with :mod:`continual` and returns, for each requested task, the
task's network materialised as a plain ``nn.Module`` (the hypernetwork's weights for that task and
its batch-norm statistics) together with the task's test data. Nothing else of :mod:`continual` is
used by :mod:`certify`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .cli_checks import error_line
from .data import Dataset

__all__ = ["RUN_FILES", "TaskModel", "is_run_dir", "load_run", "parse_tasks", "run_files"]

#: The files a ``continual-train`` run directory holds (or will hold once finished); no output may replace one.
RUN_FILES = ("config.json", "checkpoint.pt", "results.json", "accuracy.csv", "validation.csv",
             "accuracy_matrix.png", "task_curves.png")


@dataclass
class TaskModel:
    """Task ``task`` of a continual run: its network (eval mode) and its test set (local labels)."""

    task: int
    model: nn.Module
    data: Dataset


def run_files(run_dir: str | Path) -> list[str]:
    """The names of the files of a run directory that no other tool may replace: :data:`RUN_FILES` and
    the CSV and heatmap of every further matrix its ``results.json`` lists (``universal.csv``, ...)."""
    names = list(RUN_FILES)
    try:
        matrices = json.loads((Path(run_dir) / "results.json").read_text()).get("matrices") or {}
    except (OSError, ValueError, AttributeError):
        return names
    from continual.runner import matrix_file_stem

    for name in matrices:
        names += [f"{matrix_file_stem(name)}.csv", f"{matrix_file_stem(name)}_matrix.png"]
    return names


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a ``continual-train`` run directory."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


def parse_tasks(spec: str | None, num_tasks: int) -> list[int]:
    """``"all"`` (or None), ``"3"``, ``"0,2,4"`` or ``"1-3"`` -> task indices, checked against ``num_tasks``."""
    if spec is None or spec.strip().lower() == "all":
        return list(range(num_tasks))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise ValueError(f"--task: the range {part!r} is reversed; write {b}-{a}")
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError as exc:
            if str(exc).startswith("--task"):
                raise
            raise ValueError(f"--task: expected 'all', N, N,M or N-M, got {spec!r}") from None
    if len(set(out)) != len(out):
        raise ValueError(f"--task: a task is listed twice in {spec!r}")
    bad = [t for t in out if not 0 <= t < num_tasks]
    if bad:
        raise ValueError(f"--task: task {bad[0]} does not exist (the run has tasks 0..{num_tasks - 1})")
    return out


def load_run(run_dir: str | Path, tasks: str | Sequence[int] | None = None,
             data_dir: str | Path | None = None) -> list[TaskModel]:
    """The networks and test sets of ``tasks`` (default all) of the run in ``run_dir``.

    Only tasks the run has finished are available; the checkpoint is read with
    ``torch.load(weights_only=True)``.
    """
    from continual.runner import RunConfig, _build, check_checkpoint  # the one import of continual in certify

    run = Path(run_dir)
    if not is_run_dir(run):
        raise FileNotFoundError(f"{run} is not a continual-train run directory (no config.json)")
    try:
        cfg = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"corrupt {run / 'config.json'}: {exc}") from None
    ckpt = run / "checkpoint.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{run} has no checkpoint.pt: the run has not finished a task yet")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file raises many exception types
        raise ValueError(f"corrupt checkpoint {ckpt}: {type(exc).__name__}") from None
    if not isinstance(state, dict) or state.get("format") != "hypercert-continual-run":
        raise ValueError(f"{ckpt} is not a hypercert continual-run checkpoint")
    bench, method = _build(cfg, data_dir)
    try:
        method.load_state_dict(state["method"])
    except (RuntimeError, KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"checkpoint {ckpt} does not fit the {cfg.method!r} run described by {run / 'config.json'} "
                         f"(was it copied from another run?): {error_line(exc)}") from None
    finished = check_checkpoint(state, cfg.to_dict(), method, len(bench), ckpt)
    if finished == 0:
        raise ValueError(f"{run}: no task is finished yet")
    wanted = parse_tasks(tasks, len(bench)) if tasks is None or isinstance(tasks, str) else list(tasks)
    unfinished = [t for t in wanted if t >= finished]
    if unfinished:
        raise ValueError(f"{run}: task {unfinished[0]} is not trained yet (finished: 0..{finished - 1})")
    method.eval()
    out = []
    for t in wanted:
        x, y = bench.tasks[t].tensors("test")
        data = Dataset(name=f"{bench.name}/task{t}", x=x, y=y, num_classes=bench.tasks[t].num_classes,
                       lo=bench.lo, hi=bench.hi)
        out.append(TaskModel(t, method.materialize(t), data))
    return out
