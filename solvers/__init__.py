"""The l0prune numerical engine: layer pruning problems and their solvers.

``solvers`` knows tensors, not models: a :class:`LayerProblem` holds a layer's weight ``W``, its
input second moment ``H`` and a sparsity budget; :func:`solve` runs one method on it, and
:func:`solve_many` many problems at once, here or on an executor (a process pool, a dask
cluster: imported only when one is given).
It never imports ``l0prune``.
"""

from .api import method_function, methods, register_method, solve, solve_to_tolerance
from .bounds import BOUNDS, lower_bound
from .budgets import NM, Budget, PerRow, Structured, Unstructured
from .many import solve_many
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
    "solve_many",
    "solve_to_tolerance",
]
