"""LayerProblem: the datafit against its definitions, input checks."""

import numpy as np
import pytest
import torch

from solvers import NM, LayerProblem, PerRow, solve


def test_defaults(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.5)
    assert problem.lam == pytest.approx(0.01 * float(H.diagonal().mean()))
    assert LayerProblem(W, None, sparsity=0.5).lam == 0.0
    assert problem.W.dtype == torch.float64


def test_objective_gradient_and_relative_error(layer):
    W, H = layer
    problem = LayerProblem(W, H, lam=0.3, sparsity=0.5)
    g = torch.Generator().manual_seed(0)
    Wp = torch.randn(W.shape, generator=g, dtype=W.dtype)
    D = Wp - W
    expected = torch.trace(D @ H @ D.T) + 0.3 * (D * D).sum()
    assert problem.objective(Wp) == pytest.approx(float(expected), rel=1e-10)
    assert problem.relative_error(Wp) == pytest.approx(
        float(torch.trace(D @ H @ D.T) / torch.trace(W @ H @ W.T)), rel=1e-10
    )
    # The gradient matches a finite difference of the objective.
    E = torch.randn(W.shape, generator=g, dtype=W.dtype)
    h = 1e-6
    numeric = (problem.objective(Wp + h * E) - problem.objective(Wp - h * E)) / (2 * h)
    assert float((problem.gradient(Wp) * E).sum()) == pytest.approx(numeric, rel=1e-6)
    eig_max = float(torch.linalg.eigvalsh(H + 0.3 * torch.eye(H.shape[0], dtype=H.dtype))[-1])
    assert problem.lipschitz() == pytest.approx(2 * eig_max, rel=1e-8)


def test_identity_problem_is_the_frobenius_distance():
    W = torch.randn(5, 7, dtype=torch.float64)
    problem = LayerProblem(W, None, sparsity=0.5)
    Wp = torch.zeros_like(W)
    assert problem.objective(Wp) == pytest.approx(float((W * W).sum()))
    assert problem.relative_error(Wp) == pytest.approx(1.0)


def test_from_inputs_and_numpy():
    rng = np.random.default_rng(0)
    W, X = rng.standard_normal((4, 6)), rng.standard_normal((50, 6))
    problem = LayerProblem.from_inputs(W, X, sparsity=0.5)
    assert torch.allclose(problem.H, torch.from_numpy(X.T @ X / 50))
    problem3d = LayerProblem.from_inputs(W, X.reshape(5, 10, 6), sparsity=0.5)
    assert torch.allclose(problem3d.H, problem.H)
    assert LayerProblem(W.astype(np.float32), None, k=3).W.dtype == torch.float32
    assert LayerProblem(W, None, k=3, dtype=torch.float32).W.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"W": torch.ones(3)}, "W must be a 2-D"),
        ({"W": [[1.0]]}, "W must be a numpy array or a torch tensor"),
        ({"H": torch.ones(3, 4)}, "H must be a square"),
        ({"H": torch.eye(5)}, "H must be 4 x 4"),
        ({"H": torch.triu(torch.ones(4, 4))}, "H must be symmetric"),
        ({"H": torch.full((4, 4), float("nan"))}, "H must be finite"),
        ({"H": torch.full((4, 4), float("inf"))}, "H must be finite"),
        ({"lam": -1.0}, "lam must be"),
        ({"sparsity": 1.5}, "sparsity must be a fraction in \\[0, 1\\), got 1.5"),
        ({"budget": NM(2, 3)}, "divisible by m=3"),
        ({"budget": PerRow(k=2), "sparsity": 0.5}, "not both"),
        ({"budget": "unstructured"}, "budget must be"),
    ],
)
def test_bad_input_names_the_argument(kwargs, message):
    args = {"W": torch.ones(3, 4), "H": None, "sparsity": None}
    args.update(kwargs)
    if "budget" in args and args["sparsity"] is None:
        del args["sparsity"]
    with pytest.raises(ValueError, match=message):
        LayerProblem(args.pop("W"), args.pop("H"), **args)


def test_with_budget_keeps_the_data(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.5)
    other = problem.with_budget(PerRow(k=3))
    assert other.W is problem.W and other.budget == PerRow(k=3)
    assert problem.budget != other.budget


@pytest.mark.parametrize("with_h", [False, True])
def test_damped_diagonal_is_the_diagonal_of_damped(with_h):
    W = torch.randn(3, 5, dtype=torch.float64)
    X = torch.randn(20, 5, dtype=torch.float64)
    problem = LayerProblem(W, X.T @ X / 20 if with_h else None, lam=0.3 if with_h else None)
    torch.testing.assert_close(problem.damped_diagonal, problem.damped.diagonal())


def test_magnitude_on_the_plain_problem_never_forms_the_identity():
    # A wide plain layer: H + lam I would be in x in (here 40 GB in float64).
    problem = LayerProblem(torch.randn(1, 70_000, dtype=torch.float64), None, sparsity=0.5)
    solution = solve(problem, method="magnitude")
    assert int(solution.mask.sum()) == 35_000
    assert "damped" not in vars(problem)
