"""The exact solve: equal to enumeration, never above a heuristic, never below a bound."""

import pytest
import torch

from solvers import (
    BOUNDS,
    NM,
    LayerProblem,
    PerRow,
    Structured,
    Unstructured,
    lower_bound,
    solve,
)

from .brute_force import optimum

BUDGETS = [Unstructured(sparsity=0.6), PerRow(k=3), NM(2, 4), Structured(k=2, group=2)]
HEURISTICS = [
    ("magnitude", {"refit": True}),
    ("wanda", {"refit": True}),
    ("obs", {}),
    ("iht", {}),
    ("admm", {}),
    ("hard_concrete", {"steps": 200}),
]


def correlated_problem(budget, seed: int, out: int = 2, inp: int = 8, samples: int = 64,
                       ridge: float = 0.01) -> LayerProblem:
    """``out x inp`` weights, inputs with mixed columns of spread scales (float64)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.randn(inp, generator=g, dtype=torch.float64))
    X = (torch.randn(samples, inp, generator=g, dtype=torch.float64) * scales) @ torch.randn(
        inp, inp, generator=g, dtype=torch.float64
    )
    W = torch.randn(out, inp, generator=g, dtype=torch.float64)
    H = X.T @ X / samples
    return LayerProblem(W, H, lam=ridge * float(H.diagonal().mean()), budget=budget)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_exact_matches_enumeration(budget, seed):
    problem = correlated_problem(budget, seed)
    solution = solve(problem, "exact")
    assert solution.objective == pytest.approx(optimum(problem), rel=1e-7)
    assert solution.info["converged"] and solution.info["status"] == "optimal"
    assert torch.equal(solution.mask, budget.select(solution.mask.double()))
    assert int(solution.mask.sum()) == budget.kept(problem.shape)
    assert not solution.weight[~solution.mask].any()
    assert solution.info["lower_bound"] <= solution.objective


@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_exact_matches_enumeration_on_ill_conditioned_h(budget):
    problem = correlated_problem(budget, seed=2, samples=3, ridge=1e-4)
    eigenvalues = torch.linalg.eigvalsh(problem.damped)
    assert float(eigenvalues[-1] / eigenvalues[0]) > 1e4
    assert solve(problem, "exact").objective == pytest.approx(optimum(problem), rel=1e-6)


@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_exact_is_below_every_heuristic_and_above_every_bound(budget):
    problem = correlated_problem(budget, seed=3)
    best = solve(problem, "exact").objective
    for name, options in HEURISTICS:
        assert best <= solve(problem, name, **options).objective * (1 + 1e-9), name
    for method in BOUNDS:
        assert lower_bound(problem, method) <= best, method


def test_scip_finds_the_same_optimum():
    pytest.importorskip("pyscipopt")
    problem = correlated_problem(PerRow(k=2), seed=4, out=1, inp=6)
    scip = solve(problem, "exact", solver="SCIP")
    assert scip.objective == pytest.approx(solve(problem, "exact").objective, rel=1e-7)
    assert scip.info["solver"] == "SCIP"


def test_certified_exact_solution_has_no_gap():
    problem = correlated_problem(Unstructured(sparsity=0.5), seed=5)
    solution = solve(problem, "exact", certify=True)
    assert 0 <= solution.gap <= 1.1e-6  # the solver's proven relative gap, 1e-6


def test_time_limit_keeps_the_start():
    problem = correlated_problem(Unstructured(sparsity=0.5), seed=6, out=4, inp=10)
    solution = solve(problem, "exact", time_limit=0.05)
    start = solve(problem, "magnitude", refit=True)
    assert not solution.info["converged"] and "past the time limit" in solution.info["status"]
    assert "lower_bound" not in solution.info
    assert torch.equal(solution.mask, start.mask)
    assert solution.objective == pytest.approx(start.objective)


@pytest.mark.parametrize("budget", [Unstructured(k=0), PerRow(k=8)], ids=repr)
def test_trivial_budgets_need_no_program(budget):
    problem = correlated_problem(budget, seed=7)
    solution = solve(problem, "exact")
    assert solution.info["programs"] == 0
    assert solution.objective == pytest.approx(optimum(problem), abs=1e-12)


def test_size_guard_names_the_alternative():
    problem = correlated_problem(PerRow(k=30), seed=8, out=1, inp=64)
    with pytest.raises(ValueError, match="too large.*certify=True"):
        solve(problem, "exact")


def test_singular_h_is_refused():
    W = torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    X = torch.randn(2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.raises(ValueError, match="give lam > 0"):
        solve(LayerProblem.from_inputs(W, X, lam=0.0, sparsity=0.5), "exact")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"solver": "GUROBI"}, "solver must be one of"),
        ({"time_limit": 0}, "time_limit must be a positive number"),
        ({"max_binaries": 0}, "max_binaries must be a positive integer"),
    ],
)
def test_bad_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        solve(correlated_problem(PerRow(k=2), seed=0), "exact", **options)
