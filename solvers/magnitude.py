"""Score-based pruning: magnitude and Wanda, each optionally followed by the refit.

Both keep the budget's best support for a per-weight score and copy ``W`` onto it.

- ``magnitude`` scores ``W_ij**2`` (``(H_jj + lam) W_ij**2`` when ``H`` is diagonal). With a
  diagonal ``H`` the layer problem separates by weight, so this support is exactly optimal: the
  plain Frobenius problem is solved by magnitude pruning.
- ``wanda`` scores ``|W_ij| * ||X_j||``, i.e. ``H_jj W_ij**2`` squared-root-free, the exact
  answer under the diagonal approximation of ``H`` (Sun, Liu, Bair & Kolter, "A Simple and
  Effective Pruning Approach for Large Language Models", 2023). Wanda itself makes no weight
  update; ``refit=True`` adds the optimal one.
"""

from __future__ import annotations

import torch

__all__ = ["magnitude", "wanda", "diagonal_score"]


def diagonal_score(problem) -> torch.Tensor:
    """``(H_jj + lam) W_ij**2``: each weight's exact removal cost when ``H`` is diagonal."""
    return problem.W * problem.W * problem.damped_diagonal[None, :]


def _is_diagonal(H: torch.Tensor) -> bool:
    return bool(torch.count_nonzero(H - torch.diag(H.diagonal())) == 0)


def _keep(problem, score: torch.Tensor, refit: bool):
    mask = problem.budget.select(score)
    weight = problem.refit(mask) if refit else problem.W * mask
    return weight, mask, {"iterations": 0, "converged": True, "history": []}


def magnitude(problem, *, refit: bool = False):
    """Keep the largest ``|W_ij|`` (``(H_jj + lam) W_ij**2`` for a diagonal ``H``).

    Args:
        refit: replace the kept weights by the optimal ones on the support.
    """
    if problem.identity or problem.diagonal or _is_diagonal(problem.H):
        score = diagonal_score(problem)
    else:
        score = problem.W * problem.W
    return _keep(problem, score, refit)


def wanda(problem, *, refit: bool = False):
    """Keep the largest ``|W_ij| * sqrt(H_jj)`` (Wanda's score) under the problem's budget.

    Args:
        refit: replace the kept weights by the optimal ones on the support.
    """
    return _keep(problem, problem.W * problem.W * problem.H_diagonal[None, :], refit)
