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

With block-diagonal statistics (``H`` a :class:`~l0prune.model.statistics.BlockDiagonal`) each
column block of each group is a problem of its own, ``(W_b, H_b)`` (paired: fitted to the
block's own part of the dense output), and a layer's budget is split over its blocks by
:func:`block_budgets`; the solutions are put side by side, and the error is the sum of the
blocks' numerators over the sum of their denominators: the layer's error under the
block-diagonal ``H``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from l0prune.model.statistics import BlockDiagonal
from solvers import NM, Budget, LayerProblem, MethodInfo, PerRow, Structured, method_info, solve
from solvers.many import ensure_method

from .restricted import allowed_of, within

__all__ = ["TargetSolution", "apportion", "block_budgets", "options_with_seed",
           "solution_fault", "solve_problems", "solve_target", "target_error", "target_problems"]


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


def target_problems(W: torch.Tensor, H: torch.Tensor | BlockDiagonal | None,
                    cross: torch.Tensor | None, energy: torch.Tensor | None,
                    check_psd: bool = True) -> list[list[LayerProblem]]:
    """The layer problems of a target: per convolution group, one per column block.

    Args:
        W: the dense weight, ``(groups, out, in)``.
        H: ``X^T X / N`` per group, ``(groups, in, in)``; its diagonal, ``(groups, in)``; its
            diagonal blocks (a :class:`~l0prune.model.statistics.BlockDiagonal`); or ``None``
            (the plain problem, ``H = I``: a method that reads no statistics).
        cross: ``G = (X_0 W^T)^T X / N`` per group, ``(groups, out, in)``, or ``None`` for
            parallel statistics (block-diagonal: each block's ``Y_0b^T X_b / N``).
        energy: ``||X_0 W^T||^2 / N`` per group, ``(groups,)`` (with ``cross``), or ``None``
            (block-diagonal: per block, ``(groups, blocks)``).
        check_psd: check that ``H`` is PSD (:class:`~solvers.LayerProblem`); ``False`` for
            statistics summed in this process.

    Returns:
        Per group, the unsized :class:`~solvers.LayerProblem` s of its column blocks (one
        without blocks).
    """
    if not isinstance(H, BlockDiagonal):
        return [[LayerProblem.from_moments(W[i], None if H is None else H[i],
                                           None if cross is None else cross[i],
                                           None if energy is None else energy[i],
                                           check_psd=check_psd)]
                for i in range(W.shape[0])]
    return [
        [LayerProblem.from_moments(W[i, :, a:b], block[i],
                                   None if cross is None else cross[i, :, a:b],
                                   None if energy is None else energy[i, j], check_psd=check_psd)
         for j, ((a, b), block) in enumerate(zip(H.spans, H.blocks, strict=True))]
        for i in range(W.shape[0])
    ]


def apportion(total: int, capacities: Sequence[int]) -> list[int]:
    """``total`` split over parts in proportion to their ``capacities`` (at most each), by
    largest remainders, ties to the first: the same fraction of every part.

    Example:
        >>> apportion(10, [4, 4, 2]), apportion(3, [2, 2, 2])
        ([4, 4, 2], [1, 1, 1])
    """
    whole = sum(capacities)
    if total > whole:
        raise ValueError(f"cannot keep {total} in parts that hold {whole}")
    counts = [total * c // whole if whole else 0 for c in capacities]
    rest = sorted(range(len(capacities)),
                  key=lambda j: (-(total * capacities[j] % whole if whole else 0), j))
    for j in rest[:total - sum(counts)]:
        counts[j] += 1
    return counts


def block_budgets(budget: Budget, out: int, widths: Sequence[int]) -> list[Budget]:
    """A layer's ``budget`` (for one problem of ``out`` rows) split over column blocks of
    ``widths``, each block at the layer's sparsity and the counts adding up exactly.

    Unstructured: weights kept in proportion to each block's weights; per-row: each row's count
    in proportion to the blocks' widths; structured: column groups kept in proportion to each
    block's groups; N:M as it is (a block is a whole number of groups of ``m``). A budget
    restricted to allowed entries (:func:`~l0prune.pipeline.restricted.within`) splits in
    proportion to what each block allows (per-row: what its sparsest row allows) and keeps its
    restriction block by block.

    Args:
        budget: a sized budget for the layer's ``out x sum(widths)`` problem.
        out: the problem's rows.
        widths: the blocks' columns, in order.

    Returns:
        One sized budget per block.

    Example:
        >>> from solvers import Unstructured
        >>> [b.k for b in block_budgets(Unstructured(k=5), 2, [4, 4, 2])]
        [2, 2, 1]
    """
    bounds = [0]
    for width in widths:
        bounds.append(bounds[-1] + width)
    allowed = allowed_of(budget)
    parts = [allowed[:, a:b] if allowed is not None else None
             for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if isinstance(budget, NM):
        sized = [budget for _ in widths]
    else:
        count = budget.count((out, bounds[-1]))
        capacities = [_capacity(budget, out, width, part)
                      for width, part in zip(widths, parts, strict=True)]
        sized = [budget.with_count(c) for c in apportion(count, capacities)]
    if allowed is None:
        return sized
    return [within(b, part) for b, part in zip(sized, parts, strict=True)]


def _capacity(budget: Budget, out: int, width: int, allowed: torch.Tensor | None) -> int:
    """The most units (weights, a row's weights, column groups) ``budget`` can keep in a block
    of ``width`` columns (within ``allowed``)."""
    if isinstance(budget, Structured):
        if allowed is None:
            return width // budget.group
        return int(allowed[0].reshape(-1, budget.group).all(dim=1).sum())
    if isinstance(budget, PerRow):
        return width if allowed is None else int(allowed.sum(dim=1).min())
    return out * width if allowed is None else int(allowed.sum())


def solve_problems(problems: Sequence[Sequence[LayerProblem]], budgets: Sequence[Budget],
                   method: str, options: Mapping,
                   errors_only: bool = False) -> list[TargetSolution]:
    """Solve a target's problems (per group, one per column block) under each budget.

    Args:
        problems: from :func:`target_problems` (their caches are shared by the budgets).
        budgets: sized budgets for one group's problem (split over its blocks by
            :func:`block_budgets`).
        method: a :func:`solvers.methods` name.
        options: the method's options.
        errors_only: keep only the errors and times (an error curve), not the weights.

    Returns:
        One :class:`TargetSolution` per budget.
    """
    solutions = []
    for budget in budgets:
        weights, masks, seconds = [], [], 0.0
        for blocks in problems:
            weight, mask, took = _solve_blocks(blocks, budget, method, options)
            weights.append(weight)
            masks.append(mask)
            seconds += took
        error = target_error(problems, weights)
        if errors_only:
            solutions.append(TargetSolution(None, None, error, seconds))
        else:
            solutions.append(TargetSolution(torch.stack(weights), torch.stack(masks), error,
                                            seconds))
    return solutions


def _solve_blocks(blocks: Sequence[LayerProblem], budget: Budget, method: str,
                  options: Mapping) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One group's blocks under ``budget``, side by side: its weight and mask, and the
    solver's seconds."""
    if len(blocks) == 1:
        solution = solve(blocks[0].with_budget(budget), method, **options)
        return solution.weight, solution.mask, solution.info["seconds"]
    parts = block_budgets(budget, blocks[0].shape[0], [p.shape[1] for p in blocks])
    solutions = [solve(base.with_budget(part), method, **options)
                 for base, part in zip(blocks, parts, strict=True)]
    return (torch.cat([s.weight for s in solutions], dim=1),
            torch.cat([s.mask for s in solutions], dim=1),
            sum(s.info["seconds"] for s in solutions))


def target_error(problems: Sequence[Sequence[LayerProblem]],
                 weights: Sequence[torch.Tensor] | torch.Tensor) -> float:
    """The error a target's solution is reported with (see the module docstring), from its
    problems and its pruned weight per group: what a run reports, and what a solution read from
    a file is reported with (recomputed, never taken from the file).

    Args:
        problems: from :func:`target_problems`.
        weights: the pruned weight of each group (a ``(groups, out, in)`` tensor or a list).

    Returns:
        The relative error.

    Example:
        >>> W = torch.ones(1, 2, 2); H = torch.eye(2, dtype=torch.float64)[None]
        >>> target_error(target_problems(W, H, None, None), torch.tensor([[[1.0, 0], [1, 0]]]))
        0.5
    """
    errors = [_group_error(blocks, weight)
              for blocks, weight in zip(problems, weights, strict=True)]
    if len(errors) == 1 and len(problems[0]) == 1 and problems[0][0].reference is None:
        return float(errors[0][0])
    return float(_ratio(sum(e[0] for e in errors), sum(e[1] for e in errors)))


def _group_error(blocks: Sequence[LayerProblem], weight: torch.Tensor) -> tuple[float, float]:
    """One group's error as ``(numerator, denominator)``: over its column blocks' output
    errors, or the relative error over 1 for one block of unpaired statistics."""
    if len(blocks) == 1 and blocks[0].reference is None:
        return float(blocks[0].relative_error(weight)), 1.0
    num = den = 0.0
    start = 0
    for base in blocks:
        width = base.shape[1]
        change, energy = base.output_error(weight[:, start:start + width])
        num, den, start = num + float(change), den + float(energy), start + width
    return (num, den) if blocks[0].reference is not None else (_ratio(num, den), 1.0)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else (0.0 if num <= 0 else math.inf)


def solution_fault(weight: torch.Tensor, mask: torch.Tensor, budget: Budget,
                   shape: Sequence[int], dtype: torch.dtype) -> str | None:
    """What makes ``(weight, mask)`` not a solution of a target under ``budget``, or ``None``.

    A solution read from a file (saved solutions, a resume checkpoint) is untrusted: its weight
    must have the target's ``(groups, out, in)`` shape exactly (a transposed one is not
    reshaped) and dtype, its mask be boolean of that shape, every value be finite, the weight
    be zero off the mask, and the mask of every group meet ``budget`` exactly (the support
    :meth:`~solvers.Budget.select` keeps from the mask itself).

    Args:
        weight: the pruned weight, ``(groups, out, in)``.
        mask: its support.
        budget: the sized budget of one group's problem.
        shape: the target's ``(groups, out, in)``.
        dtype: the dtype of the target's weight.

    Returns:
        One phrase naming what is wrong, or ``None``.

    Example:
        >>> from solvers import Unstructured
        >>> W = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]); mask = W != 0
        >>> solution_fault(W, mask, Unstructured(k=2), (1, 2, 2), torch.float32) is None
        True
        >>> solution_fault(W, mask, Unstructured(k=1), (1, 2, 2), torch.float32)
        'its mask keeps 2 of 4 weights, not a support of the budget unstructured(k=1) (1 kept)'
    """
    shape = tuple(shape)
    for name, tensor in (("weight", weight), ("mask", mask)):
        if not isinstance(tensor, torch.Tensor):
            return f"its {name} is not a tensor"
        if tuple(tensor.shape) != shape:
            return (f"its {name} is {'x'.join(map(str, tensor.shape)) or 'a scalar'}, not "
                    f"{'x'.join(map(str, shape))}")
    if weight.dtype != dtype:
        return f"its weight is {weight.dtype}, not {dtype}"
    if mask.dtype != torch.bool:
        return f"its mask is {mask.dtype}, not boolean"
    if not bool(torch.isfinite(weight).all()):
        return f"its weight has {int((~torch.isfinite(weight)).sum())} NaN or Inf values"
    if bool((weight[~mask] != 0).any()):
        return f"its weight has {int((weight[~mask] != 0).sum())} non-zeros off its mask"
    for group in mask:
        kept = group.to(torch.float32)
        if not torch.equal(budget.select(kept), group):
            return (f"its mask keeps {int(group.sum())} of {group.numel()} weights, not a "
                    f"support of the budget {budget.text} ({budget.kept(tuple(group.shape))} "
                    "kept)")
    return None


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
