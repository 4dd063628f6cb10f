"""The :class:`Interval` type: a box ``[lower, upper]`` over torch tensors.

An :class:`Interval` keeps whichever representation the last rule produced, endpoints
``(lower, upper)`` or centre/radius ``(center, radius)``, and derives the other lazily on first use
and caches it. Linear maps are cheapest in centre/radius form (``W c + b``, ``|W| r``), monotone
activations in endpoint form; keeping both avoids converting back and forth needlessly.

It speaks torch's ``__torch_function__`` protocol: any torch function with a registered rule
accepts an ``Interval`` wherever it accepts a tensor, so an unmodified ``nn.Module`` maps an input
box to an output box (interval bound propagation). Functions without a rule raise
:class:`~intervals.errors.UnsupportedOperation`.
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import rounding
from .errors import (
    IntervalError,
    UnsupportedInPlace,
    UnsupportedMethod,
    UnsupportedOperation,
    check_no_nan,
    check_nonnegative,
    check_order,
)
from .registry import RULES, func_name

__all__ = ["Interval"]

_INF = float("inf")


def _as_tensor(x: Any, what: str, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, Interval):
        raise IntervalError(f"{what} must be a tensor, got an Interval")
    try:
        if like is not None:
            return torch.as_tensor(x, dtype=like.dtype, device=like.device)
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise IntervalError(f"{what} must be a tensor or array-like, got {type(x).__name__}") from exc
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str], where: str) -> None:
    if a.shape != b.shape:
        raise IntervalError(
            f"{where}: {names[0]} and {names[1]} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
        )
    if a.dtype != b.dtype:
        raise IntervalError(f"{where}: {names[0]} and {names[1]} dtypes differ: {a.dtype} vs {b.dtype}")
    if a.device != b.device:
        raise IntervalError(f"{where}: {names[0]} and {names[1]} devices differ: {a.device} vs {b.device}")
    if not a.is_floating_point():
        raise IntervalError(f"{where}: bounds must be floating point, got {a.dtype}")


def _require_float(t: torch.Tensor, where: str) -> None:
    if not t.is_floating_point():
        raise IntervalError(f"{where}: x must be floating point, got {t.dtype}")


def _scalar_or_tensor(v: Any, what: str, like: torch.Tensor) -> float | torch.Tensor:
    """A Python float stays a float (cheap scalar ops); anything else becomes a tensor like ``like``."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return float(v)
    return _as_tensor(v, what, like=like)


def _broadcast_to(t: torch.Tensor, shape: torch.Size, what: str, where: str) -> torch.Tensor:
    try:
        out = t.expand(shape)
    except RuntimeError:
        raise IntervalError(
            f"{where}: {what} shape {tuple(t.shape)} does not broadcast to x shape {tuple(shape)}"
        ) from None
    return out


class Interval:
    """A box ``[lower, upper]`` of tensors with sound rules for torch functions.

    Args:
        lower: lower endpoints (tensor or array-like).
        upper: upper endpoints, same shape, dtype and device; defaults to ``lower`` (a point).

    Raises:
        IntervalError: (a ``ValueError``) on NaN, ``lower > upper``, or mismatched
            shape/dtype/device, naming the count and the first offending index.

    Example:
        >>> import torch
        >>> from intervals import Interval
        >>> x = Interval(torch.tensor([-1.0, 0.5]), torch.tensor([2.0, 1.0]))
        >>> y = torch.relu(x) * 2 + 1
        >>> y.lower, y.upper
        (tensor([1., 2.]), tensor([5., 3.]))
        >>> layer = torch.nn.Linear(2, 3)
        >>> layer(x).shape
        torch.Size([3])
    """

    # _l/_u and _c/_r: the two representations, either may be None until derived from the other;
    # _cr: whether centre/radius is the primary (given) one; _rig: derived values are outward-rounded;
    # _alias: the list shared by Intervals whose tensors may share memory (views), see _assign_inplace.
    __slots__ = ("_l", "_u", "_c", "_r", "_cr", "_rig", "_alias", "__weakref__")

    # ------------------------------------------------------------------ construction
    def __init__(self, lower: Any, upper: Any = None) -> None:
        lo = _as_tensor(lower, "Interval lower")
        # a non-tensor upper (list, number) takes the lower's dtype and device
        hi = lo if upper is None else _as_tensor(upper, "Interval upper", like=lo)
        _check_pair(lo, hi, ("lower", "upper"), "Interval")
        check_no_nan(lo, "Interval lower")
        if hi is not lo:
            check_no_nan(hi, "Interval upper")
            check_order(lo, hi, "Interval")
        # Own copies: a later in-place change to the caller's tensors must not alter the box.
        lo = lo.clone()
        hi = lo if upper is None else hi.clone()
        self._l, self._u, self._c, self._r = lo, hi, None, None
        self._cr = False
        self._rig = rounding.is_rigorous()
        self._alias = None

    @classmethod
    def _from_lu(cls, lower: torch.Tensor, upper: torch.Tensor) -> Interval:
        # Trusted constructor used by rules: no validation, no synchronisation.
        self = object.__new__(cls)
        self._l, self._u, self._c, self._r = lower, upper, None, None
        self._cr = False
        self._rig = rounding.is_rigorous()
        self._alias = None
        return self

    @classmethod
    def _from_cr(cls, center: torch.Tensor, radius: torch.Tensor) -> Interval:
        self = object.__new__(cls)
        self._l, self._u, self._c, self._r = None, None, center, radius
        self._cr = True
        self._rig = rounding.is_rigorous()
        self._alias = None
        return self

    @classmethod
    def from_center_radius(cls, center: Any, radius: Any) -> Interval:
        """The box ``[center - radius, center + radius]``; ``radius`` broadcasts to ``center``.

        Example:
            >>> Interval.from_center_radius(torch.zeros(2), 0.5).upper
            tensor([0.5000, 0.5000])
        """
        c = _as_tensor(center, "center")
        r = _as_tensor(radius, "radius", like=c)
        check_no_nan(c, "center")
        check_nonnegative(r, "radius")
        try:
            r = r.expand_as(c)
        except RuntimeError:
            raise IntervalError(
                f"from_center_radius: radius shape {tuple(r.shape)} does not broadcast to center shape {tuple(c.shape)}"
            ) from None
        _check_pair(c, r, ("center", "radius"), "from_center_radius")
        return cls._from_cr(c.clone(), r.clone())

    @classmethod
    def point(cls, x: Any) -> Interval:
        """The degenerate box ``[x, x]``."""
        t = _as_tensor(x, "point")
        _require_float(t, "point")
        check_no_nan(t, "point")
        t = t.clone()
        return cls._from_lu(t, t)

    @classmethod
    def linf_ball(
        cls, x: Any, eps: Any, lo: Any | None = None, hi: Any | None = None
    ) -> Interval:
        """The L-infinity ball ``{x' : |x' - x|_inf <= eps}``, clamped to ``[lo, hi]`` when given.

        ``eps`` may be a float or a tensor broadcastable to ``x`` (per-sample or per-pixel radii);
        ``lo``/``hi`` are the input domain (e.g. 0 and 1 for images) and must contain ``x``.

        Example:
            >>> b = Interval.linf_ball(torch.tensor([0.05, 0.5]), 0.1, lo=0.0, hi=1.0)
            >>> b.lower
            tensor([0.0000, 0.4000])
        """
        t = _as_tensor(x, "linf_ball x")
        # An integer x would silently truncate eps (0.5 -> 0): refuse instead of shrinking the box.
        _require_float(t, "linf_ball")
        e = _scalar_or_tensor(eps, "eps", t)
        if isinstance(e, torch.Tensor):
            check_nonnegative(e, "eps")
            e = _broadcast_to(e, t.shape, "eps", "linf_ball")
        elif e != e:
            raise IntervalError("eps contains NaN")
        else:
            check_nonnegative(e, "eps")
        lo_v = None if lo is None else _scalar_or_tensor(lo, "lo", t)
        hi_v = None if hi is None else _scalar_or_tensor(hi, "hi", t)
        for v, name in ((lo_v, "lo"), (hi_v, "hi")):
            if isinstance(v, torch.Tensor):
                check_no_nan(v, f"linf_ball {name}")
                _broadcast_to(v, t.shape, name, "linf_ball")
            elif v is not None and v != v:
                raise IntervalError(f"linf_ball {name} contains NaN")
        if lo_v is not None and hi_v is not None:
            both_scalar = not isinstance(lo_v, torch.Tensor) and not isinstance(hi_v, torch.Tensor)
            if not both_scalar or lo_v > hi_v:
                lo_t = torch.as_tensor(lo_v, dtype=t.dtype, device=t.device).expand(t.shape)
                hi_t = torch.as_tensor(hi_v, dtype=t.dtype, device=t.device).expand(t.shape)
                check_order(lo_t, hi_t, "linf_ball domain [lo, hi]")
        # One pass and one synchronisation for the common case (x finite and inside [lo, hi]):
        # NaN propagates through aminmax and fails both comparisons.
        x_min, x_max = torch.aminmax(t) if t.numel() else (t.new_zeros(()), t.new_zeros(()))
        ok = x_min >= (lo_v if lo_v is not None and not isinstance(lo_v, torch.Tensor) else -_INF)
        ok &= x_max <= (hi_v if hi_v is not None and not isinstance(hi_v, torch.Tensor) else _INF)
        if isinstance(lo_v, torch.Tensor) or isinstance(hi_v, torch.Tensor) or not bool(ok):
            check_no_nan(t, "linf_ball x")
            if lo_v is not None:
                _check_domain(t < lo_v, "below lo")
            if hi_v is not None:
                _check_domain(t > hi_v, "above hi")
        if rounding.is_rigorous():
            return cls._from_lu(*_rigorous_ball(t, e, lo_v, hi_v))
        lower, upper = t - e, t + e
        if lo_v is not None:
            # in place: `lower` and `upper` are fresh tensors (or eps broadcast them to x's shape)
            lower = torch.maximum(lower, lo_v) if isinstance(lo_v, torch.Tensor) else lower.clamp_min_(lo_v)
        if hi_v is not None:
            upper = torch.minimum(upper, hi_v) if isinstance(hi_v, torch.Tensor) else upper.clamp_max_(hi_v)
        return cls._from_lu(lower, upper)

    # ------------------------------------------------------------------ representations
    def _rigorous_view(self) -> None:
        # A box made outside rigorous mode and used inside it: drop the representation derived with
        # round-to-nearest and derive it again, outward, from the primary one.
        if self._cr:
            self._l = self._u = None
        else:
            self._c = self._r = None
        self._rig = True

    @property
    def lower(self) -> torch.Tensor:
        """Lower endpoints."""
        if not self._rig and rounding.is_rigorous():
            self._rigorous_view()
        if self._l is None:
            # c - r is NaN only as inf - inf (an overflowed centre with an infinite radius), and +inf
            # only for an overflowed centre c = +inf, whose true lower end may well be finite: the
            # bound is then -inf, never NaN or +inf.
            low = torch.nan_to_num(self._c - self._r, nan=-_INF, posinf=-_INF, neginf=-_INF)
            self._l = rounding.down(low) if self._rig else low
        return self._l

    @property
    def upper(self) -> torch.Tensor:
        """Upper endpoints."""
        if not self._rig and rounding.is_rigorous():
            self._rigorous_view()
        if self._u is None:
            high = torch.nan_to_num(self._c + self._r, nan=_INF, posinf=_INF, neginf=_INF)
            self._u = rounding.up(high) if self._rig else high
        return self._u

    @property
    def center(self) -> torch.Tensor:
        """Midpoints ``(lower + upper) / 2`` (computed without overflow).

        Always finite: an unbounded side (``[-inf, inf]`` gives NaN, ``[0, inf]`` gives inf)
        takes a finite stand-in, and :attr:`radius` is then infinite, so that
        ``[center - radius, center + radius]`` still contains the box.
        """
        if not self._rig and rounding.is_rigorous():
            self._rigorous_view()
        if self._c is None:
            self._c = torch.nan_to_num(torch.add(self._l * 0.5, self._u, alpha=0.5), nan=0.0)
        return self._c

    @property
    def radius(self) -> torch.Tensor:
        """Half-widths; ``[center - radius, center + radius]`` contains ``[lower, upper]``.

        Derived as ``max(upper - center, center - lower)`` so it covers both endpoints whatever
        the rounding (or underflow) of the centre.
        """
        if not self._rig and rounding.is_rigorous():
            self._rigorous_view()
        if self._r is None:
            c = self.center
            r = torch.maximum(self._u - c, c - self._l)
            # an infinite side makes the radius inf (or NaN for [inf, inf]): make it +inf
            r = torch.nan_to_num(r, nan=_INF, posinf=_INF)
            self._r = rounding.up(r) if self._rig else r
        return self._r

    @property
    def width(self) -> torch.Tensor:
        """``upper - lower``."""
        w = self.upper - self.lower
        return rounding.up(w) if self._rig else w

    def _any(self) -> torch.Tensor:
        return self._l if self._l is not None else self._c

    @property
    def shape(self) -> torch.Size:
        return self._any().shape

    @property
    def dtype(self) -> torch.dtype:
        return self._any().dtype

    @property
    def device(self) -> torch.device:
        return self._any().device

    @property
    def ndim(self) -> int:
        return self._any().dim()

    @property
    def requires_grad(self) -> bool:
        return any(t is not None and t.requires_grad for t in (self._l, self._u, self._c, self._r))

    def dim(self) -> int:
        return self._any().dim()

    def size(self, dim: int | None = None) -> Any:
        return self._any().size() if dim is None else self._any().size(dim)

    def numel(self) -> int:
        return self._any().numel()

    def __len__(self) -> int:
        return len(self._any())

    def is_point(self) -> bool:
        """True if every element is degenerate (``lower == upper``)."""
        return bool(torch.equal(self.lower, self.upper))

    # ------------------------------------------------------------------ set operations
    def contains(self, x: torch.Tensor | Interval | float) -> torch.Tensor:
        """Elementwise membership: a bool tensor, True where ``x`` (or a box ``x``) lies inside."""
        if isinstance(x, Interval):
            return (self.lower <= x.lower) & (x.upper <= self.upper)
        return (self.lower <= x) & (x <= self.upper)

    def intersection(self, other: Interval) -> Interval:
        """The elementwise intersection; raises :class:`IntervalError` if it is empty anywhere."""
        lo = torch.maximum(self.lower, other.lower)
        hi = torch.minimum(self.upper, other.upper)
        check_order(lo, hi, "intersection is empty")
        return Interval._from_lu(lo, hi)

    def hull(self, other: Interval | torch.Tensor) -> Interval:
        """The smallest box containing both ``self`` and ``other``."""
        olo, ohi = (other.lower, other.upper) if isinstance(other, Interval) else (other, other)
        return Interval._from_lu(torch.minimum(self.lower, olo), torch.maximum(self.upper, ohi))

    # ------------------------------------------------------------------ tensor plumbing
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], views: bool = True) -> Interval:
        """``fn`` applied to every stored tensor; ``views``: the results may share memory with ours."""
        out = object.__new__(Interval)
        out._l, out._u, out._c, out._r = (None if t is None else fn(t) for t in (self._l, self._u, self._c, self._r))
        out._cr, out._rig, out._alias = self._cr, self._rig, None
        if views:
            self._alias_with(out)
        return out

    # ------------------------------------------------------------------ in-place semantics
    def _alias_with(self, other: Interval) -> None:
        """Record that ``other``'s tensors may share memory with this box's (a view, slice, detach...)."""
        group = self._alias
        if group is None:
            group = self._alias = [weakref.ref(self)]
        if len(group) >= 8 and not len(group) & (len(group) - 1):  # dead views dropped at powers of two
            group[:] = [ref for ref in group if ref() is not None]
        group.append(weakref.ref(other))
        other._alias = group

    def _assign_inplace(self, result: Interval, op: str) -> Interval:
        """Make this box ``result``, in place, as torch's in-place form of ``op`` changes its tensor.

        Everyone holding this object sees the new box, as everyone holding a tensor sees an in-place
        change (the pre-activation residual block: ``relu_(x)`` before ``x`` is added back). A change
        made in place would also reach every view of the tensor, and other Intervals never see this
        one's change: an in-place op on a box that shares memory with another live box is refused.
        """
        if result is self:
            return self
        if result.shape != self.shape:  # as torch: an in-place result cannot grow its tensor
            raise IntervalError(f"{op}: the result's shape {tuple(result.shape)} does not fit the box's "
                                f"{tuple(self.shape)} (in place, broadcasting may not grow the left operand)")
        if result.dtype != self.dtype:  # as torch: the result is cast back to the left operand's dtype
            result = result.to(self.dtype)
        group = self._alias
        if group is not None and any(ref() is not None and ref() is not self for ref in group):
            raise UnsupportedInPlace(op)
        self._l, self._u, self._c, self._r = result._l, result._u, result._c, result._r
        self._cr, self._rig, self._alias = result._cr, result._rig, None
        if result._alias is not None:  # the result's tensors are views of another box's: so are ours now
            result._alias_with(self)
        return self

    def to(self, *args: Any, **kwargs: Any) -> Interval:
        """Move/cast like ``Tensor.to``. Casting to a narrower dtype rounds outward in rigorous mode."""
        out = Interval._from_lu(self.lower.to(*args, **kwargs), self.upper.to(*args, **kwargs))
        if out._l is self.lower and out._u is self.upper:
            return self  # nothing to convert: torch returns the tensor itself, so the same box
        if not out.dtype.is_floating_point:
            # float -> integer wraps out of range and float -> bool maps 0 to False: not monotone
            raise UnsupportedOperation("Tensor.to", f"casting a box to {out.dtype} is not monotone; stay in floats")
        if rounding.is_rigorous() and out.dtype != self.dtype and out.dtype.is_floating_point:
            lo, hi = rounding.cast_outward(self.lower.to(torch.float64), self.upper.to(torch.float64), out.dtype)
            out = Interval._from_lu(lo.to(out.device), hi.to(out.device))
        return out

    def half(self) -> Interval:
        return self.to(torch.float16)

    def double(self) -> Interval:
        return self.to(torch.float64)

    def float(self) -> Interval:
        return self.to(torch.float32)

    def cpu(self) -> Interval:
        return self._apply(lambda t: t.cpu())

    def cuda(self, *args: Any, **kwargs: Any) -> Interval:
        return self._apply(lambda t: t.cuda(*args, **kwargs))

    def detach(self) -> Interval:
        return self._apply(torch.Tensor.detach)

    def clone(self) -> Interval:
        return self._apply(torch.Tensor.clone, views=False)

    def __copy__(self) -> Interval:
        """``copy.copy(box)``: a box sharing memory with this one, as ``copy.copy`` of a tensor shares its
        storage (an in-place op on either is then refused while both live); see :meth:`snapshot`."""
        return self._apply(lambda t: t)

    # Pickling and deepcopy: the memory-sharing bookkeeping (weak references) stays behind; a copy made
    # this way shares nothing.
    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("_l", "_u", "_c", "_r", "_cr", "_rig")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        self._alias = None

    def snapshot(self) -> Interval:
        """An independent box with the same bounds, which later in-place changes to this box (an
        ``nn.ReLU(inplace=True)``) do not reach. Copies no tensor: boxes never write their tensors.

        Example:
            >>> box = Interval(torch.tensor([-1.0]), torch.tensor([1.0]))
            >>> before = box.snapshot()
            >>> _ = torch.nn.functional.relu(box, inplace=True)
            >>> before.lower, box.lower
            (tensor([-1.]), tensor([0.]))
        """
        return self._apply(lambda t: t, views=False)

    def requires_grad_(self, requires_grad: bool = True) -> Interval:
        """Make the stored endpoint tensors leaves that require grad."""
        for t in (self._l, self._u, self._c, self._r):
            if t is not None and t.is_leaf:
                t.requires_grad_(requires_grad)
        return self

    def __repr__(self) -> str:
        lo, hi = self.lower.detach(), self.upper.detach()
        if lo.numel() <= 8:
            return f"Interval(lower={lo.tolist()}, upper={hi.tolist()}, dtype={self.dtype})"
        return (
            f"Interval(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}, "
            f"lower in [{lo.min().item():.4g}, {lo.max().item():.4g}], "
            f"upper in [{hi.min().item():.4g}, {hi.max().item():.4g}], "
            f"max width {(hi - lo).max().item():.4g})"
        )

    def __eq__(self, other: object) -> bool:
        raise UnsupportedOperation("Interval.__eq__", "comparing intervals has no single truth value; compare bounds")

    def __ne__(self, other: object) -> bool:
        raise UnsupportedOperation("Interval.__ne__", "comparing intervals has no single truth value; compare bounds")

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise UnsupportedOperation("Interval.__bool__", "the truth value of an interval is undefined")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getattr__(self, name: str) -> Any:
        # Only reached for a missing attribute: a Tensor method without a rule names itself,
        # rather than a bare AttributeError ('Interval' object has no attribute 'sort').
        if not name.startswith("_") and hasattr(torch.Tensor, name):
            raise UnsupportedMethod(f"Tensor.{name}")
        raise AttributeError(f"'Interval' object has no attribute {name!r}")

    # ------------------------------------------------------------------ torch protocol
    @classmethod
    def __torch_function__(
        cls, func: Any, types: Sequence[type], args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        rule = RULES.get(func)
        if rule is None:
            raise UnsupportedOperation(func_name(func))
        if kwargs:
            if kwargs.get("out") is not None:
                raise UnsupportedOperation(func_name(func), "out= cannot hold an Interval; use the returned value")
            return rule(*args, **kwargs)
        return rule(*args)


def _rigorous_ball(
    t: torch.Tensor, e: float | torch.Tensor, lo: float | torch.Tensor | None, hi: float | torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    # x -/+ eps and the domain limits in float64, where a float32 x and a Python eps are exact
    # operands, then one outward step and an outward cast: eps = 0.7 is not rounded to float32
    # first, and a domain limit like 0.1 is rounded down (lower) / up (upper), never inward.
    t64 = t.to(torch.float64)
    e64 = e.to(torch.float64) if isinstance(e, torch.Tensor) else e
    low, high = rounding.down(t64 - e64), rounding.up(t64 + e64)
    if lo is not None:
        low = torch.maximum(low, torch.as_tensor(lo, dtype=torch.float64, device=t.device))
    if hi is not None:
        high = torch.minimum(high, torch.as_tensor(hi, dtype=torch.float64, device=t.device))
    return rounding.cast_outward(low, high, t.dtype)


def _check_domain(mask: torch.Tensor, what: str) -> None:
    from .errors import first_bad

    bad = first_bad(mask)
    if bad is not None:
        count, index = bad
        raise IntervalError(f"linf_ball: x lies {what} in {count} element(s), first at index {index}")


def _call(func: Any) -> Callable[..., Any]:
    def method(self: Interval, *args: Any, **kwargs: Any) -> Any:
        return Interval.__torch_function__(func, (Interval,), (self, *args), kwargs)

    method.__name__ = getattr(func, "__name__", "method")
    method.__doc__ = f"Interval version of ``{func_name(func)}``."
    return method


def _reflected(func: Any) -> Callable[..., Any]:
    def method(self: Interval, other: Any) -> Any:
        return Interval.__torch_function__(func, (Interval,), (other, self), None)

    return method


# Operators; the named Tensor methods (``x.relu()`` ...) are bound by bind_tensor_methods once the
# rules are registered, so one rule serves ``x.relu()``, ``torch.relu(x)`` and ``F.relu(x)``.
for _name, _fn in (
    ("__getitem__", torch.Tensor.__getitem__),
    ("__add__", torch.Tensor.add), ("__sub__", torch.Tensor.sub), ("__mul__", torch.Tensor.mul),
    ("__truediv__", torch.Tensor.div), ("__matmul__", torch.Tensor.matmul),
    ("__pow__", torch.Tensor.pow), ("__neg__", torch.Tensor.neg), ("__abs__", torch.Tensor.abs),
):
    setattr(Interval, _name, _call(_fn))

for _name, _fn in (
    ("__radd__", torch.Tensor.add), ("__rsub__", torch.Tensor.sub), ("__rmul__", torch.Tensor.mul),
    ("__rtruediv__", torch.Tensor.div), ("__rmatmul__", torch.Tensor.matmul),
):
    setattr(Interval, _name, _reflected(_fn))

Interval.__pos__ = lambda self: self  # type: ignore[attr-defined]


# ``box += t`` and friends: the registered in-place rules (``Tensor.__iadd__`` ... change the box itself)
for _name in ("__iadd__", "__isub__", "__imul__", "__itruediv__", "__ipow__"):
    setattr(Interval, _name, _call(getattr(torch.Tensor, _name)))


def bind_tensor_methods() -> None:
    """Give Interval every ``Tensor.<name>`` method that has a registered rule and no method yet
    (``box.cumsum(1)``, ``box.erf()``); called once the rules are registered."""
    for func in list(RULES):
        name = getattr(func, "__name__", "")
        if (
            name
            and not name.startswith("_")
            and getattr(torch.Tensor, name, None) is func
            and name not in Interval.__dict__
        ):
            setattr(Interval, name, _call(func))


def _rpow(self: Interval, base: Any) -> Interval:
    """``base ** box`` for a number ``base > 0``: monotone in the exponent."""
    if not isinstance(base, numbers.Real) or isinstance(base, bool) or not base > 0:
        raise UnsupportedOperation("Tensor.__rpow__", "only a positive number raised to an Interval is supported")
    from .rules._common import decreasing, increasing

    fn = lambda t: torch.pow(base, t)  # noqa: E731
    return increasing(fn, self) if base >= 1 else decreasing(fn, self)


Interval.__rpow__ = _rpow  # type: ignore[attr-defined]
Interval.T = property(lambda self: self.t())  # type: ignore[attr-defined]
Interval.mT = property(lambda self: self.transpose(-2, -1))  # type: ignore[attr-defined]


def _flatten(iv: Interval) -> tuple[list[torch.Tensor], None]:
    return [iv.lower, iv.upper], None


def _unflatten(children: list[torch.Tensor], _ctx: None) -> Interval:
    return Interval._from_lu(children[0], children[1])


try:  # pytree registration lets torch.func / torch.compile see through Intervals
    from torch.utils import _pytree

    _pytree.register_pytree_node(Interval, _flatten, _unflatten, serialized_type_name="intervals.Interval")
except (ImportError, AttributeError, ValueError):  # pragma: no cover - older torch
    pass
