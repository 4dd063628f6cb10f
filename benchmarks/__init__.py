"""hypercert.benchmarks: runnable scripts (``python -m benchmarks.<name>``), not library code.

* :mod:`benchmarks.ibp_speed`: time and peak memory of interval bound propagation against plain
  forward/backward passes on reference architectures.
* :mod:`benchmarks.digits_demo`: train a small MLP on scikit-learn's 8x8 digits and certify its
  test set against L-infinity perturbations.

Every script validates its whole command line (:func:`parse_args_checked`, :func:`user_errors`)
before any long work: a mistake is a one-line ``usage`` error with exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from certify.cli_checks import USER_ERRORS, error_line, refuse_overwriting_inputs
from certify.continual_runs import is_run_dir, run_files
from certify.model_io import check_outputs

#: Output-file flags a benchmark may have (attribute, flag, example name), checked before any work.
_OUTPUT_FLAGS = (("json", "--json", "results.json"), ("save_model", "--save-model", "model.pt"),
                 ("checkpoint", "--checkpoint", "checkpoint.pt"))
#: Input flags (attribute, flag) that no output may overwrite: a file, or an existing file in a folder.
_INPUT_FLAGS = (("weights", "--weights"), ("model", "--model"), ("data_dir", "--data-dir"), ("config", "--config"))


def parse_args_checked(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, refusing unusable output paths (``--json``, ``--save-model``,
    ``--checkpoint``) and outputs that would overwrite an input (``--weights``, a file of ``--data-dir``
    or ``--out``) before a long run, not after it."""
    args = parser.parse_args(argv)
    with user_errors(parser):
        check_outputs({flag: (getattr(args, attr, None), example) for attr, flag, example in _OUTPUT_FLAGS})
        # --checkpoint is read and written by its own script: it is an output here, not an input
        outputs = {flag: getattr(args, attr, None) for attr, flag, _ in _OUTPUT_FLAGS if attr != "checkpoint"}
        refuse_overwriting_inputs(outputs, {flag: getattr(args, attr, None) for attr, flag in _INPUT_FLAGS})
        _refuse_run_files(outputs)
    return args


def _refuse_run_files(outputs: dict[str, Path | None]) -> None:
    """No output may replace a file of a continual-train run directory (its checkpoint, config, results)."""
    for flag, path in outputs.items():
        if path is not None and str(path) and is_run_dir(Path(path).parent) and \
                Path(path).name in run_files(Path(path).parent):
            raise ValueError(f"{flag} {path} would overwrite {Path(path).name} of the continual run in "
                             f"{Path(path).parent}; write the output elsewhere")


@contextmanager
def user_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Turn a user mistake raised inside the block (:data:`certify.cli_checks.USER_ERRORS`: bad values,
    missing or corrupt files) into ``parser.error``: one line, exit code 2, no traceback.

    Wrap validation and loading with it, not the long work itself, so that a bug stays a traceback.
    """
    try:
        yield
    except USER_ERRORS as exc:
        parser.error(error_line(exc))
