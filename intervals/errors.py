"""Exceptions and input validation shared by every interval rule.

Messages are one line and say what is wrong, how many elements are affected and where the first
one is, so a user can find the bad entry in a large tensor without a debugger.
"""

from __future__ import annotations

import torch

__all__ = [
    "UnsupportedOperation", "UnsupportedInPlace", "UnsupportedMethod", "IntervalError", "first_bad", "check_no_nan",
    "check_order",
]


class IntervalError(ValueError):
    """A value error raised for an invalid interval or an invalid argument of an interval op."""


class UnsupportedOperation(TypeError):
    """Raised when a torch function has no sound interval rule.

    hypercert never falls back to an unsound approximation: a function without a rule stops the
    computation and names itself, so the gap is visible.
    """

    def __init__(self, func_name: str, detail: str = "") -> None:
        self.func_name = func_name
        msg = f"no sound interval rule for {func_name}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class UnsupportedInPlace(UnsupportedOperation):
    """An in-place op on an Interval that shares memory with another live Interval (a view, slice,
    reshape, flatten, detach or ``copy.copy``): torch would change both tensors, a box only changes itself.
    """

    def __init__(self, op: str) -> None:
        self.func_name = op
        TypeError.__init__(
            self,
            f"{op} in place on an Interval that shares memory with another one still in use (a view, slice, "
            "reshape, flatten, detach or copy.copy): torch would change both, a box only changes itself; use "
            "inplace=False on the layer, or the out-of-place form",
        )


class UnsupportedMethod(UnsupportedOperation, AttributeError):
    """A ``torch.Tensor`` method called on an Interval that has no rule for it.

    Also an ``AttributeError``, so ``hasattr(box, "sort")`` stays False for duck-typing code.
    """


def first_bad(mask: torch.Tensor) -> tuple[int, tuple[int, ...]] | None:
    """Return ``(count, index_of_first)`` of the true entries of ``mask``, or None if none is."""
    if not bool(mask.any()):
        return None
    count = int(mask.sum())
    flat = int(torch.nonzero(mask.reshape(-1), as_tuple=False)[0, 0])
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), mask.shape)) if mask.dim() else ()
    return count, index


def check_no_nan(t: torch.Tensor, what: str) -> None:
    """Raise :class:`IntervalError` if ``t`` holds a NaN."""
    if t.is_floating_point():
        bad = first_bad(torch.isnan(t))
        if bad is not None:
            count, index = bad
            raise IntervalError(f"{what} contains NaN: {count} element(s), first at index {index}")


def check_order(lower: torch.Tensor, upper: torch.Tensor, what: str = "interval") -> None:
    """Raise :class:`IntervalError` unless ``lower <= upper`` everywhere."""
    bad = first_bad(lower > upper)
    if bad is not None:
        count, index = bad
        raise IntervalError(
            f"{what}: lower > upper in {count} element(s), first at index {index} "
            f"(lower={lower[index].item():.6g}, upper={upper[index].item():.6g})"
        )


def check_nonnegative(t: torch.Tensor | float, what: str) -> None:
    """Raise :class:`IntervalError` if ``t`` (a radius or eps) is negative or NaN anywhere."""
    if not isinstance(t, torch.Tensor):
        if t != t or t < 0:  # NaN compares unequal to itself
            raise IntervalError(f"{what} must be >= 0, got {t}")
        return
    check_no_nan(t, what)
    bad = first_bad(t < 0)
    if bad is not None:
        count, index = bad
        raise IntervalError(f"{what} must be >= 0: {count} negative element(s), first at index {index}")
