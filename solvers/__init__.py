"""The l0prune numerical engine: layer pruning problems and their solvers.

``solvers`` knows tensors, not models: a :class:`LayerProblem` holds a layer's weight ``W``, its
input second moment ``H`` and a sparsity budget; :func:`solve` runs one method on it.
It never imports ``l0prune``.
"""

from .api import METHODS, solve, solve_to_tolerance
from .budgets import NM, Budget, PerRow, Structured, Unstructured
from .problem import LayerProblem
from .solution import Solution

__all__ = [
    "METHODS",
    "NM",
    "Budget",
    "LayerProblem",
    "PerRow",
    "Solution",
    "Structured",
    "Unstructured",
    "solve",
    "solve_to_tolerance",
]
