"""OBS / SparseGPT: exact budgets, the OBS identities, and the diagonal-H optimum."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers import NM, LayerProblem, PerRow, Structured, Unstructured, solve
from solvers.obs import obs

BUDGETS = [
    Unstructured(sparsity=0.5),
    Unstructured(sparsity=0.9),
    Unstructured(k=1),
    PerRow(sparsity=0.6),
    PerRow(k=0),
    NM(2, 4),
    NM(1, 8),
    Structured(sparsity=0.5),
    Structured(k=3, group=4),
]


def assert_feasible(problem, solution):
    """The mask holds exactly the budget's count and is one of its supports; zero off it."""
    budget, mask = problem.budget, solution.mask
    assert mask.dtype == torch.bool and mask.shape == problem.shape
    assert int(mask.sum()) == budget.kept(problem.shape)
    assert torch.equal(budget.select(mask.to(problem.W.dtype)), mask)
    assert bool((solution.weight[~mask] == 0).all())


@pytest.mark.parametrize("blocksize", [5, 8, 128])
@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_budget_met_exactly(layer, budget, blocksize):
    W, H = layer
    problem = LayerProblem(W, H, budget=budget)
    solution = solve(problem, "obs", blocksize=blocksize)
    assert_feasible(problem, solution)
    assert solution.weight.dtype == W.dtype


@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_objective_is_the_sum_of_obs_step_costs(layer, budget):
    """Each step keeps the free weights optimal, so the costs add up to f exactly."""
    W, H = layer
    problem = LayerProblem(W, H, budget=budget)
    weight, _, info = obs(problem, blocksize=8)
    if info["history"]:
        assert info["history"][-1] == pytest.approx(problem.objective(weight), rel=1e-8)
        assert info["history"] == sorted(info["history"])
    else:  # nothing to drop
        assert problem.objective(weight) == 0
    assert info["iterations"] == len(info["history"]) and info["converged"]


@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_identity_H_gives_magnitude_pruning(budget, lam):
    """With ``H = I`` nothing is corrected: the result is the exact top-k of ``|W|``."""
    W = torch.randn(12, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    problem = LayerProblem(W, None, lam=lam, budget=budget)
    solution = solve(problem, "obs", blocksize=8)
    expected = solve(problem, "magnitude")
    assert torch.equal(solution.mask, expected.mask)
    assert torch.equal(solution.weight, expected.weight)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    rows=st.integers(1, 6),
    groups=st.integers(1, 5),
    blocksize=st.integers(1, 9),
)
def test_diagonal_H_gives_the_exact_optimum(data, rows, groups, blocksize):
    """Diagonal ``H``: the top-k of ``H_jj W_ij**2`` is optimal; ties break as ``select``'s.

    Integer weights and ``H_jj`` in powers of 4 make ties frequent and every score exact.
    """
    cols = 4 * groups
    W = torch.tensor(
        data.draw(st.lists(st.integers(-3, 3), min_size=rows * cols, max_size=rows * cols)),
        dtype=torch.float64,
    ).reshape(rows, cols)
    h = data.draw(st.lists(st.sampled_from([0.25, 1.0, 4.0]), min_size=cols, max_size=cols))
    budget = data.draw(
        st.sampled_from(
            [
                Unstructured(k=data.draw(st.integers(0, rows * cols))),
                PerRow(k=data.draw(st.integers(0, cols))),
                NM(data.draw(st.integers(0, 4)), 4),
                Structured(k=data.draw(st.integers(0, groups)), group=4),
            ]
        )
    )
    problem = LayerProblem(W, torch.diag(torch.tensor(h, dtype=torch.float64)), 0.0, budget)
    solution = solve(problem, "obs", blocksize=blocksize)
    expected = budget.select(W * W * problem.H.diagonal())
    assert torch.equal(solution.mask, expected)
    assert torch.equal(solution.weight, W * expected)


NONTRIVIAL = [BUDGETS[i] for i in (0, 1, 3, 5, 7, 8)]


@pytest.mark.parametrize("budget", NONTRIVIAL, ids=repr)
def test_far_below_magnitude_and_wanda(layer, budget):
    """The weight update is what OBS adds: without refit it beats the score methods by far
    (less so at 90 % sparsity, where few weights are left to compensate)."""
    W, H = layer
    problem = LayerProblem(W, H, budget=budget)
    objective = solve(problem, "obs", blocksize=8).objective
    factor = 0.6 if budget.sparsity == 0.9 else 0.5
    assert objective < factor * solve(problem, "magnitude").objective
    assert objective < factor * solve(problem, "wanda").objective


def test_refit_is_the_optimum_on_the_support(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.7)
    plain = solve(problem, "obs", blocksize=8)
    refitted = solve(problem, "obs", blocksize=8, refit=True)
    assert torch.equal(plain.mask, refitted.mask)
    assert torch.allclose(refitted.weight, problem.refit(plain.mask))
    assert refitted.objective <= plain.objective


def test_dropping_one_group_is_optimal(layer):
    """Dropping a single column group, the OBS cost is exact: group OBS finds the best group."""
    W, H = layer
    budget = Structured(k=7, group=4)
    problem = LayerProblem(W, H, budget=budget)
    solution = solve(problem, "obs")
    best = min(
        problem.objective(problem.refit((torch.arange(32) // 4 != g).expand(24, 32)))
        for g in range(8)
    )
    assert solution.objective == pytest.approx(best, rel=1e-9)


def test_deterministic_and_inputs_untouched(layer):
    W, H = layer
    W0, H0 = W.clone(), H.clone()
    for budget in (Unstructured(sparsity=0.6), Structured(sparsity=0.5)):
        problem = LayerProblem(W, H, budget=budget)
        first, second = solve(problem, "obs", blocksize=8), solve(problem, "obs", blocksize=8)
        assert torch.equal(first.weight, second.weight) and torch.equal(first.mask, second.mask)
    assert torch.equal(W, W0) and torch.equal(H, H0)


def singular_problem(budget, dtype):
    """``lam = 0`` with 8 samples of 32 inputs and one dead input: ``H`` has rank 7."""
    g = torch.Generator().manual_seed(5)
    W = torch.randn(20, 32, generator=g, dtype=dtype)
    X = torch.randn(8, 32, generator=g, dtype=dtype)
    X[:, 5] = 0
    return LayerProblem(W, X.T @ X / 8, lam=0.0, budget=budget)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("budget", BUDGETS, ids=repr)
def test_singular_H_without_ridge(budget, dtype):
    problem = singular_problem(budget, dtype)
    solution = solve(problem, "obs", blocksize=8, certify=True, bound="separable")
    assert_feasible(problem, solution)
    # The figures from their definitions, in float64; round-off below 0 counts as 0.
    D = (solution.weight - problem.W).double()
    f = max(float(((D @ problem.damped.double()) * D).sum()), 0.0)
    assert solution.objective == pytest.approx(f, rel=1e-4, abs=1e-6 * problem.output_energy)
    assert 0.0 <= solution.lower_bound <= solution.objective
    W, H = problem.W.double(), problem.H.double()
    error = max(float(((D @ H) * D).sum()), 0.0) / float(((W @ H) * W).sum())
    assert solution.relative_error >= 0.0
    assert solution.relative_error == pytest.approx(error, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("budget", [Unstructured(sparsity=0.5), PerRow(sparsity=0.6)], ids=repr)
def test_singular_H_leaves_room_to_compensate(budget, dtype):
    """Rows keep more weights than ``H``'s rank: the errors vanish in its null space.

    (Undamped OBS is no better than magnitude at 90 %: that is what the damping is for.)
    """
    problem = singular_problem(budget, dtype)
    objective = solve(problem, "obs", blocksize=8).objective
    assert objective < 1e-3 * solve(problem, "magnitude").objective


def test_ties_keep_the_lowest_indices():
    """Equal weights everywhere: the kept support is the lowest indices, as ``select`` says."""
    W = torch.ones(3, 8, dtype=torch.float64)
    for budget in (Unstructured(k=5), PerRow(k=2), NM(1, 4), Structured(k=1, group=2)):
        solution = solve(LayerProblem(W, None, budget=budget), "obs", blocksize=3)
        assert torch.equal(solution.mask, budget.select(torch.ones_like(W)))


@pytest.mark.parametrize("blocksize", [0, -3, 2.5, True, "8"])
def test_bad_blocksize(layer, blocksize):
    W, H = layer
    with pytest.raises(ValueError, match="blocksize"):
        solve(LayerProblem(W, H, sparsity=0.5), "obs", blocksize=blocksize)


def test_budgets_exact_on_many_shapes():
    """Odd shapes and counts: every unstructured count from 0 to all is met exactly."""
    g = torch.Generator().manual_seed(7)
    W = torch.randn(3, 11, generator=g, dtype=torch.float64)
    X = torch.randn(40, 11, generator=g, dtype=torch.float64)
    base = LayerProblem(W, X.T @ X / 40)
    for k, blocksize in itertools.product(range(34), (1, 4)):
        problem = base.with_budget(Unstructured(k=k))
        assert_feasible(problem, solve(problem, "obs", blocksize=blocksize))


def test_the_inverse_factor_is_the_upper_cholesky_factor_of_the_inverse():
    """SparseGPT's ``U`` (``U^T U = (H + lam I)^-1``, upper) from one Cholesky of the reversed
    matrix and one triangular inverse equals the factor of the formed inverse."""
    from solvers.obs import _inverse, _inverse_factor

    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 30, generator=g, dtype=torch.float64) * torch.linspace(0.1, 2, 30)
    A = X.T @ X / 40 + 1e-3 * torch.eye(30, dtype=torch.float64)
    U = _inverse_factor(A)
    assert torch.equal(U, U.triu()) and bool((U.diagonal() > 0).all())
    truth = torch.linalg.cholesky(torch.linalg.inv(A)).mT
    assert torch.allclose(U, truth, rtol=1e-9, atol=1e-12)
    assert torch.allclose(U.T @ U, _inverse(A), rtol=1e-9, atol=1e-12)
