"""LayerProblem's boundary: an indefinite H, the type of lam, complex and half-precision W."""

import numpy as np
import pytest
import torch

from solvers import LayerProblem, solve
from solvers.problem import PSD_TOLERANCE


def _indefinite(n: int = 32, seed: int = 0) -> torch.Tensor:
    """``Q diag(linspace(-0.5, 2, n)) Q^T``: symmetric, smallest eigenvalue -0.5."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    H = Q @ torch.diag(torch.linspace(-0.5, 2, n, dtype=torch.float64)) @ Q.T
    return (H + H.T) / 2


def test_indefinite_H_is_refused_naming_H():
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"^H must be positive semidefinite.*eigenvalue -0\.5"):
        LayerProblem(W, _indefinite(), sparsity=0.5)


def test_minus_XtX_is_refused_as_H_not_as_lam():
    """With the default ridge, ``-X^T X`` once gave a negative ``lam`` the user never gave."""
    g = torch.Generator().manual_seed(2)
    W, X = torch.randn(8, 16, generator=g), torch.randn(64, 16, generator=g)
    with pytest.raises(ValueError, match="^H must be positive semidefinite") as caught:
        LayerProblem(W, -X.T @ X / 64, sparsity=0.5)
    assert "lam" not in str(caught.value)


def test_psd_tolerance_is_relative_to_the_scale_of_H():
    """Half the tolerance below 0 passes at any scale; twice the tolerance fails at any scale."""
    W = torch.randn(4, 12, dtype=torch.float64)
    for scale in (1e-6, 1.0, 1e6):
        for factor, ok in ((0.5, True), (2.0, False)):
            spectrum = torch.ones(12, dtype=torch.float64)
            spectrum[0] = -factor * PSD_TOLERANCE
            H = torch.diag(spectrum * scale)  # max |H| = scale
            if ok:
                LayerProblem(W, H, sparsity=0.5)
            else:
                with pytest.raises(ValueError, match="H must be positive semidefinite"):
                    LayerProblem(W, H, sparsity=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_singular_psd_H_stays_valid(dtype):
    """``X`` of 4 x 32 (rank 4, float32 round-off makes eigenvalues slightly negative)."""
    g = torch.Generator().manual_seed(4)
    W, X = torch.randn(16, 32, generator=g, dtype=dtype), torch.randn(4, 32, generator=g,
                                                                      dtype=dtype)
    problem = LayerProblem(W, X.T @ X / 4, lam=0.0, sparsity=0.5)
    assert torch.allclose(problem.H, X.T @ X / 4, rtol=1e-6, atol=0)
    assert LayerProblem(W, torch.zeros(32, 32, dtype=dtype), sparsity=0.5).lam == 0.0


def test_indefinite_H_from_the_command_line_is_one_line_naming_H(tmp_path, capsys):
    from l0prune.cli import main

    torch.save(torch.randn(16, 32, generator=torch.Generator().manual_seed(5)),
               tmp_path / "W.pt")
    torch.save(_indefinite().float(), tmp_path / "H.pt")
    out = tmp_path / "W_sparse.pt"
    status = main(["solve", str(tmp_path / "W.pt"), "--hessian", str(tmp_path / "H.pt"),
                   "--sparsity", "0.5", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.startswith("l0prune: error: H must be positive semidefinite")
    assert captured.err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "lam", [np.float64(0.25), np.float32(0.25), torch.tensor(0.25), np.array(0.25), 0.25]
)
def test_lam_as_numpy_or_0d_tensor(lam):
    W = torch.randn(4, 8, dtype=torch.float64)
    problem = LayerProblem(W, None, lam=lam, sparsity=0.5)
    assert type(problem.lam) is float and problem.lam == 0.25
    # The ridge is used: f(0) = (1 + lam) ||W||^2 for H = I.
    assert problem.objective(torch.zeros_like(W)) == pytest.approx(1.25 * float((W * W).sum()))


@pytest.mark.parametrize(
    "lam", [torch.tensor([0.25]), np.array([0.25]), torch.tensor(True), np.bool_(True),
            np.float64("nan"), torch.tensor(-1.0), "0.25"]
)
def test_bad_lam_is_refused(lam):
    with pytest.raises(ValueError, match="^lam must be a finite number >= 0"):
        LayerProblem(torch.randn(4, 8), None, lam=lam, sparsity=0.5)


@pytest.mark.parametrize("name", ["W", "H"])
def test_complex_input_is_refused(name):
    W, H = torch.randn(4, 8), torch.eye(8)
    values = {"W": W, "H": H}
    values[name] = values[name].to(torch.complex64)
    with pytest.raises(ValueError, match=f"^{name} must be real, got a torch.complex64"):
        LayerProblem(values["W"], values["H"], sparsity=0.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["magnitude", "obs", "admm"])
def test_half_precision_weights_come_back_in_their_dtype(dtype, method):
    g = torch.Generator().manual_seed(6)
    W, X = torch.randn(8, 16, generator=g).to(dtype), torch.randn(64, 16, generator=g)
    problem = LayerProblem.from_inputs(W, X, sparsity=0.5)
    assert problem.W.dtype == torch.float32  # computed in float32
    solution = solve(problem, method)
    assert solution.weight.dtype == dtype
    assert int(solution.mask.sum()) == 64
    # The figures are those of the weight returned (rounded to its dtype).
    expected = LayerProblem.from_inputs(W.float(), X, sparsity=0.5).relative_error(
        solution.weight.float()
    )
    assert solution.relative_error == pytest.approx(expected, rel=1e-6)
    # The same solve in float32, rounded: the half-precision result is that rounding.
    full = solve(LayerProblem.from_inputs(W.float(), X, sparsity=0.5), method)
    assert torch.equal(solution.weight, full.weight.to(dtype))
