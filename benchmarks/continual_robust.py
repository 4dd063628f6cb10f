"""Robust accuracy matrices of a continual run: after every task, certify and attack every task so far.

Run ``python -m benchmarks.continual_robust --method shield --benchmark split-digits --eps 0.05
--methods ibp,crown,pgd,aa-fast``. It trains with :func:`continual.runner.run` (the papers' defaults,
resumable in ``--out``) and, after each task ``t``, materialises every task ``j <= t`` as an ordinary
``nn.Module`` and runs :func:`certify.evaluation.evaluate` on its test set (first ``--n`` samples):
clean accuracy, each bound method's certified accuracy and each attack's robust accuracy, with the
consistency law (certified => not broken, not misclassified) checked on every sample of every task.
It prints one matrix per measure ``A[i, j]`` (after task ``i``, on task ``j``) and the final row's
average, and writes them into the run's ``results.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks import parse_args_checked, user_errors
from certify.attacks import AttackConfig
from certify.cli_checks import check_evaluation, eps_value, positive_int
from certify.evaluation import evaluate
from continual.benchmarks import Benchmark
from continual.methods import ContinualMethod
from continual.runner import run

from .continual_repro import check_runs, run_config


def robust_hook(eps: float, methods: Sequence[str], n: int | None, attack_config: AttackConfig):
    """An ``after_task`` hook measuring, for tasks ``0 .. t``, clean/certified/robust accuracy at ``eps``."""

    def hook(method: ContinualMethod, bench: Benchmark, t: int) -> dict[str, list[float]]:
        rows: dict[str, list[float]] = {}
        for j in range(t + 1):
            x, y = bench.tasks[j].tensors("test")
            if n is not None:
                x, y = x[:n], y[:n]
            report = evaluate(method.materialize(j), (x, y), eps, list(methods), lo=bench.lo, hi=bench.hi,
                              attack_config=attack_config, progress=False)
            row = report.summary()[0]
            rows.setdefault("clean", []).append(row["clean"])
            for m, acc in row["certified"].items():
                rows.setdefault(f"certified {m} eps={eps:g}", []).append(acc)
            for a, acc in row["robust"].items():
                rows.setdefault(f"{a} eps={eps:g}", []).append(acc)
        return rows

    return hook


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.continual_robust", description=__doc__.split("\n")[0])
    p.add_argument("--method", default="shield", help="continual method (default shield)")
    p.add_argument("--benchmark", default="split-digits", help="benchmark (default split-digits)")
    p.add_argument("--data-dir", type=Path, default=None, help="data folder")
    p.add_argument("--out", type=Path, default=Path("runs/robust"), help="run directory (resumable)")
    p.add_argument("--iterations", type=positive_int, default=None, help="iterations per task (default: the paper's)")
    p.add_argument("--eps", type=eps_value, default=0.05, help="L-inf radius of the evaluation (default 0.05)")
    p.add_argument("--methods", default="ibp,crown,pgd,aa-fast", help="bound methods and attacks "
                   "(default ibp,crown,pgd,aa-fast)")
    p.add_argument("--n", type=positive_int, default=None, help="test samples per task (default all)")
    p.add_argument("--pgd-steps", type=positive_int, default=40, help="PGD steps (default 40)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--option", action="append", default=[],
                   help="RunConfig override key=value, dotted keys (e.g. method_options.eps=0.02); repeatable")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = parse_args_checked(p, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with user_errors(p):  # the training config, the data and every evaluation option: before task 1 trains
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        check_evaluation(args.eps, methods, steps=args.pgd_steps, n=args.n)
        cfg = run_config(args.method, args.benchmark, args.seed, args.iterations, args.option)
        check_runs([cfg], args.data_dir)
    hook = robust_hook(args.eps, methods, args.n, AttackConfig(steps=args.pgd_steps, seed=args.seed))
    results = run(cfg, args.out, args.data_dir, progress=not args.no_progress,
                  log=lambda s: print(s, flush=True), after_task=hook)
    print(f"\n{args.method} on {args.benchmark}, eps = {args.eps:g}, {cfg.iterations} iterations per task, "
          f"PGD {args.pgd_steps} steps (torchattacks), AutoAttack via pyautoattack")
    last = results.num_tasks - 1
    for name, matrix in results.matrices.items():
        final = [matrix[last, j] for j in range(results.num_tasks)]
        print(f"\n{name}: final average {100 * sum(final) / len(final):.2f}%")
        print(matrix.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
