"""Reproduction runs of the continual methods: accuracy, BWT and wall time per (benchmark, method, iterations).

Run ``python -m benchmarks.continual_repro --benchmarks split-digits,split-mnist --methods hnet,hypermask
--data-dir ../shared/data``. Each run uses the papers' settings from :data:`continual.cli.DEFAULTS`
(``--iterations`` takes a comma list to trace accuracy against iterations per task; ``--option
key=value`` overrides a RunConfig field, e.g. ``--option method_options.chunk_size=4000``), writes its run
directory under ``--out`` (resumable), and the script prints one table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import parse_args_checked
from continual.cli import default_config, follow_iterations
from continual.runner import RunConfig, run


def _parse_option(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--option needs key=value, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.split("."), parsed


def _apply(cfg: dict[str, Any], path: list[str], value: Any) -> None:
    node = cfg
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value


def apply_option(cfg: dict[str, Any], text: str) -> None:
    """Apply one ``--option key=value`` (dotted key, JSON value or plain string) to a config dict in place.

    Example:
        >>> cfg = {"method_options": {"eps": 0.1}}
        >>> apply_option(cfg, "method_options.reg_tasks=1"); cfg
        {'method_options': {'eps': 0.1, 'reg_tasks': 1}}
    """
    _apply(cfg, *_parse_option(text))


def explicit_method_options(texts: Sequence[str]) -> set[str]:
    """The ``method_options`` keys that ``--option`` texts set (they win over derived defaults).

    Example:
        >>> sorted(explicit_method_options(["method_options.kappa_decay=0.25", "iterations=10"]))
        ['kappa_decay']
    """
    paths = [_parse_option(t)[0] for t in texts]
    return {p[1] for p in paths if len(p) == 2 and p[0] == "method_options"}


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """``(iteration, mean validation accuracy over tasks)`` from a run's ``validation.csv``: the accuracy
    each task reached after that many of its own iterations, averaged over the tasks."""
    path = Path(run_dir) / "validation.csv"
    if not path.exists():
        return []
    per_step: dict[int, list[float]] = {}
    for line in path.read_text().splitlines()[1:]:
        _, step, acc = line.split(",")
        per_step.setdefault(int(step), []).append(float(acc))
    return [(step, sum(v) / len(v)) for step, v in sorted(per_step.items())]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.continual_repro", description=__doc__.split("\n")[0])
    p.add_argument("--benchmarks", default="split-digits", help="comma list (default split-digits)")
    p.add_argument("--methods", default="hnet,hypermask", help="comma list (default hnet,hypermask)")
    p.add_argument("--iterations", default=None, help="comma list of iterations per task (default: the paper's)")
    p.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    p.add_argument("--option", action="append", default=[], help="RunConfig override key=value (dotted keys)")
    p.add_argument("--data-dir", type=Path, default=None, help="data folder (default $HYPERCERT_DATA or ./data)")
    p.add_argument("--out", type=Path, default=Path("runs/repro"), help="folder of the run directories")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="write the table as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parse_args_checked(p, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = [_parse_option(o) for o in args.option]
    explicit = explicit_method_options(args.option)
    rows = []
    for bench in args.benchmarks.split(","):
        for method in args.methods.split(","):
            counts = [None] if args.iterations is None else [int(i) for i in args.iterations.split(",")]
            for iters in counts:
                for seed in (int(s) for s in args.seeds.split(",")):
                    data = default_config(method, bench)
                    data["seed"] = seed
                    if iters is not None:
                        data["iterations"] = iters
                        data["eval_every"] = min(data["eval_every"], iters)
                    for path, value in options:
                        _apply(data, path, value)
                    cfg = RunConfig.from_dict(follow_iterations(data, explicit=explicit))
                    name = f"{bench}-{method}-it{cfg.iterations}-s{seed}"
                    t0 = time.perf_counter()
                    res = run(cfg, args.out / name, args.data_dir, progress=not args.no_progress,
                              log=lambda s: print("  " + s, flush=True))
                    m = res.task_incremental
                    rows.append({"benchmark": bench, "method": method, "iterations": cfg.iterations, "seed": seed,
                                 "tasks": m.num_tasks, "average_accuracy": m.average_accuracy(), "bwt": m.bwt(),
                                 "train_seconds": sum(res.train_seconds),
                                 "wall_seconds": time.perf_counter() - t0, "run_dir": str(args.out / name),
                                 "validation_curve": validation_curve(args.out / name)})
                    if "universal" in res.matrices:
                        u = res.matrices["universal"]
                        rows[-1]["universal_accuracy"] = u.average_accuracy()
                        print(f"  universal embedding (one weight set for all tasks): average accuracy "
                              f"{100 * u.average_accuracy():.2f}%", flush=True)
                    print(f"{name}: average accuracy {100 * m.average_accuracy():.2f}%, BWT {100 * m.bwt():+.2f}, "
                          f"training {sum(res.train_seconds):.0f} s", flush=True)
    print(f"\n{'benchmark':<16}{'method':<11}{'iters/task':>11}{'seed':>5}{'avg acc %':>10}{'BWT':>7}{'train s':>9}")
    for r in rows:
        print(f"{r['benchmark']:<16}{r['method']:<11}{r['iterations']:>11}{r['seed']:>5}"
              f"{100 * r['average_accuracy']:>10.2f}{100 * r['bwt']:>+7.2f}{r['train_seconds']:>9.0f}")
    print("\nvalidation accuracy (mean over tasks) against iterations per task:")
    for r in rows:
        curve = "  ".join(f"{step}:{100 * acc:.2f}" for step, acc in r["validation_curve"])
        print(f"  {r['benchmark']} {r['method']} ({r['iterations']} it): {curve}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "torch": torch.__version__}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
