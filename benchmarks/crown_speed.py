"""Speed of CROWN and CROWN-IBP against interval bound propagation (IBP), on CPU.

Run ``python -m benchmarks.crown_speed [--batch 128] [--threads N] [--repeats R] [--json out.json]
[--models dm-small,mlp] [--ibp-train-steps 600] [--weights PATH]``. Every number of the printed table
comes from one run of this script:

* **time**: for each model, three bound computations under ``torch.no_grad()``, each warmed up and then
  timed ``--repeats`` times with ``time.perf_counter``, interleaved (IBP, CROWN-IBP, CROWN, IBP, ...) so
  that drifts in clock speed and in the load of the machine hit all three alike; the median is reported
  (``~`` marks a median above 1.5x its fastest round: a noisy machine). All three bound the outputs over
  the same box ``[x - eps, x + eps] ∩ [0, 1]``:

  - IBP: ``model(Interval.linf_ball(x, eps, 0, 1))``, both output endpoints materialised;
  - CROWN-IBP: :func:`certify.crown.crown_bounds` with ``method="crown-ibp"`` (intermediate bounds by IBP);
  - CROWN: ``method="crown"`` (intermediate bounds by CROWN: the expensive part, one backward pass per
    unstable neuron of every ReLU layer after the first, batched and chunked).

  The ratio column is CROWN's median over IBP's median from the same run. The CPU time of this process
  (``time.process_time``) is printed and saved beside the wall clock: on a machine shared with other jobs
  it is the steadier of the two.
* **unstable neurons**: per ReLU layer, the mean over the batch of the neurons whose interval bounds
  straddle zero (``l < 0 < u``): the neurons CROWN bounds by a backward pass of their own (the first ReLU
  layer, after a single affine map, needs none: IBP is exact there). This is what CROWN's cost grows with.
  A randomly initialised network has many (DM-small at eps 0.1: every neuron of its second conv layer); a
  certifiably trained one few: ``--ibp-train-steps N`` first trains the model for ``N`` steps of IBP
  training on MNIST (Adam 1e-3, batch 128, eps ramped to the case's eps over the first half, loss
  ``(CE(clean) + CE(worst case)) / 2``), ``--weights`` loads a state dict instead.

Inputs: MNIST test images for the 1x28x28 models. Without ``--data-dir`` they are looked for in
``../shared/data`` beside the repository, and uniform noise in ``[0, 1]`` is used instead (with a note
on stderr) when they are not there; a ``--data-dir`` given explicitly must hold MNIST (an error
otherwise, never a silent swap of the inputs). The 3x32x32 models always get uniform noise.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import parse_args_checked, user_errors
from certify.cli_checks import error_line, nonnegative_int, positive_int
from certify.crown import crown_bounds
from certify.model_io import load_model
from certify.models import build_model
from intervals import Interval

__all__ = ["CASES", "Case", "OPS", "main", "run_case", "unstable_counts"]

#: The timed bound computations, in the order of the table.
OPS = ("ibp", "crown-ibp", "crown")

#: A timing whose median exceeds this multiple of its fastest round is flagged as noisy ('~').
NOISY = 1.5


@dataclass(frozen=True)
class Case:
    """One benchmark setting: a registered model, its input shape, default batch size and box radius."""

    key: str
    label: str
    model: str
    in_channels: int
    in_size: int
    batch: int
    eps: float


#: The benchmarked settings (the default run uses ``dm-small`` and ``mlp``).
CASES: dict[str, Case] = {
    "mlp": Case("mlp", "MLP 784-100-100-10", "mlp", 1, 28, 128, 0.1),
    "dm-small": Case("dm-small", "DM-small", "dm-small", 1, 28, 128, 0.1),
    "dm-medium": Case("dm-medium", "DM-medium", "dm-medium", 1, 28, 128, 0.1),
    "dm-large": Case("dm-large", "DM-large", "dm-large", 3, 32, 16, 2 / 255),
    "cnn7": Case("cnn7", "CNN7 (BN, eval)", "cnn7", 3, 32, 16, 2 / 255),
}
DEFAULT_MODELS = ("dm-small", "mlp")


# ----------------------------------------------------------------------------------------------- data
def default_data_dir() -> Path:
    """``../shared/data`` beside the repository (where this project keeps MNIST)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def _mnist(data_dir: Path | None, split: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """MNIST ``(x, y)`` of ``split`` from ``data_dir``; ``None`` without a ``data_dir``. Missing or corrupt
    files raise (``OSError``/``ValueError``): :func:`resolve_data_dir` decides beforehand whether to use them."""
    if data_dir is None:
        return None
    from certify.data import load_dataset

    ds = load_dataset("mnist", data_dir, split=split)
    return ds.x, ds.y


def resolve_data_dir(data_dir: Path | None, splits: Sequence[str]) -> Path | None:
    """The folder MNIST is read from, checked now: an explicit ``data_dir`` must hold the ``splits``
    (``ValueError`` otherwise); without one, :func:`default_data_dir` is used when it holds them, else
    ``None`` (uniform inputs) with a note on stderr."""
    if not splits:
        return data_dir
    folder = data_dir if data_dir is not None else default_data_dir()
    try:
        for split in splits:
            _mnist(folder, split)
    except (OSError, ValueError) as exc:
        if data_dir is not None:
            raise ValueError(f"--data-dir {data_dir}: cannot read MNIST ({error_line(exc)})") from None
        print(f"note: no readable MNIST under {folder} ({error_line(exc)}); the 1x28x28 models are timed on "
              "uniform random inputs (give --data-dir to require MNIST)", file=sys.stderr)
        return None
    return folder


def inputs(case: Case, batch: int, data_dir: Path | None, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``batch`` inputs of ``case`` and where they come from (``"mnist"`` or ``"uniform"``)."""
    if (case.in_channels, case.in_size) == (1, 28):
        data = _mnist(data_dir, "test")
        if data is not None:
            return data[0][:batch].float(), "mnist"
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, case.in_channels, case.in_size, case.in_size, generator=gen), "uniform"


def ibp_train(model: nn.Module, case: Case, steps: int, data_dir: Path | None, seed: int = 0) -> None:
    """``steps`` steps of plain IBP training on MNIST (see the module docstring), in place."""
    data = _mnist(data_dir, "train") if (case.in_channels, case.in_size) == (1, 28) else None
    if data is None:
        where = data_dir if data_dir is not None else default_data_dir()
        raise ValueError(f"--ibp-train-steps needs MNIST under --data-dir ({where}) and a 1x28x28 model")
    x_all, y_all = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (128,), generator=gen)
        x, y = x_all[idx].float(), y_all[idx]
        eps = case.eps * min(1.0, step / max(1.0, steps / 2))
        out = model(Interval.linf_ball(x, eps, lo=0.0, hi=1.0))
        worst = torch.where(F.one_hot(y, out.shape[-1]).bool(), out.lower, out.upper)
        loss = (F.cross_entropy(model(x), y) + F.cross_entropy(worst, y)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


# -------------------------------------------------------------------------------------------- timing
def unstable_counts(model: nn.Sequential, box: Interval) -> list[float]:
    """Per ReLU layer (top-level ones), the mean number of neurons per sample whose interval bounds straddle 0."""
    counts = []
    h = box
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.ReLU):
                counts.append(float(((h.lower < 0) & (h.upper > 0)).flatten(1).sum(1).float().mean()))
            h = layer(h)
    return counts


def make_ops(model: nn.Module, box: Interval) -> dict[str, Callable[[], Any]]:
    """The three timed bound computations as closures."""

    def ibp() -> Any:
        out = model(box)
        return out.lower, out.upper

    return {
        "ibp": ibp,
        "crown-ibp": lambda: crown_bounds(model, box, method="crown-ibp"),
        "crown": lambda: crown_bounds(model, box, method="crown"),
    }


def time_ops(
    ops: dict[str, Callable[[], Any]], repeats: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU (this process) seconds of each op over ``repeats`` interleaved rounds, after
    ``warmup`` untimed ones. CPU time is what other processes on a shared machine disturb least."""
    wall: dict[str, list[float]] = {k: [] for k in ops}
    cpu: dict[str, list[float]] = {k: [] for k in ops}
    with torch.no_grad():
        for r in range(warmup + repeats):
            for name, op in ops.items():
                t0, c0 = time.perf_counter(), time.process_time()
                op()
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if r >= warmup:
                    wall[name].append(dt)
                    cpu[name].append(dc)
    return wall, cpu


def load_weights(case: Case, weights: Path) -> nn.Module:
    """``case``'s model with the state dict in ``weights`` (a bare or hypercert weights file); a missing,
    corrupt or mismatched file is a ``ValueError`` naming it (:func:`certify.model_io.load_model`)."""
    return load_model(weights, case.model, in_channels=case.in_channels, in_size=case.in_size, num_classes=10)


def run_case(
    case: Case,
    batch: int,
    repeats: int,
    warmup: int,
    data_dir: Path | None = None,
    train_steps: int = 0,
    weights: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time IBP, CROWN-IBP and CROWN on ``case`` and count its unstable neurons."""
    torch.manual_seed(seed)
    model = build_model(case.model, case.in_channels, case.in_size, 10)
    weights_desc = "random init"
    if weights is not None:
        model = load_weights(case, weights)
        weights_desc = f"loaded from {weights}"
    elif train_steps:
        ibp_train(model, case, train_steps, data_dir, seed)
        weights_desc = f"{train_steps} steps of IBP training"
    model.eval()
    x, source = inputs(case, batch, data_dir, seed)
    box = Interval.linf_ball(x, case.eps, lo=0.0, hi=1.0)
    times, cpu = time_ops(make_ops(model, box), repeats, warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "case": asdict(case),
        "batch": batch,
        "inputs": source,
        "weights": weights_desc,
        "seconds": times,
        "median_s": med,
        "cpu_seconds": cpu,
        "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "noisy": {k: med[k] > NOISY * min(v) for k, v in times.items()},
        "crown_over_ibp": med["crown"] / med["ibp"],
        "unstable_per_relu": unstable_counts(model, box),
    }


# ------------------------------------------------------------------------------------------- report
def _fmt_s(seconds: float, noisy: bool) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s" + ("~" if noisy else "")


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of a run."""
    head = (
        "| model | batch | eps | weights | IBP | CROWN-IBP | CROWN | CROWN / IBP | unstable per ReLU layer (IBP) |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for r in results:
        med, noisy = r["median_s"], r["noisy"]
        unstable = " / ".join(f"{u:.0f}" for u in r["unstable_per_relu"])
        rows.append(
            f"| {r['case']['label']} | {r['batch']} | {r['case']['eps']:.4g} | {r['weights']} | "
            + " | ".join(_fmt_s(med[k], noisy[k]) for k in OPS)
            + f" | {r['crown_over_ibp']:.0f}x | {unstable} |"
        )
    return "\n".join([head, *rows])


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.crown_speed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=positive_int, default=None, help="batch size (default: each case's, 128 for MNIST)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed rounds per op (median reported)")
    p.add_argument("--warmup", type=nonnegative_int, default=1, help="untimed rounds first")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where mnist/ lies; must hold MNIST when given (default: ../shared/data beside the\n"
                   "repository if MNIST is there, else uniform random inputs, with a note)")
    p.add_argument("--ibp-train-steps", type=nonnegative_int, default=0,
                   help="IBP-train each model first (MNIST models)")
    p.add_argument("--weights", type=Path, default=None, help="state dict to load (one model only)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parse_args_checked(p, argv)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CASES]
    if unknown or not keys:
        p.error(f"unknown model(s) {unknown}; available: {', '.join(CASES)}")
    if args.weights is not None and len(keys) != 1:
        p.error("--weights needs exactly one model")
    args.models = keys
    mnist_models = [k for k in keys if (CASES[k].in_channels, CASES[k].in_size) == (1, 28)]
    with user_errors(p):  # before any timing: the weights fit, and the inputs are what the table will say
        if args.weights is not None:
            load_weights(CASES[keys[0]], args.weights)
        if args.ibp_train_steps and len(mnist_models) < len(keys):
            raise ValueError("--ibp-train-steps trains on MNIST: use it with the 1x28x28 models only "
                             f"({', '.join(k for k, c in CASES.items() if c.in_size == 28)})")
        splits = (["test"] + (["train"] if args.ibp_train_steps else [])) if mnist_models else []
        args.data_dir = resolve_data_dir(args.data_dir, splits)
        if args.ibp_train_steps and args.data_dir is None:
            raise ValueError(f"--ibp-train-steps needs MNIST: none under {default_data_dir()}; give --data-dir")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    data_dir = args.data_dir
    results = []
    for key in args.models:
        case = CASES[key]
        batch = args.batch or case.batch
        results.append(
            run_case(case, batch, args.repeats, args.warmup, data_dir, args.ibp_train_steps, args.weights)
        )
    meta = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "command": "python -m benchmarks.crown_speed " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(format_table(results))
    print(
        f"\nmedians of {args.repeats} interleaved rounds (wall clock), torch {meta['torch']}, {args.threads} "
        "thread(s); ~: median > 1.5x the fastest round (noisy machine). CPU time of this process (medians): "
        + "; ".join(
            f"{r['case']['label']}: " + ", ".join(f"{k} {_fmt_s(r['median_cpu_s'][k], False)}" for k in OPS)
            for r in results
        )
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
