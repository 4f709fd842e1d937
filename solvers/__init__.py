"""The l0prune numerical engine: layer pruning problems and their solvers.

``solvers`` knows tensors, not models: a :class:`LayerProblem` holds a layer's weight ``W``, its
input second moment ``H`` and a sparsity budget; :func:`solve` runs one method on it, and
:func:`solve_many` many problems at once, here or on an executor (a process pool, a dask
cluster: imported only when one is given).
It never imports ``l0prune``.

The names below load on first use (``import solvers`` alone imports no torch), so that a tool
can list the methods (:func:`methods`) without loading a solver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: Each public name and the module that defines it.
_WHERE = {
    "MethodInfo": "registry", "method_function": "registry", "method_info": "registry",
    "methods": "registry", "register_method": "registry",
    "solve": "api", "solve_to_tolerance": "api",
    "BOUNDS": "bounds", "lower_bound": "bounds",
    "NM": "budgets", "Budget": "budgets", "PerRow": "budgets", "Structured": "budgets",
    "Unstructured": "budgets", "kept_at": "budgets", "parse_budget": "budgets",
    "solve_many": "many",
    "LayerProblem": "problem",
    "Solution": "solution",
}

__all__ = [
    "BOUNDS",
    "Budget",
    "LayerProblem",
    "MethodInfo",
    "NM",
    "PerRow",
    "Solution",
    "Structured",
    "Unstructured",
    "kept_at",
    "lower_bound",
    "method_function",
    "method_info",
    "methods",
    "parse_budget",
    "register_method",
    "solve",
    "solve_many",
    "solve_to_tolerance",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'solvers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"solvers.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what the names are, for type checkers and documentation tools
    from .api import solve, solve_to_tolerance
    from .bounds import BOUNDS, lower_bound
    from .budgets import NM, Budget, PerRow, Structured, Unstructured, kept_at, parse_budget
    from .many import solve_many
    from .problem import LayerProblem
    from .registry import MethodInfo, method_function, method_info, methods, register_method
    from .solution import Solution
