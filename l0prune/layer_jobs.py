"""One target's solve as a pure function of tensors, so that it runs anywhere.

:func:`solve_target` takes a layer's dense weight as ``(groups, out, in)``, its statistics
(``H``; for a sequential run also the cross moment ``C = X^T X_0 / N`` and the dense moment
``D = X_0^T X_0 / N``), the budget, the method and its options, and returns the
:class:`TargetSolution`. No model, no data: it ships to any executor
(:mod:`solvers.many`), and gives the same bits wherever it runs on the CPU with one torch thread.

With paired statistics the problem is fitted to the *dense model's* output from the inputs the
layer now sees (see :mod:`l0prune.layerwise`): with ``A = H + lam I`` the target is
``W~ = (W C^T + lam W) A^-1`` and the error reported is
``||X W'^T - X_0 W^T||^2 / ||X_0 W^T||^2 = (tr(P H P^T) - 2 tr(P C^T W^T) + tr(W D W^T)) /
tr(W D W^T)`` summed over the groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from solvers import Budget, LayerProblem, solve

__all__ = ["TargetSolution", "solve_target"]


@dataclass
class TargetSolution:
    """One target's solution, every convolution group stacked.

    Attributes:
        weight: the pruned weight, ``(groups, out, in)``.
        mask: its support, boolean, same shape.
        relative_error: see the module docstring.
        seconds: solver time, summed over the groups.
    """

    weight: torch.Tensor
    mask: torch.Tensor
    relative_error: float
    seconds: float


def solve_target(
    W: torch.Tensor,
    H: torch.Tensor,
    cross: torch.Tensor | None,
    dense: torch.Tensor | None,
    budget: Budget,
    method: str,
    options: Mapping,
) -> TargetSolution:
    """Solve each group of a target under ``budget`` (see the module docstring).

    Args:
        W: the dense weight, ``(groups, out, in)``.
        H: ``X^T X / N`` per group, ``(groups, in, in)``, float64.
        cross: ``X^T X_0 / N`` per group, or ``None`` for parallel statistics.
        dense: ``X_0^T X_0 / N`` per group (with ``cross``), or ``None``.
        budget: a sized budget for one group's problem.
        method: a :data:`solvers.METHODS` name.
        options: the method's options.

    Returns:
        The :class:`TargetSolution`.

    Example:
        >>> from solvers import Unstructured
        >>> W = torch.randn(1, 4, 8); X = torch.randn(64, 8, dtype=torch.float64)
        >>> H = (X.T @ X / 64)[None]
        >>> solve_target(W, H, None, None, Unstructured(k=16), "obs", {}).mask.sum().item()
        16
    """
    weights, masks, errors, seconds = [], [], [], 0.0
    for i in range(W.shape[0]):
        solution = solve(_problem(W[i], H[i], None if cross is None else cross[i], budget),
                         method, **options)
        weights.append(solution.weight)
        masks.append(solution.mask)
        errors.append(
            (solution.relative_error, 1.0) if cross is None
            else _output_error(W[i], solution.weight, H[i], cross[i], dense[i])
        )
        seconds += solution.info["seconds"]
    if len(errors) == 1 and cross is None:
        error = errors[0][0]
    else:
        num, den = sum(e[0] for e in errors), sum(e[1] for e in errors)
        error = num / den if den > 0 else (0.0 if num <= 0 else math.inf)
    return TargetSolution(torch.stack(weights), torch.stack(masks), float(error), seconds)


def _problem(W: torch.Tensor, H: torch.Tensor, cross: torch.Tensor | None,
             budget: Budget) -> LayerProblem:
    """The layer problem of one group: ``(W, H)``, or ``(W~, H)`` from paired statistics."""
    if cross is None:
        return LayerProblem(W, H, budget=budget)
    lam = 0.01 * float(H.diagonal().mean())
    target = W.double()
    if lam > 0:
        A = H + lam * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        target = torch.linalg.solve(A, cross @ target.T + lam * target.T).T
    return LayerProblem(target.to(W.dtype), H, lam=lam, budget=budget)


def _output_error(W: torch.Tensor, pruned: torch.Tensor, H: torch.Tensor, cross: torch.Tensor,
                  dense: torch.Tensor) -> tuple[float, float]:
    """``(||X W'^T - X_0 W^T||^2, ||X_0 W^T||^2) / N`` from paired statistics."""
    W, P = W.double(), pruned.double()
    energy = float(((W @ dense) * W).sum())
    change = float(((P @ H) * P).sum()) - 2 * float(((P @ cross) * W).sum()) + energy
    return max(change, 0.0), energy
