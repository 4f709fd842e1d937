"""Never worse than the classic one-shot supports: a final check for the iterative solvers.

IHT and ADMM are heuristics on a non-convex set; on rare instances (a nearly diagonal ``H``, a tiny
layer) they end on a support worse than the one they started from, or than plain magnitude.
Each such support is refitted (exactly on small layers; by a few CG iterations on large ones, an
upper bound on its refitted objective) and replaces the solver's answer when it is better.

On large layers those CG refits are a fixed cost of about twenty ``out x in x in`` products.
Given a lower bound on the smallest eigenvalue of the scaled ``H~`` (``curvature``, free from
the eigendecomposition ADMM and IHT already hold), each CG iteration also proves a lower bound on
the candidate's optimum (:func:`solvers.refit.refit`, ``above=``); a candidate proven worse than
the solver's answer is dropped at once. The decision is the one the full check would make, so
results do not change; it saves most where a candidate is far above the solver's answer
(``l0prune bench admm`` times the safeguard with and without it).
"""

from __future__ import annotations

import torch

from .magnitude import diagonal_score
from .swaps import swap_search

__all__ = ["best_of", "curvature", "finish"]


def curvature(eigenvalues: torch.Tensor) -> float:
    """A lower bound on ``lambda_min`` of the scaled ``H~`` whose ``eigenvalues`` were computed.

    The scaled matrix is formed in float32 with unit diagonal (so ``|H~_ij| <= 1``): each entry
    carries at most a few ulps of rounding, a perturbation of spectral norm at most
    ``n * 2^-21``, which (Weyl) is taken off the computed smallest eigenvalue.
    """
    if not eigenvalues.numel():
        return 0.0
    return float(eigenvalues[0]) - eigenvalues.numel() * 2.0**-21


def best_of(
    problem, weight: torch.Tensor, mask: torch.Tensor, candidates: dict[str, torch.Tensor],
    check_iter: int = 10, curvature: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """The best of ``(weight, mask)`` and the refitted ``candidates`` (name -> support mask).

    Args:
        check_iter: CG iterations of a candidate's check (an upper bound on its optimum).
        curvature: a lower bound on ``lambda_min(H~)`` (:func:`curvature`); ``> 0`` lets a
            check stop as soon as the candidate is proven worse.

    Returns:
        ``(weight, mask, name)``; ``name`` is the winning candidate, ``None`` for the solver's own.
    """
    best, best_mask, winner = weight, mask, None
    value = problem.objective(weight)
    for name, candidate in candidates.items():
        if bool((candidate == best_mask).all()):
            continue
        trial = problem.refit(candidate, max_iter=check_iter, above=value, curvature=curvature)
        if trial is None:  # proven worse than the best so far
            continue
        trial_value = problem.objective(trial)
        if trial_value < value:
            best, best_mask, winner, value = trial, candidate, name, trial_value
    if winner is not None:
        best = problem.refit(best_mask, init=best)
    return best, best_mask, winner


def finish(
    problem, mask: torch.Tensor, *, init: torch.Tensor | None = None,
    swap_rounds: int = 10, swap_flops: float = 5e8, max_iter: int = 200,
    curvature: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The common end of the iterative solvers: refit on ``mask`` (from ``init``), the swap
    search (where its cost measure is under ``swap_flops``, :func:`solvers.swaps.swap_search`),
    then :func:`best_of` the two classic one-shot supports, ``(H_jj + lam) W_ij**2``
    (the exact answer for a diagonal ``H``) and ``|W_ij|``; ``curvature`` as for :func:`best_of`.

    Returns:
        ``(weight, mask, info)`` with ``info`` holding ``swaps`` and ``fallback``.
    """
    weight = problem.refit(mask, init=init, max_iter=max_iter)
    weight, mask, swaps = swap_search(problem, weight, mask, rounds=swap_rounds,
                                      max_flops=swap_flops)
    candidates = {
        "diagonal": problem.budget.select(diagonal_score(problem)),
        "magnitude": problem.budget.select(problem.W * problem.W),
    }
    weight, mask, fallback = best_of(problem, weight, mask, candidates, curvature=curvature)
    return weight, mask, {"swaps": swaps, "fallback": fallback}
