"""Cost of one continual-learning training step, and of its output regulariser, as tasks accumulate.

A hypernetwork method's step grows with the task count: the regulariser compares the hypernetwork's
output for every earlier task with its snapshot. This benchmark builds a method with its default
settings for a benchmark (:data:`continual.cli.DEFAULTS`, the same target and hypernetwork as
``continual-train``), fakes ``T - 1`` finished tasks (random embeddings; the cost does not depend on
what was learnt) and times, at task ``T``, with random inputs of the benchmark's shape (no data files
needed):

* ``step``: one full training step (loss, backward, fused Adam), as the runner does it;
* ``reg``: the regulariser's forward+backward as the methods compute it
  (:func:`continual.hypernet.head_squared_distance`: blocked, nothing of the output's size stored);
* ``reg (materialised)``: the same value and gradients through the materialised head output and a
  squared-distance op (:func:`continual.hypernet.blocks_squared_distance`), the baseline, timed in
  the same rounds;
* ``target f+b``: forward+backward of the plain target network with fixed point weights on the same
  batch, what a step of ordinary training costs.

Example::

    python -m benchmarks.continual_step --methods hnet hint --tasks 1 5 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import parse_args_checked
from certify.cli_checks import positive_int
from continual.cli import default_config
from continual.hypernet import blocks_squared_distance
from continual.methods import build_method
from continual.runner import RunConfig, build_optimizer, build_target

# input shape and classes per task of the benchmarks whose targets are built here (no data is read)
SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "permuted-mnist": ((1, 28, 28), 10),
    "rotated-mnist": ((1, 28, 28), 10),
    "split-mnist": ((1, 28, 28), 2),
    "split-digits": ((1, 8, 8), 2),
}


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def build_at_task(method_name: str, benchmark: str, task: int, seed: int = 0) -> tuple[Any, RunConfig, tuple]:
    """The default ``method_name`` for ``benchmark`` with tasks ``0 .. task-2`` finished and ``task-1``
    started, its config and the input shape."""
    if benchmark not in SHAPES:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {', '.join(SHAPES)}")
    cfg = RunConfig.from_dict(default_config(method_name, benchmark))
    (c, h, w), classes = SHAPES[benchmark]
    if cfg.benchmark_options.get("pad32"):
        h, w = 32, 32
    bench = SimpleNamespace(input_shape=(c, h, w), num_classes_per_task=classes)
    torch.manual_seed(seed)
    method = build_method(method_name, build_target(cfg, bench), **cfg.method_options)
    for t in range(task - 1):
        method.start_task(t)
        method.end_task(t)
    method.start_task(task - 1)
    return method, cfg, (c, h, w)


def _materialised_regulariser(method: Any, task: int) -> torch.Tensor:
    """The regulariser through the materialised head output (the baseline of ``reg``)."""
    ids = list(range(task))
    boxes = getattr(method, "embedding_boxes", None)
    emb = boxes(ids) if boxes is not None else None
    blocks = method.hnet._output_blocks(ids, emb, center_features=emb is not None)
    return blocks_squared_distance(blocks, method.snapshot) / task


def measure(method_name: str, benchmark: str, task: int, repeats: int) -> dict[str, Any]:
    """Times (ms, medians) of one step, the regulariser, its materialised baseline and the plain target."""
    method, cfg, shape = build_at_task(method_name, benchmark, task)
    t = task - 1
    x = torch.rand(cfg.batch_size, *shape)
    y = torch.randint(0, SHAPES[benchmark][1], (cfg.batch_size,))
    opt = build_optimizer(method, cfg)  # the runner's (fused) Adam
    method.train()

    def step() -> None:
        loss, _ = method.loss(x, y, t, 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def reg() -> None:
        method.regularizer(t, 0.5).backward()

    def reg_materialised() -> None:
        _materialised_regulariser(method, t).backward()

    with torch.no_grad():
        weights = {k: v.detach() for k, v in method.hnet(t).items()}  # point weights (HINT: the box centre's)

    def target_step() -> None:
        w = {k: v.requires_grad_() for k, v in weights.items()}
        F.cross_entropy(method.target(x, w, t), y).backward()

    row: dict[str, Any] = {"method": method_name, "benchmark": benchmark, "task": task,
                           "step_ms": _median_ms(step, repeats), "target_fb_ms": _median_ms(target_step, repeats)}
    if t > 0 and getattr(method, "reg_on", "mid") == "mid":
        with torch.no_grad():  # both forms must agree before their times mean anything
            a, b = float(method.regularizer(t, 0.5)), float(_materialised_regulariser(method, t))
        row["reg_rel_diff"] = abs(a - b) / max(abs(b), 1e-30)
        if row["reg_rel_diff"] > 1e-4:
            raise RuntimeError(f"{method_name} task {task}: blocked regulariser {a} != materialised {b}")
        fused, mat = [], []
        for _ in range(repeats):  # interleaved, so that both see the same machine
            fused.append(_median_ms(reg, 1))
            mat.append(_median_ms(reg_materialised, 1))
        row["reg_ms"], row["reg_materialised_ms"] = statistics.median(fused), statistics.median(mat)
    opt.zero_grad(set_to_none=True)
    return row


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.continual_step", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", default="permuted-mnist", choices=sorted(SHAPES),
                   help="whose default target and hypernetwork to build (default: permuted-mnist)")
    p.add_argument("--methods", nargs="+", default=["hnet", "hint"],
                   help="methods to time (hnet, hypermask, hint, shield; default: hnet hint)")
    p.add_argument("--tasks", nargs="+", type=positive_int, default=[1, 5, 10],
                   help="task numbers T (1-based) at which to time a step (default: 1 5 10)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed rounds per measurement (median; default 5)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args_checked(_parser(), argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"hypercert continual step benchmark | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"{args.benchmark}, default configs | medians of {args.repeats}")
    header = (f"{'method':<10} {'task':>4} | {'step ms':>9} {'target f+b ms':>14} | "
              f"{'reg ms':>8} {'materialised ms':>16} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.methods:
        for task in args.tasks:
            try:
                row = measure(name, args.benchmark, task, args.repeats)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            rows.append(row)
            reg = row.get("reg_ms")
            reg_txt = (f"{reg:8.1f} {row['reg_materialised_ms']:16.1f} {reg / row['reg_materialised_ms']:5.2f}x"
                       if reg is not None else f"{'-':>8} {'-':>16} {'-':>6}")
            print(f"{name:<10} {task:>4} | {row['step_ms']:9.1f} {row['target_fb_ms']:14.1f} | {reg_txt}", flush=True)
    print("reg: the regulariser's forward+backward as trained (blocked); materialised: the same through the "
          "full head output (baseline, same rounds); ratio = reg / materialised")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
