"""The hard-concrete gate against its closed forms: sampling statistics, moments, invariants."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers import gates

F64 = torch.float64
N_DRAWS = 200_000
LOG_ALPHAS = [-4.0, -1.5, 0.0, 1.0, 3.5]


def draws(log_alpha: float, beta: float, seed: int = 0) -> torch.Tensor:
    """``N_DRAWS`` gates of one ``log_alpha``."""
    g = torch.Generator().manual_seed(seed)
    return gates.sample(torch.full((N_DRAWS,), log_alpha, dtype=F64), g, beta)


@pytest.mark.parametrize("beta", [gates.BETA, 0.4])
@pytest.mark.parametrize("log_alpha", LOG_ALPHAS)
def test_fraction_of_open_and_of_full_gates_matches_closed_form(log_alpha, beta):
    z = draws(log_alpha, beta)
    la = torch.tensor(log_alpha, dtype=F64)
    for observed, p in (
        (float((z > 0).double().mean()), float(gates.prob_nonzero(la, beta))),
        (float((z == 1).double().mean()), float(gates.survival(la, 1.0, beta))),
    ):
        sigma = (p * (1 - p) / N_DRAWS) ** 0.5
        assert abs(observed - p) <= 5 * sigma + 1e-12


@pytest.mark.parametrize("beta", [gates.BETA, 0.4])
@pytest.mark.parametrize("log_alpha", LOG_ALPHAS)
def test_moments_match_the_sample_mean_and_variance(log_alpha, beta):
    z = draws(log_alpha, beta, seed=1)
    mean, var = gates.moments(torch.tensor([log_alpha], dtype=F64), beta)
    centred = z - z.mean()
    mean_sigma = (float(centred.var()) / N_DRAWS) ** 0.5
    var_sigma = (float((centred**4).mean() - centred.var() ** 2) / N_DRAWS) ** 0.5
    assert abs(float(z.mean()) - float(mean)) <= 5 * mean_sigma + 1e-12
    assert abs(float(z.var()) - float(var)) <= 5 * var_sigma + 1e-12


def test_moments_match_a_fine_integration_of_the_tail():
    la = torch.linspace(-6, 6, 25, dtype=F64)
    t = np.linspace(0.0, 1.0, 200_001)[:-1] + 0.5 / 200_000  # midpoint rule
    tail = gates.survival(la[:, None], torch.from_numpy(t), gates.BETA).numpy()
    first = tail.mean(axis=1)
    second = (tail * 2 * t).mean(axis=1)
    mean, var = gates.moments(la)
    np.testing.assert_allclose(mean.numpy(), first, atol=2e-6)
    np.testing.assert_allclose(var.numpy(), second - first**2, atol=2e-6)


def test_moment_gradients_are_exact():
    la = torch.linspace(-5, 5, 11, dtype=F64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: gates.moments(x, 0.5, 16), (la,))


def test_deterministic_gate_values():
    la = torch.tensor([-20.0, 0.0, 20.0], dtype=F64)
    assert gates.deterministic(la).tolist() == pytest.approx([0.0, 0.5, 1.0], abs=1e-12)


def test_sampling_is_seeded_and_differentiable():
    la = torch.zeros(50, dtype=F64, requires_grad=True)
    first = gates.sample(la, torch.Generator().manual_seed(3))
    second = gates.sample(la, torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    first.sum().backward()
    assert bool((la.grad >= 0).all()) and float(la.grad.sum()) > 0


def test_moments_reject_bad_nodes():
    with pytest.raises(ValueError, match="nodes"):
        gates.moments(torch.zeros(2), nodes=0)


@settings(max_examples=60, deadline=None)
@given(
    la=st.floats(-10, 10, allow_nan=False),
    step=st.floats(0.01, 5),
    beta=st.floats(0.3, 1.0),
)
def test_gate_invariants(la, step, beta):
    """``P(z = 1) <= E[z] <= P(z != 0)``, ``Var[z] <= E[z] (1 - E[z])``, all monotone."""
    x = torch.tensor([la, la + step], dtype=F64)
    mean, var = gates.moments(x, beta, 16)
    full = gates.survival(x, 1.0, beta)
    open_ = gates.prob_nonzero(x, beta)
    tol = 1e-9
    assert bool((full <= mean + tol).all() and (mean <= open_ + tol).all())
    assert bool((var >= 0).all() and (var <= mean * (1 - mean) + tol).all())
    assert float(open_[1]) >= float(open_[0]) and float(mean[1]) >= float(mean[0]) - tol
    det = gates.deterministic(x)
    assert 0 <= float(det[0]) <= float(det[1]) <= 1
