"""The diagonal split ``H + lam I = Q + diag(d)``, ``Q`` PSD, that makes L0 relaxations useful.

Relaxing the gates of pure L0 to [0, 1] without a diagonal part gives a bound of exactly 0 (any
``W'`` is reachable with every gate at a tiny positive value); the perspective of ``d_j (v - w)^2``
is what charges a half-open gate. The larger ``d`` is, the tighter every bound, as long as ``Q``
stays PSD. Two choices:

- :func:`eig_diagonal`: ``d = 0.999 lambda_min(H + lam I)`` on every coordinate; free once the
  spectrum is known, and the one the exact solve uses (a full-rank ``Q`` keeps the conic solver
  accurate).
- :func:`sdp_diagonal`: the ``d`` that maximises the separable bound ``sum of d_j W_ij^2 over the
  weights the budget drops`` (a concave function of ``d``) subject to ``H + lam I - diag(d) >= 0``:
  one ``in x in`` semidefinite constraint, so for small ``in``.

Both stay 0.1 % inside the PSD boundary so that rounding cannot push ``Q`` out of it.

References:
    A. Frangioni, C. Gentile, "Perspective cuts for a class of convex 0-1 mixed integer
    programs", Math. Programming 106 (2006). X. Zheng, X. Sun, D. Li, "Improving the performance
    of MIQP solvers for quadratic programs with cardinality and minimum threshold constraints: a
    semidefinite program approach", INFORMS J. Computing 26 (2014).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .cardinality import Cardinality

__all__ = ["eig_diagonal", "fit_inside", "sdp_diagonal", "shift_inside"]

#: Fraction of the PSD boundary a diagonal may reach.
INSIDE = 0.999
#: Time limit of the SDP solver.
SDP_SECONDS = 30.0


def eig_diagonal(A: torch.Tensor) -> torch.Tensor:
    """``d = 0.999 lambda_min(A)`` on every coordinate (0 for a singular ``A``), float64.

    The eigenvalue's rounding error, ``in * eps * lambda_max``, is taken off first.
    """
    e = torch.linalg.eigvalsh(A.double())
    slack = A.shape[0] * torch.finfo(torch.float64).eps * float(e[-1].abs())
    d = max(INSIDE * float(e[0]) - slack, 0.0)
    return torch.full((A.shape[0],), d, dtype=torch.float64, device=A.device)


def fit_inside(A: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``beta * d`` with the largest ``beta <= 1`` keeping ``A - diag(beta d)`` 0.1 % inside PSD.

    ``A - beta D >= 0`` iff ``beta <= 1 / lambda_max(L^-1 D L^-T)`` for ``A = L L^T``. Batched:
    ``d`` may be ``(b, n)`` (one diagonal per row, each scaled on its own) with ``A`` ``(n, n)``
    or ``(b, n, n)``.
    """
    A, d = A.double(), d.double().clamp_min(0)
    L = torch.linalg.cholesky(A)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    inverse = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
    half = inverse * d.sqrt().unsqueeze(-2)
    rho = torch.linalg.eigvalsh(half @ half.transpose(-1, -2))[..., -1]
    beta = torch.where(rho > 0, (INSIDE / rho.clamp_min(1e-300)).clamp(max=1.0), 1.0)
    return d * beta.unsqueeze(-1)


def shift_inside(A: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``d`` (one diagonal, or one per row ``(b, n)``) with ``A - diag(d)`` checked PSD.

    The smallest eigenvalue of each ``A - diag(d_i)`` is computed (``eigvalsh``, whose error is
    at most a few ``n * eps * ||A||``) and must clear ``8 n eps ||A||``; a diagonal that does not
    is shifted down by the shortfall, or, where that would make it negative, scaled by
    :func:`fit_inside`. Unlike :func:`fit_inside` it leaves an interior point (an optimised ``d``
    just inside the boundary) as it is.
    """
    A, d = A.double(), d.double().clamp_min(0)
    n = A.shape[-1]
    e = torch.linalg.eigvalsh(A - torch.diag_embed(d))
    margin = 8 * n * torch.finfo(torch.float64).eps * e[..., -1:].abs()
    short = (margin - e[..., :1]).clamp_min(0)
    shifted = d - short
    if bool((shifted > 0).all()):
        return shifted
    return torch.where((short > 0) & (shifted <= 0).any(-1, keepdim=True), fit_inside(A, d),
                       shifted)


def sdp_diagonal(W: torch.Tensor, A: torch.Tensor, cardinality: Cardinality) -> torch.Tensor:
    """The diagonal maximising the separable bound over ``{d >= 0: A - diag(d) >= 0}``.

    The separable bound is ``sum_S d_j W_ij^2`` over the weights ``S`` the budget drops at best,
    ``sum of atom scores - sum over sets of the count largest``; written with the linear
    program of ``sum_largest`` (``min_tau count * tau + sum (x - tau)_+``) it is one conic program
    with an LP part of one variable per atom and an ``in x in`` PSD constraint. A Structured
    budget ties ``d`` within each column group (its gate is shared). Solved by SCS to 1e-3 in at
    most 30 s on a scaled copy (an interior-point solver takes ~15x longer for a bound ~0.1 %
    higher; an unconverged ``d`` is still valid, only less tight), floored
    at 0.1 % of :func:`eig_diagonal` so every coordinate keeps a positive share, and brought
    inside the cone by :func:`fit_inside`. If the solver fails, :func:`eig_diagonal`.

    Returns:
        ``d``, float64, on ``A``'s device.
    """
    import cvxpy as cp
    import scipy.sparse as sp

    out, inp = cardinality.shape
    a_scale = float(A.diagonal().mean())
    A_np = (A.double() / a_scale).cpu().numpy()
    W2 = (W.double() ** 2).cpu().numpy()
    W2 = W2 / max(W2.mean(), 1e-300)
    group = cardinality.group or 1
    ties = sp.kron(sp.eye(inp // group), np.ones((group, 1)), format="csr")  # d = ties @ d_tied
    if cardinality.group is None:
        rows = np.arange(out * inp)
        score = sp.csr_matrix((W2.reshape(-1), (rows, np.tile(np.arange(inp), out))))
    else:
        score = sp.csr_matrix(W2.sum(axis=0)[None, :]).multiply(ties.T).tocsr()
    sets = score.shape[0] // cardinality.set_size
    membership = sp.kron(sp.eye(sets), np.ones((cardinality.set_size, 1)), format="csr")

    d_tied = cp.Variable(inp // group, nonneg=True)
    d = ties @ d_tied
    x = score @ d
    tau = cp.Variable(sets)
    excess = cp.Variable(score.shape[0], nonneg=True)
    kept = cardinality.count * cp.sum(tau) + cp.sum(excess)
    program = cp.Problem(
        cp.Maximize(cp.sum(x) - kept),
        [excess >= x - membership @ tau, A_np - cp.diag(d) >> 0],
    )
    eig = eig_diagonal(A)
    with warnings.catch_warnings():  # an inaccurate d is fine: fit_inside makes it valid
        warnings.simplefilter("ignore", UserWarning)
        try:
            program.solve(solver="SCS", eps_abs=1e-3, eps_rel=1e-3, time_limit_secs=SDP_SECONDS)
        except cp.error.SolverError:
            return eig
    if d_tied.value is None:
        return eig
    found = torch.as_tensor(ties @ np.maximum(d_tied.value, 0), dtype=torch.float64)
    return fit_inside(A, torch.maximum(found.to(A.device) * a_scale, 1e-3 * eig))
