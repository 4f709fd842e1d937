"""Degenerate but valid problems: ``H = 0`` (dead inputs) and a singular ``H`` with ``lam = 0``."""

import pytest
import torch

from solvers import NM, LayerProblem, PerRow, Structured, Unstructured, methods, solve

HEURISTICS = sorted(set(methods()) - {"exact"})
#: Few steps keep hard-concrete quick; the rest run with their defaults.
OPTIONS = {"hard_concrete": {"steps": 200}}
BUDGETS = [Unstructured(sparsity=0.5), PerRow(sparsity=0.5), NM(2, 4), Structured(sparsity=0.5)]


@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
@pytest.mark.parametrize("method", HEURISTICS)
def test_zero_H_meets_the_budget_and_keeps_the_weights(method, budget):
    """With ``H = 0`` every feasible point is optimal; the budget's count is kept, with the
    trained values (the optimum closest to ``W``), not zeros."""
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    problem = LayerProblem(W, torch.zeros(64, 64), budget=budget)
    solution = solve(problem, method, **OPTIONS.get(method, {}))
    assert int(solution.mask.sum()) == 512
    assert int((solution.weight != 0).sum()) == 512
    assert torch.equal(solution.weight[solution.mask], W[solution.mask])
    assert solution.objective == 0.0 and solution.relative_error == 0.0


def test_dead_inputs_keep_their_weights_and_the_rest_is_refitted():
    """Inputs 0-7 are always zero: their kept weights stay as trained; the rest is optimal."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(8, 32, generator=g, dtype=torch.float64)
    X = torch.randn(256, 32, generator=g, dtype=torch.float64)
    X[:, :8] = 0
    problem = LayerProblem.from_inputs(W, X, lam=0.0, sparsity=0.2)  # keeps 20+ dead weights
    for method in ("admm", "iht"):
        solution = solve(problem, method)
        dead = solution.mask[:, :8]
        assert int(dead.sum()) >= 64 - 52
        assert torch.equal(solution.weight[:, :8][dead], W[:, :8][dead])
        refit = problem.refit(solution.mask, method="exact")
        assert solution.objective == pytest.approx(problem.objective(refit), rel=1e-6)


def _singular(seed: int) -> LayerProblem:
    """``X`` of 4 x 32 and ``lam = 0`` (float32): rank 4, so 50 % sparsity has optimum 0."""
    g = torch.Generator().manual_seed(seed)
    W, X = torch.randn(16, 32, generator=g), torch.randn(4, 32, generator=g)
    return LayerProblem.from_inputs(W, X, lam=0.0, sparsity=0.5)


@pytest.mark.parametrize("bound", ["separable", "lagrangian"])
@pytest.mark.parametrize("method", ["admm", "iht", "obs", "hard_concrete"])
@pytest.mark.parametrize("seed", [0, 1])
def test_certify_on_singular_H_without_ridge(seed, method, bound):
    """Each row keeps 16 weights against 4 equations, so ``f* = 0``: the solvers reach it up to
    round-off, which once came out negative and crashed the certificate."""
    problem = _singular(seed)
    solution = solve(problem, method, certify=True, bound=bound, **OPTIONS.get(method, {}))
    scale = problem.output_energy
    assert 0.0 <= solution.objective <= 1e-5 * scale
    assert 0.0 <= solution.relative_error <= 1e-5
    assert 0.0 <= solution.lower_bound <= solution.objective
    assert 0.0 <= solution.gap <= 1.0


def _defined(problem: LayerProblem, weight: torch.Tensor) -> tuple[float, float]:
    """``(objective, relative error)`` of ``weight`` from their definitions in float64, the
    round-off below 0 counted as 0 (``lam = 0``: the objective is the output change)."""
    D, W, H = (weight - problem.W).double(), problem.W.double(), problem.H.double()
    change = max(float(((D @ H) * D).sum()), 0.0)
    return change, change / float(((W @ H) * W).sum())


@pytest.mark.parametrize("seed", [2, 3])
def test_errors_are_never_negative(seed):
    problem = _singular(seed)
    for method in HEURISTICS:
        solution = solve(problem, method, **OPTIONS.get(method, {}))
        objective, error = _defined(problem, solution.weight)
        assert solution.relative_error >= 0.0 and solution.objective >= 0.0
        assert solution.relative_error == pytest.approx(error, abs=1e-6), method
        assert solution.objective == pytest.approx(objective, abs=1e-6 * problem.output_energy)
        assert problem.relative_error(solution.weight) == solution.relative_error
