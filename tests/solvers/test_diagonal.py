"""The diagonal split: inside the PSD cone, and the SDP one at least as good as the eigenvalue."""

import torch

from solvers import LayerProblem, Structured
from solvers.cardinality import Cardinality
from solvers.certificate import dual_bound
from solvers.diagonal import eig_diagonal, fit_inside, sdp_diagonal


def test_eig_diagonal_is_just_inside_the_cone(layer):
    _, H = layer
    d = eig_diagonal(H)
    smallest = float(torch.linalg.eigvalsh(H)[0])
    assert torch.all(d == d[0]) and 0.998 * smallest < float(d[0]) < smallest


def test_sdp_diagonal_is_inside_the_cone_and_beats_the_eigenvalue(layer):
    W, H = layer
    problem = LayerProblem(W[:4, :12], H[:12, :12], sparsity=0.5)
    A = problem.damped.double()
    card = Cardinality.of(problem.budget, problem.shape)
    d = sdp_diagonal(problem.W, A, card)
    assert float(torch.linalg.eigvalsh(A - torch.diag(d))[0]) >= 0
    eig = eig_diagonal(A)
    assert dual_bound(problem.W, A, d, None, problem.budget) > dual_bound(
        problem.W, A, eig, None, problem.budget
    )


def test_structured_sdp_diagonal_is_tied_within_groups(layer):
    W, H = layer
    problem = LayerProblem(W[:4, :12], H[:12, :12], budget=Structured(k=2, group=3))
    card = Cardinality.of(problem.budget, problem.shape)
    d = sdp_diagonal(problem.W, problem.damped.double(), card)
    assert torch.equal(d.reshape(4, 3), d.reshape(4, 3)[:, :1].expand(4, 3))


def test_fit_inside_scales_back_onto_the_cone():
    A = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    d = fit_inside(A, torch.tensor([3.0, 3.0], dtype=torch.float64))
    assert torch.allclose(d, torch.full((2,), 0.999, dtype=torch.float64))  # lambda_min = 1
