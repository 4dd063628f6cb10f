"""``certify-robustness``: how robust is a model, provably and empirically, on a real dataset.

Loads a model (weights only, architecture from the registry or a ``module:function`` factory), a test
set, and reports clean accuracy, robust accuracy under attacks and certified accuracy under bound
methods for every eps, with the consistency law checked on every sample. Without ``--model`` it first
trains a small demo model (IBP-trained MLP) on the dataset's training split, so it runs on a fresh,
offline machine on scikit-learn's bundled digits.

Exit codes: 0 success; 1 soundness violation (a certified sample broken by an attack or misclassified);
2 bad input (unknown architecture or dataset, corrupt or mismatched model file, a model that does not
fit the data or uses a function without an interval rule, eps < 0, an unavailable device, an output
that would overwrite an input, ...): one line on stderr, before any evaluation starts.
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

from .attacks import ATTACKS, AttackConfig
from .bounds import METHODS, margin_bounds
from .cli_checks import USER_ERRORS, check_device, error_line, refuse_overwriting_inputs
from .continual_runs import is_run_dir, load_run, run_files
from .data import DATASETS, Dataset, is_tensor_file, load_dataset
from .evaluation import SoundnessViolation, evaluate, split_methods
from .model_io import check_output_file, check_outputs, load_model, save_model
from .models import MODELS, build_model
from .training import TrainConfig, train_certified

__all__ = ["main", "build_parser"]

#: eps used when none is given: a radius at which the demo / reference models have something to show.
DEFAULT_EPS = {"digits": (0.05,), "mnist": (0.1,), "fashion-mnist": (0.1,)}
DEFAULT_METHODS = "ibp,crown,pgd,autoattack"

EXAMPLES = """\
examples:
  certify-robustness                                   # demo: train a small model on digits, certify it
  certify-robustness --model dm_small.pt --arch dm-small --dataset mnist --data-dir ../shared/data \\
      --eps 0.1 --methods ibp,crown,pgd,autoattack --n 1000 --out report.json
  certify-robustness --model net.safetensors --arch mypkg.nets:build --dataset data.npz --eps 0.01,0.02
  certify-robustness --model runs/pm-shield --task all --data-dir ../shared/data --eps 0.01 --methods ibp,pgd

methods: bound methods give certificates (sound: a certified sample provably keeps its label in the
whole L-inf ball): {bounds}; attacks give empirical robustness (an upper bound on the true robust
accuracy): {attacks}. 'autoattack' is AutoAttack's standard version (apgd-ce, apgd-t, fab-t, square);
'aa-fast' is its faster apgd-ce + apgd-t subset.

exit codes: 0 ok, 1 soundness violation (certified but broken or misclassified), 2 bad input (one line
on stderr, before any evaluation: also a model that does not fit the data or uses a function without
an interval rule, an unavailable --device, an output path naming the --model file or a file of its run).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep its one-line style
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _eps_list(values: Sequence[str] | None) -> list[float] | None:
    if not values:
        return None
    out = []
    for v in values:
        for part in v.split(","):
            if part.strip():
                try:
                    e = float(part)
                except ValueError:
                    raise ValueError(f"--eps: not a number: {part!r}") from None
                if not e >= 0 or e == float("inf"):
                    raise ValueError(f"--eps must be a finite number >= 0, got {part.strip()}")
                out.append(e)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also documents every option: ``certify-robustness --help``)."""
    p = _Parser(
        prog="certify-robustness",
        description="Clean, empirical (attacks) and certified (IBP/CROWN) robustness of a classifier\n"
        "against L-inf perturbations, with the consistency law checked on every sample.",
        epilog=EXAMPLES.format(bounds=", ".join(METHODS), attacks=", ".join(ATTACKS)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", type=Path, help="weights file (.pt via torch.load(weights_only=True), or "
                   ".safetensors); omit to train a demo model on the dataset's training split")
    g.add_argument("--arch", help=f"architecture: one of {', '.join(MODELS)}, or 'module:function' (a factory "
                   "returning the nn.Module); default: the registered name recorded in the file (a factory the file "
                   "records is used only when named here)")
    g.add_argument("--num-classes", type=int, help="classes, if the architecture needs it (default: dataset's)")
    g.add_argument("--save-model", type=Path, help="where to save the demo model when --model is omitted")
    g.add_argument("--task", help="with --model RUN_DIR (a continual-train run): which tasks to evaluate, 'all' "
                   "(default), N, N,M or N-M; each task's network and test set come from the run")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help=f"one of {', '.join(DATASETS)}, or a .pt/.npz file with "
                   "x (N,C,H,W) in [0,1] and y (default: digits, bundled with scikit-learn)")
    g.add_argument("--data-dir", type=Path, default=None, help="folder holding the dataset files "
                   "(default: $HYPERCERT_DATA, else ./data)")
    g.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    g.add_argument("--split", help="split to evaluate (default test)")
    g.add_argument("--n", type=int, help="evaluate the first N samples (default: all)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eps", action="append", help="L-inf radius in input units; repeat or comma-separate "
                   "(default: 0.05 for digits, 0.1 for (fashion-)mnist)")
    g.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma list of bound methods and attacks "
                   f"(default {DEFAULT_METHODS})")
    g.add_argument("--batch-size", type=int, default=128, help="samples per batch (default 128)")
    g.add_argument("--pgd-steps", type=int, default=40, help="PGD steps (default 40)")
    g.add_argument("--pgd-restarts", type=int, default=1, help="PGD random restarts (default 1)")
    g.add_argument("--seed", type=int, default=0, help="seed of attacks and of the demo model (default 0)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N (default cpu)")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    g.add_argument("--out", type=Path, help="write the report (settings, summary, per-sample records) as JSON")
    g.add_argument("--csv", type=Path, help="write per-sample records as CSV (a continual run: one file per task, "
                   "NAME_taskK.csv)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _demo_model(data_name: str, train: Dataset, seed: int, progress: bool, eps: float) -> torch.nn.Module:
    """A small MLP, IBP-trained on ``train`` at about twice the smallest evaluation eps."""
    torch.manual_seed(seed)
    c, s, _ = train.input_shape
    model = build_model("mlp", in_channels=c, in_size=s, num_classes=train.num_classes)
    eps_train = min(max(2 * eps, 0.02), 0.3)
    cfg = TrainConfig(eps_train=eps_train, epochs=30 if len(train) < 5000 else 10, batch_size=64, lr=2e-3,
                      ramp_epochs=10 if len(train) < 5000 else 4, lo=train.lo, hi=train.hi, seed=seed)
    print(f"no --model: training a demo {data_name} model (mlp, IBP at eps_train={eps_train:g}, "
          f"{cfg.epochs} epochs on {len(train)} samples) ...", flush=True)
    t0 = time.perf_counter()
    train_certified(model, train.x, train.y, cfg, progress=progress)
    print(f"trained in {time.perf_counter() - t0:.1f} s", flush=True)
    return model


def _check_output_paths(args: argparse.Namespace, tasks: Sequence[int] = ()) -> None:
    """Refuse unusable output paths before the evaluation, not after it (nothing is lost).

    ``tasks``: a continual run's tasks, whose per-task CSVs (:func:`_task_csv`) are the files written.
    """
    check_output_file(args.csv, "--csv", "records.csv")  # a continual run's per-task names derive from it
    outputs = {"--out": (args.out, "report.json"), "--save-model": (getattr(args, "save_model", None), "model.pt")}
    if args.csv is not None and tasks:
        outputs.update({f"--csv (task {t})": (_task_csv(args.csv, t), "records.csv") for t in tasks})
    else:
        outputs["--csv"] = (args.csv, "records.csv")
    check_outputs(outputs)
    # nothing is lost: an output may not overwrite the model file or a file of the run it came from
    protected = run_files(args.model) if args.model is not None and is_run_dir(args.model) else ()
    refuse_overwriting_inputs({flag: path for flag, (path, _) in outputs.items()}, {"--model": args.model},
                              protected_names=protected)


def _task_csv(path: Path, task: int) -> Path:
    """The per-task CSV of a continual run: ``records.csv`` -> ``records_task3.csv``."""
    return path.with_name(f"{path.stem}_task{task}{path.suffix or '.csv'}")


def run(args: argparse.Namespace) -> int:
    """The command's body; raises on bad input (turned into exit code 2 by :func:`main`)."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    check_device(args.device)
    given = [flag for flag, set_ in (("--dataset", args.dataset is not None), ("--split", args.split is not None),
                                      ("--download", args.download), ("--arch", args.arch is not None),
                                      ("--num-classes", args.num_classes is not None)) if set_]
    args.dataset = "digits" if args.dataset is None else args.dataset
    args.split = "test" if args.split is None else args.split
    if args.model is not None and is_run_dir(args.model) and given:
        raise ValueError(f"{', '.join(given)}: not used with --model RUN_DIR (a continual run: each task's network "
                         "and test set come from the run); drop them")
    if args.model is not None and args.save_model is not None:
        raise ValueError("--save-model saves the demo model trained when --model is omitted; with --model there is "
                         "nothing to save")
    eps_list = _eps_list(args.eps) or list(DEFAULT_EPS.get(args.dataset, (0.1,)))
    bound_methods, attacks = split_methods([m for m in args.methods.split(",") if m.strip()])
    for name, v in (("--n", args.n), ("--batch-size", args.batch_size), ("--pgd-steps", args.pgd_steps),
                    ("--pgd-restarts", args.pgd_restarts)):
        if v is not None and v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if args.model is not None and is_run_dir(args.model):
        return _run_continual(args, eps_list, bound_methods, attacks)
    _check_output_paths(args)
    if args.task is not None:
        raise ValueError("--task needs --model RUN_DIR (a continual-train run directory)")
    if args.model is None and is_tensor_file(args.dataset):
        raise ValueError(f"--dataset {args.dataset} is one set of samples with no training split: a demo model "
                         "would be trained on the samples it is then scored on; pass --model (a trained model)")
    data = load_dataset(args.dataset, args.data_dir, split=args.split, download=args.download)
    if args.n is not None:
        data = data.subset(args.n)
    _check_eps_range(eps_list, data.lo, data.hi)
    progress = not args.no_progress
    if args.model is None:
        train = load_dataset(args.dataset, args.data_dir, split="train", download=args.download)
        model = _demo_model(args.dataset, train, args.seed, progress, min(eps_list) or 0.01)
        if args.save_model:
            c, s, _ = train.input_shape
            save_model(model, args.save_model, arch="mlp",
                       arch_kwargs={"in_channels": c, "in_size": s, "num_classes": train.num_classes})
            print(f"demo model saved to {args.save_model}")
    else:
        c, s, _ = data.input_shape
        kwargs: dict[str, Any] = {}
        if args.arch in MODELS:
            kwargs = {"in_channels": c, "in_size": s, "num_classes": args.num_classes or data.num_classes}
        model = load_model(args.model, args.arch, **kwargs)
    model = model.to(args.device).eval()
    x, y = data.x.to(args.device), data.y.to(args.device)
    _probe(model, x, y, eps_list, bound_methods, data.lo, data.hi, str(args.dataset))
    cfg = AttackConfig(steps=args.pgd_steps, restarts=args.pgd_restarts, seed=args.seed, batch_size=args.batch_size)
    print(f"evaluating {len(y)} {args.dataset} {args.split} samples at eps {', '.join(f'{e:g}' for e in eps_list)}: "
          f"bounds [{', '.join(bound_methods) or '-'}], attacks [{', '.join(attacks) or '-'}]", flush=True)
    t0 = time.perf_counter()
    try:
        report = evaluate(model, (x, y), eps_list, bound_methods + attacks, lo=data.lo, hi=data.hi,
                          batch_size=args.batch_size, attack_config=cfg, progress=progress)
    except SoundnessViolation as exc:
        print(f"SOUNDNESS VIOLATION: {exc}", file=sys.stderr)
        return 1
    report.settings.update({"dataset": args.dataset, "split": args.split, "model": str(args.model or "demo"),
                            "arch": args.arch, "seconds": round(time.perf_counter() - t0, 2)})
    print()
    print(report.table())
    print(f"\n(accuracies in %; certified <= robust under every attack <= clean on every sample; "
          f"{report.settings['seconds']} s)")
    if args.out:
        report.to_json(args.out)
        print(f"report written to {args.out}")
    if args.csv:
        report.to_csv(args.csv)
        print(f"per-sample records written to {args.csv}")
    return 0


def _run_continual(args: argparse.Namespace, eps_list: list[float], bound_methods: list[str],
                   attacks: list[str]) -> int:
    """Every requested task of a continual run: its own network and test set, one report each."""
    tasks = load_run(args.model, args.task, args.data_dir)
    _check_output_paths(args, [tm.task for tm in tasks])
    for tm in tasks:  # every task checked before the first is evaluated: nothing is lost to a late error
        _check_eps_range(eps_list, tm.data.lo, tm.data.hi)
        tm.model.to(args.device)
        _probe(tm.model, tm.data.x.to(args.device), tm.data.y.to(args.device), eps_list, bound_methods,
               tm.data.lo, tm.data.hi, f"task {tm.task}")
    cfg = AttackConfig(steps=args.pgd_steps, restarts=args.pgd_restarts, seed=args.seed, batch_size=args.batch_size)
    reports = {}
    for tm in tasks:
        data = tm.data.subset(args.n) if args.n is not None else tm.data
        print(f"task {tm.task}: {len(data)} test samples", flush=True)
        try:
            report = evaluate(tm.model.to(args.device), (data.x.to(args.device), data.y.to(args.device)), eps_list,
                              bound_methods + attacks, lo=data.lo, hi=data.hi, batch_size=args.batch_size,
                              attack_config=cfg, progress=not args.no_progress)
        except SoundnessViolation as exc:
            print(f"SOUNDNESS VIOLATION on task {tm.task}: {exc}", file=sys.stderr)
            return 1
        reports[tm.task] = report
        print(report.table(), flush=True)
        if args.csv:
            print(f"per-sample records of task {tm.task} written to {report.to_csv(_task_csv(args.csv, tm.task))}")
    print("\nmean over tasks (%):")
    for e in eps_list:
        rows = [next(r for r in rep.summary() if r["eps"] == e) for rep in reports.values()]
        parts = [f"clean {100 * sum(r['clean'] for r in rows) / len(rows):.2f}"]
        parts += [f"{a} {100 * sum(r['robust'][a] for r in rows) / len(rows):.2f}" for a in attacks]
        parts += [f"certified:{m} {100 * sum(r['certified'][m] for r in rows) / len(rows):.2f}" for m in bound_methods]
        print(f"  eps {e:g}: " + ", ".join(parts))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"run": str(args.model), "tasks": {t: r.to_dict() for t, r in reports.items()}},
                                       indent=2) + "\n")
        print(f"report written to {args.out}")
    return 0


def _check_eps_range(eps_list: Sequence[float], lo: float, hi: float) -> None:
    """Refuse an eps wider than the input range: its ball covers every input and certifies nothing."""
    too_big = [e for e in eps_list if e > hi - lo]
    if too_big:
        raise ValueError(f"--eps {too_big[0]:g} exceeds the data's range [{lo:g}, {hi:g}]: the ball would cover "
                         "every input (eps is in input units)")


def _probe(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float],
           bound_methods: Sequence[str], lo: float, hi: float, what: str) -> None:
    """Run the model and every bound method on one sample, so that a model that does not fit the data or
    cannot be bounded is a one-line error now, not a traceback (or an error) mid-evaluation."""
    try:
        with torch.no_grad():
            out = model(x[:1])
    except (RuntimeError, TypeError) as exc:  # torch's shape/dtype mismatch errors, in the user's model
        raise ValueError(f"the model does not fit the inputs of {what} (shape {tuple(x.shape[1:])}): "
                         f"{error_line(exc)}") from None
    if out.dim() != 2 or out.shape[1] < int(y.max()) + 1:
        raise ValueError(f"the model's output shape {tuple(out.shape)} does not fit the labels of {what} "
                         f"(classes 0..{int(y.max())})")
    for m in bound_methods:
        try:
            with torch.no_grad():
                margin_bounds(model, x[:1], y[:1], max(eps_list), m, lo, hi)
        except USER_ERRORS as exc:  # a function or layer without a rule; anything else is a bug: a traceback
            raise ValueError(f"cannot bound the model with {m}: {error_line(exc)}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``certify-robustness``; returns the exit code (0 ok, 1 soundness violation, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except USER_ERRORS as exc:
        print(f"certify-robustness: error: {error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
