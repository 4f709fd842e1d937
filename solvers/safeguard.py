"""Never worse than the classic one-shot supports: a final check for the iterative solvers.

IHT and ADMM are heuristics on a non-convex set; on rare instances (a nearly diagonal ``H``, a tiny
layer) they end on a support worse than the one they started from, or than plain magnitude.
Each such support is refitted (exactly on small layers; by a few CG iterations on large ones, an
upper bound on its refitted objective) and replaces the solver's answer when it is better.
"""

from __future__ import annotations

import torch

from .magnitude import diagonal_score
from .swaps import swap_search

__all__ = ["best_of", "finish"]


def best_of(
    problem, weight: torch.Tensor, mask: torch.Tensor, candidates: dict[str, torch.Tensor],
    check_iter: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """The best of ``(weight, mask)`` and the refitted ``candidates`` (name -> support mask).

    Returns:
        ``(weight, mask, name)``; ``name`` is the winning candidate, ``None`` for the solver's own.
    """
    best, best_mask, winner = weight, mask, None
    value = problem.objective(weight)
    for name, candidate in candidates.items():
        if bool((candidate == best_mask).all()):
            continue
        trial = problem.refit(candidate, max_iter=check_iter)
        trial_value = problem.objective(trial)
        if trial_value < value:
            best, best_mask, winner, value = trial, candidate, name, trial_value
    if winner is not None:
        best = problem.refit(best_mask, init=best)
    return best, best_mask, winner


def finish(
    problem, mask: torch.Tensor, *, init: torch.Tensor | None = None,
    swap_rounds: int = 10, max_iter: int = 200,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The common end of the iterative solvers: refit on ``mask`` (from ``init``), the swap
    search, then :func:`best_of` the two classic one-shot supports, ``(H_jj + lam) W_ij**2``
    (the exact answer for a diagonal ``H``) and ``|W_ij|``.

    Returns:
        ``(weight, mask, info)`` with ``info`` holding ``swaps`` and ``fallback``.
    """
    weight = problem.refit(mask, init=init, max_iter=max_iter)
    weight, mask, swaps = swap_search(problem, weight, mask, rounds=swap_rounds)
    candidates = {
        "diagonal": problem.budget.select(diagonal_score(problem)),
        "magnitude": problem.budget.select(problem.W * problem.W),
    }
    weight, mask, fallback = best_of(problem, weight, mask, candidates)
    return weight, mask, {"swaps": swaps, "fallback": fallback}
