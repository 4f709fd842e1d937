"""Brute-force optimum of tiny layer problems under any budget: the ground truth.

Independent of the solvers' own budget code: every row support is enumerated, its refitted cost
is the closed form ``w^T A w - b_S^T A_SS^-1 b_S`` (``b = A w``), and each budget's feasible
supports are written out from its definition. Also the hypothesis strategy drawing such problems.
"""

import itertools

import torch
from hypothesis import strategies as st

from solvers import NM, LayerProblem, PerRow, Structured, Unstructured


def _row_costs(A: torch.Tensor, w: torch.Tensor) -> dict[frozenset, float]:
    """``min f_r`` on every support ``S`` of one row."""
    b = A @ w
    total = float(w @ b)
    costs = {}
    for size in range(len(w) + 1):
        for S in itertools.combinations(range(len(w)), size):
            idx = list(S)
            fit = float(b[idx] @ torch.linalg.solve(A[idx][:, idx], b[idx])) if idx else 0.0
            costs[frozenset(S)] = total - fit
    return costs


def optimum(problem) -> float:
    """The optimal objective of ``problem`` (at most ~8 inputs and ~3 rows)."""
    A = problem.damped.double()
    tables = [_row_costs(A, w) for w in problem.W.double()]
    out, inp = problem.shape
    budget = problem.budget
    if isinstance(budget, PerRow):
        k = budget.count(problem.shape)
        return sum(min(c for S, c in t.items() if len(S) <= k) for t in tables)
    if isinstance(budget, NM):
        def fits(S):
            groups = range(inp // budget.m)
            return all(sum(j // budget.m == g for j in S) <= budget.n for g in groups)

        return sum(min(c for S, c in t.items() if fits(S)) for t in tables)
    if isinstance(budget, Structured):
        g, k = budget.group, budget.count(problem.shape)
        best = float("inf")
        for groups in itertools.combinations(range(inp // g), k):
            S = frozenset(j for G in groups for j in range(G * g, (G + 1) * g))
            best = min(best, sum(t[S] for t in tables))
        return best
    if isinstance(budget, Unstructured):
        k = budget.count(problem.shape)
        by_size = [
            [min(c for S, c in t.items() if len(S) == j) for j in range(inp + 1)] for t in tables
        ]
        best = {0: 0.0}  # weights used so far -> best cost of the rows seen
        for row in by_size:
            merged: dict[int, float] = {}
            for used, cost in best.items():
                for j, c in enumerate(row):
                    if used + j <= k:
                        merged[used + j] = min(merged.get(used + j, float("inf")), cost + c)
            best = merged
        return min(best.values())
    raise ValueError(f"no brute force for {budget!r}")


@st.composite
def tiny_problems(draw):
    """1-3 rows of 4 or 8 inputs, any budget; H from 1 to 32 samples, so often ill-conditioned."""
    out = draw(st.integers(1, 3))
    inp = draw(st.sampled_from([4, 8]))
    kind = draw(st.sampled_from(["unstructured", "per_row", "nm", "structured"]))
    if kind == "unstructured":
        budget = Unstructured(k=draw(st.integers(0, out * inp)))
    elif kind == "per_row":
        budget = PerRow(k=draw(st.integers(0, inp)))
    elif kind == "nm":
        budget = NM(draw(st.integers(0, 4)), 4)
    else:
        group = draw(st.sampled_from([1, 2]))
        budget = Structured(k=draw(st.integers(0, inp // group)), group=group)
    samples = draw(st.sampled_from([1, 2, inp, 4 * inp]))
    ridge = draw(st.sampled_from([1e-6, 1e-3, 1e-2, 0.3]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scales = torch.exp(3 * torch.randn(inp, generator=g, dtype=torch.float64))
    X = torch.randn(samples, inp, generator=g, dtype=torch.float64) * scales
    X = X @ torch.randn(inp, inp, generator=g, dtype=torch.float64)
    W = torch.randn(out, inp, generator=g, dtype=torch.float64)
    H = X.T @ X / samples
    return LayerProblem(W, H, lam=ridge * float(H.diagonal().mean()), budget=budget)


def assert_below(bound: float, problem, truth: float) -> None:
    """``bound <= truth`` up to the ground truth's own rounding."""
    scale = problem.objective(torch.zeros_like(problem.W))
    assert bound <= truth + 1e-7 * scale, (bound, truth)
