"""Every engine method against the truth: top-k under H = I, enumerated optima, invariants."""

import functools
import time

import pytest
import torch

from solvers import NM, LayerProblem, PerRow, Structured, Unstructured, solve

from .enumeration import optimum

METHODS = [
    ("magnitude", {}),
    ("magnitude", {"refit": True}),
    ("wanda", {}),
    ("obs", {}),
    ("iht", {}),
    ("admm", {}),
    ("admm", {"schedule": "alps"}),
    ("admm", {"schedule": "fast"}),
]
BUDGETS = [Unstructured(sparsity=0.7), PerRow(k=5), NM(2, 4), Structured(k=3, group=2)]


@pytest.mark.parametrize(("method", "options"), METHODS)
@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_identity_gives_the_exact_top_k(method, options, budget):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 12, generator=g, dtype=torch.float64)
    problem = LayerProblem(W, None, budget=budget)
    solution = solve(problem, method, **options)
    expected = budget.project(W)
    assert torch.equal(solution.mask, budget.select(W * W))
    assert torch.allclose(solution.weight, expected, atol=1e-10)
    assert solution.objective == pytest.approx(float(((W - expected) ** 2).sum()), abs=1e-10)


@pytest.mark.parametrize(("method", "options"), METHODS)
@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_budget_met_and_deterministic(layer, method, options, budget, monkeypatch):
    W, H = layer
    problem = LayerProblem(W[:8], H, budget=budget)
    import solvers.api

    function = solvers.api.method_function

    def slower(name):  # the method itself takes 0.02 s more: its seconds must hold them
        @functools.wraps(function(name))  # the same signature: options are checked against it
        def run(*args, **kwargs):
            time.sleep(0.02)
            return function(name)(*args, **kwargs)

        return run

    monkeypatch.setattr(solvers.api, "method_function", slower)
    start = time.perf_counter()
    first = solve(problem, method, **options)
    wall = time.perf_counter() - start
    second = solve(problem, method, **options)
    assert int(first.mask.sum()) == budget.kept(problem.shape)
    assert torch.equal(first.mask, problem.budget.select(first.mask.double()))  # feasible
    assert not first.weight[~first.mask].any()
    assert torch.equal(first.weight, second.weight)
    assert first.objective <= problem.objective(torch.zeros_like(W[:8])) + 1e-9
    assert first.info["method"] == method and 0.02 <= first.info["seconds"] <= wall


def random_tiny_problem(seed: int, sparsity: float = 0.6):
    """A 2 x 8 layer whose inputs mix their columns at random (an ill-conditioned H)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(64, 8, generator=g, dtype=torch.float64) @ torch.randn(
        8, 8, generator=g, dtype=torch.float64
    )
    W = torch.randn(2, 8, generator=g, dtype=torch.float64)
    return LayerProblem.from_inputs(W, X, sparsity=sparsity)


# Fraction of the 40 instances where each method must reach the enumerated optimum. Measured:
# ADMM 27/40, IHT 21/40; OBS has no such claim, only the lower-bound check.
HIT_RATE = {"admm": 0.6, "iht": 0.45, "obs": 0.0}


@pytest.mark.parametrize("method", ["iht", "admm", "obs"])
def test_tiny_instances_against_enumeration(method):
    """2 x 8 layers: often the true optimum, never worse than magnitude + refit."""
    hits, trials = 0, 40
    for seed in range(trials):
        problem = random_tiny_problem(seed)
        best = optimum(problem)
        got = solve(problem, method).objective
        baseline = solve(problem, "magnitude", refit=True).objective
        assert got >= best - 1e-9 * max(1.0, best)
        if method != "obs":
            assert got <= baseline * (1 + 1e-9) + 1e-12
        hits += got <= best * (1 + 1e-6) + 1e-12
    assert hits >= HIT_RATE[method] * trials, f"{method}: optimum in {hits}/{trials} cases"


def test_per_row_against_enumeration():
    hits = 0
    for seed in range(20):
        problem = random_tiny_problem(seed).with_budget(PerRow(k=3))
        best = optimum(problem, per_row=3)
        got = solve(problem, "admm").objective
        assert got >= best * (1 - 1e-9)
        hits += got <= best * (1 + 1e-6)
    assert hits >= 12


def test_admm_beats_magnitude_on_correlated_inputs(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.7)
    admm = solve(problem, "admm")
    wanda = solve(problem, "wanda", refit=True)
    assert admm.objective < wanda.objective
    assert admm.info["converged"]
    assert len(admm.info["history"]) == len(admm.info["support_changes"])  # f(D) per check
