"""Continual-learning metrics: the accuracy matrix and what is read from it, result files, tables and plots.

What lives here:

* :class:`AccuracyMatrix`: ``A[i, j]``, the accuracy on task ``j`` after training task ``i`` (a fraction in
  ``[0, 1]``; NaN where not measured). Entries above the diagonal (``j > i``, a task not trained yet) may be
  measured too: forward transfer needs ``A[j-1, j]``. Read from it:

  - :meth:`~AccuracyMatrix.average_accuracy`: ``(1/T) sum_j A[T-1, j]``, the headline figure;
  - :meth:`~AccuracyMatrix.bwt`: backward transfer, ``(1/(T-1)) sum_{j<T-1} (A[T-1, j] - A[j, j])``;
  - :meth:`~AccuracyMatrix.fwt`: forward transfer, ``(1/(T-1)) sum_{j>0} (A[j-1, j] - b_j)`` with ``b_j`` the
    accuracy of a randomly initialised model on task ``j``;
  - :meth:`~AccuracyMatrix.forgetting`: ``(1/(T-1)) sum_{j<T-1} max_{j<=l<T-1} (A[l, j] - A[T-1, j])``.

  BWT and FWT are the definitions of Lopez-Paz & Ranzato (2017, GEM, eq. 2-3; their ``R_{i,j}`` is our
  ``A[i-1, j-1]``): both average over ``T - 1`` tasks (the last task has no "later" for BWT, the first no "before"
  for FWT). Forgetting is Chaudhry et al. (2018, RWalk, eq. 8-9): the drop from the best accuracy a task ever had
  while later tasks were trained to its final accuracy. The maximum runs over ``l >= j`` (the stages after the
  task was learned); entries measured before training it (``l < j``) are not "knowledge" that could be forgotten.
  Each metric is undefined (NaN) for a single task and raises ``ValueError`` naming the first entry it needs that
  was not measured.
* :class:`RunResults`: one run's task-incremental matrix, optional class-incremental and task-inference matrices,
  further named matrices (robust or certified accuracy, for example), seconds of training per task and the run's
  settings; :meth:`~RunResults.to_json` / :meth:`~RunResults.from_json` (atomic writes: a temporary file renamed
  into place, so a crash never leaves half a file under the final name).
* :func:`mean_std`, :func:`format_mean_std` and :func:`aggregate_runs`: "mean ± std over seeds".
* :func:`plot_accuracy_matrix` and :func:`plot_task_curves`: PNG figures (matplotlib, imported only there, drawn
  on an Agg canvas without pyplot so no global backend is changed).

Example:
    >>> from continual.metrics import AccuracyMatrix
    >>> A = AccuracyMatrix([[0.9, None, None],
    ...                     [0.8, 0.95, None],
    ...                     [0.7, 0.9, 1.0]])
    >>> round(A.average_accuracy(), 4), round(A.bwt(), 4), round(A.forgetting(), 4)
    (0.8667, -0.125, 0.125)
    >>> print(A.table())
    after \\ on     task 0   task 1   task 2
    task 0         90.00        -        -
    task 1         80.00    95.00        -
    task 2         70.00    90.00   100.00
    average accuracy 86.67 %, BWT -12.50, forgetting 12.50 (percentage points)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "AccuracyMatrix",
    "RunResults",
    "aggregate_runs",
    "format_mean_std",
    "mean_std",
    "plot_accuracy_matrix",
    "plot_task_curves",
]

RESULTS_FORMAT = "hypercert.continual.RunResults"
RESULTS_VERSION = 1


# ---------------------------------------------------------------------------- the accuracy matrix
class AccuracyMatrix:
    """``A[i, j]``: accuracy (a fraction in ``[0, 1]``) on task ``j`` after training task ``i``; NaN = not measured.

    Build it empty (``AccuracyMatrix(num_tasks)``) and fill it as training proceeds, or from nested lists
    (``None`` or NaN for unmeasured entries). ``task_names`` label rows and columns in tables and plots;
    ``random_init`` (the accuracy of a randomly initialised model on each task) is what :meth:`fwt` compares with
    when it is not passed there.

    Example:
        >>> from continual.metrics import AccuracyMatrix
        >>> A = AccuracyMatrix(2)
        >>> A.record(0, 0, 0.98)
        >>> A[0, 1] = 0.12          # task 1 before training it (forward transfer)
        >>> A.record_row(1, [0.97, 0.99])
        >>> A.is_complete(), round(A.bwt(), 4), round(A.fwt([0.1, 0.1]), 4)
        (True, -0.01, 0.02)
        >>> A[1, 0] = 97.0
        Traceback (most recent call last):
        ...
        ValueError: A[1, 0]: accuracies are fractions in [0, 1], got 97.0 (a percentage?)
    """

    def __init__(self, values: int | Sequence[Sequence[float | None]] | np.ndarray, *,
                 task_names: Sequence[str] | None = None, random_init: Sequence[float] | None = None):
        if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
            if values < 1:
                raise ValueError(f"AccuracyMatrix: need at least 1 task, got {values}")
            array = np.full((int(values), int(values)), np.nan)
        else:
            array = _float_array(values, "AccuracyMatrix values")
            if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
                raise ValueError(f"AccuracyMatrix: values must be a non-empty square T x T matrix, got shape "
                                 f"{array.shape}")
            bad = ~np.isnan(array) & ((array < 0) | (array > 1))
            if bad.any():
                i, j = (int(v) for v in np.argwhere(bad)[0])
                raise ValueError(_range_message(f"A[{i}, {j}]", float(array[i, j])))
        self._values = array
        t = array.shape[0]
        if task_names is not None:
            task_names = [str(n) for n in task_names]
            if len(task_names) != t:
                raise ValueError(f"AccuracyMatrix: {len(task_names)} task names for {t} tasks")
        self.task_names: list[str] | None = task_names
        self.random_init: list[float] | None = None
        if random_init is not None:
            self.random_init = self._baseline(random_init, "random_init")

    # -------------------------------------------------------------- access
    @property
    def num_tasks(self) -> int:
        return self._values.shape[0]

    def __len__(self) -> int:
        return self.num_tasks

    @property
    def values(self) -> np.ndarray:
        """A copy of the matrix as float64, NaN where not measured."""
        return self._values.copy()

    def _index(self, key: Any) -> tuple[int, int]:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(f"index an AccuracyMatrix with A[i, j], got {key!r}")
        i, j = (int(k) for k in key)
        t = self.num_tasks
        if not (0 <= i < t and 0 <= j < t):
            raise IndexError(f"A[{i}, {j}] is outside the {t} x {t} matrix")
        return i, j

    def __getitem__(self, key: tuple[int, int]) -> float:
        i, j = self._index(key)
        return float(self._values[i, j])

    def __setitem__(self, key: tuple[int, int], accuracy: float | None) -> None:
        i, j = self._index(key)
        value = math.nan if accuracy is None else float(accuracy)
        if not math.isnan(value) and not 0.0 <= value <= 1.0:
            raise ValueError(_range_message(f"A[{i}, {j}]", value))
        self._values[i, j] = value

    def record(self, after_task: int, task: int, accuracy: float) -> None:
        """``A[after_task, task] = accuracy``."""
        self[after_task, task] = accuracy

    def record_row(self, after_task: int, accuracies: Sequence[float]) -> None:
        """Record the accuracies on tasks ``0 .. len(accuracies)-1`` after training ``after_task``."""
        if len(accuracies) > self.num_tasks:
            raise ValueError(f"{len(accuracies)} accuracies for a {self.num_tasks}-task matrix")
        for j, acc in enumerate(accuracies):
            self[after_task, j] = acc

    def is_measured(self, i: int, j: int) -> bool:
        return not math.isnan(self[i, j])

    def is_complete(self) -> bool:
        """Every entry on and below the diagonal measured (what the metrics other than FWT need)."""
        return not np.isnan(self._values[np.tril_indices(self.num_tasks)]).any()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccuracyMatrix):
            return NotImplemented
        return (np.array_equal(self._values, other._values, equal_nan=True) and self.task_names == other.task_names
                and self.random_init == other.random_init)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        measured = int((~np.isnan(self._values)).sum())
        return f"AccuracyMatrix({self.num_tasks} tasks, {measured} entries measured)"

    def _need(self, i: int, j: int, metric: str) -> float:
        value = self._values[i, j]
        if math.isnan(value):
            raise ValueError(f"{metric} needs A[{i}, {j}] (task {j} after training task {i}), which was not measured")
        return float(value)

    def _baseline(self, values: Sequence[float], name: str) -> list[float]:
        baseline = [float(v) for v in values]
        if len(baseline) != self.num_tasks:
            raise ValueError(f"{name}: {len(baseline)} values for {self.num_tasks} tasks (give one per task; the "
                             f"first is not used)")
        for j, v in enumerate(baseline):
            if not 0.0 <= v <= 1.0:  # NaN fails this too
                raise ValueError(_range_message(f"{name}[{j}]", v))
        return baseline

    # -------------------------------------------------------------- metrics
    def average_accuracy(self, after: int | None = None) -> float:
        """Mean accuracy over the tasks trained so far after training task ``after`` (default: the last task):
        ``mean_{j <= after} A[after, j]``."""
        i = self.num_tasks - 1 if after is None else self._index((after, 0))[0]
        return float(np.mean([self._need(i, j, "average_accuracy") for j in range(i + 1)]))

    def bwt(self) -> float:
        """Backward transfer (GEM): ``mean_{j < T-1} (A[T-1, j] - A[j, j])``; negative means forgetting.
        NaN for a single task."""
        last = self.num_tasks - 1
        if last == 0:
            return math.nan
        return float(np.mean([self._need(last, j, "bwt") - self._need(j, j, "bwt") for j in range(last)]))

    def fwt(self, random_init_acc: Sequence[float] | None = None) -> float:
        """Forward transfer (GEM): ``mean_{j > 0} (A[j-1, j] - b_j)``, how well task ``j`` is solved before
        training it compared with a randomly initialised model (``b_j = random_init_acc[j]``, one value per task,
        the first unused; default :attr:`random_init`). NaN for a single task."""
        if random_init_acc is not None:
            baseline = self._baseline(random_init_acc, "random_init_acc")
        elif self.random_init is not None:
            baseline = self.random_init
        else:
            raise ValueError("fwt needs the accuracy of a randomly initialised model on each task: pass "
                             "random_init_acc or set AccuracyMatrix.random_init")
        if self.num_tasks == 1:
            return math.nan
        return float(np.mean([self._need(j - 1, j, "fwt") - baseline[j] for j in range(1, self.num_tasks)]))

    def forgetting(self) -> float:
        """Average forgetting (Chaudhry et al. 2018): ``mean_{j < T-1} max_{j <= l < T-1} (A[l, j] - A[T-1, j])``;
        non-negative up to the final stage being the best one. NaN for a single task."""
        last = self.num_tasks - 1
        if last == 0:
            return math.nan
        drops = []
        for j in range(last):
            best = max(self._need(stage, j, "forgetting") for stage in range(j, last))
            drops.append(best - self._need(last, j, "forgetting"))
        return float(np.mean(drops))

    def summary(self) -> dict[str, float]:
        """The metrics that are defined for what was measured: ``average_accuracy``, ``bwt``, ``forgetting`` and
        ``fwt`` (only with :attr:`random_init` and the entries above the diagonal it needs)."""
        out: dict[str, float] = {}
        for name, metric in (("average_accuracy", self.average_accuracy), ("bwt", self.bwt),
                             ("forgetting", self.forgetting), ("fwt", self.fwt)):
            with contextlib.suppress(ValueError):
                value = metric()
                if not math.isnan(value):
                    out[name] = value
        return out

    # -------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"values": rows with None for unmeasured, "task_names": ..., "random_init": ...}``."""
        return {"values": [[None if math.isnan(v) else float(v) for v in row] for row in self._values],
                "task_names": list(self.task_names) if self.task_names is not None else None,
                "random_init": list(self.random_init) if self.random_init is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccuracyMatrix:
        """Inverse of :meth:`to_dict`.

        Example:
            >>> from continual.metrics import AccuracyMatrix
            >>> A = AccuracyMatrix([[0.5, None], [0.25, 0.75]], task_names=["a", "b"])
            >>> AccuracyMatrix.from_dict(A.to_dict()) == A
            True
        """
        if not isinstance(data, Mapping) or "values" not in data:
            raise ValueError(f"AccuracyMatrix.from_dict: expected a mapping with key 'values', got "
                             f"{type(data).__name__}")
        return cls(data["values"], task_names=data.get("task_names"), random_init=data.get("random_init"))

    def to_csv(self, path: str | Path) -> Path:
        """Write the matrix as CSV (atomically): a header ``after_task,<task names>``, then one row per training
        stage with accuracies as fractions (full precision; empty where not measured).

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> from continual.metrics import AccuracyMatrix
            >>> path = AccuracyMatrix([[0.5, None], [0.25, 0.75]]).to_csv(Path(tempfile.mkdtemp()) / "A.csv")
            >>> print(path.read_text(), end="")
            after_task,task_0,task_1
            task_0,0.5,
            task_1,0.25,0.75
        """
        names = self._names()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["after_task", *names])
        for name, row in zip(names, self._values, strict=True):
            writer.writerow([name, *("" if math.isnan(v) else repr(float(v)) for v in row)])
        return _atomic_write(path, lambda f: f.write(buffer.getvalue()), binary=False)

    def _names(self) -> list[str]:
        return list(self.task_names) if self.task_names is not None else [f"task_{j}" for j in range(self.num_tasks)]

    def table(self, digits: int = 2, *, metrics: bool = True) -> str:
        """The matrix in percent as aligned text, rows "after training task i", columns "accuracy on task j",
        followed (``metrics=True``) by the metrics defined for it (in percentage points)."""
        names = self.task_names if self.task_names is not None else [f"task {j}" for j in range(self.num_tasks)]
        width = max(8, digits + 5, *(len(n) for n in names))
        first = max(12, *(len(n) for n in names))
        lines = ["after \\ on".ljust(first) + "".join(n.rjust(width + 1) for n in names)]
        for name, row in zip(names, self._values, strict=True):
            cells = ("-" if math.isnan(v) else f"{100 * v:.{digits}f}" for v in row)
            lines.append(name.ljust(first) + "".join(c.rjust(width + 1) for c in cells))
        summary = self.summary() if metrics else {}
        parts = []
        if "average_accuracy" in summary:
            parts.append(f"average accuracy {100 * summary['average_accuracy']:.{digits}f} %")
        for key, label in (("bwt", "BWT"), ("fwt", "FWT"), ("forgetting", "forgetting")):
            if key in summary:
                parts.append(f"{label} {100 * summary[key]:+.{digits}f}" if key != "forgetting"
                             else f"{label} {100 * summary[key]:.{digits}f}")
        if parts:
            points = " (percentage points)" if len(parts) > 1 else ""
            lines.append(", ".join(parts) + points)
        return "\n".join(lines)


def _float_array(values: Any, what: str) -> np.ndarray:
    try:
        rows = [[math.nan if v is None else float(v) for v in row] for row in values]
        return np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be rows of numbers or None ({err})") from None


def _range_message(where: str, value: float) -> str:
    hint = " (a percentage?)" if 1.0 < value <= 100.0 else ""
    return f"{where}: accuracies are fractions in [0, 1], got {value!r}{hint}"


# ---------------------------------------------------------------------------- one run's results
@dataclass(eq=False)
class RunResults:
    """Everything one continual-learning run measured.

    ``task_incremental``: the headline matrix (task identity given at test time). ``class_incremental``: the
    same with the task inferred (e.g. by lowest entropy) and one label space over all tasks. ``task_inference``:
    the fraction of each task's test samples whose task was inferred correctly (a matrix so it can be measured
    after every stage; runs that measure it once fill the last row). ``matrices``: further named matrices, e.g.
    ``"pgd eps=0.1"`` or ``"certified ibp eps=0.1"``. ``train_seconds[t]``: wall time spent training task ``t``.
    ``settings``: anything JSON-serialisable that identifies the run (method, benchmark settings, seed, ...).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from continual.metrics import AccuracyMatrix, RunResults
        >>> run = RunResults(AccuracyMatrix([[0.99, None], [0.98, 0.97]]), train_seconds=[1.5, 1.25],
        ...                  settings={"method": "hnet", "seed": 0})
        >>> path = run.to_json(Path(tempfile.mkdtemp()) / "run.json")
        >>> RunResults.from_json(path) == run
        True
        >>> {k: round(v, 4) for k, v in run.summary().items()}
        {'task_incremental/average_accuracy': 0.975, 'task_incremental/bwt': -0.01, 'task_incremental/forgetting': \
0.01, 'train_seconds': 2.75}
    """

    task_incremental: AccuracyMatrix
    class_incremental: AccuracyMatrix | None = None
    task_inference: AccuracyMatrix | None = None
    train_seconds: list[float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    matrices: dict[str, AccuracyMatrix] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.task_incremental, AccuracyMatrix):
            raise ValueError(f"RunResults.task_incremental must be an AccuracyMatrix, got "
                             f"{type(self.task_incremental).__name__}")
        t = self.task_incremental.num_tasks
        for name, matrix in self._all_matrices().items():
            if not isinstance(matrix, AccuracyMatrix):
                raise ValueError(f"RunResults: {name} must be an AccuracyMatrix, got {type(matrix).__name__}")
            if matrix.num_tasks != t:
                raise ValueError(f"RunResults: {name} has {matrix.num_tasks} tasks, task_incremental has {t}")
        self.train_seconds = [float(s) for s in self.train_seconds]
        if len(self.train_seconds) > t or not all(math.isfinite(s) and s >= 0 for s in self.train_seconds):
            raise ValueError(f"RunResults: train_seconds must be at most {t} finite non-negative numbers, got "
                             f"{self.train_seconds}")
        if not isinstance(self.settings, dict):
            raise ValueError(f"RunResults: settings must be a dict, got {type(self.settings).__name__}")

    def _all_matrices(self) -> dict[str, AccuracyMatrix]:
        found = {"task_incremental": self.task_incremental}
        if self.class_incremental is not None:
            found["class_incremental"] = self.class_incremental
        if self.task_inference is not None:
            found["task_inference"] = self.task_inference
        found.update(self.matrices)
        return found

    @property
    def num_tasks(self) -> int:
        return self.task_incremental.num_tasks

    @property
    def task_inference_accuracy(self) -> list[float] | None:
        """Task-inference accuracy per task after the last task (the last row of :attr:`task_inference`)."""
        if self.task_inference is None:
            return None
        return [float(v) for v in self.task_inference.values[-1]]

    def summary(self) -> dict[str, float]:
        """Flat ``"<matrix>/<metric>": value`` for every metric defined, plus ``train_seconds`` (the total)."""
        # "universal inside box" holds 0/1 flags, not accuracies: no accuracy metrics for it
        out = {f"{name}/{metric}": value for name, matrix in self._all_matrices().items()
               if name != "universal inside box" for metric, value in matrix.summary().items()}
        if self.train_seconds:
            out["train_seconds"] = float(sum(self.train_seconds))
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunResults):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        def opt(matrix: AccuracyMatrix | None) -> dict[str, Any] | None:
            return matrix.to_dict() if matrix is not None else None

        return {"format": RESULTS_FORMAT, "version": RESULTS_VERSION,
                "task_incremental": self.task_incremental.to_dict(),
                "class_incremental": opt(self.class_incremental), "task_inference": opt(self.task_inference),
                "matrices": {name: m.to_dict() for name, m in self.matrices.items()},
                "train_seconds": list(self.train_seconds), "settings": self.settings}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResults:
        if not isinstance(data, Mapping) or data.get("format") != RESULTS_FORMAT:
            raise ValueError(f"not a {RESULTS_FORMAT} record (missing or wrong 'format')")
        if data.get("version") != RESULTS_VERSION:
            raise ValueError(f"{RESULTS_FORMAT} version {data.get('version')!r} is not supported (expected "
                             f"{RESULTS_VERSION})")

        def opt(value: Any) -> AccuracyMatrix | None:
            return AccuracyMatrix.from_dict(value) if value is not None else None

        if "task_incremental" not in data:
            raise ValueError("missing 'task_incremental'")
        return cls(AccuracyMatrix.from_dict(data["task_incremental"]), opt(data.get("class_incremental")),
                   opt(data.get("task_inference")), list(data.get("train_seconds") or []),
                   dict(data.get("settings") or {}),
                   {str(k): AccuracyMatrix.from_dict(v) for k, v in (data.get("matrices") or {}).items()})

    def to_json(self, path: str | Path) -> Path:
        """Write as JSON (strict: no NaN tokens; unmeasured entries are ``null``), atomically."""
        try:
            text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"RunResults.settings must be JSON-serialisable with finite numbers ({err})") from None
        return _atomic_write(path, lambda f: f.write(text + "\n"), binary=False)

    @classmethod
    def from_json(cls, path: str | Path) -> RunResults:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from None


# ---------------------------------------------------------------------------- over seeds
def mean_std(values: Iterable[float], ddof: int = 1) -> tuple[float, float]:
    """Mean and standard deviation of ``values`` (e.g. one figure per seed). ``ddof=1`` (default) gives the
    sample standard deviation, the usual estimate from a handful of seeds; ``ddof=0`` numpy's population one.
    A single value has std NaN with ``ddof=1`` (nothing to estimate it from).

    Example:
        >>> from continual.metrics import mean_std
        >>> mean_std([97.0, 98.0, 99.0])
        (98.0, 1.0)
        >>> mean_std([97.0, 98.0, 99.0], ddof=0)[1] == (2 / 3) ** 0.5
        True
        >>> mean_std([])
        Traceback (most recent call last):
        ...
        ValueError: mean_std: no values
    """
    array = np.asarray([float(v) for v in values], dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_std: no values")
    if np.isnan(array).any():
        # A seed that produced no figure must not silently vanish from the average.
        raise ValueError(f"mean_std: NaN among the values {array.tolist()}")
    std = float(np.std(array, ddof=ddof)) if array.size > ddof else math.nan
    return float(np.mean(array)), std


def format_mean_std(values: Iterable[float], *, scale: float = 100.0, digits: int = 2, ddof: int = 1,
                    sep: str = " ± ") -> str:
    """``"mean ± std"`` of ``values`` times ``scale`` (default: fractions shown as percent); a single value is
    shown alone.

    Example:
        >>> from continual.metrics import format_mean_std
        >>> format_mean_std([0.9751, 0.9762, 0.9770])
        '97.61 ± 0.10'
        >>> format_mean_std([-0.0012], digits=3), format_mean_std([0.5, 0.7], scale=1, sep=" +- ")
        ('-0.120', '0.60 +- 0.14')
    """
    mean, std = mean_std(values, ddof=ddof)
    text = f"{mean * scale:.{digits}f}"
    return text if math.isnan(std) else f"{text}{sep}{std * abs(scale):.{digits}f}"


def aggregate_runs(runs: Sequence[RunResults], ddof: int = 1) -> dict[str, tuple[float, float]]:
    """``{metric: (mean, std)}`` over runs (e.g. seeds) for every metric of :meth:`RunResults.summary` that all
    runs have.

    Example:
        >>> from continual.metrics import AccuracyMatrix, RunResults, aggregate_runs
        >>> runs = [RunResults(AccuracyMatrix([[a]])) for a in (0.5, 0.75, 1.0)]
        >>> aggregate_runs(runs)
        {'task_incremental/average_accuracy': (0.75, 0.25)}
    """
    if not runs:
        raise ValueError("aggregate_runs: no runs")
    summaries = [run.summary() for run in runs]
    common = [k for k in summaries[0] if all(k in s for s in summaries[1:])]
    return {k: mean_std([s[k] for s in summaries], ddof=ddof) for k in common}


# ---------------------------------------------------------------------------- plots
def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from err
    # A bare Figure draws on an Agg canvas when saved: no pyplot, no global backend switch, no window.
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save_png(fig: Any, path: str | Path) -> Path:
    return _atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)


def plot_accuracy_matrix(matrix: AccuracyMatrix, path: str | Path, *, title: str | None = None) -> Path:
    """Heatmap of ``A`` in percent (rows: after training task i; columns: task j), each measured cell annotated,
    unmeasured cells blank. Writes a PNG at ``path`` (atomically) and returns its path."""
    t = matrix.num_tasks
    names = matrix.task_names if matrix.task_names is not None else [str(j) for j in range(t)]
    size = min(2.0 + 0.6 * t, 24.0)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    percent = np.ma.masked_invalid(100.0 * matrix.values)
    image = ax.imshow(percent, vmin=0.0, vmax=100.0, cmap="viridis")
    fig.colorbar(image, ax=ax, label="accuracy (%)", shrink=0.8)
    font = max(4.0, min(10.0, 60.0 / t))
    for i in range(t):
        for j in range(t):
            value = matrix[i, j]
            if not math.isnan(value):
                # Dark text on the bright end of viridis, white on the dark end.
                ax.text(j, i, f"{100 * value:.1f}", ha="center", va="center", fontsize=font,
                        color="black" if value > 0.6 else "white")
    ax.set_xticks(range(t), names, rotation=90 if t > 10 else 0)
    ax.set_yticks(range(t), names)
    ax.set_xlabel("accuracy on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title or "accuracy matrix")
    return _save_png(fig, path)


def plot_task_curves(matrix: AccuracyMatrix, path: str | Path, *, title: str | None = None) -> Path:
    """One line per task j: its accuracy (percent) after each training stage i >= j (solid); stages before it
    was trained, where measured, dotted. Writes a PNG at ``path`` (atomically) and returns its path."""
    t = matrix.num_tasks
    names = matrix.task_names if matrix.task_names is not None else [f"task {j}" for j in range(t)]
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    values = 100.0 * matrix.values
    colours = [f"C{j % 10}" for j in range(t)]
    for j in range(t):
        stages = np.arange(t)
        learned = (stages >= j) & ~np.isnan(values[:, j])
        before = (stages <= j) & ~np.isnan(values[:, j])
        if before.sum() > 1:
            ax.plot(stages[before], values[before, j], linestyle=":", color=colours[j])
        if learned.any():
            ax.plot(stages[learned], values[learned, j], marker="o", markersize=3, color=colours[j], label=names[j])
    ax.set_xlabel("after training task")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(range(t))
    ax.set_ylim(0.0, 101.0)
    ax.grid(alpha=0.3)
    if t <= 20:
        ax.legend(fontsize=7, ncols=2 if t > 10 else 1, loc="best")
    ax.set_title(title or "accuracy per task over training")
    return _save_png(fig, path)


# ---------------------------------------------------------------------------- files
def _atomic_write(path: str | Path, write: Callable[[IO[Any]], Any], binary: bool) -> Path:
    """Write through ``write`` into a temporary file beside ``path``, then rename it over ``path``: readers see
    the old file or the whole new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path
