"""The certificate: a lower bound on the layer optimum from any point ``X``, by duality.

Split ``A = H + lam I = Q + diag(d)`` with ``Q`` PSD and ``d > 0`` (:mod:`solvers.diagonal`).
For any ``X`` (out x in), with ``P = X Q``, row by row ``(v - w - x)^T Q (v - w - x) >= 0`` gives

    (v - w)^T Q (v - w) >= 2 p^T (v - w) - x^T Q x,

and what is left separates by weight: keeping weight ``ij`` costs at best
``min_v 2 P_ij v + d_j (v - W_ij)^2 = 2 P_ij W_ij - P_ij^2 / d_j``, dropping it costs
``d_j W_ij^2``, so keeping it saves ``g_ij = (d_j W_ij - P_ij)^2 / d_j >= 0``. The support of the
budget with the largest saving is ``budget.select(g)``, exactly, for every budget. Hence

    f* >= LB(X) = -<P, X> - 2 <P, W> + sum_ij d_j W_ij^2 - max_{S in budget} sum_{ij in S} g_ij.

``LB(0)`` is the separable bound (the smallest ``d_j W_ij^2`` the budget must drop). ``LB`` is
concave, and it is the Fenchel dual of the perspective relaxation: at ``X = V* - W`` for the
relaxation's optimum ``V*`` it equals the relaxation's value. For an unstructured budget the max is
the sum of the ``k`` largest savings, i.e. the Lagrangian bound ``sum_ij min(d_j W_ij^2,
2 P_ij W_ij - P_ij^2/d_j + mu) - mu k`` at its best shared multiplier ``mu`` (the ``k``-th largest
saving). Whatever produced ``X``, ``LB(X)`` is a valid bound: validity never rests on a solver's
accuracy, only on ``Q`` being PSD.

References:
    H. Dong, K. Chen, J. Linderoth, "Regularization vs. relaxation: a conic optimization
    perspective of statistical variable selection", arXiv:1510.06083 (2015).
"""

from __future__ import annotations

import torch

from .budgets import Budget

__all__ = ["dual_bound"]

#: Relative allowance for float64 rounding in the sums, taken off every bound.
ROUNDING = 1e-9


def dual_bound(
    W: torch.Tensor, A: torch.Tensor, d: torch.Tensor, X: torch.Tensor | None, budget: Budget
) -> float:
    """``LB(X)`` (see the module docstring), less a rounding allowance; never below 0.

    Args:
        W: the dense weight, out x in.
        A: ``H + lam I``.
        d: the diagonal split off ``A`` (``A - diag(d)`` PSD), all positive.
        X: the dual point (out x in); ``None`` for 0, the separable bound.
        budget: the sized budget.
    """
    W, A, d = W.double(), A.double(), d.double()
    drop = d * W * W
    if X is None:
        P = torch.zeros_like(W)
        quadratic = torch.zeros((), dtype=torch.float64, device=W.device)
        scale = drop.sum()
    else:
        X = X.double()
        P = X @ (A - torch.diag(d))
        quadratic = -(P * X).sum() - 2 * (P * W).sum()
        scale = (P * X).abs().sum() + 2 * (P * W).abs().sum() + drop.sum()
    saving = (d * W - P) ** 2 / d
    kept = (saving * budget.select(saving)).sum()
    value = quadratic + drop.sum() - kept
    return max(float(value - ROUNDING * (scale + kept)), 0.0)
