"""hypercert.benchmarks: runnable scripts (``python -m benchmarks.<name>``), not library code.

* :mod:`benchmarks.ibp_speed`: time and peak memory of interval bound propagation against plain
  forward/backward passes on reference architectures.
* :mod:`benchmarks.digits_demo`: train a small MLP on scikit-learn's 8x8 digits and certify its
  test set against L-infinity perturbations.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from certify.model_io import check_outputs

#: Output-file flags a benchmark may have (attribute, flag, example name), checked before any work.
_OUTPUT_FLAGS = (("json", "--json", "results.json"), ("save_model", "--save-model", "model.pt"),
                 ("checkpoint", "--checkpoint", "checkpoint.pt"))


def parse_args_checked(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, refusing unusable output paths (``--json``, ``--save-model``,
    ``--checkpoint``) before a long run, not after it."""
    args = parser.parse_args(argv)
    try:
        check_outputs({flag: (getattr(args, attr, None), example) for attr, flag, example in _OUTPUT_FLAGS})
    except ValueError as exc:
        parser.error(str(exc))
    return args
