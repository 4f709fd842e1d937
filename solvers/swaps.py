"""Local search on the support: swaps scored by their exact one-sided costs.

At the refitted weights ``w`` (optimal on the support ``S``) with ``R = (w - W)(H + lam I)`` (half
the gradient, zero on ``S``):

- removing a kept weight ``j`` and refitting the rest of its row costs exactly
  ``w_j**2 / [((H + lam I)_SS)^-1]_jj`` (the OBS saliency);
- adding a pruned weight ``i`` with its row refitted lowers ``f`` by exactly ``R_i**2 / s_i``,
  ``s_i`` the Schur complement of ``(H + lam I)_SS`` in the support grown by ``i``.

Both are in units of ``f``, so one score per weight (cost for kept, gain for pruned) goes through
the budget's ``select``: the new support keeps whatever is worth more, for every budget type. The
swap set is refitted and accepted only if ``f`` drops; otherwise kept weights get a handicap
(``1 + tau``) and fewer swaps are tried. The costs need a factorisation of each row's ``H_SS``, so
the search runs only where that is cheap (``out * width**2 * in`` under ``max_flops``).
"""

from __future__ import annotations

import torch

from .refit import swap_costs

__all__ = ["swap_search"]

_HANDICAPS = (0.0, 1.0, 4.0)


def swap_search(
    problem, weight: torch.Tensor, mask: torch.Tensor, *, rounds: int = 10,
    max_flops: float = 5e8,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Improve ``(weight, mask)`` (refitted) by rounds of scored swaps.

    Returns:
        ``(weight, mask, swaps_accepted)``; unchanged when the layer is too large.
    """
    width = int(mask.sum(dim=1).max()) if mask.numel() else 0
    if problem.identity or rounds <= 0 or mask.numel() * width**2 > max_flops:
        return weight, mask, 0
    A = problem.damped
    f = problem.objective(weight)
    accepted = 0
    for _ in range(rounds):
        R = (weight - problem.W) @ A
        inverse, schur = swap_costs(problem, mask)
        removal = weight * weight / inverse.clamp_min(1e-30)
        gain = R * R / schur.clamp_min(1e-30)
        for tau in _HANDICAPS:
            candidate = problem.budget.select(torch.where(mask, removal * (1 + tau), gain))
            if bool((candidate == mask).all()):
                return weight, mask, accepted
            trial = problem.refit(candidate)
            trial_f = problem.objective(trial)
            if trial_f < f * (1 - 1e-9):
                weight, mask, f = trial, candidate, trial_f
                accepted += 1
                break
        else:
            break
    return weight, mask, accepted
