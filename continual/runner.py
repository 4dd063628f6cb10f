"""The continual training harness: tasks in order, best-validation weights per task, resumable runs.

:func:`run` trains a :mod:`continual.methods` method on a :mod:`continual.benchmarks` benchmark task
after task and fills the accuracy matrix ``A[i, j]`` (test accuracy on task ``j`` after training task
``i``). Every ``eval_every`` iterations it measures the current task's validation accuracy and keeps
the best state of the task; the run directory holds

* ``checkpoint.pt``: everything needed to resume (method and optimiser state, task, iteration, the best
  state so far, the results so far), written atomically (temporary file + rename) at every validation
  check and at every task end;
* ``config.json``: the :class:`RunConfig`; ``results.json`` / ``accuracy.csv`` / PNG plots: the
  results (:class:`continual.metrics.RunResults`).

A run killed at any moment and started again with the same config continues from its last checkpoint
and ends with the same numbers as an unbroken run: batches are drawn from generators seeded by
``(seed, task, epoch)``, embeddings by ``(seed, task)``, and everything else that changes is in the
checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from certify.cli_checks import check_device
from certify.model_io import atomic_save

from .benchmarks import Benchmark, Task, make_benchmark
from .methods import METHODS, ContinualMethod, build_method, method_defaults
from .metrics import AccuracyMatrix, RunResults
from .targets import MLP, ResNet18, ResNet20, SmallConvNet, TargetNet, TaskBatchNorm, ZenkeNet

__all__ = [
    "RunConfig", "TARGETS", "build_optimizer", "build_target", "check_checkpoint", "class_incremental",
    "evaluate_tasks", "run",
]

#: Target architectures by name.
TARGETS: dict[str, type[TargetNet]] = {
    "mlp": MLP, "zenke": ZenkeNet, "small-conv": SmallConvNet, "resnet18": ResNet18, "resnet20": ResNet20,
}


@dataclass
class RunConfig:
    """Everything that defines a run (saved as ``config.json``; a resumed run must match it)."""

    method: str = "hnet"
    benchmark: str = "split-digits"
    target: str = "mlp"
    target_options: dict[str, Any] = field(default_factory=lambda: {"hidden": [100, 100]})
    method_options: dict[str, Any] = field(default_factory=dict)
    benchmark_options: dict[str, Any] = field(default_factory=dict)
    iterations: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    eval_every: int = 250
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; available: {', '.join(METHODS)}")
        if self.target not in TARGETS:
            raise ValueError(f"unknown target network {self.target!r}; available: {', '.join(TARGETS)}")
        for name in ("iterations", "batch_size", "eval_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_target(cfg: RunConfig, bench: Benchmark) -> TargetNet:
    """The target network of ``cfg`` sized for ``bench`` (inputs, classes per task)."""
    c, h, w = bench.input_shape
    opts = dict(cfg.target_options)
    opts.setdefault("num_outputs", bench.num_classes_per_task)
    try:
        if cfg.target == "mlp":
            opts["hidden"] = tuple(opts.get("hidden", (1000, 1000)))
            return MLP(c * h * w, **opts)
        return TARGETS[cfg.target](in_shape=(c, h, w), **opts)
    except TypeError as exc:
        raise ValueError(f"bad target_options for {cfg.target!r}: {exc}") from None


def _batch(x: torch.Tensor, y: torch.Tensor, cfg: RunConfig, task: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``step`` of ``task``: epochs of seeded permutations, so any step is reproducible on its own."""
    n = x.shape[0]
    per_epoch = max(1, n // cfg.batch_size)
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + task) * 100_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    idx = perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]
    return x[idx], y[idx]


@torch.no_grad()
def batched_accuracy(logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     batch: int = 1000) -> float:
    """Top-1 accuracy of ``logits`` on ``(x, y)``, ``batch`` samples at a time (no gradients)."""
    correct = 0
    for i in range(0, x.shape[0], batch):
        correct += int((logits(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / max(1, x.shape[0])


def _accuracy(method: ContinualMethod, task: int, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    was = method.training
    method.eval()
    acc = batched_accuracy(lambda xb: method.logits(xb, task), x, y, batch)
    method.train(was)
    return acc


def evaluate_tasks(method: ContinualMethod, bench: Benchmark, upto: int, split: str = "test",
                   device: str = "cpu") -> list[float]:
    """Accuracy of ``method`` on tasks ``0 .. upto`` (task-incremental: each task's own weights)."""
    out = []
    for t in range(upto + 1):
        x, y = bench.tasks[t].tensors(split, device=device)
        out.append(_accuracy(method, t, x, y))
    return out


@torch.no_grad()
def class_incremental(
    method: ContinualMethod, bench: Benchmark, device: str = "cpu"
) -> tuple[list[float], list[float]]:
    """Task inferred by the lowest prediction entropy over all learned tasks.

    Returns per test task ``(task-inference accuracy, class accuracy)``: a sample counts for the class
    accuracy when the inferred task is its own and the prediction is right (global class correct).
    """
    method.eval()
    inference, accuracy = [], []
    tasks = list(range(len(bench)))
    for t in tasks:
        x, y = bench.tasks[t].tensors("test", device=device)
        entropies, preds = [], []
        for s in tasks:
            logits = torch.cat([method.logits(x[i : i + 1000], s) for i in range(0, x.shape[0], 1000)])
            if hasattr(method, "task_entropy"):  # HINT: entropy weighted over its interval logits
                entropies.append(torch.cat([method.task_entropy(x[i : i + 1000], s)
                                            for i in range(0, x.shape[0], 1000)]))
            else:
                logp = F.log_softmax(logits, 1)
                entropies.append(-(logp.exp() * logp).sum(1))
            preds.append(logits.argmax(1))
        chosen = torch.stack(entropies).argmin(0)
        right_task = chosen == t
        right_class = right_task & (torch.stack(preds)[t] == y)
        inference.append(float(right_task.float().mean()))
        accuracy.append(float(right_class.float().mean()))
    return inference, accuracy


def _build(cfg: RunConfig, data_dir: str | Path | None) -> tuple[Benchmark, ContinualMethod]:
    try:
        bench = make_benchmark(cfg.benchmark, data_dir, seed=cfg.seed, **cfg.benchmark_options)
    except TypeError as exc:  # an unknown benchmark_options key
        raise ValueError(f"bad benchmark_options for {cfg.benchmark!r}: {exc}") from None
    torch.manual_seed(cfg.seed)
    target = build_target(cfg, bench)
    method = build_method(cfg.method, target, **cfg.method_options).to(cfg.device)
    return bench, method


def _start_task(method: ContinualMethod, cfg: RunConfig, task: int) -> None:
    torch.manual_seed(cfg.seed * 1_000_003 + task)  # the new embedding's draw depends on (seed, task) only
    method.start_task(task)


def build_optimizer(method: ContinualMethod, cfg: RunConfig) -> torch.optim.Optimizer:
    """Adam; the fused single-kernel step where this torch has one for the device.

    The hypernetwork head is millions of parameters: the unfused CPU step (about ten passes over
    them) took 30-40 ms of a 60-370 ms Permuted MNIST step, the fused one about 12 ms.
    """
    params = list(method.trainable_parameters())
    try:
        return torch.optim.Adam(params, lr=cfg.lr, fused=True)
    except (RuntimeError, ValueError):  # torch < 2.4 on CPU, or a device without a fused Adam
        return torch.optim.Adam(params, lr=cfg.lr)


def _load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load ``state`` but keep ``opt``'s own implementation flags.

    ``Optimizer.load_state_dict`` copies every saved group setting, ``fused``/``foreach`` included:
    a checkpoint written by an unfused optimizer would silently turn a fused one back off.
    """
    flags = [{k: g.get(k) for k in ("fused", "foreach")} for g in opt.param_groups]
    opt.load_state_dict(state)
    for g, f in zip(opt.param_groups, flags, strict=True):
        g.update(f)


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a RunConfig dict) as JSON, with the method's unset keyword defaults filled in, so a run
    saved before a default was spelt out in :data:`continual.cli.DEFAULTS` still resumes."""
    out = json.loads(json.dumps(config))
    if out.get("method") in METHODS:
        defaults = json.loads(json.dumps(method_defaults(out["method"])))
        out["method_options"] = {**defaults, **out.get("method_options", {})}
    return out


def resumes(out: str | Path, cfg: RunConfig) -> bool:
    """Whether ``out`` holds a started run (a checkpoint) whose saved config is ``cfg``."""
    out = Path(out)
    if not (out / "checkpoint.pt").exists() or not (out / "config.json").exists():
        return False
    try:
        saved = _with_defaults(json.loads((out / "config.json").read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError, OSError):
        return False
    return saved == _with_defaults(cfg.to_dict())


def _check_run_dir(out: Path, cfg: RunConfig) -> None:
    """Refuse ``out`` when it is a file, or holds a *started* run (a checkpoint) with another config.

    A ``config.json`` without a checkpoint is what a run that failed before its first validation check
    leaves behind: nothing was trained, so a corrected command may reuse the directory.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run directory; give a new or existing run directory")
    config_path = out / "config.json"
    if not config_path.exists() or not (out / "checkpoint.pt").exists():
        return
    try:
        saved = _with_defaults(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as exc:
        raise ValueError(f"corrupt {config_path}: {exc}; restore it or use another --out") from None
    wanted = _with_defaults(cfg.to_dict())
    if saved != wanted:
        changed = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        raise ValueError(f"{out} holds a run with a different config (differs in: {', '.join(changed)}); "
                         "use another --out or the same settings")


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """What makes a run the same run: its config with every default filled in (``RunConfig`` fields and
    method options alike, so a field added later matches its default), the device left out (a run
    trained on CUDA may be evaluated on the CPU)."""
    try:
        config = RunConfig.from_dict(dict(config)).to_dict()
    except (TypeError, ValueError):  # a field from a newer version: compare what is there
        pass
    out = _with_defaults(config)
    out.pop("device", None)
    return out


def check_checkpoint(state: dict[str, Any], config: dict[str, Any], method: ContinualMethod, num_tasks: int,
                     path: Path) -> int:
    """Check a loaded checkpoint against its run: returns the number of finished tasks.

    ``state`` must be the run's own (a checkpoint records its run's config, ``config``; checkpoints written
    before that was recorded are taken on trust), its ``task`` count an integer in ``0..num_tasks``, and
    ``method`` (with the checkpoint loaded) must hold batch-norm statistics for every finished task: a
    layer without them would normalise with a fresh layer's mean 0 and variance 1, a different network.
    Anything else is a ``ValueError`` naming ``path``.
    """
    recorded = state.get("config")
    if recorded is not None:
        saved, wanted = _identity(recorded), _identity(config)
        if saved != wanted:
            changed = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
            raise ValueError(f"checkpoint {path} belongs to another run: its config differs from the run's "
                             f"config.json in {', '.join(changed)} (was it copied from another run?)")
    finished = state.get("task")
    if isinstance(finished, bool) or not isinstance(finished, int) or not 0 <= finished <= num_tasks:
        raise ValueError(f"damaged checkpoint {path}: its task count is {finished!r}, not an integer in 0..{num_tasks}")
    for name, layer in method.named_modules():
        if isinstance(layer, TaskBatchNorm) and layer.num_tasks < finished:
            raise ValueError(f"damaged checkpoint {path}: batch norm {name} has statistics for {layer.num_tasks} "
                             f"task(s), but the checkpoint says {finished} are finished")
    return finished


def _load_method(method: ContinualMethod, state: Any, path: Path) -> None:
    """``method.load_state_dict(state)``, a mismatch (a checkpoint copied from another run) as a ``ValueError``."""
    try:
        method.load_state_dict(state)
    except (RuntimeError, KeyError, IndexError, TypeError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {path} does not fit this run's method: {reason}") from None


def _load(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file raises many exception types
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"corrupt checkpoint {path}: {type(exc).__name__}: {reason}; delete it to start the run "
                         "afresh") from None
    if not isinstance(state, dict) or state.get("format") != "hypercert-continual-run":
        raise ValueError(f"{path} is not a hypercert continual-run checkpoint")
    return state


AfterTask = Callable[[ContinualMethod, Benchmark, int], dict[str, list[float]]]


def universal_accuracy(method: ContinualMethod, bench: Benchmark, task: int) -> dict[str, list[float]]:
    """After ``task``: ``{"universal": [...]}``, the test accuracy on tasks ``0 .. task`` of the ONE weight
    set at the universal embedding of the task boxes so far (HINT); ``{}`` for methods without one.
    With it, ``"universal inside box"``: 1.0 where that embedding lies in the task's box, 0.0 where the
    boxes do not intersect and it is only upstream's fallback midpoint (no guarantee).

    :func:`run` records both after every task, as matrices of the results.
    """
    logits = getattr(method, "logits_universal", None)
    if logits is None:
        return {}
    device = next(method.parameters()).device
    tests = [bench.tasks[j].tensors("test", device=device) for j in range(task + 1)]
    out = {"universal": [batched_accuracy(lambda xb, j=j: logits(xb, j), x, y) for j, (x, y) in enumerate(tests)]}
    inside = getattr(method, "universal_inside", None)
    if inside is not None:
        out["universal inside box"] = [float(v) for v in inside(list(range(task + 1)))]
    return out


def run(cfg: RunConfig, out_dir: str | Path, data_dir: str | Path | None = None, *, progress: bool = True,
        log: Callable[[str], None] = print, stop_after: Callable[[int, int], bool] | None = None,
        after_task: AfterTask | None = None) -> RunResults:
    """Train ``cfg.method`` on ``cfg.benchmark`` task after task; resume from ``out_dir`` if it holds a run.

    ``after_task(method, benchmark, t)``, called once task ``t`` is trained (method in eval mode), may
    return named accuracies on tasks ``0 .. t`` (robust or certified accuracy, say); they become rows
    of extra matrices in the results (``RunResults.matrices``) and are checkpointed with the run. A method
    with a universal embedding (HINT) always gets the matrix ``"universal"`` (:func:`universal_accuracy`).
    ``stop_after(task, step)`` (tests) returning True simulates a kill right after that checkpoint.
    """
    out = Path(out_dir)
    config_path, ckpt_path = out / "config.json", out / "checkpoint.pt"
    _check_run_dir(out, cfg)
    check_device(cfg.device)
    bench, method = _build(cfg, data_dir)  # bad options, missing data: refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if not ckpt_path.exists():  # nothing trained yet (or a run that failed before its first check): (re)write
        config_path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    n_tasks = len(bench)
    matrix = AccuracyMatrix(n_tasks)
    times: list[float] = []
    curve: list[list[float]] = []  # [task, iteration, validation accuracy] at every check
    extra: dict[str, AccuracyMatrix] = {}
    task, step, best = 0, 0, None
    fresh_task = True
    if ckpt_path.exists():
        state = _load(ckpt_path)
        _load_method(method, state["method"], ckpt_path)
        task, step = check_checkpoint(state, cfg.to_dict(), method, n_tasks, ckpt_path), int(state["step"])
        for j in range(min(task, method.hnet.num_tasks)):
            method.end_task(j)
        matrix = AccuracyMatrix.from_dict(state["matrix"])
        extra = {k: AccuracyMatrix.from_dict(v) for k, v in (state.get("extra") or {}).items()}
        times = list(state["times"])
        curve = [list(row) for row in state.get("curve", [])]
        best = state["best"]
        fresh_task = method.hnet.num_tasks <= task
        if task >= n_tasks:
            log(f"{out}: every task is trained; writing its results again")
        else:
            log(f"resuming {out}: task {task + 1}/{n_tasks}, iteration {step}/{cfg.iterations}")
    opt_state = state["optimizer"] if ckpt_path.exists() and not fresh_task else None
    while task < n_tasks:
        if fresh_task:
            _start_task(method, cfg, task)
            step, best = 0, None
            _forward_transfer_entries(method, bench, task, matrix, cfg.device)
        t0 = time.perf_counter()
        spent = 0.0 if fresh_task else float(state.get("task_seconds", 0.0))
        _train_task(method, cfg, bench.tasks[task], task, step, best, opt_state, ckpt_path, matrix, times, spent,
                    progress, stop_after, extra, curve)
        spent += time.perf_counter() - t0
        state = _load(ckpt_path)
        method.load_state_dict(state["best"]["method"])  # the task ends with its best-validation weights
        method.end_task(task)
        row = evaluate_tasks(method, bench, task, "test", cfg.device)
        matrix.record_row(task, row)
        method.eval()
        for hook in [h for h in (universal_accuracy, after_task) if h is not None]:
            for name, accs in hook(method, bench, task).items():
                extra.setdefault(name, AccuracyMatrix(n_tasks)).record_row(task, accs)
        times.append(spent)
        log(f"task {task + 1}/{n_tasks} done in {spent:.1f} s: test accuracy " + " ".join(f"{a:.4f}" for a in row))
        task, fresh_task, opt_state = task + 1, True, None
        atomic_save({"format": "hypercert-continual-run", "config": cfg.to_dict(), "task": task, "step": 0,
                     "method": method.state_dict(), "optimizer": None, "best": None, "matrix": matrix.to_dict(),
                     "times": times, "extra": {k: m.to_dict() for k, m in extra.items()}, "curve": curve}, ckpt_path)
    inference, cil = class_incremental(method, bench, cfg.device)
    inference_matrix, cil_matrix = AccuracyMatrix(n_tasks), AccuracyMatrix(n_tasks)
    inference_matrix.record_row(n_tasks - 1, inference)
    cil_matrix.record_row(n_tasks - 1, cil)
    results = RunResults(task_incremental=matrix, class_incremental=cil_matrix, task_inference=inference_matrix,
                         train_seconds=times, settings={"config": cfg.to_dict(), "benchmark": bench.settings},
                         matrices=extra)
    _write_results(results, out)
    _write_curve(curve, out / "validation.csv")
    return results


def _write_curve(curve: list[list[float]], path: Path) -> None:
    """The validation accuracy of the task being trained, at every check: accuracy against iterations."""
    lines = ["task,iteration,val_accuracy"] + [f"{int(t)},{int(s)},{v:.6f}" for t, s, v in curve]
    path.write_text("\n".join(lines) + "\n")


def _forward_transfer_entries(method: ContinualMethod, bench: Benchmark, task: int, matrix: AccuracyMatrix,
                              device: str) -> None:
    """What FWT needs, measured as soon as task ``task`` has its (untrained) embedding.

    Before any training, the untrained model (task 0's fresh weights) is evaluated on every task: the
    ``b_j`` of GEM's forward transfer (``matrix.random_init``). At the start of task ``t >= 1``, task
    ``t``'s test accuracy with its fresh embedding, before training on it, is ``A[t-1, t]``.
    """
    if task == 0:
        matrix.random_init = [
            _accuracy(method, 0, *bench.tasks[j].tensors("test", device=device)) for j in range(len(bench))
        ]
    else:
        matrix[task - 1, task] = _accuracy(method, task, *bench.tasks[task].tensors("test", device=device))


def _train_task(method: ContinualMethod, cfg: RunConfig, task_data: Task, task: int, step: int, best: Any,
                opt_state: Any, ckpt_path: Path, matrix: AccuracyMatrix, times: list[float], spent: float,
                progress: bool, stop_after: Callable[[int, int], bool] | None,
                extra: dict[str, AccuracyMatrix], curve: list[list[float]]) -> None:
    """Iterations ``step .. cfg.iterations`` of ``task``, checkpointing at every validation check."""
    x, y = task_data.tensors("train", device=cfg.device)
    xv, yv = task_data.tensors("val", device=cfg.device)
    opt = build_optimizer(method, cfg)
    if opt_state is not None:
        _load_optimizer(opt, opt_state)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=step, desc=f"task {task + 1}", unit="it", dynamic_ncols=True)
    method.train()
    t0 = time.perf_counter()
    while step < cfg.iterations:
        xb, yb = _batch(x, y, cfg, task, step)
        loss, stats = method.loss(xb, yb, task, step / cfg.iterations)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if bar is not None:
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{stats['acc']:.3f}")
        if step % cfg.eval_every == 0 or step == cfg.iterations:
            # no validation data (val_fraction 0): nothing to select by, so the latest state is kept
            no_val = xv.shape[0] == 0
            val = math.nan if no_val else _accuracy(method, task, xv, yv)
            curve.append([task, step, val])
            # methods that ramp eps (SHIELD) pick their best state only once the ramp is done
            eligible = step >= getattr(method, "best_from_progress", 0.0) * cfg.iterations or step == cfg.iterations
            if eligible and (best is None or no_val or val > best["val"]):
                best = {"val": val, "step": step, "method": copy.deepcopy(method.state_dict())}
            atomic_save({"format": "hypercert-continual-run", "config": cfg.to_dict(), "task": task, "step": step,
                          "method": method.state_dict(), "optimizer": opt.state_dict(), "best": best,
                          "matrix": matrix.to_dict(), "times": times,
                          "extra": {k: m.to_dict() for k, m in extra.items()}, "curve": curve,
                          "task_seconds": spent + time.perf_counter() - t0}, ckpt_path)
            if bar is not None:
                # before a method's best-state window opens (SHIELD's eps ramp) there is no best yet
                bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{val:.3f}",
                                best="-" if best is None else f"{best['val']:.3f}")
            if stop_after is not None and stop_after(task, step):
                raise KeyboardInterrupt(f"stopped after task {task}, iteration {step}")
    if bar is not None:
        bar.close()


def matrix_file_stem(name: str) -> str:
    """File-name stem of a named results matrix: ``"certified ibp eps=0.01"`` -> ``"certified_ibp_eps_0.01"``."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_")


def _write_results(results: RunResults, out: Path) -> None:
    """``results.json``, ``accuracy.csv`` and the plots; every further matrix (HINT's universal embedding,
    the robust matrices) as ``<name>.csv`` and ``<name>_matrix.png`` too."""
    results.to_json(out / "results.json")
    results.task_incremental.to_csv(out / "accuracy.csv")
    for name, matrix in results.matrices.items():
        matrix.to_csv(out / f"{matrix_file_stem(name)}.csv")
    try:
        from .metrics import plot_accuracy_matrix, plot_task_curves

        plot_accuracy_matrix(results.task_incremental, out / "accuracy_matrix.png")
        plot_task_curves(results.task_incremental, out / "task_curves.png")
        for name, matrix in results.matrices.items():
            plot_accuracy_matrix(matrix, out / f"{matrix_file_stem(name)}_matrix.png", title=f"{name} accuracy")
    except ImportError:  # matplotlib missing: the numbers are written, the pictures are not
        pass
