"""The l0prune numerical engine: layer pruning problems and their solvers.

``solvers`` knows tensors, not models: a :class:`LayerProblem` holds a layer's weight ``W``, its
input second moment ``H`` and a sparsity budget; :func:`solve` runs one method on it.
It never imports ``l0prune``.
"""

from .api import method_function, methods, register_method, solve, solve_to_tolerance
from .bounds import BOUNDS, lower_bound
from .budgets import NM, Budget, PerRow, Structured, Unstructured
from .problem import LayerProblem
from .solution import Solution

__all__ = [
    "BOUNDS",
    "NM",
    "Budget",
    "LayerProblem",
    "PerRow",
    "Solution",
    "Structured",
    "Unstructured",
    "lower_bound",
    "method_function",
    "methods",
    "register_method",
    "solve",
    "solve_to_tolerance",
]
