"""The certificate: a lower bound on the layer optimum from any point ``X``, by duality.

Split ``A = H + lam I = Q + diag(d)`` with ``Q`` PSD and ``d > 0`` (:mod:`solvers.diagonal`); each
row may have its own split ``d_i`` (``Q_i = A - diag(d_i)``), which is what the SDP bound
(:mod:`solvers.row_sdp`) optimises. For any ``X`` (out x in), with ``p = Q_i x`` in row ``i``,
``(v - w - x)^T Q_i (v - w - x) >= 0`` gives

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

The same holds row by row for a row's own budget (:func:`row_bounds`): ``count`` gates open in each
set of ``set_size`` inputs, or, for the penalised row problem ``min f_i(v) + tau ||v||_0``, a
saving ``(g_ij - tau)_+`` per weight.

References:
    H. Dong, K. Chen, J. Linderoth, "Regularization vs. relaxation: a conic optimization
    perspective of statistical variable selection", arXiv:1510.06083 (2015).
"""

from __future__ import annotations

import torch

from .budgets import Budget

__all__ = ["dual_bound", "row_bounds"]

#: Relative allowance for float64 rounding in the sums, taken off every bound.
ROUNDING = 1e-9


def dual_bound(
    W: torch.Tensor, A: torch.Tensor, d: torch.Tensor, X: torch.Tensor | None, budget: Budget
) -> float:
    """``LB(X)`` (see the module docstring), less a rounding allowance; never below 0.

    Args:
        W: the dense weight, out x in.
        A: ``H + lam I``.
        d: the diagonal split off ``A`` (``A - diag(d)`` PSD), all positive: one for the layer
            (``in``) or one per row (out x in, each row's ``A - diag(d_i)`` PSD).
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
        P = X @ A - X * d
        quadratic = -(P * X).sum() - 2 * (P * W).sum()
        scale = (P * X).abs().sum() + 2 * (P * W).abs().sum() + drop.sum()
    saving = (d * W - P) ** 2 / d
    kept = (saving * budget.select(saving)).sum()
    value = quadratic + drop.sum() - kept
    return max(float(value - ROUNDING * (scale + kept)), 0.0)


def row_bounds(
    W: torch.Tensor,
    A: torch.Tensor,
    d: torch.Tensor,
    X: torch.Tensor,
    set_size: int,
    count: torch.Tensor | None = None,
    penalty: torch.Tensor | None = None,
    shared: torch.Tensor | None = None,
) -> torch.Tensor:
    """``LB(X)`` of each row's own problem (or group of rows), batched, less a rounding allowance.

    Args:
        W: the rows, ``(b, n)``.
        A: ``H + lam I`` of every row ``(n, n)``, or one per row ``(b, n, n)``.
        d: each row's diagonal, ``(b, n)``, positive, every ``A_i - diag(d_i)`` PSD.
        X: the dual points, ``(b, n)``.
        set_size: the inputs of one counting set (``n`` for a row budget, ``m`` for N:M).
        count: gates allowed per set, ``(b, n / set_size)``; or
        penalty: ``tau`` per set, ``(b, n / set_size)``: bounds on ``min f_i(v) + tau ||v||_0``; or
        shared: a count per group of rows, ``(G,)``, the rows in ``G`` equal consecutive groups
            (a layer budget on each group; ``set_size == n``).

    Returns:
        ``(b,)`` bounds, or ``(G,)`` when shared (not clipped at 0: a penalised bound may be
        negative).
    """
    W, A, d, X = W.double(), A.double(), d.double(), X.double()
    b, n = W.shape
    P = (X.unsqueeze(-2) @ A).squeeze(-2) - X * d
    drop = d * W * W
    saving = ((d * W - P) ** 2 / d).reshape(b, n // set_size, set_size)
    if shared is not None:
        ranked = saving.reshape(len(shared), -1).sort(dim=1, descending=True).values
        open_ = torch.arange(ranked.shape[1], device=W.device) < shared.unsqueeze(-1)
        kept = (ranked * open_).sum(1)
    elif penalty is None:
        ranked = saving.sort(dim=-1, descending=True).values
        open_ = torch.arange(set_size, device=W.device) < count.unsqueeze(-1)
        kept = (ranked * open_).sum(dim=(1, 2))
    else:
        kept = (saving - penalty.unsqueeze(-1)).clamp_min(0).sum(dim=(1, 2))
    rows = -(P * X).sum(1) - 2 * (P * W).sum(1) + drop.sum(1)
    scale = (P * X).abs().sum(1) + 2 * (P * W).abs().sum(1) + drop.sum(1)
    if shared is not None:
        rows, scale = rows.reshape(len(shared), -1).sum(1), scale.reshape(len(shared), -1).sum(1)
    return rows - kept - ROUNDING * (scale + kept.abs())
