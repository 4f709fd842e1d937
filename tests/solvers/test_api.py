"""solve() and solve_to_tolerance(): dispatch, option checks, the documented calls, the search."""

import numpy as np
import pytest
import torch

from solvers import (
    NM,
    LayerProblem,
    PerRow,
    Unstructured,
    method_function,
    methods,
    register_method,
    solve,
    solve_to_tolerance,
)


def test_the_calls_other_code_relies_on():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 16, generator=g)
    X = torch.randn(64, 16, generator=g)
    H = X.T @ X / 64
    for problem in (
        LayerProblem(W, H, sparsity=0.7),
        LayerProblem(W, None, sparsity=0.7),
        LayerProblem(W, H, lam=0.0, budget=NM(2, 4)),
    ):
        solution = solve(problem, method="admm")
        assert solution.weight.shape == W.shape
        # The figures are those of the weight returned, from their definitions.
        D = (solution.weight - W).double()
        A = torch.eye(16, dtype=torch.float64) if problem.H is None else H.double()
        damped = A + problem.lam * torch.eye(16, dtype=torch.float64)
        assert solution.objective == pytest.approx(float(((D @ damped) * D).sum()), rel=1e-5)
        assert solution.relative_error == pytest.approx(
            float(((D @ A) * D).sum() / ((W.double() @ A) * W.double()).sum()), rel=1e-5
        )
        assert 0 < solution.relative_error <= solve(problem, "magnitude").relative_error
        assert set(solution.info) >= {
            "method", "options", "seconds", "iterations", "converged", "history"
        }


def test_numpy_in_torch_out():
    W = np.random.default_rng(0).standard_normal((4, 8))
    solution = solve(LayerProblem(W, None, sparsity=0.5), "magnitude")
    assert isinstance(solution.weight, torch.Tensor) and solution.weight.dtype == torch.float64
    assert solution.sparsity == 0.5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: solve(p, method="lasso"), "method must be one of .* got 'lasso'"),
        (lambda p: solve(p, method="admm", rho=1.0), "unknown option\\(s\\) \\['rho'\\]"),
        (lambda p: solve("W", method="admm"), "problem must be a LayerProblem"),
        (lambda p: solve(p.with_budget(Unstructured()), "admm"), "has no size"),
        (lambda p: solve_to_tolerance(p, eps=-1.0), "eps must be"),
    ],
)
def test_bad_calls(call, message):
    problem = LayerProblem(torch.ones(2, 4), None, sparsity=0.5)
    with pytest.raises(ValueError, match=message):
        call(problem)


def test_tolerance_search_is_exact_for_magnitude_under_identity():
    """Under H = I the error of the top-k is monotone in k: the search finds the exact count."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(10, 20, generator=g, dtype=torch.float64)
    problem = LayerProblem(W, None, budget=Unstructured())
    eps = 0.1
    found = solve_to_tolerance(problem, eps, method="magnitude")
    errors = (W.flatten() ** 2).sort().values.cumsum(0) / (W**2).sum()  # error after dropping j
    dropped = int((errors <= eps).sum())
    assert int(found.mask.sum()) == W.numel() - dropped
    assert found.relative_error <= eps


def test_tolerance_search_with_warm_starts(layer):
    W, H = layer
    problem = LayerProblem(W, H, budget=PerRow())
    found = solve_to_tolerance(problem, 0.05, method="admm")
    assert found.relative_error <= 0.05
    k = int(found.mask.sum(dim=1)[0])
    trials = dict(found.info["search"])
    assert trials[k] == found.relative_error
    if k > 0:  # the count one below was tried (warm-started) and missed the tolerance
        assert trials[k - 1] > 0.05
    assert len(found.info["search"]) <= 8  # bisection over 32 counts


def test_tolerance_of_one_or_more_prunes_everything(layer):
    W, H = layer
    found = solve_to_tolerance(LayerProblem(W, H, sparsity=0.5), 1.0, method="magnitude")
    assert not found.mask.any()


def _keep_last(problem, *, scale: float = 1.0):
    """A test method: keeps the budget's support of the last flat indices, scaled."""
    score = torch.arange(1.0, problem.W.numel() + 1).reshape(problem.shape)
    mask = problem.budget.select(score)
    return scale * problem.W * mask, mask, {"iterations": 0, "converged": True, "history": []}


def test_a_registered_method_is_solved_like_a_builtin():
    register_method("test_keep_last", _keep_last)
    assert "test_keep_last" in methods() and method_function("test_keep_last") is _keep_last
    W = torch.arange(1.0, 9.0).reshape(2, 4)
    solution = solve(LayerProblem(W, None, k=3), "test_keep_last", scale=2.0)
    assert solution.mask.reshape(-1).tolist() == [False] * 5 + [True] * 3
    assert torch.equal(solution.weight, 2 * W * solution.mask)
    assert solution.info["options"] == {"scale": 2.0}
    assert solution.info["method"] == "test_keep_last"
    register_method("test_keep_last", _keep_last)  # the same function again is harmless
    with pytest.raises(ValueError, match="'test_keep_last' is already registered"):
        register_method("test_keep_last", lambda problem: None)
    with pytest.raises(ValueError, match="'admm' is already registered"):
        register_method("admm", _keep_last)
    with pytest.raises(ValueError, match="fn must be callable"):
        register_method("test_other", "solvers.admm:admm")


def test_errors_are_computed_on_first_use_and_travel_without_the_problem(monkeypatch):
    import pickle

    from solvers import LayerProblem

    calls = []
    relative_error = LayerProblem.relative_error
    monkeypatch.setattr(LayerProblem, "relative_error",
                        lambda self, w: calls.append(1) or relative_error(self, w))
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 12, generator=g)
    problem = LayerProblem(torch.randn(5, 12, generator=g), X.T @ X / 64, sparsity=0.5)
    solution = solve(problem, "obs")
    assert calls == []  # a caller that measures the solution its own way pays nothing
    assert solution.relative_error == relative_error(problem, solution.weight)
    assert solution.relative_error == relative_error(problem, solution.weight) and calls == [1]
    objective = problem.objective(solution.weight)
    detached = pickle.loads(pickle.dumps(solution.detach()))
    assert detached.problem is None
    assert (detached.objective, detached.relative_error) == (objective, solution.relative_error)


def test_the_registry_says_what_each_method_takes_and_needs():
    from solvers import method_info
    from solvers.many import portable

    assert {m: method_info(m).statistics for m in ("magnitude", "wanda", "obs", "admm")} == {
        "magnitude": "none", "wanda": "diagonal", "obs": "full", "admm": "full"}
    assert [m for m in methods() if method_info(m).seed] == ["hard_concrete"]
    assert sorted(m for m in methods() if method_info(m).start) == ["admm", "iht"]
    assert method_info("magnitude").statistics_for({"refit": True}) == "full"

    def keep_all(problem, *, seed=0):
        return problem.W, torch.ones_like(problem.W, dtype=torch.bool), {}

    register_method("keep_all_seeded", keep_all, statistics="none", seed=True)
    assert method_info("keep_all_seeded").seed and portable("keep_all_seeded")[1] == (
        keep_all, method_info("keep_all_seeded"))
    with pytest.raises(ValueError, match="already registered"):
        register_method("keep_all_seeded", keep_all, statistics="full", seed=True)
    with pytest.raises(ValueError, match="statistics must be one of"):
        register_method("other", keep_all, statistics="some")
    with pytest.raises(ValueError, match="method must be one of"):
        method_info("nope")
