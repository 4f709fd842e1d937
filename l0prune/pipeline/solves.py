"""One target's solves as a pure function of tensors, so that they run anywhere.

:func:`solve_target` takes a layer's dense weight as ``(groups, out, in)``, its statistics
(``H``; for a sequential run also the dense outputs' cross moment ``G = (X_0 W^T)^T X / N`` and
energy ``||X_0 W^T||^2 / N``), one or more budgets, the method and its options, and returns one
:class:`TargetSolution` per budget. No model, no data: it ships to any executor
(:mod:`solvers.many`), and gives the same bits wherever it runs on the CPU with one torch
thread. The problems are those of :meth:`solvers.LayerProblem.from_moments` (one per
convolution group), built once for all the budgets, so an error curve's solves share their
factorisations on the worker as they do here.

The error reported is the layer problem's relative error, or with paired statistics
``||X W'^T - X_0 W^T||^2 / ||X_0 W^T||^2`` (:meth:`solvers.LayerProblem.output_error`), summed
over the groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from solvers import Budget, LayerProblem, MethodInfo, method_info, solve
from solvers.many import ensure_method

__all__ = ["TargetSolution", "options_with_seed", "solve_problems", "solve_target",
           "target_problems"]


def options_with_seed(method: str, options: Mapping | None, seed: int) -> dict:
    """``options`` for ``method``, with ``seed`` added when the method takes one (its registry
    entry says so: :func:`solvers.method_info`).

    Example:
        >>> options_with_seed("magnitude", {"refit": True}, 0), options_with_seed(
        ...     "hard_concrete", {}, 3)
        ({'refit': True}, {'seed': 3})
    """
    options = dict(options or {})
    if method_info(method).seed:
        options.setdefault("seed", seed)
    return options


@dataclass
class TargetSolution:
    """One target's solution under one budget, every convolution group stacked.

    Attributes:
        weight: the pruned weight, ``(groups, out, in)``; ``None`` when only the error was asked.
        mask: its support, boolean, same shape (or ``None`` with ``weight``).
        relative_error: see the module docstring.
        seconds: solver time, summed over the groups.
    """

    weight: torch.Tensor | None
    mask: torch.Tensor | None
    relative_error: float
    seconds: float


def target_problems(W: torch.Tensor, H: torch.Tensor, cross: torch.Tensor | None,
                    energy: torch.Tensor | None, check_psd: bool = True) -> list[LayerProblem]:
    """The layer problems of a target, one per convolution group.

    Args:
        W: the dense weight, ``(groups, out, in)``.
        H: ``X^T X / N`` per group, ``(groups, in, in)``; its diagonal, ``(groups, in)``; or
            ``None`` (the plain problem, ``H = I``: a method that reads no statistics).
        cross: ``G = (X_0 W^T)^T X / N`` per group, ``(groups, out, in)``, or ``None`` for
            parallel statistics.
        energy: ``||X_0 W^T||^2 / N`` per group, ``(groups,)`` (with ``cross``), or ``None``.
        check_psd: check that ``H`` is PSD (:class:`~solvers.LayerProblem`); ``False`` for
            statistics summed in this process.

    Returns:
        One unsized :class:`~solvers.LayerProblem` per group.
    """
    return [
        LayerProblem.from_moments(W[i], None if H is None else H[i],
                                  None if cross is None else cross[i],
                                  None if energy is None else energy[i], check_psd=check_psd)
        for i in range(W.shape[0])
    ]


def solve_problems(problems: Sequence[LayerProblem], budgets: Sequence[Budget], method: str,
                   options: Mapping, errors_only: bool = False) -> list[TargetSolution]:
    """Solve a target's problems (one per group) under each budget.

    Args:
        problems: from :func:`target_problems` (their caches are shared by the budgets).
        budgets: sized budgets for one group's problem.
        method: a :func:`solvers.methods` name.
        options: the method's options.
        errors_only: keep only the errors and times (an error curve), not the weights.

    Returns:
        One :class:`TargetSolution` per budget.
    """
    solutions = []
    for budget in budgets:
        weights, masks, errors, seconds = [], [], [], 0.0
        for base in problems:
            solution = solve(base.with_budget(budget), method, **options)
            weights.append(solution.weight)
            masks.append(solution.mask)
            errors.append(
                (solution.relative_error, 1.0) if base.reference is None
                else base.output_error(solution.weight)
            )
            seconds += solution.info["seconds"]
        if len(errors) == 1 and problems[0].reference is None:
            error = errors[0][0]
        else:
            num, den = sum(e[0] for e in errors), sum(e[1] for e in errors)
            error = num / den if den > 0 else (0.0 if num <= 0 else math.inf)
        if errors_only:
            solutions.append(TargetSolution(None, None, float(error), seconds))
        else:
            solutions.append(TargetSolution(torch.stack(weights), torch.stack(masks),
                                            float(error), seconds))
    return solutions


def solve_target(
    W: torch.Tensor,
    H: torch.Tensor,
    cross: torch.Tensor | None,
    energy: torch.Tensor | None,
    budgets: Sequence[Budget],
    method: str,
    options: Mapping,
    errors_only: bool = False,
    method_fn: tuple[Callable, MethodInfo] | None = None,
) -> list[TargetSolution]:
    """Solve a target under each budget, from its tensors (see the module docstring).

    Args:
        W, H, cross, energy: as for :func:`target_problems`.
        budgets, method, options, errors_only: as for :func:`solve_problems`.
        method_fn: the function and registry entry of a method registered where the task was
            made, registered here too (:func:`solvers.many.portable`); ``None`` for a
            built-in.

    Returns:
        One :class:`TargetSolution` per budget.

    Example:
        >>> from solvers import Unstructured
        >>> W = torch.randn(1, 4, 8); X = torch.randn(64, 8, dtype=torch.float64)
        >>> H = (X.T @ X / 64)[None]
        >>> [s.mask.sum().item() for s in solve_target(
        ...     W, H, None, None, [Unstructured(k=16), Unstructured(k=8)], "obs", {})]
        [16, 8]
    """
    ensure_method(method, method_fn)
    return solve_problems(target_problems(W, H, cross, energy), budgets, method, options,
                          errors_only)
