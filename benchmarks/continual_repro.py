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

from benchmarks import parse_args_checked, user_errors
from certify.cli_checks import check_device, positive_int
from continual.cli import DEFAULTS, default_config, follow_iterations
from continual.methods import METHODS
from continual.runner import RunConfig, _build, run

#: Keys ``--option`` may not set: they choose which defaults apply (use the script's own flags).
_CHOSEN_BY_FLAGS = ("method", "benchmark")


def _parse_option(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--option needs key=value, got {text!r}")
    path = key.strip().split(".")
    if path[0] in _CHOSEN_BY_FLAGS:
        raise ValueError(f"--option {text}: {path[0]} selects the defaults; use --{path[0]}s or --{path[0]} instead")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return path, parsed


def _kind(value: Any) -> str | None:
    """The kind of a config value an override must keep (``None``: anything goes)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, dict)):
        return "a JSON list" if isinstance(value, list) else "a table of key=value options"
    return None


def _same_kind(old: Any, new: Any) -> bool:
    kind = _kind(old)
    return kind is None or kind == _kind(new) or (kind == "a number" and new is None)


def _apply(cfg: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``cfg[path[0]][path[1]]... = value``, refusing a value of another kind than the current one
    (``beta=abc`` where beta is a number), so a typo is named here, not in a comparison deep in a method."""
    node = cfg
    for i, k in enumerate(path[:-1]):
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"--option {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a table of options")
    key = ".".join(path)
    if path[-1] in node and not _same_kind(node[path[-1]], value):
        raise ValueError(f"--option {key}={json.dumps(value) if not isinstance(value, str) else value}: expected "
                         f"{_kind(node[path[-1]])} (like the default {json.dumps(node[path[-1]])})")
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


def comma_list(text: str | None, what: str, allowed: Sequence[str] | None = None) -> list[str]:
    """The non-empty items of a comma list, each one of ``allowed`` when given; ``ValueError`` naming ``what``."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise ValueError(f"{what}: empty list")
    bad = [t for t in items if allowed is not None and t not in allowed]
    if bad:
        raise ValueError(f"{what}: unknown {bad[0]!r}; available: {', '.join(allowed or ())}")
    return items


def int_list(text: str | None, what: str, minimum: int | None = None) -> list[int]:
    """A comma list of integers (each >= ``minimum`` when given); ``ValueError`` naming ``what``."""
    out = []
    for item in comma_list(text, what):
        try:
            value = int(item)
        except ValueError:
            raise ValueError(f"{what}: not an integer: {item!r}") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"{what}: must be >= {minimum}, got {value}")
        out.append(value)
    return out


def run_config(method: str, benchmark: str, seed: int, iterations: int | None, options: Sequence[str]) -> RunConfig:
    """The run's config: the papers' defaults for ``method`` on ``benchmark``, then ``--iterations``, then
    the ``--option`` overrides (a derived schedule such as HINT's kappa_decay follows unless set)."""
    data = default_config(method, benchmark)
    data["seed"] = seed
    if iterations is not None:
        data["iterations"] = iterations
        data["eval_every"] = min(data["eval_every"], iterations)
    for option in options:
        apply_option(data, option)
    return RunConfig.from_dict(follow_iterations(data, explicit=explicit_method_options(options)))


def check_runs(configs: Sequence[RunConfig], data_dir: Path | None) -> None:
    """Build every distinct benchmark and method once (then drop them): missing data, a bad benchmark or
    method option or an unavailable device is found before the first run trains, not between runs."""
    seen = set()
    for cfg in configs:
        key = json.dumps([cfg.benchmark, cfg.benchmark_options, cfg.method, cfg.method_options, cfg.target,
                          cfg.target_options, cfg.device], sort_keys=True)
        if key not in seen:
            seen.add(key)
            check_device(cfg.device)
            _build(cfg, data_dir)


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
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="write the table as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parse_args_checked(p, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with user_errors(p):  # every run's config, data and options checked before the first one trains
        plan = [run_config(method, bench, seed, iters, args.option)
                for bench in comma_list(args.benchmarks, "--benchmarks", sorted(DEFAULTS))
                for method in comma_list(args.methods, "--methods", sorted(METHODS))
                for iters in ([None] if args.iterations is None else int_list(args.iterations, "--iterations", 1))
                for seed in int_list(args.seeds, "--seeds")]
        check_runs(plan, args.data_dir)
    rows = []
    for cfg in plan:
        bench, method, seed = cfg.benchmark, cfg.method, cfg.seed
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
