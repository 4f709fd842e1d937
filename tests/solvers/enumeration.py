"""Brute-force optimum of tiny unstructured / per-row layer problems, the ground truth."""

import itertools

import torch


def row_costs(A: torch.Tensor, w: torch.Tensor) -> dict[int, float]:
    """Best objective of one row for each support size: ``min_{|S|=j} f_r(S)``.

    On a fixed support the optimum is ``w^T A w - b_S^T A_SS^-1 b_S`` with ``b = A w``.
    """
    n = len(w)
    b = A @ w
    total = float(w @ b)
    best = {0: total}
    for size in range(1, n + 1):
        costs = []
        for S in itertools.combinations(range(n), size):
            idx = list(S)
            costs.append(total - float(b[idx] @ torch.linalg.solve(A[idx][:, idx], b[idx])))
        best[size] = min(costs)
    return best


def optimum(problem, per_row: int | None = None) -> float:
    """Optimal objective under an unstructured budget of ``k`` (or ``per_row`` weights a row)."""
    A = problem.damped.double()
    W = problem.W.double()
    tables = [row_costs(A, w) for w in W]
    if per_row is not None:
        return sum(t[per_row] for t in tables)
    k = problem.budget.kept(problem.shape)
    best = {0: 0.0}  # weights kept so far -> best summed cost of the rows seen
    for table in tables:
        merged: dict[int, float] = {}
        for used, cost in best.items():
            for j, row_cost in table.items():
                if used + j <= k:
                    merged[used + j] = min(merged.get(used + j, float("inf")), cost + row_cost)
        best = merged
    return min(best.values())
