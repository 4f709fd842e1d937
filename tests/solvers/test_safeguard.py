"""The safeguard's early exit: a candidate support is dropped only when its optimum is proven
worse, so every decision is the one the full check makes."""

import pytest
import torch

from solvers import LayerProblem, solve
from solvers.magnitude import diagonal_score
from solvers.safeguard import best_of, curvature

from ..conftest import correlated_inputs


def _float32_layer(out: int, inp: int, seed: int, sparsity: float,
                   decay: float = 0.97) -> LayerProblem:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g, dtype=torch.float64)
    X = correlated_inputs(4 * inp, inp, seed=seed + 100, decay=decay)
    return LayerProblem(W.float(), (X.T @ X / X.shape[0]).float(), sparsity=sparsity)


def _optimum(problem: LayerProblem, mask: torch.Tensor) -> float:
    """The exact optimum on ``mask``, in float64 (batched Cholesky)."""
    exact = LayerProblem(problem.W.double(), problem.H.double(), lam=problem.lam,
                         budget=problem.budget)
    return exact.objective(exact.refit(mask, method="exact"))


@pytest.mark.parametrize(("seed", "sparsity"), [(0, 0.5), (1, 0.7), (2, 0.9)])
def test_curvature_is_below_the_true_smallest_eigenvalue(seed, sparsity):
    problem = _float32_layer(48, 96, seed, sparsity)
    A = problem.damped.double()  # the float32 matrix the CG works with, exactly
    d = A.diagonal().sqrt()
    smallest = float(torch.linalg.eigvalsh(A / d[:, None] / d[None, :])[0])
    bound = curvature(problem.scaled.eigh[0])
    assert 0 < bound <= smallest
    assert bound >= smallest - 96 * 2.0**-20  # and not far below it


@pytest.mark.parametrize(("seed", "sparsity"), [(0, 0.5), (1, 0.7), (2, 0.9), (3, 0.6)])
def test_a_cg_check_gives_up_only_above_the_true_optimum(seed, sparsity):
    """Against the float64 optimum: ``above`` at the optimum never stops the check, and far
    below it the proof comes within the ten iterations the safeguard runs."""
    problem = _float32_layer(64, 96, seed, sparsity)
    c = curvature(problem.scaled.eigh[0])
    g = torch.Generator().manual_seed(seed)
    masks = [problem.budget.select(problem.W * problem.W),
             problem.budget.select(diagonal_score(problem)),
             problem.budget.select(torch.rand(problem.shape, generator=g))]
    for mask in masks:
        optimum = _optimum(problem, mask)
        plain = problem.refit(mask, method="cg", max_iter=10)
        kept = problem.refit(mask, method="cg", max_iter=10, above=optimum, curvature=c)
        assert kept is not None and torch.equal(kept, plain)  # same iterates when not stopped
        assert problem.refit(mask, method="cg", max_iter=10, above=0.5 * optimum,
                             curvature=c) is None
        assert torch.equal(problem.refit(mask, method="cg", max_iter=10, above=0.5 * optimum),
                           plain)  # no curvature, no proof: the iterates run to the end


def test_no_proof_without_curvature():
    """``H`` singular without a ridge: ``lambda_min(H~) = 0``, nothing can be proven."""
    g = torch.Generator().manual_seed(4)
    X = torch.randn(20, 48, generator=g)
    problem = LayerProblem(torch.randn(16, 48, generator=g), X.T @ X / 20, lam=0.0,
                           sparsity=0.5)
    assert curvature(problem.scaled.eigh[0]) <= 0
    mask = problem.budget.select(problem.W * problem.W)
    assert problem.refit(mask, method="cg", max_iter=10, above=0.0,
                         curvature=curvature(problem.scaled.eigh[0])) is not None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_of_decides_as_without_the_bound(seed, monkeypatch):
    """On layers wide enough for the CG check: the same weight, mask and winner with and
    without the early exit, both when the solver's answer is good (candidates dropped) and
    when it is bad (a candidate wins)."""
    # 200 * 128**3 / 3 > 1e8: the CG check; a flatter spectrum than above, where the candidates
    # are clearly worse than ADMM's support (twice its objective) and the proof comes early
    problem = _float32_layer(200, 256, seed, 0.5, decay=0.99)
    c = curvature(problem.scaled.eigh[0])
    candidates = {"diagonal": problem.budget.select(diagonal_score(problem)),
                  "magnitude": problem.budget.select(problem.W * problem.W)}
    good = solve(problem, "admm", schedule="alps", swap_rounds=0)
    start = torch.ones_like(problem.W, dtype=torch.bool)
    start[:, 1::2] = False  # every other input: a poor support, its weights unrefitted
    bad_weight = problem.W * start
    stopped = []
    original = problem.refit

    def counted(mask, **options):
        result = original(mask, **options)
        stopped.append(result is None)
        return result

    monkeypatch.setattr(problem, "refit", counted)
    for weight, mask in ((good.weight, good.mask), (bad_weight, start)):
        plain = best_of(problem, weight, mask, candidates)
        fast = best_of(problem, weight, mask, candidates, curvature=c)
        assert torch.equal(plain[0], fast[0]) and torch.equal(plain[1], fast[1])
        assert plain[2] == fast[2]
    assert plain[2] is not None  # the bad start lost to a candidate
    assert any(stopped)  # and the good one let the bound drop candidates


def test_the_bound_is_tight_where_the_error_lies_along_the_flattest_direction():
    """Row 0 keeps every input and starts at its optimum ``W_0`` plus ``t`` times the
    eigenvector of the smallest eigenvalue of ``H~`` (in original coordinates): there
    ``f - f* = rz / lambda_min`` exactly, so the proof must not claim more than that; the other
    rows make ``f* > 0``."""
    problem = _float32_layer(6, 32, 5, 0.5)
    e, Q = torch.linalg.eigh(problem.scaled.H.double())
    mask = problem.budget.select(problem.W * problem.W)
    mask[0] = True
    optimum = _optimum(problem, mask)
    init = problem.refit(mask, method="exact")
    init[0] += 30.0 * (Q[:, 0] / problem.scaled.s.double()).float()
    assert problem.objective(init) > 2 * optimum  # the start is far from the optimum
    c = curvature(problem.scaled.eigh[0])
    for steps in (1, 2, 5):
        assert problem.refit(mask, method="cg", init=init, max_iter=steps, above=optimum,
                             curvature=c) is not None
    assert problem.refit(mask, method="cg", init=init, max_iter=1, above=0.5 * optimum,
                         curvature=c) is None
