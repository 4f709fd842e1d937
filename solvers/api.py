"""One entry point for every method: ``solve(problem, method=..., **options) -> Solution``.

A method is a function ``fn(problem, *, option=default, ...) -> (weight, mask, info)`` in its own
module, found by name in :mod:`solvers.registry`; this file only looks it up, checks the options
against its signature, times it and packs the figures every report uses. The layer tolerance
search (:func:`solve_to_tolerance`) works with any method.
"""

from __future__ import annotations

import inspect
import math
import time

import torch

from .bounds import BOUNDS, lower_bound
from .problem import PSD_TOLERANCE, LayerProblem
from .registry import method_function, method_info
from .solution import Solution

__all__ = ["solve", "solve_to_tolerance"]

def _options_used(fn, method: str, options: dict) -> dict:
    """The options of ``fn`` with defaults filled in; unknown names are a ``ValueError``."""
    params = {
        name: p for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method {method!r}; it takes {sorted(params)}"
        )
    used = {name: p.default for name, p in params.items()}
    used.update(options)
    return {k: ("<tensor>" if isinstance(v, torch.Tensor) else v) for k, v in used.items()}


def solve(
    problem: LayerProblem,
    method: str = "admm",
    *,
    certify: bool = False,
    bound: str = "lagrangian",
    **options,
) -> Solution:
    """Solve ``problem`` with ``method``.

    Args:
        problem: a :class:`~solvers.problem.LayerProblem` with a sized budget.
        method: one of :func:`~solvers.registry.methods` (built-in or registered).
        certify: also compute a lower bound on the optimum (:func:`~solvers.bounds.lower_bound`,
            warm-started from the solution) and fill ``lower_bound`` and ``gap``. A method that
            proves its own bound (``exact``) reports it in ``info["lower_bound"]``; the higher
            of the two is kept.
        bound: the :data:`~solvers.bounds.BOUNDS` tier used when ``certify`` is set.
        **options: the method's own options (see its docstring).

    Returns:
        A :class:`~solvers.solution.Solution` whose mask meets the budget exactly, its weight
        in ``problem.output_dtype`` (an fp16 / bf16 ``W``'s own dtype); the figures are those
        of that weight.

    Example:
        >>> import torch
        >>> from solvers import LayerProblem, NM, solve
        >>> W = torch.randn(4, 8)
        >>> solve(LayerProblem(W, None, budget=NM(2, 4)), method="magnitude").sparsity
        0.5
    """
    if not isinstance(problem, LayerProblem):
        raise ValueError(f"problem must be a LayerProblem, got {type(problem).__name__}")
    fn = method_function(method)
    if not problem.budget.sized:
        raise ValueError(
            f"problem.budget={problem.budget!r} has no size: give sparsity= or k="
        )
    if certify and bound not in BOUNDS:
        raise ValueError(f"bound must be one of {list(BOUNDS)}, got {bound!r}")
    used = _options_used(fn, method, options)
    start = time.perf_counter()
    weight, mask, info = fn(problem, **options)
    weight = weight.to(problem.output_dtype)
    seconds = time.perf_counter() - start
    info = {"method": method, "options": used, "seconds": seconds, **info}
    solution = Solution(weight=weight, mask=mask, problem=problem, info=info)
    if certify:
        _certify(problem, solution, bound)
    return solution


def _certify(problem: LayerProblem, solution: Solution, bound: str) -> None:
    """Fill ``solution.lower_bound`` and ``gap = (f - lb) / f`` (both in float64)."""
    start = time.perf_counter()
    lb = lower_bound(problem, bound, init=solution.weight)
    proven = solution.info.get("lower_bound")
    if proven is not None:
        lb = max(lb, float(proven))
    D = solution.weight.double() - problem.W.double()
    A = problem.damped.double()
    f = max(float(((D @ A) * D).sum()), 0.0)  # round-off below 0 on a singular H is 0
    # H is PSD only within PSD_TOLERANCE (and rounded), so f and lb carry errors of that order.
    slack = 1e-9 * f + PSD_TOLERANCE * float(A.abs().max()) * float((D * D).sum())
    if lb > f + slack:
        raise RuntimeError(
            f"lower bound {lb!r} ({bound}) is above the objective {f!r} of a feasible solution "
            f"({solution.info['method']}): a bug in the bound or the method"
        )
    lb = min(lb, f, solution.objective)  # lowering a bound keeps it valid
    solution.lower_bound = lb
    solution.gap = max((f - lb) / f, 0.0) if f > 0 else 0.0
    solution.info["bound"] = bound
    solution.info["bound_seconds"] = time.perf_counter() - start


def solve_to_tolerance(
    problem: LayerProblem, eps: float, method: str = "admm", **options
) -> Solution:
    """The sparsest solution of ``method`` whose relative error is at most ``eps``.

    Bisection over the budget's count (weights, weights per row, ``n`` of N:M, or column groups)
    in the family of ``problem.budget``; its size, if any, is ignored. Each trial starts from the
    best solution found at a larger count when the method takes ``init``. Heuristic errors are not
    exactly monotone in the count, so the answer is the smallest count meeting ``eps`` whose
    neighbour one below does not.

    Returns:
        The :class:`Solution` at that count; ``info["search"]`` lists ``(count, relative_error)``
        for every trial.
    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    warm = method_info(method).start
    family = problem.budget
    lo, hi = 0, family.max_count(problem.shape)  # error(lo) > eps unless eps >= 1; error(hi) = 0
    best: Solution | None = None
    trials = []

    def attempt(count: int) -> Solution:
        extra = {"init": best.weight} if warm and best is not None and "init" not in options else {}
        sol = solve(problem.with_budget(family.with_count(count)), method, **options, **extra)
        trials.append((count, sol.relative_error))
        return sol

    zero = attempt(0)
    if zero.relative_error <= eps:
        zero.info["search"] = trials
        return zero
    while hi - lo > 1:
        mid = (lo + hi) // 2
        sol = attempt(mid)
        if sol.relative_error <= eps:
            hi, best = mid, sol
        else:
            lo = mid
    if best is None:  # only the dense count meets eps
        best = attempt(hi)
    best.info["search"] = trials
    return best
