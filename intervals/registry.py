"""The table from torch functions to interval rules.

A rule is registered for every spelling torch may hand to ``__torch_function__`` (``torch.relu``,
``F.relu``, ``Tensor.relu`` ...). Lookup misses raise :class:`UnsupportedOperation`; nothing is
ever approximated silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import UnsupportedOperation

__all__ = ["RULES", "implements", "lookup", "supported_functions", "func_name"]

Rule = Callable[..., Any]
RULES: dict[Any, Rule] = {}


def implements(*funcs: Any) -> Callable[[Rule], Rule]:
    """Register ``rule`` as the interval rule of each of ``funcs``.

    Example (``my_op`` stands for a torch function; registering a real one replaces its rule):
        >>> def my_op(x): ...
        >>> @implements(my_op)
        ... def _my_op_rule(x):
        ...     return x
        >>> lookup(my_op) is _my_op_rule
        True
    """

    def deco(rule: Rule) -> Rule:
        for f in funcs:
            if f is None:
                continue
            RULES[f] = rule
        return rule

    return deco


def func_name(func: Any) -> str:
    """A readable name for a torch callable: ``torch.nn.functional.relu``, ``Tensor.add`` ..."""
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    module = getattr(func, "__module__", None)
    if qual.startswith("TensorBase."):
        qual = "Tensor." + qual[len("TensorBase."):]
    if qual.startswith("_VariableFunctionsClass."):
        qual = qual[len("_VariableFunctionsClass."):]
    if qual.startswith("Tensor.") or not module:
        return qual
    if module.startswith("torch._C._nn"):
        module = "torch.nn.functional"
    elif module.startswith("torch._C") or module == "torch._VariableFunctions":
        module = "torch"
    if qual.startswith("boolean_dispatch"):
        qual = getattr(func, "__name__", qual)
    return f"{module}.{qual}"


def lookup(func: Any) -> Rule:
    """Return the rule for ``func`` or raise :class:`UnsupportedOperation` naming it."""
    rule = RULES.get(func)
    if rule is None:
        raise UnsupportedOperation(func_name(func))
    return rule


def supported_functions() -> list[str]:
    """Sorted names of every torch function that has an interval rule."""
    return sorted({func_name(f) for f in RULES})
