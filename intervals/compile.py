"""Compiled interval bound propagation with ``torch.compile``.

Eager IBP pays one kernel launch and one memory pass per elementwise step (``c - r``, ``relu``,
``(l + u) / 2`` ...). ``torch.compile`` traces straight through :class:`~intervals.Interval`
(its rules are plain Python over torch ops), so Inductor fuses those steps into one loop per
layer. The rules and hence the bounds are the same; only the schedule changes.

Example:
    >>> import torch
    >>> from intervals import Interval
    >>> from intervals.compile import compile_bounds
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    >>> bounds = compile_bounds(net)            # compiles lazily on first call
    >>> out = bounds(Interval.linf_ball(torch.zeros(2, 4), 0.1))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .interval import Interval

__all__ = ["compile_bounds"]


def compile_bounds(model: Callable[[Any], Any], **compile_kwargs: Any) -> Callable[[Interval], Interval]:
    """Return ``box -> model(box)`` compiled with ``torch.compile`` (defaults: ``dynamic=True``).

    The compiled function takes and returns :class:`Interval` objects and supports autograd; the box
    ReLU's backward is the registered op's own formula, traced into the graph (an
    ``autograd.Function``), so Inductor fuses it too. Rigorous mode is a Python-level switch read
    while tracing, so call the compiled function consistently inside or outside
    :func:`intervals.rigorous` (a change triggers a recompile).

    Not supported: ``torch.func.vmap`` over a gradient through the box ReLU (per-sample gradients),
    compiled or eager: the ReLU's autograd.Function and its registered op have no vmap rule.
    """
    compile_kwargs.setdefault("dynamic", True)

    def on_endpoints(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(Interval._from_lu(lower, upper))
        return out.lower, out.upper

    compiled = torch.compile(on_endpoints, **compile_kwargs)

    def bounds(box: Interval) -> Interval:
        if not isinstance(box, Interval):
            raise TypeError(f"compile_bounds: expected an Interval, got {type(box).__name__}")
        return Interval._from_lu(*compiled(box.lower, box.upper))

    return bounds
