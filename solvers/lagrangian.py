"""The perspective relaxation at layer scale: ADMM on the reverse Huber form, all rows at once.

With ``A = Q + diag(d)`` and the gates ``z`` relaxed to the convex hull of the budget
(:mod:`solvers.cardinality`), the perspective relaxation of the layer problem is

    min_V  tr((V - W) Q (V - W)^T) + Psi(V),
    Psi(V) = min_{z in hull} sum_ij d_j (V_ij^2 / z_a(ij) - 2 W_ij V_ij + W_ij^2).

Dualising each set's cardinality with a multiplier ``mu`` shared by the set (the whole layer for
an unstructured budget), the gate of an atom with ``beta^2 = sum d_j V_ij^2`` minimises
``beta^2 / z + mu z`` over [0, 1]: ``z = min(beta / sqrt(mu), 1)``, and ``Psi`` becomes the reverse
Huber penalty, ``2 sqrt(mu) beta`` below ``beta = sqrt(mu)`` and ``beta^2 + mu`` above. Its
proximal map is closed form for a given ``mu``; ``mu`` is set per set so that the gates meet the
count (complementary slackness), by a safeguarded Newton search on ``s = 1 / sqrt(mu)``, along
which the gates' sum is piecewise linear and increasing.

ADMM splits ``V = D``: the ``V`` step solves ``(2 Q + rho I)`` for all rows at once on one
eigendecomposition of ``Q`` (so changing ``rho`` is free), the ``D`` step is that proximal map,
and ``rho`` follows residual balancing. Every few steps ``X = V - W`` is a dual point whose bound
:func:`~solvers.certificate.dual_bound` is valid whatever the iterate's accuracy, and the primal
value at ``D`` bounds the relaxation from above: their gap stops the loop.

References:
    S. Boyd, N. Parikh, E. Chu, B. Peleato, J. Eckstein, "Distributed optimization and
    statistical learning via the alternating direction method of multipliers", Found. Trends
    Mach. Learn. 3 (2011) (residual balancing, 3.4.1). H. Dong, K. Chen, J. Linderoth,
    "Regularization vs. relaxation: a conic optimization perspective of statistical variable
    selection", arXiv:1510.06083 (2015) (the reverse Huber form).
"""

from __future__ import annotations

import math

import torch

from .budgets import Budget
from .cardinality import Cardinality
from .certificate import dual_bound

__all__ = ["open_gates", "relax"]

_CHECK_EVERY = 10
_BALANCE = 10.0  # residual balancing: rho doubles or halves when one residual is 10x the other
_RHO0 = 0.06  # rho starts at 0.06 * mean eigenvalue of Q (measured on digits / synthetic layers)


def open_gates(
    beta: torch.Tensor, gamma: torch.Tensor, count: int, s: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates ``z = clip(beta * s - gamma, 0, 1)`` with ``s`` per set so each set sums to ``count``.

    ``beta`` and ``gamma`` are ``(sets, set_size)``, non-negative; a set whose positive ``beta``
    fit within ``count`` opens them all (``mu = 0``). ``s`` (one per set) warm-starts the search.

    Returns:
        ``(z, s)``.
    """
    sets, size = beta.shape
    if count >= size:
        return torch.ones_like(beta), torch.full_like(beta[:, 0], math.inf)
    active = beta > 0
    fits = active.sum(dim=1) <= count
    lo = torch.zeros(sets, dtype=beta.dtype, device=beta.device)
    hi = torch.where(active, (1 + gamma) / beta.clamp_min(1e-300), 0).amax(dim=1)
    s = hi * (count / size) if s is None else torch.minimum(s.to(beta.device), hi)
    for _ in range(100):
        u = beta * s[:, None] - gamma
        excess = u.clamp(0, 1).sum(dim=1) - count
        done = fits | (excess.abs() <= 1e-12 * max(count, 1)) | (hi - lo <= 1e-15 * hi)
        if bool(done.all()):
            break
        lo = torch.where(excess < 0, s, lo)
        hi = torch.where(excess > 0, s, hi)
        slope = (beta * ((u > 0) & (u < 1))).sum(dim=1)
        newton = s - excess / slope.clamp_min(1e-300)
        inside = (slope > 0) & (newton > lo) & (newton < hi)
        s = torch.where(done, s, torch.where(inside, newton, (lo + hi) / 2))
    z = (beta * s[:, None] - gamma).clamp(0, 1)
    return torch.where(fits[:, None], active.to(z.dtype), z), s


def relax(
    W: torch.Tensor,
    A: torch.Tensor,
    d: torch.Tensor,
    budget: Budget,
    *,
    init: torch.Tensor | None = None,
    max_iter: int = 2000,
    tol: float = 1e-3,
) -> tuple[float, dict]:
    """The perspective relaxation's bound for the split ``A = Q + diag(d)``.

    Args:
        W: dense weight (out x in).
        A: ``H + lam I``.
        d: positive diagonal with ``A - diag(d)`` PSD (constant within a Structured budget's
            column groups).
        budget: the sized budget.
        init: starting ``D`` (default ``W`` on the separable bound's support).
        max_iter: ADMM steps at most.
        tol: stop when the relaxation's primal value and the best bound are within ``tol``
            (relative).

    Returns:
        ``(bound, info)``: the best :func:`~solvers.certificate.dual_bound` seen (``X = 0``
        included) and ``iterations``, ``converged``, ``history`` (``(primal, bound)`` pairs).
    """
    W, A, d = W.double(), A.double(), d.double()
    card = Cardinality.of(budget, tuple(W.shape))
    Q = A - torch.diag(d)
    q, E = torch.linalg.eigh(Q)
    q = q.clamp_min(0)
    rho = _RHO0 * float(q.mean()) or 1.0
    dW = d * W
    target = 2.0 * W @ Q  # the V step solves V (2 Q + rho I) = 2 W Q + rho (D - U)

    def prox(Y: torch.Tensor, rho: float, s):
        shrink = 2.0 * d / rho
        b = Y + shrink * W
        z, s = open_gates(card.pool(d * b * b).sqrt(), card.per_atom(shrink), card.count, s)
        Z = card.spread(z)
        return b * Z / (Z + shrink), s

    def primal(V: torch.Tensor) -> float:
        beta2 = card.pool(d * V * V)
        z, _ = open_gates(beta2.sqrt(), torch.zeros_like(beta2), card.count)
        gated = torch.where(beta2 > 0, beta2 / z, 0).sum()
        R = V - W
        return float(((R @ Q) * R).sum() + gated + (dW * (W - 2 * V)).sum())

    best = dual_bound(W, A, d, None, budget)
    D = W * budget.select(dW * W) if init is None else init.double()
    U = torch.zeros_like(W)
    history, converged, it, s = [], False, 0, None
    for it in range(1, max_iter + 1):
        V = (((target + rho * (D - U)) @ E) / (2 * q + rho)) @ E.T
        D_last = D
        D, s = prox(V + U, rho, s)
        U = U + V - D
        primal_residual = float((V - D).norm())
        dual_residual = rho * float((D - D_last).norm())
        if primal_residual > _BALANCE * dual_residual:
            rho, U, s = rho * 2, U / 2, None
        elif dual_residual > _BALANCE * primal_residual:
            rho, U, s = rho / 2, U * 2, None
        if it % _CHECK_EVERY == 0 or it == max_iter:
            best = max(best, dual_bound(W, A, d, V - W, budget))
            value = primal(D)
            history.append((value, best))
            if value - best <= tol * abs(value):
                converged = True
                break
    return best, {"iterations": it, "converged": converged, "history": history}
