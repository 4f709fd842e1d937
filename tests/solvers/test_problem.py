"""LayerProblem: the datafit against its definitions, input checks."""

import numpy as np
import pytest
import torch

from solvers import NM, LayerProblem, PerRow, Unstructured, solve, solve_to_tolerance


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
    # The scaled problem: unit diagonal, and its Lipschitz constant and eigenbasis.
    A = H + 0.3 * torch.eye(H.shape[0], dtype=H.dtype)
    s = A.diagonal().sqrt()
    scaled = problem.scaled
    assert torch.allclose(scaled.H, A / s[:, None] / s[None, :], rtol=1e-12)
    assert torch.allclose(scaled.W0, W * s, rtol=1e-12)
    eig_max = float(torch.linalg.eigvalsh(scaled.H)[-1])
    assert scaled.lipschitz == pytest.approx(2 * eig_max, rel=1e-10)
    e, Q = scaled.eigh
    assert torch.allclose(Q @ torch.diag(e) @ Q.T, scaled.H, atol=1e-10)


def test_every_method_and_budget_shares_one_eigendecomposition(layer, monkeypatch):
    W, H = layer
    calls = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda A: calls.append(1) or eigh(A))
    problem = LayerProblem(W, H)
    for budget in (Unstructured(sparsity=0.5), PerRow(sparsity=0.7), NM(2, 4)):
        for method, options in (("admm", {"max_iter": 20}), ("iht", {"max_iter": 20}),
                                ("hard_concrete", {"steps": 20})):
            solve(problem.with_budget(budget), method, **options)
    solve_to_tolerance(problem.with_budget(Unstructured()), 0.05, "admm", max_iter=20)
    assert len(calls) == 1


def test_from_moments_is_the_dense_output_problem():
    g = torch.Generator().manual_seed(0)
    X0 = torch.randn(200, 6, generator=g, dtype=torch.float64)
    X = X0 + 0.3 * torch.randn(200, 6, generator=g, dtype=torch.float64)
    W = torch.randn(3, 6, generator=g, dtype=torch.float64)
    Y0 = X0 @ W.T
    H, G, energy = X.T @ X / 200, Y0.T @ X / 200, float((Y0 ** 2).sum()) / 200
    problem = LayerProblem.from_moments(W, H, G, energy, sparsity=0.5)
    assert problem.lam == pytest.approx(0.01 * float(H.diagonal().mean()), rel=1e-14)
    # the target minimises the output change plus the ridge: the normal equations
    lam = problem.lam
    eye = torch.eye(6, dtype=torch.float64)
    target = torch.linalg.lstsq(torch.cat([X / 200 ** 0.5, lam ** 0.5 * eye]),
                                torch.cat([Y0 / 200 ** 0.5, lam ** 0.5 * W.T])).solution.T
    assert torch.allclose(problem.W, target, rtol=0, atol=1e-10)
    P = torch.randn(3, 6, generator=g, dtype=torch.float64)
    change, dense_energy = problem.output_error(P)
    assert change == pytest.approx(float(((X @ P.T - Y0) ** 2).sum()) / 200, rel=1e-10)
    assert dense_energy == energy
    # f(P) differs from the output change plus the ridge by a constant independent of P.
    ridge = problem.lam * float(((P - W) ** 2).sum())
    Q = torch.randn(3, 6, generator=g, dtype=torch.float64)
    ridge_q = problem.lam * float(((Q - W) ** 2).sum())
    assert problem.objective(P) - change - ridge == pytest.approx(
        problem.objective(Q) - problem.output_error(Q)[0] - ridge_q, rel=1e-8, abs=1e-10)
    H0 = X0.T @ X0 / 200
    plain = LayerProblem.from_moments(W, H0, sparsity=0.5)
    assert plain.reference is None and torch.equal(plain.W, W)
    assert plain.output_error(P)[0] == pytest.approx(
        float(torch.trace((P - W) @ H0 @ (P - W).T)), rel=1e-12)
    with pytest.raises(ValueError, match="dense_energy .* must be given with dense_cross"):
        LayerProblem.from_moments(W, H, G)
    with pytest.raises(ValueError, match=r"dense_cross must have W's shape \(3, 6\)"):
        LayerProblem.from_moments(W, H, H, energy)
    with pytest.raises(ValueError, match="dense_energy must be a finite number >= 0"):
        LayerProblem.from_moments(W, H, G, H)


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


def test_the_psd_check_can_be_left_to_a_caller_that_summed_h():
    H = torch.diag(torch.tensor([1.0, -0.5, 2.0]))
    W = torch.randn(2, 3)
    with pytest.raises(ValueError, match="positive semidefinite"):
        LayerProblem(W, H, sparsity=0.5)
    assert torch.equal(LayerProblem(W, H, sparsity=0.5, check_psd=False).H, H)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "obs", "iht", "admm"])
def test_a_diagonal_H_given_as_a_vector_is_the_diagonal_matrix(method):
    """Every method and figure agrees; the score methods never form the in x in matrix."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(6, 16, generator=g, dtype=torch.float64)
    d = torch.rand(16, generator=g, dtype=torch.float64) + 0.1
    vector = LayerProblem(W, d, sparsity=0.5)
    matrix = LayerProblem(W, torch.diag(d), sparsity=0.5)
    a, b = solve(vector, method), solve(matrix, method)
    assert torch.equal(a.mask, b.mask) and torch.allclose(a.weight, b.weight)
    assert a.relative_error == pytest.approx(b.relative_error, rel=1e-12)
    assert vector.objective(a.weight) == pytest.approx(matrix.objective(a.weight), rel=1e-12)
    assert vector.lam == matrix.lam and vector.diagonal and not matrix.diagonal
    assert ("H" in vector._cache) == (method not in ("magnitude", "wanda"))


def test_a_diagonal_H_is_checked():
    W = torch.randn(2, 3)
    with pytest.raises(ValueError, match="must have W's 3 entries"):
        LayerProblem(W, torch.ones(4))
    with pytest.raises(ValueError, match="must be >= 0"):
        LayerProblem(W, torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="H must be finite"):
        LayerProblem(W, torch.tensor([1.0, float("nan"), 1.0]))
