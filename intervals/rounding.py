"""Rigorous mode: outward rounding so bounds contain the exact real-number result.

By default interval rules compute their endpoints with ordinary round-to-nearest arithmetic, so an
endpoint may sit a few units in the last place (ulps) inside the exact real bound. Inside
``with intervals.rigorous():`` every rule widens its result outward by a proven error bound:

* ``+ - * /`` and ``sqrt`` are correctly rounded by IEEE 754, so one ``nextafter`` step outward
  covers them.
* Sums, matrix products and convolutions use Higham's bound: a dot product of length ``n``
  computed in any summation order satisfies ``|fl(x.y) - x.y| <= gamma_n |x|.|y|`` with
  ``gamma_n = n u / (1 - n u)``, ``u`` the unit roundoff; an absolute ``n * 2 * denorm_min`` term
  covers underflow. Inside the context, float32 matmuls run at "highest" precision (no TF32) and
  convolutions are forced onto the summation-based (im2col + GEMM) kernels, whose error obeys
  this bound, instead of Winograd/FFT algorithms, which do not.
* Transcendental functions (exp, log, tanh, erf ...) are evaluated in float64, stepped outward by
  ``LIBM_ULPS`` float64 ulps (torch's float64 kernels are accurate to about 1 ulp; the tests check
  the margin against mpmath) and then rounded outward to the interval's dtype.

Example:
    >>> import torch, intervals
    >>> x = intervals.Interval(torch.tensor([0.1]), torch.tensor([0.2]))
    >>> with intervals.rigorous():
    ...     y = torch.exp(x)
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator

import torch

__all__ = [
    "rigorous",
    "is_rigorous",
    "down",
    "up",
    "unit_roundoff",
    "gamma",
    "denorm_min",
    "LIBM_ULPS",
    "outward_unary",
    "summation_guard",
]

#: float64 ulps by which a float64 elementwise function value is widened in rigorous mode.
LIBM_ULPS = 4

_state = threading.local()


def is_rigorous() -> bool:
    """True inside a :func:`rigorous` context on this thread."""
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def rigorous() -> Iterator[None]:
    """Context manager: interval rules round outward by a proven floating-point error bound."""
    _state.depth = getattr(_state, "depth", 0) + 1
    old_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old_precision)
        _state.depth -= 1


@contextlib.contextmanager
def summation_guard() -> Iterator[None]:
    """Force convolutions onto summation-order kernels (no Winograd/FFT, no TF32).

    Used by the convolution rules in rigorous mode so Higham's dot-product bound applies. NNPACK too:
    torch takes its Winograd kernels for float32 CPU batches of 16 or more, whose transforms round
    differently (a batch-16 3x3 convolution missed the exact value by 0.014).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # oneDNN's TF32 notice on CPU-only builds
        with torch.backends.mkldnn.flags(enabled=False), torch.backends.cudnn.flags(
            enabled=False, allow_tf32=False
        ), torch.backends.nnpack.flags(enabled=False):
            yield


_INF = float("inf")


def _straight_through(t: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    # nextafter has no derivative; the step is treated as a constant so gradients pass unchanged.
    if t.requires_grad:
        return t + (moved - t).detach()
    return moved


def down(t: torch.Tensor) -> torch.Tensor:
    """The next representable value toward -inf (one ulp down); gradient passes straight through.

    A NaN (from ``inf - inf`` after an overflow) becomes ``-inf``: the true value is a finite
    real, so the unbounded end is the sound lower bound.
    """
    moved = torch.nextafter(t.detach(), t.new_full((), -_INF))
    return _straight_through(t, torch.nan_to_num(moved, nan=-_INF, posinf=_INF, neginf=-_INF))


def up(t: torch.Tensor) -> torch.Tensor:
    """The next representable value toward +inf (one ulp up); NaN becomes ``+inf`` (see :func:`down`)."""
    moved = torch.nextafter(t.detach(), t.new_full((), _INF))
    return _straight_through(t, torch.nan_to_num(moved, nan=_INF, posinf=_INF, neginf=-_INF))


_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff ``u`` of ``dtype`` (half an ulp of 1)."""
    try:
        return _ROUNDOFF[dtype]
    except KeyError:
        raise TypeError(f"rigorous mode supports floating dtypes only, got {dtype}") from None


def gamma(n: int, dtype: torch.dtype) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``, rounded up; ``inf`` when ``n u >= 1``."""
    nu = n * unit_roundoff(dtype)
    if nu >= 0.5:
        return _INF
    # Evaluated in float64 and inflated by 1% so rounding of the Python float cannot undercut it.
    return nu / (1.0 - nu) * 1.01


def denorm_min(dtype: torch.dtype) -> float:
    """Smallest positive subnormal of ``dtype``: the absolute error of one underflowing op."""
    fi = torch.finfo(dtype)
    return fi.tiny * fi.eps


def _step(t: torch.Tensor, towards: float, times: int) -> torch.Tensor:
    target = t.new_full((), towards)
    moved = t.detach()
    for _ in range(times):
        moved = torch.nextafter(moved, target)
    return _straight_through(t, moved)


def _cast_down(x64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float64:
        return x64
    y = x64.to(dtype)
    return torch.where(y.detach().to(torch.float64) > x64.detach(), down(y), y)


def _cast_up(x64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float64:
        return x64
    y = x64.to(dtype)
    return torch.where(y.detach().to(torch.float64) < x64.detach(), up(y), y)


def outward_unary(
    fn: Callable[[torch.Tensor], torch.Tensor], at_lower: torch.Tensor, at_upper: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous ``(lower bound of fn(at_lower), upper bound of fn(at_upper))``.

    ``fn`` is evaluated in float64, widened by :data:`LIBM_ULPS` float64 ulps and rounded outward to
    the input dtype. NaN results are left as NaN (callers treat domain errors before this).
    """
    dtype = at_lower.dtype
    lo = _step(fn(at_lower.to(torch.float64)), -_INF, LIBM_ULPS)
    hi = _step(fn(at_upper.to(torch.float64)), _INF, LIBM_ULPS)
    return _cast_down(lo, dtype), _cast_up(hi, dtype)


def cast_outward(lo64: torch.Tensor, hi64: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Round float64 bounds outward to ``dtype`` (no-op for float64)."""
    return _cast_down(lo64, dtype), _cast_up(hi64, dtype)
