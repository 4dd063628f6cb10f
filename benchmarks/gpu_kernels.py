"""Speed of the fused Triton kernels for interval linear layers, and of IBP end to end, on a CUDA GPU.

Run ``python -m benchmarks.gpu_kernels [--full] [--dtype float32] [--json out.json]``. Without a CUDA
device it prints one line saying so and times nothing. Every number of the printed tables comes from
one run of this script.

Timing: every operation is warmed up, then timed ``--repeats`` times with CUDA events around the
call (``torch.cuda.Event``, elapsed GPU time), the operations of one row interleaved (plain, fused,
reference, plain, ...) so that clock and thermal drift hit them alike; the median is reported.

1. Microbenchmarks of one layer ``[batch, width] -> [batch, width]`` (square weights), forward:

   - ``plain``: one ``F.linear(x, W, b)`` (cuBLAS), the baseline every ratio divides by;
   - ``fused``: ``hypercert::interval_linear_fused``, point weights: one Triton kernel computing
     ``(W c + b, |W| r)``, ``|W|`` taken tile by tile in registers;
   - ``ref``: the torch reference of the same op: ``W.abs()`` materialised, then two cuBLAS GEMMs;
   - ``iw fused`` / ``iw ref``: ``hypercert::interval_linear_iw`` with interval weights (Rump's
     product, three GEMMs) as one Triton kernel, and its torch reference (three ``F.linear`` calls).

   Columns: median time, achieved bandwidth ``GB/s`` = the op's compulsory bytes (every input read
   once, every output written once; the same count for the fused op and its reference, so the
   reference's extra ``|W|`` round trip shows as lower GB/s) over the time, and the ratios fused/plain,
   ref/plain and ref/fused (the fused kernel's speed-up). ``AI`` is the plain GEMM's arithmetic
   intensity (FLOP per compulsory byte): below ``--balance`` (the GPU's ridge point; default ~ an
   A100/H100 for the dtype) the layer is memory bound (``mem``), above it compute bound (``comp``).
   A second table times the backward (the fused backward op against its torch reference and against
   plain ``F.linear``'s backward, all computing input and weight gradients).

2. End to end, on ``certify.models`` networks (``mlp``, ``dm-small``, ``dm-large``, ``cnn7``; the
   settings of ``benchmarks.ibp_speed``, batch from ``--batch``), all on the GPU:

   - plain fwd ``model(x)`` under ``no_grad``; plain f+b: cross-entropy and ``.backward()``;
   - IBP fwd ``model(Interval.linf_ball(x, eps, 0, 1))`` under ``no_grad``, both endpoints materialised;
   - IBP f+b: cross-entropy on the worst-case logits, ``.backward()``.

Targets printed beside the ratios (GPU): interval forward <= 1.3x plain for memory-bound layers and
<= 2.1x for compute-bound ones (two GEMMs where plain runs one); IBP forward+backward <= 2.3x plain
forward+backward; the end-to-end IBP forward is held to the compute-bound 2.1x. The interval-weight op
runs three GEMMs over two weight tensors and has no target. ``~`` marks a median above 1.5x the
fastest round (a disturbed GPU; see ``min_ms`` in ``--json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import parse_args_checked
from benchmarks.ibp_speed import CASES, NOISY, _fmt_ms, _mark, make_ops, setup
from certify.cli_checks import nonnegative_int, positive_float, positive_int
from intervals import ops

__all__ = ["TARGETS", "bench_layer", "bench_model", "main"]

#: Targets: interval / plain ratios (GPU).
TARGETS = {"fwd_mem": 1.3, "fwd_comp": 2.1, "fwdbwd": 2.3}

DEFAULT_BATCHES = (1, 128, 4096)
DEFAULT_WIDTHS = (1024, 4096)
FULL_BATCHES = (1, 16, 128, 1024, 4096)
FULL_WIDTHS = (256, 1024, 4096, 8192)
DEFAULT_MODELS = ("mlp", "dm-small", "dm-large", "cnn7")

#: Rough ridge points (FLOP per byte of DRAM traffic) of an A100/H100: float32 on CUDA cores,
#: float16/bfloat16 on tensor cores.
BALANCE = {"float32": 20.0, "float16": 150.0, "bfloat16": 150.0}

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------- timing
def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Milliseconds of one call: CUDA events on a GPU (perf_counter elsewhere: ``--device cpu`` dry runs)."""
    if device.type == "cuda":

        def run(fn: Callable[[], Any]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return run

    import time

    def run_cpu(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return run_cpu


def time_ops(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Milliseconds per call of every op: ``warmup`` untimed rounds, then ``repeats`` interleaved rounds."""
    timer = _timer(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timer(fn))
    return times


def _summary(times: dict[str, list[float]]) -> dict[str, Any]:
    return {
        "median_ms": {k: statistics.median(v) for k, v in times.items()},
        "min_ms": {k: min(v) for k, v in times.items()},
        "noisy": {k: statistics.median(v) > NOISY * min(v) for k, v in times.items()},
    }


# ---------------------------------------------------------------------------- one layer
def _layer_bytes(batch: int, width: int, item: int) -> dict[str, int]:
    """Compulsory bytes (inputs read once, outputs written once) of each forward and backward."""
    act, w, vec = batch * width, width * width, width
    return {
        "plain": item * (2 * act + w + vec),  # x, W, b -> out
        "point": item * (4 * act + w + vec),  # c, r, W, b -> out_c, out_r
        "iw": item * (4 * act + 2 * w + 2 * vec),  # xc, xr, Wc, Wr, bc, br -> out_c, out_r
        # backward: grads in, saved inputs and weights read, input and weight grads written
        "plain_bwd": item * (3 * act + 2 * w),  # g, x, W -> g_x, g_W
        "point_bwd": item * (6 * act + 2 * w),  # g_c, g_r, c, r, W -> g_c_in, g_r_in, g_W
        "iw_bwd": item * (6 * act + 4 * w),  # g_c, g_r, xc, xr, Wc, Wr -> 2 input grads, 2 weight grads
    }


def bench_layer(
    batch: int, width: int, dtype: torch.dtype, device: torch.device, repeats: int, warmup: int, balance: float
) -> dict[str, Any]:
    """Forward and backward timings of one square layer: plain, fused interval ops and their references."""
    g = torch.Generator(device=device).manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, device=device, dtype=dtype)  # noqa: E731
    pos = lambda *s: torch.rand(*s, generator=g, device=device, dtype=dtype)  # noqa: E731
    x, c, r = mk(batch, width), mk(batch, width), pos(batch, width) * 0.1
    w, wr, b, br = mk(width, width) * width**-0.5, pos(width, width) * 1e-3, mk(width), pos(width) * 1e-3
    gc, gr = mk(batch, width), mk(batch, width)
    need3, need4 = (True, True, True), (True, True, True, True)

    def plain_bwd() -> Any:  # what F.linear's backward computes: grad input and grad weight
        return gc @ w, gc.t() @ x

    with torch.no_grad():
        fwd = {
            "plain": lambda: F.linear(x, w, b),
            "fused": lambda: ops.interval_linear_fused(c, r, w, b, 1.0),
            "ref": lambda: ops.interval_linear_fused_reference(c, r, w, b, 1.0),
            "iw_fused": lambda: ops.interval_linear_iw(c, r, w, wr, b, br),
            "iw_ref": lambda: ops.interval_linear_iw_reference(c, r, w, wr, b, br),
        }
        bwd = {
            "plain": plain_bwd,
            "fused": lambda: ops.interval_linear_fused_backward(gc, gr, c, r, w, 1.0, *need3),
            "ref": lambda: ops.interval_linear_fused_backward_reference(gc, gr, c, r, w, 1.0, *need3),
            "iw_fused": lambda: ops.interval_linear_iw_backward(gc, gr, c, r, w, wr, *need4),
            "iw_ref": lambda: ops.interval_linear_iw_backward_reference(gc, gr, c, r, w, wr, *need4),
        }
        f_times = time_ops(fwd, repeats, warmup, device)
        b_times = time_ops(bwd, repeats, warmup, device)
    item = torch.finfo(dtype).bits // 8
    nbytes = _layer_bytes(batch, width, item)
    intensity = 2 * batch * width * width / nbytes["plain"]
    fwd_res, bwd_res = _summary(f_times), _summary(b_times)
    for res, suffix in ((fwd_res, ""), (bwd_res, "_bwd")):
        med = res["median_ms"]
        res["gb_s"] = {
            "plain": nbytes["plain" + suffix] / med["plain"] / 1e6,
            "fused": nbytes["point" + suffix] / med["fused"] / 1e6,
            "ref": nbytes["point" + suffix] / med["ref"] / 1e6,
            "iw_fused": nbytes["iw" + suffix] / med["iw_fused"] / 1e6,
            "iw_ref": nbytes["iw" + suffix] / med["iw_ref"] / 1e6,
        }
        res["ratio"] = {
            "fused_vs_plain": med["fused"] / med["plain"],
            "ref_vs_plain": med["ref"] / med["plain"],
            "speedup": med["ref"] / med["fused"],
            "iw_fused_vs_plain": med["iw_fused"] / med["plain"],
            "iw_ref_vs_plain": med["iw_ref"] / med["plain"],
            "iw_speedup": med["iw_ref"] / med["iw_fused"],
        }
    bound = "mem" if intensity < balance else "comp"
    return {
        "batch": batch,
        "width": width,
        "dtype": str(dtype).removeprefix("torch."),
        "intensity": intensity,
        "bound": bound,
        "target": TARGETS["fwd_mem" if bound == "mem" else "fwd_comp"],
        "bytes": nbytes,
        "fwd": fwd_res,
        "bwd": bwd_res,
    }


def _fmt_us(ms: float, noisy: bool = False) -> str:
    """Microseconds (single kernels take tens of them), '~' marking a noisy median."""
    return f"{'~' if noisy else ''}{ms * 1e3:.1f}".rjust(8)


def format_layer_table(results: Sequence[dict[str, Any]], part: str) -> str:
    """One row per shape: times (us), GB/s and ratios (``part``: 'fwd' or 'bwd')."""
    head = (
        f"{'batch':>5} {'width':>5} {'AI':>6} {'kind':>4} | {'plain us':>8} {'GB/s':>6} | "
        f"{'fused us':>8} {'GB/s':>6} {'vs plain':>10} | {'ref us':>8} {'GB/s':>6} {'vs plain':>8} {'ref/fused':>9} | "
        f"{'iw fused':>8} {'vs plain':>8} {'iw ref':>8} {'ref/fused':>9}"
    )
    lines = [head, "-" * len(head)]
    for row in results:
        res = row[part]
        med, noisy, gbs, ratio = res["median_ms"], res["noisy"], res["gb_s"], res["ratio"]
        ms = {k: _fmt_us(v, noisy[k]) for k, v in med.items()}
        verdict = _mark(ratio["fused_vs_plain"], row["target"]) if part == "fwd" else f"{ratio['fused_vs_plain']:5.2f}x"
        lines.append(
            f"{row['batch']:>5} {row['width']:>5} {row['intensity']:6.1f} {row['bound']:>4} | "
            f"{ms['plain']} {gbs['plain']:6.0f} | {ms['fused']} {gbs['fused']:6.0f} {verdict:>10} | "
            f"{ms['ref']} {gbs['ref']:6.0f} {ratio['ref_vs_plain']:7.2f}x {ratio['speedup']:8.2f}x | "
            f"{ms['iw_fused']} {ratio['iw_fused_vs_plain']:7.2f}x {ms['iw_ref']} {ratio['iw_speedup']:8.2f}x"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- end to end
def bench_model(key: str, batch: int | None, device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    """Plain and IBP forward / forward+backward of one ``benchmarks.ibp_speed`` case on ``device``."""
    case = CASES[key]
    model, x, y = setup(case, batch)
    model, x, y = model.to(device), x.to(device), y.to(device)
    fns = make_ops(case, model, x, y)
    res = _summary(time_ops(fns, repeats, warmup, device))
    med = res["median_ms"]
    res.update(
        model=case.model,
        label=case.label,
        input=case.input_desc,
        batch=x.shape[0],
        eps=case.eps,
        ratio={"fwd": med["ibp_fwd"] / med["plain_fwd"], "fwdbwd": med["ibp_fwdbwd"] / med["plain_fwdbwd"]},
    )
    return res


def format_model_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per model: plain and IBP times and the IBP/plain ratios with target verdicts."""
    head = (
        f"{'model':<20} {'input':>8} {'batch':>5} | {'fwd ms':>8} {'IBP ms':>8} {'ratio':>10} | "
        f"{'f+b ms':>8} {'IBP ms':>8} {'ratio':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        m = {k: _fmt_ms(v, r["noisy"][k]) for k, v in r["median_ms"].items()}
        lines.append(
            f"{r['label']:<20} {r['input']:>8} {r['batch']:>5} | {m['plain_fwd']} {m['ibp_fwd']} "
            f"{_mark(r['ratio']['fwd'], TARGETS['fwd_comp']):>10} | {m['plain_fwdbwd']} {m['ibp_fwdbwd']} "
            f"{_mark(r['ratio']['fwdbwd'], TARGETS['fwdbwd']):>10}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_kernels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--full", action="store_true",
        help=f"all layer shapes: batches {FULL_BATCHES} x widths {FULL_WIDTHS} "
        f"(default: batches {DEFAULT_BATCHES} x widths {DEFAULT_WIDTHS})",
    )
    p.add_argument("--batches", type=positive_int, nargs="+", default=None, metavar="B",
                   help="layer batch sizes (overrides)")
    p.add_argument("--widths", type=positive_int, nargs="+", default=None, metavar="W",
                   help="layer widths (overrides)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="layer dtype (default float32)")
    p.add_argument(
        "--balance", type=positive_float, default=None,
        help="FLOP/byte ridge point separating memory- from compute-bound layers (default: 20 for float32, "
        "150 for float16/bfloat16, roughly an A100/H100)",
    )
    p.add_argument(
        "--models", nargs="*", default=list(DEFAULT_MODELS), choices=sorted(CASES), metavar="MODEL",
        help=f"end-to-end cases, from {', '.join(CASES)} (default: {' '.join(DEFAULT_MODELS)}; none: skip)",
    )
    p.add_argument("--batch", type=positive_int, default=None,
                   help="end-to-end batch size (default: each case's, 64-128)")
    p.add_argument("--no-layers", action="store_true", help="skip the layer microbenchmarks")
    p.add_argument("--repeats", type=positive_int, default=30,
                   help="timed rounds per operation (median reported; default 30)")
    p.add_argument("--warmup", type=nonnegative_int, default=5,
                   help="untimed rounds first (compiles the kernels; default 5)")
    p.add_argument("--json", type=Path, default=None, help="also write every number as JSON here")
    # Dry runs of the script's own code without a GPU (the fused ops then run their torch reference).
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    return parse_args_checked(p, argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print the tables (and optionally write JSON); returns 0."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks.gpu_kernels: no CUDA device available, so nothing was timed.")
        return 0
    dtype = DTYPES[args.dtype]
    balance = args.balance if args.balance is not None else BALANCE[args.dtype]
    batches = args.batches or (FULL_BATCHES if args.full else DEFAULT_BATCHES)
    widths = args.widths or (FULL_WIDTHS if args.full else DEFAULT_WIDTHS)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    meta = {
        "torch": torch.__version__,
        "device": gpu,
        "python": platform.python_version(),
        "fused_kernels": ops.cuda_kernels_registered(),
        "timing": f"median of {args.repeats} interleaved rounds after {args.warmup} warm-up rounds (CUDA events)",
        "bytes": "compulsory traffic: every input read once, every output written once",
        "balance_flop_per_byte": balance,
        "targets": TARGETS,
    }
    print(f"hypercert GPU kernel benchmark | torch {meta['torch']} | {gpu} | layer dtype {args.dtype}")
    print(f"timing: {meta['timing']}")
    if device.type == "cuda" and not meta["fused_kernels"]:
        print("note: the Triton kernels are not registered (is triton installed?): 'fused' runs the torch reference")
    layers: list[dict[str, Any]] = []
    if not args.no_layers:
        for batch in batches:
            for width in widths:
                print(f"  layer {batch} x {width} ...", file=sys.stderr, flush=True)
                layers.append(bench_layer(batch, width, dtype, device, args.repeats, args.warmup, balance))
        print(f"\nInterval linear layer, forward ([batch, width] -> [batch, width], {args.dtype}):")
        print(format_layer_table(layers, "fwd"))
        print("\nInterval linear layer, backward (input and weight gradients):")
        print(format_layer_table(layers, "bwd"))
        print(
            f"us = median microseconds; AI = plain GEMM FLOP/byte; mem/comp: below/above {balance:g}; "
            f"GB/s = compulsory bytes / median time. Targets: fused/plain <= {TARGETS['fwd_mem']}x (mem), "
            f"<= {TARGETS['fwd_comp']}x (comp); iw: no target."
        )
    models: list[dict[str, Any]] = []
    for key in args.models:
        print(f"  model {key} ...", file=sys.stderr, flush=True)
        models.append(bench_model(key, args.batch, device, args.repeats, args.warmup))
    if models:
        print("\nIBP end to end (float32), ratios to the plain passes on the same GPU:")
        print(format_model_table(models))
        print(
            f"targets: IBP fwd <= {TARGETS['fwd_comp']}x plain fwd; IBP f+b <= {TARGETS['fwdbwd']}x plain f+b "
            f"('ok' / 'MISS'); '~' = median > {NOISY}x the fastest round"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "layers": layers, "models": models}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
