"""The refit: optimal weights on a fixed support.

With the support ``S_r`` of row ``r`` fixed, ``f`` separates by row and each row solves the normal
equations ``(H + lam I)_SS w_S = ((H + lam I) w)_S`` for the dense row ``w``. Two ways:

- ``exact``: a batched Cholesky per row. Rows are gathered into ``|S_r| x |S_r|`` systems padded
  to the largest support with identity, so one ``cholesky`` call serves a chunk of rows.
- ``cg``: batched preconditioned conjugate gradient over all rows at once, the residual zeroed
  off the support and a Jacobi preconditioner; each iteration is one ``out x in x in`` matmul, so
  it is the choice for wide layers and for polishing a nearly optimal start (ADMM's last iterate).

A singular ``(H + lam I)_SS`` (``lam = 0`` with few calibration rows) is damped by a growing jitter
instead of failing; weights of dead inputs (``H_jj + lam = 0``) keep their values.
"""

from __future__ import annotations

import torch

__all__ = ["refit", "support_factors", "swap_costs"]

_EXACT_FLOP_LIMIT = 1e8


def refit(
    problem,
    mask: torch.Tensor,
    *,
    method: str = "auto",
    init: torch.Tensor | None = None,
    tol: float = 1e-4,
    max_iter: int = 200,
    above: float | None = None,
    curvature: float = 0.0,
) -> torch.Tensor | None:
    """Optimal weights of ``problem`` on the support ``mask`` (zero elsewhere).

    Args:
        problem: the :class:`~solvers.problem.LayerProblem`.
        mask: boolean support, same shape as ``W``.
        method: ``"exact"``, ``"cg"`` or ``"auto"`` (exact when the batched Cholesky costs
            under ~0.1 GFlop, CG otherwise).
        init: CG starting point (default: ``W`` on the support).
        tol: CG stops when every row's preconditioned residual norm is below ``tol`` times its
            right-hand side's.
        max_iter: CG iteration cap.
        above: give up once the optimum on ``mask`` is proven above this value (CG only; see
            :func:`_refit_cg`); ``None``: never.
        curvature: a lower bound on the smallest eigenvalue of the scaled ``H~`` (unit diagonal)
            that the proof needs; ``<= 0`` disables it.

    Returns:
        The refitted weight, zero off ``mask``; ``None`` when the optimum on ``mask`` was proven
        above ``above``.
    """
    mask = mask.to(device=problem.W.device, dtype=torch.bool)
    if problem.identity or problem.diagonal:  # separable: each kept weight stays as it is
        return problem.W * mask
    if method == "auto":
        width = int(mask.sum(dim=1).max()) if mask.numel() else 0
        method = "exact" if mask.shape[0] * width**3 / 3 <= _EXACT_FLOP_LIMIT else "cg"
    if method == "exact":
        weight = _refit_exact(problem, mask)
    elif method == "cg":
        weight = _refit_cg(problem, mask, init, tol, max_iter, above, curvature)
        if weight is None:
            return None
    else:
        raise ValueError(f"method must be 'auto', 'exact' or 'cg', got {method!r}")
    return _keep_dead_inputs(problem, mask, weight)


def _keep_dead_inputs(problem, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``W`` on the support's columns where ``H_jj + lam = 0``.

    Such an input is always zero in the calibration data (``H`` is PSD, so its row and column
    of ``H + lam I`` vanish): ``f`` does not depend on its weights, and of all the optima the
    one closest to ``W`` keeps them as they were (with ``H = 0`` the layer stays as trained
    instead of becoming zero).
    """
    dead = problem.damped_diagonal == 0
    if not bool(dead.any()):
        return weight
    return torch.where(dead & mask, problem.W, weight)


def damped_cholesky(A: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of a batch of PSD matrices; a singular one gets a growing jitter."""
    L, info = torch.linalg.cholesky_ex(A)
    if not bool((info > 0).any()):
        return L
    n = A.shape[-1]
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    scale = A.diagonal(dim1=-2, dim2=-1).abs().mean(dim=-1, keepdim=True).clamp_min(1e-30)
    jitter = 1e-7
    while bool((info > 0).any()):
        bad = info > 0
        A = torch.where(bad[..., None, None], A + (jitter * scale)[..., None] * eye, A)
        L_new, info = torch.linalg.cholesky_ex(A)
        L = torch.where(bad[..., None, None], L_new, L)
        info = torch.where(bad, info, torch.zeros_like(info))
        jitter *= 10
    return L


def support_factors(problem, mask: torch.Tensor, chunk: int = 256):
    """Cholesky factors of every row's ``(H + lam I)_SS``, a chunk of rows at a time.

    Yields ``(rows, idx, ok, L)``: the row slice, each row's support indices padded to the widest
    row (``ok`` marks the real ones), and the factors of the padded systems (identity on pads).
    """
    A_full = problem.damped
    sizes = mask.sum(dim=1)
    width = int(sizes.max()) if mask.numel() else 0
    if width == 0:
        return
    # Support indices of each row, padded: sorting the mask puts kept columns first.
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < sizes[:, None]
    eye = torch.eye(width, dtype=A_full.dtype, device=A_full.device)
    for start in range(0, mask.shape[0], chunk):
        rows = slice(start, start + chunk)
        idx, ok = order[rows], valid[rows]
        block = A_full[idx[:, :, None], idx[:, None, :]]
        A = torch.where(ok[:, :, None] & ok[:, None, :], block, eye)
        yield rows, idx, ok, damped_cholesky(A)


def _refit_exact(problem, mask: torch.Tensor) -> torch.Tensor:
    B = problem.W @ problem.damped  # row r: (H + lam I) w_r, as a row
    out = torch.zeros_like(problem.W)
    for rows, idx, ok, L in support_factors(problem, mask):
        b = torch.where(ok, torch.gather(B[rows], 1, idx), 0)
        x = torch.cholesky_solve(b[..., None], L)[..., 0]
        out[rows].scatter_(1, idx, torch.where(ok, x, 0))
    return out


def swap_costs(problem, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per weight, the two exact one-sided quantities a support swap is scored by.

    With ``A = H + lam I`` and each row's support ``S``:

    - ``inverse``: ``[(A_SS)^-1]_jj`` on the support; ``w_j**2`` over it is the exact cost of
      removing ``j`` with the rest of the row refitted (the OBS saliency);
    - ``schur``: ``A_ii - A_iS (A_SS)^-1 A_Si`` off the support; ``R_i**2`` over it (``R`` half the
      gradient at the refit) is the exact gain of adding ``i`` with the row refitted.

    Returns:
        ``(inverse, schur)``, each zero where it does not apply.
    """
    A_full = problem.damped
    inverse = torch.zeros_like(problem.W)
    schur = A_full.diagonal().expand_as(problem.W).clone()
    for rows, idx, ok, L in support_factors(problem, mask):
        eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand_as(L)
        L_inv = torch.linalg.solve_triangular(L, eye, upper=False)
        inverse[rows].scatter_(1, idx, torch.where(ok, (L_inv * L_inv).sum(dim=-2), 0))
        Y = L_inv @ torch.where(ok[:, :, None], A_full[idx], 0)  # L^-1 A_S,: per row
        schur[rows] -= (Y * Y).sum(dim=-2)
    return inverse, torch.where(mask, 0, schur.clamp_min(0))


def _refit_cg(problem, mask, init, tol, max_iter, above=None, curvature=0.0):
    """Jacobi-preconditioned CG on every row at once; ``None`` once the optimum is proven above
    ``above``.

    The proof: on a row with support ``S``, ``f(x) - f* = r^T (A_SS)^-1 r`` for the residual
    ``r`` (half the negative gradient on ``S``). In scaled coordinates (the Jacobi
    preconditioner) that is at most ``r^T D^-1 r / lambda_min(H~_SS) <= rz / curvature`` by
    eigenvalue interlacing, and CG's own ``rz`` is ``r^T D^-1 r``. CG also gives ``f`` for free:
    a step ``alpha`` lowers a row's ``f`` by exactly ``alpha * rz``. So every iteration yields a
    lower bound ``max(f(x_j) - rz_j / curvature, 0)`` per row, valid at every ``j``; the sum of
    each row's best is compared with ``above`` (with a ``1e-3`` relative margin for the round-off
    of float32 recurrences). One extra product gives ``f(x_0)``; the iterates are those of the
    plain CG, so a run that is not stopped returns exactly what it would have.
    """
    A = problem.damped
    maskf = mask.to(A.dtype)
    X = problem.W * maskf if init is None else init * maskf
    rhs = (problem.W @ A) * maskf
    R = rhs - (X @ A) * maskf
    d = A.diagonal().clamp_min(1e-30)
    Z = R / d
    P = Z
    rz = (R * Z).sum(dim=1)
    stop = (tol**2) * ((rhs * rhs / d).sum(dim=1)).clamp_min(1e-30)
    prove = above is not None and curvature > 0
    if prove:
        step = X - problem.W
        f_rows = ((step @ A) * step).sum(dim=1).double()
        best = torch.zeros_like(f_rows)
        limit = above * (1 + 1e-3)
    for _ in range(max_iter):
        if prove:
            best = torch.maximum(best, f_rows - rz.double() / curvature)
            if float(best.sum()) > limit:
                return None
        if bool((rz <= stop).all()):
            break
        Q = (P @ A) * maskf
        pq = (P * Q).sum(dim=1)
        alpha = torch.where(pq > 0, rz / pq.clamp_min(1e-30), 0)
        if prove:
            f_rows = f_rows - (alpha * rz).double()
        X = X + alpha[:, None] * P
        R = R - alpha[:, None] * Q
        Z = R / d
        rz_new = (R * Z).sum(dim=1)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), 0)
        P = Z + beta[:, None] * P
        rz = rz_new
    return X * maskf
