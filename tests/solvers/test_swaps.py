"""The swap costs against brute-force refits, the local search, and the safeguard."""

import torch

from solvers import LayerProblem, solve
from solvers.refit import swap_costs
from solvers.safeguard import best_of
from solvers.swaps import swap_search


def test_swap_costs_are_exact(layer):
    W, H = layer
    problem = LayerProblem(W[:3], H, sparsity=0.5)
    mask = problem.budget.select(W[:3] ** 2)
    weight = problem.refit(mask, method="exact")
    f = problem.objective(weight)
    inverse, schur = swap_costs(problem, mask)
    R = (weight - problem.W) @ problem.damped
    for r, j in [(0, int(mask[0].nonzero()[0])), (2, int(mask[2].nonzero()[-1]))]:
        smaller = mask.clone()
        smaller[r, j] = False
        cost = problem.objective(problem.refit(smaller, method="exact")) - f
        assert abs(cost - float(weight[r, j] ** 2 / inverse[r, j])) < 1e-8 * max(1, f)
    for r, i in [(1, int((~mask[1]).nonzero()[0])), (2, int((~mask[2]).nonzero()[-1]))]:
        larger = mask.clone()
        larger[r, i] = True
        gain = f - problem.objective(problem.refit(larger, method="exact"))
        assert abs(gain - float(R[r, i] ** 2 / schur[r, i])) < 1e-8 * max(1, f)


def test_swap_search_only_improves(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.7)
    start = solve(problem, "magnitude", refit=True)
    weight, mask, accepted = swap_search(problem, start.weight, start.mask)
    assert accepted > 0
    assert problem.objective(weight) < start.objective
    assert int(mask.sum()) == int(start.mask.sum())
    assert torch.equal(problem.budget.select(mask.double()), mask)


def test_swap_search_skips_large_layers(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.7)
    start = solve(problem, "magnitude", refit=True)
    weight, mask, accepted = swap_search(problem, start.weight, start.mask, max_flops=10)
    assert accepted == 0 and weight is start.weight


def test_best_of_takes_the_better_support(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.7)
    good = solve(problem, "admm")
    bad = solve(problem, "magnitude")  # not refitted: worse than its own refit
    weight, mask, winner = best_of(problem, bad.weight, bad.mask, {"admm": good.mask})
    assert winner == "admm" and torch.equal(mask, good.mask)
    assert problem.objective(weight) <= good.objective * (1 + 1e-6)
    weight, mask, winner = best_of(problem, good.weight, good.mask, {"magnitude": bad.mask})
    assert winner is None and weight is good.weight
