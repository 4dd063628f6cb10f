"""Shared validation for hypercert's command-line tools and benchmark scripts.

Every tool follows the same rules: a user mistake is a one-line error with exit code 2, found
*before* any long work starts, and no output may overwrite an input. The pieces here are shared so
that each rule has one implementation:

* argparse ``type=`` functions: :func:`positive_int`, :func:`nonnegative_int`, :func:`eps_value`,
  :func:`finite_float`;
* :func:`check_device` (a device torch knows and this machine has), :func:`check_evaluation` (eps,
  methods, batch size and attack settings of :func:`certify.evaluation.evaluate`, checked up front);
* :func:`refuse_overwriting_inputs`: no output path may name an input file or a file of an input
  directory (a model file, a continual run's checkpoint, a data file);
* :data:`USER_ERRORS` and :func:`error_line`: the exception types a user mistake raises, and the one
  line that reports one.

Example:
    >>> positive_int("3")
    3
    >>> positive_int("0")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be an integer >= 1, got '0'
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from intervals import UnsupportedOperation

__all__ = ["DATA_SUFFIXES", "USER_ERRORS", "check_device", "check_evaluation", "eps_value", "error_line",
           "finite_float", "looks_like_input", "nonnegative_int", "positive_float", "positive_int",
           "refuse_overwriting_inputs"]

#: What a user mistake raises: bad values (``ValueError``), missing or unreadable files and failed
#: downloads (``OSError``, :class:`certify.data.DownloadError` included), a model using a function
#: without an interval rule (:class:`intervals.UnsupportedOperation`).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, UnsupportedOperation)


def error_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type name when it has none): one line for stderr."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and text.startswith("'"):
        text = text.strip("'")
    return text.splitlines()[0] if text else type(exc).__name__


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """argparse ``type=``: a finite number (no NaN, no infinity)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type=``: a finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def eps_value(text: str) -> float:
    """argparse ``type=``: an L-inf radius, a finite number in ``[0, 1]`` (the inputs' range is ``[0, 1]``
    for every data set hypercert loads; a larger radius covers the whole input domain and certifies nothing).

    Example:
        >>> eps_value("0.1")
        0.1
    """
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1] (the input range), got {text!r}")
    return value


def check_device(device: str) -> str:
    """``device`` if torch knows it and this machine has it (CUDA/MPS available), else ``ValueError``.

    Checked before any work: ``.to("cuda")`` on a machine without CUDA otherwise fails deep inside
    the first model transfer, with a traceback.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device: unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device: unsupported device {device!r}; use cpu, cuda or cuda:N")
    return device


def check_evaluation(eps: float | Sequence[float], methods: Sequence[str], *, batch_size: int = 128,
                     steps: int = 40, restarts: int = 1, n: int | None = None) -> tuple[list[str], list[str]]:
    """Check what :func:`certify.evaluation.evaluate` will be given, before a long training run that
    precedes it; returns ``(bound methods, attacks)``. Raises ``ValueError`` naming the flag."""
    from .attacks import AttackConfig
    from .evaluation import _check_eps, split_methods

    try:
        _check_eps(eps)
    except ValueError as exc:
        raise ValueError(f"--eps: {exc}") from None
    try:
        bounds, attacks = split_methods([m for m in methods if m.strip()])
    except ValueError as exc:
        raise ValueError(f"--methods: {exc}") from None
    for flag, value in (("--batch-size", batch_size), ("--pgd-steps", steps), ("--pgd-restarts", restarts),
                        ("--n", n)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{flag} must be an integer >= 1, got {value!r}")
    AttackConfig(steps=steps, restarts=restarts, batch_size=batch_size)
    return bounds, attacks


def _resolved(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


#: Suffixes of the data files an input directory is read for: never overwritten. Weights and configs
#: (``.pt``, ``.toml``) are not among them: in a data directory they are a tool's own earlier outputs
#: (``--save-model dm_small.pt``), which the same command may write again; a run directory's own files
#: are protected by name instead.
DATA_SUFFIXES = (".gz", ".npz", ".npy", ".tar", ".zip", ".idx")


def looks_like_input(path: Path) -> bool:
    """Whether an existing file of an input directory is one a tool reads: a data file
    (:data:`DATA_SUFFIXES`, IDX ``*-ubyte``, CIFAR's suffix-less pickles and ``MD5SUMS``). What a previous
    run wrote there (reports, plots, saved weights) may be replaced by the same command."""
    name = path.name
    return (path.suffix.lower() in DATA_SUFFIXES or "ubyte" in name or name in ("MD5SUMS", "batches.meta", "meta")
            or name.startswith(("data_batch", "test_batch")) or name in ("train", "test"))


def refuse_overwriting_inputs(outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None],
                              protected_names: Sequence[str] = ()) -> None:
    """``ValueError`` if an output path (flag -> path) would overwrite an input (flag -> path).

    An input *file* may not be named by any output; inside an input *directory*, no output may name an
    existing file the tools read (:func:`looks_like_input`), nor, directly in it, one of
    ``protected_names`` (a continual run's ``config.json``, ``results.json``, ..., written or not yet).
    Links are resolved, so ``./m.pt`` and ``m.pt`` are the same file.

    Example:
        >>> refuse_overwriting_inputs({"--out": "m.pt"}, {"--model": "./m.pt"})
        Traceback (most recent call last):
        ValueError: --out m.pt is the --model file: it would be overwritten; write the output elsewhere
    """
    for flag_in, src in inputs.items():
        if src is None or str(src) == "":
            continue
        src_path = _resolved(src)
        for flag_out, dst in outputs.items():
            if dst is None or str(dst) == "":
                continue
            dst_path = _resolved(dst)
            if dst_path == src_path:
                raise ValueError(f"{flag_out} {dst} is the {flag_in} file: it would be overwritten; "
                                 "write the output elsewhere")
            if src_path.is_dir() and src_path in dst_path.parents and (
                    (dst_path.is_file() and looks_like_input(dst_path))
                    or (dst_path.parent == src_path and dst_path.name in protected_names)):
                raise ValueError(f"{flag_out} {dst} would overwrite {dst_path.name} of the {flag_in} directory "
                                 f"{src}; write the output elsewhere")
