"""IHT: descent, the continuation, line search and momentum switches, robustness."""

import pytest
import torch

from solvers import LayerProblem, solve


@pytest.mark.parametrize(
    "options",
    [{}, {"momentum": False}, {"line_search": False}, {"warmup": 0}, {"max_refits": 0}],
)
def test_variants_descend_after_the_warm_up(layer, options):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.7)
    solution = solve(problem, "iht", **options)
    info = solution.info
    warmup = options.get("warmup", 100)
    tail = info["history"][warmup + 1 :]  # from the first step inside the target budget
    # descent up to the line search's 1e-6 slack
    assert all(b <= a * (1 + 1e-6) + 1e-12 for a, b in zip(tail, tail[1:], strict=False))
    assert solution.objective <= min(tail) * (1 + 1e-9) + 1e-12  # the refit only helps
    assert int(solution.mask.sum()) == problem.budget.kept(problem.shape)


def test_continuation_beats_thresholding_at_once(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.85)
    with_warmup = solve(problem, "iht", max_refits=0)
    without = solve(problem, "iht", warmup=0, max_refits=0)
    assert with_warmup.objective <= without.objective * (1 + 1e-9)


@pytest.mark.parametrize("max_iter", [0, 1, 20, 99])
def test_a_run_shorter_than_the_warm_up_meets_the_budget(layer, max_iter):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.7)
    solution = solve(problem, "iht", max_iter=max_iter)
    assert int(solution.mask.sum()) == problem.budget.kept(problem.shape)
    assert bool((solution.weight[~solution.mask] == 0).all())


def test_close_to_admm(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.7)
    assert solve(problem, "iht").objective <= 1.5 * solve(problem, "admm").objective


def test_singular_H_without_ridge():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 16, generator=g)
    W = torch.randn(8, 16, generator=g)
    problem = LayerProblem(W, X.T @ X / 5, lam=0.0, sparsity=0.5)
    solution = solve(problem, "iht", certify=True)
    # H has rank 5 and the rows keep 8 weights on average: the optimum is 0, up to round-off
    # (which once came out negative and crashed the certificate).
    assert 0.0 <= solution.lower_bound <= solution.objective <= 1e-6 * problem.output_energy
    assert 0.0 <= solution.relative_error <= 1e-6


@pytest.mark.parametrize(
    ("options", "message"),
    [({"patience": 0}, "patience"), ({"warmup": -1}, "warmup"), ({"grow": 0.5}, "grow"),
     ({"check_every": 0}, "check_every"), ({"check_every": 2.5}, "check_every")],
)
def test_bad_options(layer, options, message):
    W, H = layer
    with pytest.raises(ValueError, match=message):
        solve(LayerProblem(W, H, sparsity=0.5), "iht", **options)
