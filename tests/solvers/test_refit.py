"""The refit against a dense least-squares solve, and on singular H."""

import pytest
import torch

from solvers import LayerProblem, Unstructured


def dense_refit(W, H, lam, mask):
    """Row by row, least squares on the support: min ||X_aug (w_S - v_S)||, the definition."""
    A = H + lam * torch.eye(H.shape[0], dtype=H.dtype)
    out = torch.zeros_like(W)
    for r in range(W.shape[0]):
        S = mask[r].nonzero().flatten()
        if len(S):
            out[r, S] = torch.linalg.solve(A[S][:, S], (A @ W[r])[S])
    return out


@pytest.mark.parametrize("method", ["exact", "cg", "auto"])
def test_refit_matches_dense_solve(layer, method):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.6)
    mask = Unstructured(sparsity=0.6).select(torch.rand(W.shape, generator=torch.Generator()
                                                         .manual_seed(3), dtype=W.dtype))
    expected = dense_refit(W, H, problem.lam, mask)
    got = problem.refit(mask, method=method, tol=1e-12, max_iter=500)
    assert torch.allclose(got, expected, atol=1e-8)
    assert not got[~mask].any()


def test_refit_is_optimal_on_the_support(layer):
    W, H = layer
    problem = LayerProblem(W, H, sparsity=0.5)
    mask = problem.budget.select(W * W)
    best = problem.refit(mask)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        other = best + 1e-3 * torch.randn(W.shape, generator=g, dtype=W.dtype) * mask
        assert problem.objective(other) >= problem.objective(best)
    # The gradient vanishes on the support.
    assert problem.gradient(best)[mask].abs().max() < 1e-8


def test_refit_survives_singular_H():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 10, generator=g)  # rank 3
    W = torch.randn(4, 10, generator=g)
    problem = LayerProblem(W, X.T @ X / 3, lam=0.0, sparsity=0.3)
    mask = problem.budget.select(W * W)
    for method in ("exact", "cg"):
        weight = problem.refit(mask, method=method)
        assert not weight[~mask].any()
        # Optimal on the support: the gradient vanishes there (H singular, the optimum is a
        # set; any point of it will do).
        assert problem.gradient(weight)[mask].abs().max() < 1e-4 * problem.W.abs().max()
        assert problem.objective(weight) <= problem.objective(W * mask) + 1e-5


def test_identity_refit_keeps_the_weights():
    W = torch.randn(3, 5)
    mask = torch.rand(3, 5) > 0.5
    assert torch.equal(LayerProblem(W, None, sparsity=0.5).refit(mask), W * mask)


def test_unknown_refit_method(layer):
    W, H = layer
    with pytest.raises(ValueError, match="method must be"):
        LayerProblem(W, H, sparsity=0.5).refit(W != 0, method="qr")
