"""The first-order perspective relaxation: gates meet their counts, the value matches cvxpy."""

import pytest
import torch

from solvers import NM, LayerProblem, PerRow, Structured, Unstructured, lower_bound
from solvers.diagonal import eig_diagonal
from solvers.lagrangian import open_gates, relax

BUDGETS = [Unstructured(sparsity=0.6), PerRow(k=3), NM(2, 4), Structured(k=2, group=2)]


@pytest.mark.parametrize("count", [0, 1, 3, 7])
def test_gates_meet_the_count_of_every_set(count):
    g = torch.Generator().manual_seed(count)
    beta = torch.rand(5, 8, generator=g, dtype=torch.float64) ** 3
    beta[0, 2:] = 0  # a set with two live atoms: they open, the rest stay shut
    gamma = 0.1 * torch.rand(5, 8, generator=g, dtype=torch.float64)
    z, s = open_gates(beta, gamma, count)
    assert torch.all((z >= 0) & (z <= 1))
    sums = z.sum(dim=1)
    assert torch.allclose(sums[1:], torch.full((4,), float(count), dtype=torch.float64))
    assert float(sums[0]) == pytest.approx(min(count, 2))
    warm, _ = open_gates(beta * 1.01, gamma, count, s)
    assert torch.allclose(warm.sum(dim=1)[1:], sums[1:])


def test_a_set_that_fits_opens_every_gate():
    z, _ = open_gates(torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 3), 3)
    assert torch.equal(z, torch.ones(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_relaxation_matches_the_cone_program(layer, budget):
    W, H = layer
    problem = LayerProblem(W[:6, :16], H[:16, :16], budget=budget)
    cone = lower_bound(problem, "perspective")
    first_order = lower_bound(problem, "lagrangian", tol=1e-6, max_iter=5000)
    assert first_order == pytest.approx(cone, rel=1e-4)


def test_relaxation_reports_its_progress(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.7)
    A = problem.damped.double()
    bound, info = relax(problem.W, A, eig_diagonal(A), problem.budget, tol=1e-3)
    primal, best = info["history"][-1]
    assert info["converged"] and best == bound and primal - bound <= 1e-3 * primal
    bounds = [b for _, b in info["history"]]
    assert bounds == sorted(bounds)
