"""Budgets whose supports stay inside a given set: a pruned weight stays pruned.

Every solver that chooses a support through the budget's ``select`` (magnitude, Wanda, OBS, IHT,
ADMM and its swap search) chooses among the allowed entries only when the budget scores the others
``-inf``: :func:`within` makes such a budget from any unstructured, per-row or structured one.
Gradual pruning solves each step from the current sparse weights under such a budget, so the
pruned set only grows.
"""

from __future__ import annotations

import copy
import math
from functools import cache

import torch

from solvers import Budget

__all__ = ["allowed_of", "within"]


class _Within:
    """Mixed into a budget class: ``select`` over the entries of ``allowed`` only."""

    allowed: torch.Tensor

    def select(self, score: torch.Tensor) -> torch.Tensor:
        allowed = self.allowed.to(score.device)
        return super().select(score.masked_fill(~allowed, -math.inf))

    def with_count(self, count: int) -> Budget:
        return within(super().with_count(count), self.allowed)


@cache
def _within_type(family: type) -> type:
    return type(f"Within{family.__name__}", (_Within, family), {})


def within(budget: Budget, allowed: torch.Tensor) -> Budget:
    """``budget`` with its supports restricted to the ``True`` entries of ``allowed``.

    Args:
        budget: a sized budget for one problem.
        allowed: boolean, the problem's ``out x in`` shape; must hold at least the budget's
            count (per row for a per-row budget).

    Returns:
        A budget of the same family and size (it compares, prints and counts like ``budget``).

    Example:
        >>> from solvers import Unstructured
        >>> allowed = torch.tensor([[True, False, True, True]])
        >>> within(Unstructured(k=2), allowed).select(torch.tensor([[1.0, 9.0, 2.0, 0.5]]))
        tensor([[ True, False,  True, False]])
    """
    family = type(budget)
    if issubclass(family, _Within):  # a restricted budget resized: restrict the family anew
        family = family.__bases__[1]
    restricted = copy.copy(budget)
    object.__setattr__(restricted, "__class__", _within_type(family))
    object.__setattr__(restricted, "allowed", allowed.bool())
    return restricted


def allowed_of(budget: Budget) -> torch.Tensor | None:
    """The entries a budget of :func:`within` may keep, or ``None`` for any other budget.

    Example:
        >>> from solvers import Unstructured
        >>> allowed_of(Unstructured(k=1)) is None, allowed_of(
        ...     within(Unstructured(k=1), torch.ones(1, 2, dtype=torch.bool))).tolist()
        (True, [[True, True]])
    """
    return budget.allowed if isinstance(budget, _Within) else None
