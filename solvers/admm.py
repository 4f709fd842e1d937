"""ADMM for the layer problem, with the adaptive penalty of ALPS.

Split ``W = D`` with ``D`` in the budget set ``S`` and run, in the diagonally scaled coordinates
(:mod:`solvers.scaling`), with ``A = H~`` (unit diagonal):

    W <- (A + rho I)^-1 (A W0 - V + rho D)
    D <- P_S(W + V / rho)
    V <- V + rho (W - D)

``A = Q diag(e) Q^T`` is factored once; ``W`` and ``V`` live in the eigenbasis, where the first
step is a division by ``e + rho``, so each iteration costs two ``out x in x in`` matmuls (back to
the original basis for the projection, and ``D`` into the eigenbasis) whatever ``rho`` does.

``rho`` starts small (the iterates explore supports) and grows with the support's movement: every
``check_every`` iterations the number ``c`` of weights that entered or left the support since the
last check sets the factor (``c >= 0.1 k``, ``c >= 0.005 k``, ``c >= 1``; ``k`` weights kept). The
run stops once the support has been stable for ``patience`` consecutive checks; the weights are then
refitted on the support by batched preconditioned CG from ``D``. ADMM on this non-convex set is a
heuristic, and from a small ``rho`` its dual can carry it away from a start that was already optimal
(a diagonal ``H``, where the start is the exact answer): :func:`solvers.safeguard.finish` keeps
that support or the magnitude one, refitted, when either is better.

Schedules (``schedule=``):

- ``"alps"``: the published one: factors 1.3 / 1.2 / 1.1, stop at the first stable check.
- ``"default"``: slower growth (1.1 / 1.05 / 1.03) and two stable checks to stop: about three
  times the iterations at moderate ``rho``, where the support still improves; with the swap
  search, 1-3 % below the published schedule (without it) in mean relative error
  (``python -m l0prune.bench solvers``).

References:
    Meng, Behdin, Wang, Mazumder. "ALPS: Improved Optimization for Highly Sparse One-Shot
    Pruning for Large Language Models." NeurIPS 2024.
    Boyd et al. "Distributed Optimization and Statistical Learning via the Alternating Direction
    Method of Multipliers." 2011.
"""

from __future__ import annotations

import torch

from .safeguard import finish

__all__ = ["admm", "SCHEDULES"]

#: name -> (growth factors for the three movement levels, consecutive stable checks to stop)
SCHEDULES = {
    "alps": ((1.3, 1.2, 1.1), 1),
    "default": ((1.1, 1.05, 1.03), 2),
}


def admm(
    problem,
    *,
    schedule: str = "default",
    rho0: float = 0.01,
    check_every: int = 3,
    max_iter: int = 500,
    init: torch.Tensor | None = None,
    swap_rounds: int = 10,
    refit_iter: int = 100,
):
    """ADMM with the adaptive penalty schedule, then a PCG refit on the support found.

    Args:
        schedule: ``"default"`` or ``"alps"`` (the published schedule; see the module docstring).
        rho0: initial penalty, in the scaled coordinates (where ``diag H~ = 1``). Most of the
            spectrum of ``H~`` lies far below its mean of 1 on real layers, and while ``rho``
            dominates those eigenvalues the ``W``-step barely leaves ``D``: from 0.1 the support
            hardly moved, and from 0.01 the error was 0.58-1.0 times that from 0.1 on the
            benchmark layers, never higher (0.003 was no better).
        check_every: iterations between two support-movement checks.
        max_iter: iteration cap (reached means ``converged=False``).
        swap_rounds: rounds of the swap local search on small layers
            (:mod:`solvers.swaps`; 0: none).
        init: a starting weight (e.g. a solution at a nearby sparsity); default ``W``.
        refit_iter: PCG iterations for the final refit.

    Returns:
        ``(weight, mask, info)``; ``info`` adds ``rho`` (per iteration), ``support_changes``
        (per check), ``swaps`` and ``fallback`` (``"diagonal"`` or ``"magnitude"`` when that support
        won).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if not rho0 > 0:
        raise ValueError(f"rho0 must be > 0, got {rho0!r}")
    (fast, medium, slow), patience = SCHEDULES[schedule]
    budget = problem.budget
    kept = max(budget.kept(problem.shape), 1)
    sc = problem.scaled
    e, Q = sc.eigh

    W0_eig = sc.W0 @ Q
    B_eig = W0_eig * e  # (A W0)^T in the eigenbasis, row-wise: W0 A Q = W0 Q diag(e)
    start = sc.W0 if init is None else sc.to_scaled(init.to(sc.W0))
    mask = budget.select(start * start)
    D = start * mask
    D_eig = D @ Q
    V_eig = torch.zeros_like(D_eig)
    rho = rho0
    checked_mask = mask
    history, rhos, changes = [], [], []
    stable, converged, iterations = 0, False, 0
    for iterations in range(1, max_iter + 1):
        W_eig = (B_eig - V_eig + rho * D_eig) / (e + rho)
        Z = (W_eig + V_eig / rho) @ Q.T
        mask = budget.select(Z * Z)
        D = Z * mask
        D_eig = D @ Q
        V_eig = V_eig + rho * (W_eig - D_eig)
        diff = D_eig - W0_eig
        history.append(float((diff * diff * e).sum()))
        rhos.append(rho)
        if iterations % check_every:
            continue
        moved = int((mask != checked_mask).sum())
        checked_mask = mask
        changes.append(moved)
        if moved == 0:
            stable += 1
            if stable >= patience:
                converged = True
                break
            continue
        stable = 0
        rho *= fast if moved >= 0.1 * kept else medium if moved >= 0.005 * kept else slow

    weight, mask, ending = finish(
        problem, mask, init=sc.from_scaled(D), swap_rounds=swap_rounds, max_iter=refit_iter
    )
    info = {
        "iterations": iterations,
        "converged": converged,
        "history": history,
        "rho": rhos,
        "support_changes": changes,
        **ending,
    }
    return weight, mask, info
