"""The certificate: any dual point gives a valid bound; 0 gives the separable one."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers import LayerProblem, PerRow, Structured, Unstructured
from solvers.certificate import dual_bound
from solvers.diagonal import eig_diagonal

from .brute_force import assert_below, optimum, tiny_problems


@settings(max_examples=60, deadline=None)
@given(tiny_problems(), st.integers(0, 2**31 - 1), st.sampled_from([1e-3, 1.0, 1e3]))
def test_any_dual_point_gives_a_valid_bound(problem, seed, size):
    A = problem.damped.double()
    d = eig_diagonal(A)
    if not bool((d > 0).all()):
        return
    g = torch.Generator().manual_seed(seed)
    X = size * torch.randn(problem.shape, generator=g, dtype=torch.float64)
    assert_below(dual_bound(problem.W, A, d, X, problem.budget), problem, optimum(problem))


def test_zero_gives_the_cheapest_drop():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 6, generator=g, dtype=torch.float64)
    A = torch.eye(6, dtype=torch.float64) * 2
    d = torch.full((6,), 1.5, dtype=torch.float64)
    for budget, dropped in [
        (Unstructured(k=7), (W * W).reshape(-1).sort().values[:11]),
        (PerRow(k=2), (W * W).sort(dim=1).values[:, :4]),
        (Structured(k=4), (W * W).sum(dim=0).sort().values[:2]),
    ]:
        expected = 1.5 * float(dropped.sum())
        assert 0 <= expected - dual_bound(W, A, d, None, budget) <= 1e-7 * expected  # rounding


def test_a_diagonal_problem_is_bounded_exactly():
    # A = diag(d) leaves Q = 0: the problem separates and the separable bound is the optimum.
    g = torch.Generator().manual_seed(1)
    W = torch.randn(2, 5, generator=g, dtype=torch.float64)
    d = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    budget = PerRow(k=2)
    truth = optimum(LayerProblem(W, torch.diag(d), lam=0.0, budget=budget))
    assert 0 <= truth - dual_bound(W, torch.diag(d), d, None, budget) <= 1e-7 * truth
