"""Iterative hard thresholding: projected gradient on the budget set, with momentum.

In the diagonally scaled coordinates (:mod:`solvers.scaling`), with ``A = H~``:

    X+ = P_S(Y - eta * grad f(Y)),        grad f(Y) = 2 (Y - W0) A

from the extrapolated point ``Y = X + beta (X - X_prev)`` (Nesterov / FISTA momentum), restarted
(``beta = 0``) whenever ``f`` rises. The step starts at ``1 / L`` (``L = 2 lambda_max(A)``) and a
backtracking line search lets it grow: each step tries ``grow * eta`` and halves until the
quadratic upper bound ``f(X+) <= f(Y) + <g, X+ - Y> + ||X+ - Y||^2 / (2 eta)`` holds, which is
what guarantees descent for a projected step. ``f`` is quadratic, so the gradient at ``X+`` comes
from the same matmul as ``f(X+)`` and the gradient at ``Y`` is a combination of two known ones:
one ``out x in x in`` matmul per trial step.

Hard thresholding straight to a high sparsity locks in the first support it sees; a
continuation on the budget fixes most of that: over the first ``warmup`` iterations the count
falls from dense to the target along the cubic schedule of gradual pruning,
``c_t = c + (c_max - c) (1 - t / warmup)^3``, so weights leave one small batch at a time while the
others adapt. Once the support has not changed for ``patience`` iterations at the target count,
the iterate jumps to the optimum on that support (a CG refit, as CHITA's back-solve) and IHT goes
on from there, where a step can only swap a kept weight for a pruned one whose gradient says it is
worth more; the run stops when a refit is followed by no swap (or after ``max_refits``). As for
ADMM, :func:`solvers.safeguard.finish` keeps the scaled or the plain magnitude support when better.

References:
    Blumensath & Davies. "Iterative hard thresholding for compressed sensing." 2009.
    Zhu & Gupta. "To prune, or not to prune: exploring the efficacy of pruning for model
    compression." 2017 (the cubic sparsity schedule).
    Benbaki, Chen, Meng, Hazimeh, Ponomareva, Zhao, Mazumder. "Fast as CHITA: Neural Network
    Pruning with Combinatorial Optimization." ICML 2023.
"""

from __future__ import annotations

import torch

from .safeguard import finish

__all__ = ["iht"]


def iht(
    problem,
    *,
    max_iter: int = 500,
    momentum: bool = True,
    line_search: bool = True,
    grow: float = 1.5,
    patience: int = 10,
    warmup: int = 100,
    max_refits: int = 5,
    tol: float = 1e-3,
    init: torch.Tensor | None = None,
    swap_rounds: int = 10,
):
    """Projected gradient with momentum, restart and line search, then the refit.

    Args:
        max_iter: iteration cap (reached means ``converged=False``).
        momentum: Nesterov extrapolation with restart on ascent.
        line_search: backtracking on the step (off: the fixed step ``1 / L``).
        grow: factor each step first tries over the last accepted one (with ``line_search``).
        patience: iterations of an unchanged support that stop the run.
        warmup: iterations of the budget continuation (0: threshold to the target at once;
            at most ``max_iter``).
        max_refits: refits on intermediate supports (0: plain IHT).
        tol: relative decrease of ``f`` over ``patience`` iterations below which the support
            counts as settled even if a few weights still flip.
        swap_rounds: rounds of the swap local search on small layers
            (:mod:`solvers.swaps`; 0: none).
        init: a starting weight (default ``W``; its projection is the first iterate); a given
            start skips the warm-up.

    Returns:
        ``(weight, mask, info)``; ``info`` adds ``step`` (accepted step per iteration),
        ``restarts``, ``refits`` and ``fallback`` (the support that won, if not IHT's).
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    if not grow >= 1:
        raise ValueError(f"grow must be >= 1, got {grow!r}")
    budget = problem.budget
    target, dense = budget.count(problem.shape), budget.max_count(problem.shape)
    if init is not None:
        warmup = 0
    warmup = min(warmup, max_iter)  # the continuation ends on the budget, however short the run
    sc = problem.scaled
    A = sc.H
    lipschitz = sc.lipschitz if A.numel() else 0.0
    # A = 0 (H = 0, lam = 0: f is constant) has no step scale: any step keeps the iterate.
    eta = 1.0 / lipschitz if lipschitz > 0 else 1.0
    eta_max = 1e6 * eta  # the line search's growth stops here (an inf step would give NaN)

    def budget_at(it: int):
        if it >= warmup:
            return budget
        return budget.with_count(round(target + (dense - target) * (1 - it / warmup) ** 3))

    start = sc.W0 if init is None else sc.to_scaled(init.to(sc.W0))
    mask = budget_at(0).select(start * start)
    X = start * mask
    R = (X - sc.W0) @ A  # half the gradient at X
    f = float((R * (X - sc.W0)).sum())
    X_prev, R_prev, t = X, R, 1.0
    history, steps = [f], []
    restarts, unchanged, converged, iterations, refits, polished = 0, 0, False, 0, 0, None
    for iterations in range(1, max_iter + 1):
        current = budget_at(iterations)
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0 if momentum else 1.0
        beta = (t - 1.0) / t_next if momentum else 0.0
        Y = X + beta * (X - X_prev)
        RY = (1.0 + beta) * R - beta * R_prev
        DY = Y - sc.W0
        fY = float((RY * DY).sum())
        if line_search:
            eta = min(eta * grow, eta_max)
        while True:
            Z = Y - eta * 2.0 * RY
            new_mask = current.select(Z * Z)
            Xn = Z * new_mask
            Rn = (Xn - sc.W0) @ A
            fn = float((Rn * (Xn - sc.W0)).sum())
            step = Xn - Y
            bound = fY + 2.0 * float((RY * step).sum()) + float((step * step).sum()) / (2 * eta)
            if not line_search or fn <= bound * (1 + 1e-6) + 1e-12 or eta * lipschitz <= 1.0:
                break
            eta /= 2.0
        if fn > f and beta > 0 and iterations > warmup:  # momentum overshot: restart from X
            t, X_prev, R_prev = 1.0, X, R
            restarts += 1
            continue
        unchanged = unchanged + 1 if bool((new_mask == mask).all()) else 0
        X_prev, R_prev, X, R, mask, f, t = X, R, Xn, Rn, new_mask, fn, t_next
        history.append(f)
        steps.append(eta)
        stalled = len(history) > patience and history[-patience - 1] - f <= tol * abs(f)
        if iterations <= warmup or (unchanged < patience and not stalled):
            continue
        if polished is not None and bool((polished == mask).all()) or refits == max_refits:
            converged = polished is not None and bool((polished == mask).all())
            break
        # Support settled: jump to the optimum on it, then let IHT try swaps from there.
        X = sc.to_scaled(problem.refit(mask, method="cg", init=sc.from_scaled(X), max_iter=50))
        R = (X - sc.W0) @ A
        f = float((R * (X - sc.W0)).sum())
        X_prev, R_prev, t, unchanged, polished = X, R, 1.0, 0, mask
        refits += 1
        history.append(f)

    weight, mask, ending = finish(
        problem, mask, init=sc.from_scaled(X), swap_rounds=swap_rounds
    )
    info = {
        "iterations": iterations,
        "converged": converged,
        "history": history,
        "step": steps,
        "restarts": restarts,
        "refits": refits,
        **ending,
    }
    return weight, mask, info
