"""Speed and memory of interval bound propagation (IBP) against plain passes, on CPU.

Run ``python -m benchmarks.ibp_speed [--repeats N] [--threads T] [--json out.json] [--models ...]``.
Every number of the printed table comes from one run of this script:

* **time**: for each model, four operations, each warmed up and then timed ``--repeats`` times
  with ``time.perf_counter``, interleaved (plain fwd, plain f+b, IBP fwd, IBP f+b, plain fwd, ...)
  so drifts in clock speed hit all four alike; the median is reported.

  - plain fwd: ``model(x)`` under ``torch.no_grad()``;
  - plain f+b: ``cross_entropy(model(x), y).backward()`` (parameter gradients);
  - IBP fwd: ``model(Interval.linf_ball(x, eps, 0, 1))`` under ``torch.no_grad()``, both output
    endpoints materialised;
  - IBP f+b: the same box pass with autograd, loss = cross-entropy on the worst-case logits (lower
    bound for the true class, upper bound for the others), ``.backward()``.

* **peak memory** of plain f+b vs IBP f+b, measured for real: each case runs in a fresh
  subprocess (``MALLOC_MMAP_THRESHOLD_`` pinned so large blocks go back to the OS on free) that
  runs one warm-up step, trims the heap, resets the kernel's peak-RSS counter (``VmHWM``, via
  ``/proc/self/clear_refs``; the same counter ``getrusage`` reports as ``ru_maxrss``), runs one
  full-batch forward+backward and reads the peak. The reported number is the peak resident set
  size (RSS) minus the RSS just before the step. As a cross-check (column "saved x"), the parent
  also sums the bytes of the distinct tensor storages autograd saves for backward
  (``torch.autograd.graph.saved_tensors_hooks``; parameters and the input excluded), the
  activation memory a training step must hold at its peak.

Targets printed beside the ratios: IBP fwd <= 2.0x plain fwd; IBP f+b <= 2.5x plain f+b; peak
memory <= 2.5x.

``--layers`` adds a per-layer table (each top-level layer's forward timed alone on its own input,
plain vs IBP): where a model's ratio comes from. ``--tuned-malloc`` times with glibc's mmap and trim
thresholds raised (:func:`tune_malloc`), which spares both passes the page faults of freshly mapped
buffers; ``--bf16-radius`` and ``--compiled`` add the opt-in modes' rows.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import parse_args_checked
from certify.cli_checks import positive_int
from certify.models import build_model
from intervals import Interval, bf16_radius, cached_abs_weights
from intervals.compile import compile_bounds

__all__ = ["CASES", "Case", "main", "memory_case", "run_case", "time_case", "worst_case_logits"]

#: Targets: IBP / plain ratios the toolkit aims to stay under.
TARGETS = {"fwd": 2.0, "fwdbwd": 2.5, "memory": 2.5}

OPS = ("plain_fwd", "plain_fwdbwd", "ibp_fwd", "ibp_fwdbwd")

#: A timing whose median exceeds this multiple of its fastest round is flagged as noisy ('~').
NOISY = 1.5


@dataclass(frozen=True)
class Case:
    """One benchmark setting: a registered model, its input shape, batch size and box radius."""

    key: str
    label: str
    model: str
    in_channels: int
    in_size: int
    batch: int
    eps: float

    @property
    def input_desc(self) -> str:
        """``CxHxW`` of one input."""
        return f"{self.in_channels}x{self.in_size}x{self.in_size}"


#: The benchmarked settings (the default run uses all but ``dm-medium``).
CASES: dict[str, Case] = {
    "mlp": Case("mlp", "MLP 784-100-100-10", "mlp", 1, 28, 128, 0.1),
    "dm-small": Case("dm-small", "DM-small", "dm-small", 1, 28, 128, 0.1),
    "dm-medium": Case("dm-medium", "DM-medium", "dm-medium", 1, 28, 128, 0.1),
    "dm-large": Case("dm-large", "DM-large", "dm-large", 3, 32, 64, 2 / 255),
    "cnn7": Case("cnn7", "CNN7 (BN, eval)", "cnn7", 3, 32, 64, 2 / 255),
}
DEFAULT_MODELS = ("mlp", "dm-small", "dm-large", "cnn7")


# ---------------------------------------------------------------------------- the four operations
def worst_case_logits(out: Interval, y: torch.Tensor) -> torch.Tensor:
    """Worst-case logits of an output box: lower bound for the true class ``y``, upper elsewhere."""
    true_class = F.one_hot(y, out.shape[-1]).bool()
    return torch.where(true_class, out.lower, out.upper)


def setup(case: Case, batch: int | None = None, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Model (eval mode, so BatchNorm uses running statistics), inputs in [0, 1] and labels."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(case.model, case.in_channels, case.in_size, 10).eval()
    n = case.batch if batch is None else batch
    x = torch.rand(n, case.in_channels, case.in_size, case.in_size, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return model, x, y


def make_ops(
    case: Case, model: nn.Module, x: torch.Tensor, y: torch.Tensor, compiled: bool = False, bf16: bool = False
) -> dict[str, Callable[[], Any]]:
    """The four timed operations as closures, two more each for ``compiled`` (IBP under
    ``torch.compile``) and ``bf16`` (IBP inside :func:`intervals.bf16_radius`)."""

    def plain_fwd() -> Any:
        with torch.no_grad():
            return model(x)

    def plain_fwdbwd() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def ibp_pair(bounds: Callable[[Interval], Interval]) -> tuple[Callable[[], Any], Callable[[], None]]:
        """IBP forward (no grad) and forward+backward (worst-case CE) through ``bounds``."""

        def fwd() -> Any:
            with torch.no_grad():
                out = bounds(Interval.linf_ball(x, case.eps, lo=0.0, hi=1.0))
                return out.lower, out.upper

        def fwdbwd() -> None:
            model.zero_grad(set_to_none=True)
            out = bounds(Interval.linf_ball(x, case.eps, lo=0.0, hi=1.0))
            F.cross_entropy(worst_case_logits(out, y), y).backward()

        return fwd, fwdbwd

    ibp_fwd, ibp_fwdbwd = ibp_pair(model)
    ops = {"plain_fwd": plain_fwd, "plain_fwdbwd": plain_fwdbwd, "ibp_fwd": ibp_fwd, "ibp_fwdbwd": ibp_fwdbwd}
    if compiled:
        ibpc_fwd, ibpc_fwdbwd = ibp_pair(compile_bounds(model, dynamic=False))
        ibpc_fwd()  # compile outside the timed rounds
        ibpc_fwdbwd()
        ops.update(ibpc_fwd=ibpc_fwd, ibpc_fwdbwd=ibpc_fwdbwd)
    if bf16:
        ibph_fwd, ibph_fwdbwd = ibp_pair(bf16_bounds(model))
        ops.update(ibph_fwd=ibph_fwd, ibph_fwdbwd=ibph_fwdbwd)
    return ops


def bf16_bounds(model: nn.Module) -> Callable[[Interval], Interval]:
    """``box -> model(box)`` with the radius products in bfloat16 (:func:`intervals.bf16_radius`)."""

    def bounds(box: Interval) -> Interval:
        with bf16_radius():
            return model(box)

    return bounds


def bf16_width_ratio(case: Case, model: nn.Module, x: torch.Tensor) -> float:
    """Median over logits of (bf16-radius width) / (float32 width): how much looser the fast bounds are."""
    with torch.no_grad():
        box = Interval.linf_ball(x, case.eps, lo=0.0, hi=1.0)
        ref, fast = model(box), bf16_bounds(model)(box)
    return float(((fast.upper - fast.lower) / (ref.upper - ref.lower)).median())


def time_ops(ops: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of every op: ``warmup`` untimed rounds, then ``repeats`` interleaved rounds."""
    for _ in range(warmup):
        for fn in ops.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in ops}
    for _ in range(repeats):
        for k, fn in ops.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------------------- memory
def saved_for_backward_bytes(case: Case, mode: str) -> int:
    """Bytes of the distinct storages autograd saves in one forward (parameters and input excluded)."""
    model, x, y = setup(case)
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    exclude.add(x.untyped_storage().data_ptr())
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in exclude:
            seen[ptr] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if mode == "plain":
            loss = F.cross_entropy(model(x), y)
        else:
            out = model(Interval.linf_ball(x, case.eps, lo=0.0, hi=1.0))
            loss = F.cross_entropy(worst_case_logits(out, y), y)
    loss.backward()
    return sum(seen.values())


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - non-glibc
        pass


def _memory_child(case: Case, mode: str) -> dict[str, Any]:
    """Runs in a fresh process: peak-RSS increase of one full-batch forward+backward.

    One untimed warm-up step first (kernels, thread pools, lazily built state), then the heap is
    trimmed, the peak-RSS counter reset to the current RSS, and a second step measured.
    """
    model, x, y = setup(case)
    op = make_ops(case, model, x, y)[f"{mode}_fwdbwd"]
    op()
    model.zero_grad(set_to_none=True)
    gc.collect()
    _malloc_trim()
    reset = _reset_peak_rss()
    base = _status_kib("VmRSS") * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    op()
    peak = _status_kib("VmHWM") * 1024 if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "baseline_rss": base,
        "peak_rss": peak,
        "delta": max(0, peak - base),
        "counter": "VmHWM after clear_refs" if reset else "ru_maxrss",
        # Without a reset, an earlier high-water mark may hide this step's peak.
        "reliable": reset or peak > before,
    }


def peak_rss_delta(case: Case, mode: str, threads: int) -> dict[str, Any]:
    """Peak-RSS increase of ``mode`` ('plain' or 'ibp') forward+backward, in a fresh subprocess."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "benchmarks.ibp_speed", "--threads", str(threads)]
    cmd += ["--_memory-child", f"{case.key}:{mode}"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess for {case.key}/{mode} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- one case
def time_case(
    case: Case, repeats: int, warmup: int, compiled: bool = False, cached: bool = False, bf16: bool = False
) -> dict[str, Any]:
    """Median times and IBP/plain ratios of one case, plus the saved-for-backward cross-check.

    ``cached``: also time the IBP forward again inside one :func:`intervals.cached_abs_weights`
    block (many batches through fixed weights: ``|W|`` computed once), as ``ibpk_fwd``.
    ``bf16``: also time IBP with bfloat16 radius products (``ibph_*``, interleaved with the rest).
    """
    model, x, y = setup(case)
    ops = make_ops(case, model, x, y, compiled, bf16)
    times = time_ops(ops, repeats, warmup)
    if cached:
        with cached_abs_weights():
            times["ibpk_fwd"] = time_ops({"ibpk_fwd": ops["ibp_fwd"]}, repeats, warmup)["ibpk_fwd"]
    med = {k: statistics.median(v) for k, v in times.items()}
    saved = {m: saved_for_backward_bytes(case, m) for m in ("plain", "ibp")}
    return {
        "model": case.model,
        "label": case.label,
        "input": case.input_desc,
        "batch": case.batch,
        "eps": case.eps,
        "params": sum(p.numel() for p in model.parameters()),
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "min_ms": {k: min(v) * 1e3 for k, v in times.items()},
        # Median more than NOISY x the fastest round: the machine was disturbed during timing.
        "noisy": {k: statistics.median(v) > NOISY * min(v) for k, v in times.items()},
        "saved_bytes": saved,
        "ratio": {
            "fwd": med["ibp_fwd"] / med["plain_fwd"],
            "fwdbwd": med["ibp_fwdbwd"] / med["plain_fwdbwd"],
            "saved": saved["ibp"] / max(saved["plain"], 1),
            **(_compiled_ratios(med) if compiled else {}),
            **({"cached_fwd": med["ibpk_fwd"] / med["plain_fwd"]} if cached else {}),
            **(_bf16_ratios(med, bf16_width_ratio(case, model, x)) if bf16 else {}),
        },
    }


def _compiled_ratios(med: dict[str, float]) -> dict[str, float]:
    return {
        "compiled_fwd": med["ibpc_fwd"] / med["plain_fwd"],
        "compiled_fwdbwd": med["ibpc_fwdbwd"] / med["plain_fwdbwd"],
    }


def _bf16_ratios(med: dict[str, float], width: float) -> dict[str, float]:
    return {
        "bf16_fwd": med["ibph_fwd"] / med["plain_fwd"],
        "bf16_fwdbwd": med["ibph_fwdbwd"] / med["plain_fwdbwd"],
        "bf16_width": width,
    }


def memory_case(case: Case, threads: int) -> dict[str, Any]:
    """Peak-RSS increase of plain and IBP forward+backward (fresh subprocesses) and their ratio."""
    rss = {m: peak_rss_delta(case, m, threads) for m in ("plain", "ibp")}
    return {"peak_rss": rss, "memory_ratio": rss["ibp"]["delta"] / max(rss["plain"]["delta"], 1)}


def run_case(case: Case, repeats: int, warmup: int, threads: int, memory: bool = True) -> dict[str, Any]:
    """Times, ratios and (optionally) memory of one case, as a JSON-ready dict."""
    res = time_case(case, repeats, warmup)
    if memory:
        mem = memory_case(case, threads)
        res["peak_rss"] = mem["peak_rss"]
        res["ratio"]["memory"] = mem["memory_ratio"]
    return res


# glibc mallopt parameters (malloc.h) and the value --tuned-malloc gives both (1 GiB).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TUNED_BYTES = 1 << 30


def tune_malloc() -> bool:
    """Keep freed blocks in glibc's heap (``mallopt``: mmap and trim thresholds 1 GiB); True on success.

    By default glibc serves a large allocation with a fresh ``mmap`` and unmaps it on free, so every
    large tensor a pass allocates is page-faulted in again on the next call: on this benchmark's VM a
    16 MiB activation costs about 4 ms of faults, more than the convolution that fills it. Raising both
    thresholds (what ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` do, and roughly what
    jemalloc or tcmalloc give) lets the process reuse its pages. It applies to plain and IBP alike.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(param, _TUNED_BYTES) == 1 for param in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False


def _spin_up(seconds: float) -> None:
    """Keep every intra-op thread busy for a moment so that idle (virtual) CPUs are awake before timing."""
    a = torch.rand(256, 256)
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        a = torch.tanh(a @ a)


# ---------------------------------------------------------------------------- report
def cpu_name() -> str:
    """The CPU model string (``/proc/cpuinfo``), or ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mark(ratio: float, target: float) -> str:
    return f"{ratio:5.2f}x {'ok' if ratio <= target else 'MISS'}"


def _fmt_ms(ms: float, noisy: bool = False) -> str:
    text = f"{ms:.2f}" if ms < 1000 else f"{ms:.0f}"
    return f"{'~' if noisy else ''}{text}".rjust(8)


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """The one results table, with target verdicts next to each ratio."""
    head = (
        f"{'model':<20} {'input':>8} {'batch':>5} | {'fwd ms':>8} {'IBP ms':>8} {'ratio':>10} | "
        f"{'f+b ms':>8} {'IBP ms':>8} {'ratio':>10} | {'peakMB':>7} {'IBP MB':>7} {'ratio':>10} | {'saved x':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ratio, noisy = r["ratio"], r["noisy"]
        m = {k: _fmt_ms(v, noisy[k]) for k, v in r["median_ms"].items()}
        if "peak_rss" in r:
            pm = r["peak_rss"]["plain"]["delta"] / 2**20
            im = r["peak_rss"]["ibp"]["delta"] / 2**20
            mem = f"{pm:7.1f} {im:7.1f} {_mark(ratio['memory'], TARGETS['memory']):>10}"
            if not (r["peak_rss"]["plain"]["reliable"] and r["peak_rss"]["ibp"]["reliable"]):
                mem += "?"
        else:
            mem = f"{'-':>7} {'-':>7} {'-':>10}"
        lines.append(
            f"{r['label']:<20} {r['input']:>8} {r['batch']:>5} | "
            f"{m['plain_fwd']} {m['ibp_fwd']} {_mark(ratio['fwd'], TARGETS['fwd']):>10} | "
            f"{m['plain_fwdbwd']} {m['ibp_fwdbwd']} "
            f"{_mark(ratio['fwdbwd'], TARGETS['fwdbwd']):>10} | "
            f"{mem} | {ratio['saved']:6.2f}x"
        )
    return "\n".join(lines)


def _variant_table(results: Sequence[dict[str, Any]], op: str, ratio: str, width: bool = False) -> str:
    """IBP timed another way (ops ``{op}_fwd``/``{op}_fwdbwd``, ratios ``{ratio}_fwd``/``{ratio}_fwdbwd``)
    against the same eager plain baselines; ``width`` adds the ``{ratio}_width`` column."""
    head = f"{'model':<20} | {'IBP fwd ms':>10} {'vs plain':>10} | {'IBP f+b ms':>10} {'vs plain':>10}"
    head += f" | {'width vs fp32':>13}" if width else ""
    lines = [head, "-" * len(head)]
    for r in results:
        m, rat, noisy = r["median_ms"], r["ratio"], r["noisy"]
        line = (
            f"{r['label']:<20} | {_fmt_ms(m[op + '_fwd'], noisy[op + '_fwd']):>10} "
            f"{_mark(rat[ratio + '_fwd'], TARGETS['fwd']):>10} | "
            f"{_fmt_ms(m[op + '_fwdbwd'], noisy[op + '_fwdbwd']):>10} "
            f"{_mark(rat[ratio + '_fwdbwd'], TARGETS['fwdbwd']):>10}"
        )
        lines.append(line + (f" | {rat[ratio + '_width']:12.4f}x" if width else ""))
    return "\n".join(lines)


def format_compiled_table(results: Sequence[dict[str, Any]]) -> str:
    """IBP under ``torch.compile`` (Inductor) against the same eager plain baselines."""
    return _variant_table(results, "ibpc", "compiled")


def format_bf16_table(results: Sequence[dict[str, Any]]) -> str:
    """IBP with bfloat16 radius products against the same plain baselines, and its looseness."""
    return _variant_table(results, "ibph", "bf16", width=True)


def layer_times(case: Case, repeats: int, warmup: int) -> list[dict[str, Any]]:
    """Forward time of every top-level layer, plain vs IBP (no autograd), each on its own input.

    The inputs are the previous layer's outputs (a box for IBP), computed once; each layer's plain
    and IBP calls are interleaved like the main timing. The first row is building the input box.
    """
    model, x, _ = setup(case)
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"--layers: {case.label} is not an nn.Sequential")
    rows = []
    with torch.no_grad():
        box = Interval.linf_ball(x, case.eps, lo=0.0, hi=1.0)
        t = time_ops({"ibp": lambda: Interval.linf_ball(x, case.eps, lo=0.0, hi=1.0)}, repeats, warmup)
        rows.append({"layer": "input box (linf_ball)", "plain_ms": 0.0, "ibp_ms": statistics.median(t["ibp"]) * 1e3})
        for name, layer in model.named_children():
            t = time_ops({"plain": lambda h=x, m=layer: m(h), "ibp": lambda b=box, m=layer: m(b)}, repeats, warmup)
            rows.append({
                "layer": f"{name}: {layer}",
                "plain_ms": statistics.median(t["plain"]) * 1e3,
                "ibp_ms": statistics.median(t["ibp"]) * 1e3,
            })
            x, box = layer(x), layer(box)
    return rows


def format_layer_table(label: str, rows: Sequence[dict[str, Any]]) -> str:
    """Per-layer plain vs IBP forward times of one model, with ratios."""
    lines = [f"{label}: per-layer forward (no autograd), median us"]
    lines.append(f"  {'layer':<58} {'plain':>9} {'IBP':>9} {'ratio':>7}")
    for r in rows:
        ratio = f"{r['ibp_ms'] / r['plain_ms']:6.2f}x" if r["plain_ms"] > 0 else f"{'-':>7}"
        lines.append(f"  {r['layer'][:58]:<58} {r['plain_ms'] * 1e3:9.1f} {r['ibp_ms'] * 1e3:9.1f} {ratio}")
    total_p = sum(r["plain_ms"] for r in rows)
    total_i = sum(r["ibp_ms"] for r in rows)
    lines.append(f"  {'sum':<58} {total_p * 1e3:9.1f} {total_i * 1e3:9.1f} {total_i / total_p:6.2f}x")
    return "\n".join(lines)


def _profile(case: Case, rows: int = 12) -> str:
    """torch.profiler summary (self CPU time) of one IBP forward+backward."""
    from torch.profiler import ProfilerActivity, profile

    model, x, y = setup(case)
    op = make_ops(case, model, x, y)["ibp_fwdbwd"]
    op()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        op()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.ibp_speed", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="timed rounds per operation (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument(
        "--models", nargs="+", default=list(DEFAULT_MODELS), choices=sorted(CASES), metavar="MODEL",
        help=f"cases to run, from {', '.join(CASES)} (default: {' '.join(DEFAULT_MODELS)})",
    )
    p.add_argument("--spin-up", type=float, default=1.0, help="seconds of busy work before timing (default 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--profile", action="store_true", help="also print a torch.profiler summary of each IBP f+b")
    p.add_argument(
        "--layers", action="store_true",
        help="also time every layer's forward on its own (plain vs IBP, no autograd): where the ratio comes from",
    )
    p.add_argument(
        "--cached-weights", action="store_true",
        help="also time the IBP forward inside intervals.cached_abs_weights() (|W| computed once)",
    )
    p.add_argument(
        "--compiled", action="store_true",
        help="also time IBP under torch.compile (intervals.compile.compile_bounds; compile time excluded)",
    )
    p.add_argument(
        "--bf16-radius", action="store_true",
        help="also time IBP inside intervals.bf16_radius() (|W| r in bfloat16, rounded to stay an upper bound) "
        "and report how much wider its logit bounds are",
    )
    p.add_argument(
        "--tuned-malloc", action="store_true",
        help="time with glibc's mmap and trim thresholds raised to 1 GiB (mallopt), so that large tensors reuse "
        "heap pages instead of being page-faulted afresh on every call; plain and IBP alike (memory "
        "subprocesses keep their own setting)",
    )
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    args = parse_args_checked(p, argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table (and optionally write JSON); returns 0."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.memory_child:
        key, mode = args.memory_child.split(":")
        print(json.dumps(_memory_child(CASES[key], mode)))
        return 0

    meta = {
        "torch": torch.__version__,
        "threads": threads,
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "timing": f"median of {args.repeats} interleaved rounds after {args.warmup} warm-up rounds (time.perf_counter)",
        "memory_method": (
            "peak RSS minus RSS before the step (VmHWM reset via /proc/self/clear_refs, i.e. getrusage's "
            "ru_maxrss counter) of one full-batch forward+backward in a fresh subprocess after one warm-up "
            "step; 'saved x' = ratio of bytes autograd saves for backward (saved_tensors_hooks, distinct "
            "storages, parameters and input excluded)"
        ),
        "targets": TARGETS,
        "allocator": "glibc default",
    }
    if args.tuned_malloc:
        if not tune_malloc():
            print("--tuned-malloc: mallopt is not available (not glibc?)", file=sys.stderr)
            return 2
        meta["allocator"] = "glibc, mmap and trim thresholds 1 GiB (--tuned-malloc)"
    print(f"hypercert IBP speed benchmark | torch {meta['torch']} | {threads} threads | CPU: {meta['cpu']}")
    print(f"allocator: {meta['allocator']}")
    print(f"timing: {meta['timing']}; fwd under no_grad, f+b = cross-entropy + backward (IBP: worst-case logits)")
    # All timings first (back to back, threads kept busy), then the memory subprocesses.
    _spin_up(args.spin_up)
    results = []
    for key in args.models:
        case = CASES[key]
        print(f"  timing {case.label} ...", file=sys.stderr, flush=True)
        results.append(
            time_case(case, args.repeats, args.warmup, args.compiled, args.cached_weights, args.bf16_radius)
        )
    if not args.no_memory:
        for key, res in zip(args.models, results, strict=True):
            print(f"  peak memory of {CASES[key].label} (2 subprocesses) ...", file=sys.stderr, flush=True)
            mem = memory_case(CASES[key], threads)
            res["peak_rss"] = mem["peak_rss"]
            res["ratio"]["memory"] = mem["memory_ratio"]
    print(format_table(results))
    if args.cached_weights:
        print("\nIBP forward inside intervals.cached_abs_weights() (|W| reused across calls):")
        for r in results:
            ms, verdict = r["median_ms"]["ibpk_fwd"], _mark(r["ratio"]["cached_fwd"], TARGETS["fwd"])
            print(f"  {r['label']:<20} {ms:9.2f} ms  {verdict:>10} vs plain fwd")
    if args.bf16_radius:
        print("\nIBP inside intervals.bf16_radius() (radius products in bfloat16; centre in float32):")
        print(format_bf16_table(results))
    if args.compiled:
        print("\nIBP under torch.compile (Inductor fuses elementwise steps; ratios against the eager plain runs):")
        print(format_compiled_table(results))
    print(
        f"targets: IBP fwd <= {TARGETS['fwd']}x plain fwd; IBP f+b <= {TARGETS['fwdbwd']}x plain f+b; "
        f"peak memory <= {TARGETS['memory']}x ('ok' / 'MISS'); '~' = median > {NOISY}x the fastest round "
        "(machine disturbed while timing; see min_ms in --json)"
    )
    print(f"memory: {meta['memory_method']}" + ("" if args.no_memory else "; '?' = peak counter could not be reset"))
    if args.layers:
        for key, res in zip(args.models, results, strict=True):
            rows = layer_times(CASES[key], max(args.repeats, 20), max(args.warmup, 2))
            res["layers"] = rows
            print("\n" + format_layer_table(CASES[key].label, rows))
    if args.profile:
        for key in args.models:
            print(f"\nprofile of IBP f+b, {CASES[key].label}:\n{_profile(CASES[key])}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
