"""Iterative hard thresholding: projected gradient on the budget set, with momentum.

In the diagonally scaled coordinates (:mod:`solvers.scaling`), with ``A = H~``:

    X+ = P_S(Y - eta * grad f(Y)),        grad f(Y) = 2 (Y - W0) A

from the extrapolated point ``Y = X + beta (X - X_prev)`` (Nesterov / FISTA momentum), restarted
(``beta = 0``) whenever ``f`` rises. The step starts at ``1 / L`` (``L = 2 lambda_max(A)``) and a
backtracking line search lets it grow: a step that fits the quadratic upper bound
``f(X+) <= f(Y) + <g, X+ - Y> + ||X+ - Y||^2 / (2 eta)`` (what guarantees descent for a projected
step; any ``eta <= 1 / L`` fits) is accepted and the next trial tries ``grow * eta``; one that does
not is rejected and the next trial, from the same ``Y``, halves it. ``f`` is quadratic, so the
gradient at ``X+`` comes from the same matmul as ``f(X+)`` and the gradient at ``Y`` is a
combination of two known ones: one ``out x in x in`` matmul per trial step, and an iteration is
one trial.

The loop never waits for the device inside an iteration. ``f``, the step, the momentum ``t`` and
the count of accepted steps with an unchanged support are 0-d tensors; the bound test, the restart
test (``f(X+) > f(X)`` with ``beta > 0``) and the resulting accept / reject / restart are masks that
``torch.where`` applies to the iterate, so every trial runs the same kernels whatever it decides.
Every ``check_every`` trials (and at the last) one read brings back ``f``, the step and the
decisions of the trials since the last check, with the support counter: the host builds
``history`` from them and decides there on the refits and the stop, which therefore come up to
``check_every - 1`` trials after the support settled. The start, each check and each refit are the
only reads IHT itself makes (the refit's CG and the final safeguard read the device on their own,
outside the iterations).

Hard thresholding straight to a high sparsity locks in the first support it sees; a
continuation on the budget fixes most of that: over the first ``warmup`` iterations the count
falls from dense to the target along the cubic schedule of gradual pruning,
``c_t = c + (c_max - c) (1 - t / warmup)^3``, so weights leave one small batch at a time while the
others adapt. The warm-up takes the fixed step ``1 / L``, which always fits: the line search
rejects about a third of its trials on the benchmark layers, and each rejection would skip a count
of the schedule. Once the support has not changed for ``patience`` accepted steps at the target
count, the iterate jumps to the optimum on that support (a CG refit, as CHITA's back-solve) and
IHT goes on from there, where a step can only swap a kept weight for a pruned one whose gradient
says it is worth more; the run stops when a refit is followed by no swap (or after
``max_refits``). As for ADMM, :func:`solvers.safeguard.finish` keeps the scaled or the plain
magnitude support when better.

References:
    Blumensath & Davies. "Iterative hard thresholding for compressed sensing." 2009.
    Zhu & Gupta. "To prune, or not to prune: exploring the efficacy of pruning for model
    compression." 2017 (the cubic sparsity schedule).
    Benbaki, Chen, Meng, Hazimeh, Ponomareva, Zhao, Mazumder. "Fast as CHITA: Neural Network
    Pruning with Combinatorial Optimization." ICML 2023.
"""

from __future__ import annotations

import torch

from .safeguard import curvature, finish

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
    check_every: int = 10,
):
    """Projected gradient with momentum, restart and line search, then the refit.

    Args:
        max_iter: cap on trial steps, accepted or not (reached means ``converged=False``).
        momentum: Nesterov extrapolation with restart on ascent.
        line_search: backtracking on the step (off: the fixed step ``1 / L``).
        grow: factor each step first tries over the last accepted one (with ``line_search``).
        patience: accepted steps of an unchanged support that settle it.
        warmup: trial steps of the budget continuation (0: threshold to the target at once;
            at most ``max_iter``).
        max_refits: refits on intermediate supports (0: plain IHT).
        tol: relative decrease of ``f`` over ``patience`` accepted steps below which the support
            counts as settled even if a few weights still flip.
        init: a starting weight (default ``W``; its projection is the first iterate); a given
            start skips the warm-up.
        swap_rounds: rounds of the swap local search on small layers
            (:mod:`solvers.swaps`; 0: none).
        check_every: trial steps between two reads from the device (stopping, refits).

    Returns:
        ``(weight, mask, info)``; ``info`` adds ``step`` (step of each accepted trial),
        ``restarts``, ``refits`` and ``fallback`` (the support that won, if not IHT's);
        ``iterations`` counts trial steps and ``history`` holds ``f`` at the start, after each
        trial step (a rejected one repeats it) and after each refit.

    Example:
        >>> import torch
        >>> from solvers import LayerProblem, solve
        >>> W = torch.randn(16, 32); X = torch.randn(256, 32)
        >>> problem = LayerProblem.from_inputs(W, X, sparsity=0.75)
        >>> solution = solve(problem, "iht", check_every=5)
        >>> magnitude = solve(problem, "magnitude", refit=True)
        >>> int(solution.mask.sum()), solution.relative_error <= magnitude.relative_error
        (128, True)
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    if not grow >= 1:
        raise ValueError(f"grow must be >= 1, got {grow!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
    budget = problem.budget
    target, dense = budget.count(problem.shape), budget.max_count(problem.shape)
    if init is not None:
        warmup = 0
    warmup = min(warmup, max_iter)  # the continuation ends on the budget, however short the run
    sc = problem.scaled
    A, W0 = sc.H, sc.W0
    lipschitz = sc.lipschitz if A.numel() else 0.0
    # A = 0 (H = 0, lam = 0: f is constant) has no step scale: any step keeps the iterate.
    base_step = 1.0 / lipschitz if lipschitz > 0 else 1.0
    max_step = 1e6 * base_step  # the line search's growth stops here (an inf step would give NaN)

    def budget_at(it: int):
        if it >= warmup:
            return budget
        return budget.with_count(round(target + (dense - target) * (1 - it / warmup) ** 3))

    def scalar(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float64, device=W0.device)

    def energy(R: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        return (R * D).sum().double()

    start = W0 if init is None else sc.to_scaled(init.to(W0))
    mask = budget_at(0).select(start * start)
    X = start * mask
    R = (X - W0) @ A  # half the gradient at X
    f = energy(R, X - W0)
    X_prev, R_prev, t = X, R, scalar(1.0)
    eta = scalar(min(base_step * grow, max_step) if line_search else base_step)  # next trial
    unchanged = torch.zeros((), dtype=torch.int64, device=W0.device)
    zero, one, fixed_step = scalar(0.0), scalar(1.0), scalar(base_step)
    descent = [float(f)]  # f after the start, each accepted step and each refit
    history, steps, trials = list(descent), [], []
    restarts, converged, iterations, refits, polished = 0, False, 0, 0, None
    for iterations in range(1, max_iter + 1):
        current = budget_at(iterations)
        if momentum:
            t_next = (1.0 + (1.0 + 4.0 * t * t).sqrt()) / 2.0
            beta = (t - 1.0) / t_next
            Y = X + beta * (X - X_prev)
            RY = (1.0 + beta) * R - beta * R_prev
        else:
            t_next, beta, Y, RY = one, zero, X, R
        searching = line_search and iterations > warmup
        step_size = eta if searching else fixed_step
        Z = Y - (2.0 * step_size) * RY
        new_mask = current.select(Z * Z)
        Xn = Z * new_mask
        Rn = (Xn - W0) @ A
        fn = energy(Rn, Xn - W0)
        if searching:
            step = Xn - Y
            bound = energy(RY, Y - W0) + 2.0 * energy(RY, step) + energy(step, step) / (2 * eta)
            fits = (fn <= bound * (1 + 1e-6) + 1e-12) | (eta * lipschitz <= 1.0)
        else:
            fits = torch.ones((), dtype=torch.bool, device=W0.device)
        # momentum overshot (f rose): restart from X, with the step that fitted
        restart = fits & (fn > f) & (beta > 0) if iterations > warmup else torch.zeros_like(fits)
        accept = fits & ~restart
        unchanged = torch.where(
            accept, torch.where((new_mask == mask).all(), unchanged + 1, 0), unchanged
        )
        if momentum:
            X_prev = torch.where(fits, X, X_prev)
            R_prev = torch.where(fits, R, R_prev)
            t = torch.where(accept, t_next, torch.where(restart, one, t))
        X, R = torch.where(accept, Xn, X), torch.where(accept, Rn, R)
        mask, f = torch.where(accept, new_mask, mask), torch.where(accept, fn, f)
        trials.append(torch.stack([fn, step_size, accept.double(), restart.double()]))
        if searching:  # grow after a fitting step, halve after one that did not
            eta = torch.where(fits, (eta * grow).clamp(max=max_step), eta / 2.0)
        if iterations % check_every and iterations < max_iter:
            continue
        # The one read from the device per check: the trials since the last one and the support.
        same = (polished == mask).all() if polished is not None else torch.zeros_like(fits)
        trials.append(torch.stack([unchanged.double(), same.double(), zero, zero]))
        *logged, (settled_for, same_as_polished, _, _) = torch.stack(trials).tolist()
        trials = []
        for value, tried, accepted, restarted in logged:
            if accepted:
                descent.append(value)
                steps.append(tried)
            history.append(descent[-1])
            restarts += int(restarted)
        if iterations <= warmup:
            continue
        f_now = descent[-1]
        stalled = len(descent) > patience and descent[-patience - 1] - f_now <= tol * abs(f_now)
        if settled_for < patience and not stalled:
            continue
        if polished is not None and same_as_polished or refits == max_refits:
            converged = polished is not None and bool(same_as_polished)
            break
        # Support settled: jump to the optimum on it, then let IHT try swaps from there.
        X = sc.to_scaled(problem.refit(mask, method="cg", init=sc.from_scaled(X), max_iter=50))
        R = (X - W0) @ A
        f = energy(R, X - W0)
        X_prev, R_prev, t, polished = X, R, one, mask
        unchanged = torch.zeros_like(unchanged)
        refits += 1
        descent.append(float(f))
        history.append(descent[-1])

    weight, mask, ending = finish(
        problem, mask, init=sc.from_scaled(X), swap_rounds=swap_rounds,
        curvature=curvature(sc.eigh[0]) if A.numel() else 0.0,
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
