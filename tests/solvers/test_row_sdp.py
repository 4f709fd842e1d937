"""The rows' SDP bound: valid on every small instance, the SDP's value, tighter than the tiers
with the eigenvalue diagonal on real-like H."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers import NM, LayerProblem, PerRow, Structured, Unstructured, lower_bound
from solvers.certificate import dual_bound, row_bounds
from solvers.row_sdp import maximise

from ..conftest import correlated_inputs
from .brute_force import assert_below, optimum, tiny_problems


def decaying_h(n: int, seed: int, decay: float) -> torch.Tensor:
    """``H`` of inputs whose spectrum falls as ``decay**i``: ill-conditioned, like a real one."""
    X = correlated_inputs(4 * n, n, seed=seed, decay=decay)
    return X.T @ X / X.shape[0]


@st.composite
def real_like(draw):
    """1-3 rows of 8 inputs, H with a fast-decaying spectrum, any budget with one gate a weight."""
    out = draw(st.integers(1, 3))
    budget = draw(st.sampled_from([Unstructured(k=draw(st.integers(1, 8 * out - 1))),
                                   PerRow(k=draw(st.integers(1, 7))), NM(2, 4), NM(1, 4)]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    H = decaying_h(8, draw(st.integers(0, 1000)), draw(st.sampled_from([0.9, 0.6, 0.3])))
    W = torch.randn(out, 8, generator=g, dtype=torch.float64)
    return LayerProblem(W, H, budget=budget)


@settings(max_examples=25, deadline=None)
@given(tiny_problems())
def test_row_sdp_bound_is_valid_on_random_h(problem):
    assert_below(lower_bound(problem, "row_sdp"), problem, optimum(problem))


@settings(max_examples=12, deadline=None)
@given(real_like())
def test_row_sdp_bound_is_valid_and_tightest_on_real_like_h(problem):
    truth = optimum(problem)
    bound = lower_bound(problem, "row_sdp")
    assert_below(bound, problem, truth)
    assert bound >= lower_bound(problem, "lagrangian", tol=1e-6) - 1e-4 * truth


def test_row_sdp_reaches_the_sdp_value(layer):
    # The SDP solved as a cone program (SCS via cvxpy) on one row: the Newton method's dual point
    # gives the same bound to 0.1 %.
    cp = pytest.importorskip("cvxpy")
    W, H = layer
    problem = LayerProblem(W[:1, :16], H[:16, :16], budget=PerRow(k=5))
    A = problem.damped.double().numpy()
    w = problem.W[0].double().numpy()
    n = 16
    d, p, t, tau = cp.Variable(n, nonneg=True), cp.Variable(n), cp.Variable(), cp.Variable()
    e, q = cp.Variable(n, nonneg=True), cp.Variable(n)
    M = cp.bmat([[cp.reshape(t, (1, 1), order="C"), cp.reshape(p, (1, n), order="C")],
                 [cp.reshape(p, (n, 1), order="C"), A - cp.diag(d)]])
    sdp = cp.Problem(cp.Maximize(-t - 2 * p @ w + (w * w) @ d - 5 * tau - cp.sum(e)),
                     [M >> 0, q == cp.multiply(d, w) - p,
                      cp.SOC(e + tau + d, cp.vstack([2 * q, e + tau - d]), axis=0)])
    sdp.solve(solver="CLARABEL")
    bound = lower_bound(problem, "row_sdp", tol=1e-6)
    assert bound <= sdp.value * (1 + 1e-6)
    assert bound >= sdp.value * (1 - 1e-3)


def test_row_bounds_agree_with_the_layer_certificate(layer):
    W, H = layer
    problem = LayerProblem(W[:6, :16], H[:16, :16], budget=Unstructured(k=30))
    A = problem.damped.double()
    point = maximise(problem.W, A, set_size=16, shared=30)
    layer_value = dual_bound(problem.W, A, point.d, point.X, problem.budget)
    rows = row_bounds(problem.W, A, point.d, point.X, 16, shared=torch.tensor([30.0]))
    assert float(rows) == pytest.approx(layer_value, rel=1e-9)
    assert torch.linalg.eigvalsh(A - torch.diag_embed(point.d))[:, 0].min() >= 0


def test_row_sdp_reads_a_structured_budget_with_the_unstructured_diagonals(layer):
    W, H = layer
    problem = LayerProblem(W[:3, :8], H[:8, :8], budget=Structured(k=2, group=2))
    assert 0 < lower_bound(problem, "separable") <= lower_bound(problem, "row_sdp")
    assert_below(lower_bound(problem, "row_sdp"), problem, optimum(problem))
