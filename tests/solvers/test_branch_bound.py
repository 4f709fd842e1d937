"""Branch and bound over the support: the enumerated optimum, valid bounds when stopped early,
and rows past 100 binaries checked by enumeration where that is feasible."""

import itertools

import pytest
import torch
from hypothesis import given, settings

from solvers import NM, LayerProblem, PerRow, Structured, Unstructured, solve
from solvers.branch_bound import search, support_cost

from .brute_force import assert_below, optimum, tiny_problems
from .test_row_sdp import decaying_h, real_like


@settings(max_examples=10, deadline=None)
@given(real_like())
def test_bnb_finds_the_enumerated_optimum_on_real_like_h(problem):
    solution = solve(problem, "exact", solver="BNB")
    truth = optimum(problem)
    assert solution.info["status"] == "optimal"
    assert solution.objective == pytest.approx(truth, rel=1e-6, abs=1e-12)
    assert_below(solution.info["lower_bound"], problem, truth)


@settings(max_examples=20, deadline=None)
@given(tiny_problems().filter(lambda p: not isinstance(p.budget, Structured)))
def test_bnb_stopped_early_still_bounds_the_optimum(problem):
    A, W = problem.damped.double(), problem.W.double()
    out, inp = problem.shape
    start = solve(problem, "magnitude", refit=True).mask
    card = problem.budget.layout(problem.shape)
    if card.set_size == out * inp:
        trees = search(W[None], A, set_size=inp, shared=torch.tensor([card.count]),
                       start=start[None], max_nodes=1)
    else:
        count = torch.full((out, 1, inp // card.set_size), card.count)
        trees = search(W[:, None], A, set_size=card.set_size, count=count, start=start[:, None],
                       max_nodes=1)
    truth = optimum(problem)
    assert_below(sum(tree.bound for tree in trees), problem, truth)
    assert sum(tree.objective for tree in trees) >= truth * (1 - 1e-9)


def test_penalty_trees_bound_the_penalised_optimum():
    H = decaying_h(8, seed=3, decay=0.6)
    A = H + 0.01 * H.diagonal().mean() * torch.eye(8, dtype=torch.float64)
    W = torch.randn(3, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    tau = 0.05 * float((W @ A * W).sum(1).mean()) / 8
    trees = search(W[:, None], A, set_size=8, penalty=torch.full((3,), tau),
                   start=torch.ones(3, 1, 8, dtype=torch.bool))
    for w, tree in zip(W, trees, strict=True):
        truth = min(support_cost(A, w, torch.tensor([j in S for j in range(8)])) + tau * len(S)
                    for size in range(9) for S in itertools.combinations(range(8), size))
        assert tree.proven
        assert tree.objective == pytest.approx(truth, rel=1e-7)
        assert tree.bound <= truth * (1 + 1e-9)


@pytest.mark.parametrize("keep", [126, pytest.param(2, marks=pytest.mark.slow)],
                         ids=["drop 2", "keep 2"])
def test_a_row_of_128_binaries_is_proven_optimal(keep):
    # C(128, 2) = 8128 supports: enumeration is the check.
    H = decaying_h(128, seed=5, decay=0.99)
    W = torch.randn(1, 128, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    problem = LayerProblem(W, H, budget=PerRow(k=keep))
    solution = solve(problem, "exact", solver="BNB", max_binaries=128, time_limit=300)
    assert solution.info["status"] == "optimal"
    A, w = problem.damped.double(), W[0]
    pairs = itertools.combinations(range(128), 2)
    if keep == 2:
        truth = min(support_cost(A, w, _mask(128, pair)) for pair in pairs)
    else:
        truth = min(support_cost(A, w, ~_mask(128, pair)) for pair in pairs)
    assert solution.objective == pytest.approx(truth, rel=1e-6)
    assert solution.info["lower_bound"] <= truth * (1 + 1e-9)


def _mask(n, chosen):
    mask = torch.zeros(n, dtype=torch.bool)
    mask[list(chosen)] = True
    return mask


def test_bnb_reports_nodes_and_refuses_structured(layer):
    W, H = layer
    problem = LayerProblem(W[:2, :8], H[:8, :8], budget=NM(2, 4))
    info = solve(problem, "exact", solver="BNB").info
    assert info["nodes"] >= 1 and info["solver"] == "BNB"
    with pytest.raises(ValueError, match="one gate per weight"):
        solve(LayerProblem(W[:2, :8], H[:8, :8], budget=Structured(k=2)), "exact", solver="BNB")


@pytest.mark.slow
def test_unstructured_layer_of_128_binaries():
    H = decaying_h(32, seed=7, decay=0.97)
    W = torch.randn(4, 32, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    problem = LayerProblem(W, H, budget=Unstructured(sparsity=0.7))
    solution = solve(problem, "exact", solver="BNB", max_binaries=128, time_limit=300)
    assert solution.info["status"] == "optimal"
    assert solution.info["lower_bound"] <= solution.objective
    assert solution.objective <= solve(problem, "admm").objective * (1 + 1e-9)
