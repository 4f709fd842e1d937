"""The SDP bound of every row at once: each row's best diagonal split, by a barrier Newton method.

The certificate (:mod:`solvers.certificate`) of a row ``w`` at the dual point ``x`` with the split
``A = Q + diag(d)``, written in ``p = Q x``, is

    J(p, d) = -p^T (A - D)^-1 p - 2 p^T w + sum_j d_j w_j^2 - sum over the sets of the count largest
              g_j,        g_j = (d_j w_j - p_j)^2 / d_j,

and it is jointly concave in ``(p, d)`` on ``{d > 0, A - D > 0}`` (a matrix-fractional function and
quadratic-over-linear terms). Its maximum over both is the Shor SDP relaxation of the row problem
with the perspective constraints, i.e. the perspective relaxation with the best diagonal (Dong,
Chen & Linderoth 2015; Zheng, Sun & Li 2014): on real ``H``, whose ``lambda_min`` is tiny next to
its diagonal, it is several times tighter than the eigenvalue split. The count largest of a set is
``min_tau count tau + sum_j (g_j - tau)_+``; ``tau`` joins the unknowns (one per set, or one for
all the rows of a layer under a layer budget: ``shared``), or is given (``penalty``: the bound of
the penalised row problem ``min f(v) + tau ||v||_0``).

The kink of ``(.)_+`` is smoothed by ``eps softplus(u / eps)``, the domain kept by the barrier ``t
(log det(A - D) + sum log d)``, and the smooth concave problem maximised by Newton steps with
backtracking, ``t`` (and ``eps = 10 t``) divided by 4 per stage. A row's Newton system has ``2n``
unknowns plus its sets' ``tau`` (``O(n^3)`` a step); a shared ``tau`` makes the system an arrow,
solved by block elimination. Rows may come in equal groups, each with its own shared ``tau`` (the
layers of several branch-and-bound nodes in one batch). After every stage the exact certificate is
evaluated at the point, and the best point is returned: the bound is the certificate's value, valid
whatever the iterate's accuracy, once each ``A - diag(d_i)`` is checked PSD
(:func:`~solvers.diagonal.shift_inside`).

References:
    H. Dong, K. Chen, J. Linderoth, "Regularization vs. relaxation: a conic optimization
    perspective of statistical variable selection", arXiv:1510.06083 (2015). X. Zheng, X. Sun,
    D. Li, "Improving the performance of MIQP solvers for quadratic programs with cardinality and
    minimum threshold constraints: a semidefinite program approach", INFORMS J. Computing 26
    (2014). S. Boyd, L. Vandenberghe, "Convex Optimization" (2004), ch. 11 (barrier method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .diagonal import fit_inside, shift_inside

__all__ = ["RowDual", "maximise"]

_SHRINK = 0.25  # t and eps per stage
_T0 = 1e-2  # first t, relative to the row's cost of dropping everything
_T_MIN = 1e-9
_STEPS = 12  # Newton steps per stage at most
_SMOOTH = 10.0  # eps / t
_BACKTRACK = 40
_FROZEN = 1e6  # tau of a set whose count is 0 (nothing may open), in scaled units


@dataclass
class RowDual:
    """A dual point of every row: ``d`` (b, n) with every ``A_i - diag(d_i)`` PSD, ``X`` (b, n),
    ``tau`` (b, sets) or, shared, one per group; ``stages`` run."""

    d: torch.Tensor
    X: torch.Tensor
    tau: torch.Tensor
    stages: int


def maximise(
    W: torch.Tensor,
    A: torch.Tensor,
    *,
    set_size: int,
    count: torch.Tensor | None = None,
    penalty: torch.Tensor | None = None,
    shared: torch.Tensor | int | None = None,
    d: torch.Tensor | None = None,
    tol: float = 1e-5,
) -> RowDual:
    """The rows' SDP dual point (see the module docstring).

    Args:
        W: the rows, ``(b, n)``.
        A: ``H + lam I`` ``(n, n)`` or one per row ``(b, n, n)``, positive definite.
        set_size: inputs per counting set (divides ``n``).
        count: gates per set, ``(b, n / set_size)``; or
        penalty: a fixed ``tau`` per set, ``(b, n / set_size)``; or
        shared: a count for all the rows together (``set_size == n``): a layer budget; or one
            count per group of rows, ``(G,)``, the rows in ``G`` equal consecutive groups.
        d: a starting diagonal ``(b, n)`` (scaled into the interior first).
        tol: stop when a stage raises the bound by less than ``tol`` (relative).

    Returns:
        The :class:`RowDual`, its ``d`` already checked inside the PSD cone.
    """
    W, A = W.double(), A.double()
    b, n = W.shape
    A = A.expand(b, n, n)
    alpha = A.diagonal(dim1=1, dim2=2).mean(1)
    cost = torch.einsum("bi,bij,bj->b", W, A, W)
    cost = torch.where(cost > 0, cost, torch.ones_like(cost))
    if shared is not None:
        shared = torch.as_tensor(shared, dtype=W.dtype, device=W.device).reshape(-1)
        cost = cost.reshape(len(shared), -1).mean(1).repeat_interleave(b // len(shared))
    As = A / alpha[:, None, None]
    ws = W * (alpha / cost).sqrt()[:, None]
    problem = _Scaled(As, ws, set_size, count, None if penalty is None else penalty / cost[:, None],
                      shared)
    if d is None:
        d0 = 0.5 * torch.linalg.eigvalsh(As)[:, :1].expand(b, n)
    else:
        d0 = 0.9 * fit_inside(As, d.double() / alpha[:, None])
    point = problem.start(d0.clamp_min(1e-12))
    best, best_value = point, problem.exact(point)
    per = b // len(shared) if shared is not None else 1
    t, stages = _T0, 0
    while t >= _T_MIN:
        point = problem.centre(point, t)
        stages += 1
        value = problem.exact(point)
        gain = value.reshape(-1, per).sum(1) - best_value.reshape(-1, per).sum(1)
        better = (gain > 0).repeat_interleave(per)
        best = tuple(torch.where(better.reshape((-1,) + (1,) * (x.dim() - 1)), y, x)
                     if x.shape[0] == b else torch.where(gain > 0, y, x)
                     for x, y in zip(best, point, strict=True))
        best_value = torch.where(better, value, best_value)
        total = best_value.reshape(-1, per).sum(1)
        if t < 1e-6 and float(gain.clamp_min(0).sum()) <= tol * float(total.abs().sum()):
            break
        t *= _SHRINK
    p, d_s, tau = best
    x = torch.cholesky_solve(p.unsqueeze(-1), torch.linalg.cholesky(As - torch.diag_embed(d_s)))
    d_out = shift_inside(A, d_s * alpha[:, None])
    X = x.squeeze(-1) / (alpha / cost).sqrt()[:, None]
    scale = cost[:: b // len(shared)] if shared is not None else cost[:, None]
    return RowDual(d_out, X, tau * scale, stages)


class _Scaled:
    """The smoothed barrier problem in scaled units (each row's cost of dropping all is 1)."""

    def __init__(self, A, w, set_size, count, penalty, shared):
        self.A, self.w, self.m = A, w, set_size
        b, n = w.shape
        self.sets = n // set_size
        self.member = torch.zeros(n, self.sets, dtype=w.dtype, device=w.device)
        self.member[torch.arange(n), torch.arange(n) // set_size] = 1.0
        self.shared, self.penalty = shared, penalty
        self.per = b // len(shared) if shared is not None else 1
        if count is not None:
            count = count.to(w.dtype)
            self.free = (count > 0) & (count < set_size)
            self.fixed = torch.where(count > 0, 0.0, _FROZEN)  # tau of the frozen sets
        self.count = count
        self.eye = torch.eye(n, dtype=w.dtype, device=w.device)

    # -- points: (p, d, tau); tau (b, sets), or (1,) when shared ---------------------------------
    def start(self, d):
        p = torch.zeros_like(self.w)
        g = d * self.w * self.w
        if self.shared is not None:
            ranked = g.reshape(len(self.shared), -1).sort(dim=1, descending=True).values
            index = (self.shared.long() - 1).clamp(0, ranked.shape[1] - 1).unsqueeze(1)
            return p, d, ranked.gather(1, index).squeeze(1)
        if self.penalty is not None:
            return p, d, self.penalty
        ranked = g.reshape(len(g), self.sets, self.m).sort(dim=-1, descending=True).values
        index = (self.count.long() - 1).clamp(0, self.m - 1).unsqueeze(-1)
        tau = ranked.gather(-1, index).squeeze(-1)
        return p, d, torch.where(self.free, tau, self.fixed)

    def _tau_per_input(self, tau):
        if self.shared is not None:
            return tau.repeat_interleave(self.per).unsqueeze(1).expand(self.w.shape)
        return tau.repeat_interleave(self.m, dim=1)

    def _factor(self, d, rows=slice(None)):
        L, info = torch.linalg.cholesky_ex(self.A[rows] - torch.diag_embed(d))
        ok = (info == 0) & (d > 0).all(1)
        return torch.where(ok[:, None, None], L, self.eye), ok

    def value(self, point, t, eps, rows=slice(None)):
        """The smoothed barrier objective of ``rows`` (``-inf`` outside the domain)."""
        p, d, tau = point
        p, d, w = p[rows], d[rows], self.w[rows]
        L, ok = self._factor(d, rows)
        y = torch.cholesky_solve(p.unsqueeze(-1), L).squeeze(-1)
        dd = d.clamp_min(1e-300)
        g = (dd * w - p) ** 2 / dd
        u = g - self._tau_per_input(tau)[rows]
        J = (-(p * y).sum(1) - 2 * (p * w).sum(1) + (dd * w**2).sum(1)
             - (eps * torch.nn.functional.softplus(u / eps)).sum(1)
             + t * (2 * L.diagonal(dim1=1, dim2=2).log().sum(1) + dd.log().sum(1)))
        J = J - self._tau_cost(tau)[rows]
        return torch.where(ok, J, torch.full_like(J, -math.inf))

    def _tau_cost(self, tau):
        if self.shared is not None:
            return torch.zeros_like(self.w[:, 0])  # the shared count enters once, in centre
        if self.penalty is not None:
            return torch.zeros_like(self.w[:, 0])
        return (self.count * torch.where(self.free, tau, 0.0)).sum(1)

    def exact(self, point):
        """The certificate (unsmoothed, no barrier) per row; for shared, its share of the layer
        bound at the point's ``tau``."""
        p, d, tau = point
        L, ok = self._factor(d)
        y = torch.cholesky_solve(p.unsqueeze(-1), L).squeeze(-1)
        g = (d * self.w - p) ** 2 / d
        base = -(p * y).sum(1) - 2 * (p * self.w).sum(1) + (d * self.w**2).sum(1)
        if self.shared is not None:
            ranked = g.reshape(len(self.shared), -1).sort(dim=1, descending=True).values
            index = (self.shared.long() - 1).clamp(0, ranked.shape[1] - 1).unsqueeze(1)
            threshold = ranked.gather(1, index).repeat_interleave(self.per, dim=0)
            share = (self.shared / self.per).repeat_interleave(self.per).unsqueeze(1)
            kept = ((g - threshold).clamp_min(0) + threshold * share / g.shape[1]).sum(1)
        elif self.penalty is not None:
            kept = (g - self.penalty.repeat_interleave(self.m, dim=1)).clamp_min(0).sum(1)
        else:
            ranked = g.reshape(len(g), self.sets, self.m).sort(dim=-1, descending=True).values
            open_ = torch.arange(self.m, device=g.device) < self.count.unsqueeze(-1)
            kept = (ranked * open_).sum(dim=(1, 2))
        return torch.where(ok, base - kept, torch.full_like(base, -math.inf))

    def centre(self, point, t):
        """Newton steps on the smoothed barrier problem at ``t``."""
        for _ in range(_STEPS):
            eps = _SMOOTH * t
            J = self.value(point, t, eps)
            step, decrement = self._newton(point, t, eps)
            point, improved = self._line_search(point, step, decrement, J, t, eps)
            if not improved or float(decrement.max()) <= 1e-12:
                break
        return point

    def _newton(self, point, t, eps):
        p, d, tau = point
        w, n = self.w, self.w.shape[1]
        L, _ = self._factor(d)
        Minv = torch.cholesky_inverse(L)
        y = (Minv @ p.unsqueeze(-1)).squeeze(-1)
        g = (d * w - p) ** 2 / d
        u = g - self._tau_per_input(tau)
        sig = torch.sigmoid(u / eps)
        s2 = sig * (1 - sig) / eps
        gp, gd = 2 * (p / d - w), w * w - p * p / d**2
        grad = torch.cat([-2 * y - 2 * w - sig * gp,
                          -y * y + w * w - sig * gd - t * Minv.diagonal(dim1=1, dim2=2) + t / d], 1)
        Y = y.unsqueeze(1)
        hess = torch.empty(len(w), 2 * n, 2 * n, dtype=w.dtype, device=w.device)
        hess[:, :n, :n] = 2 * Minv + torch.diag_embed(sig * 2 / d + s2 * gp * gp)
        hess[:, :n, n:] = 2 * Minv * Y + torch.diag_embed(-sig * 2 * p / d**2 + s2 * gp * gd)
        hess[:, n:, :n] = hess[:, :n, n:].transpose(1, 2)
        hess[:, n:, n:] = (2 * y.unsqueeze(2) * Minv * Y + t * Minv * Minv
                           + torch.diag_embed(sig * 2 * p * p / d**3 + s2 * gd * gd + t / d**2))
        # hess is minus the Hessian (positive definite); couple is minus d(grad)/d(tau).
        couple = -torch.cat([s2 * gp, s2 * gd], 1)
        if self.penalty is not None:
            step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
            return (step[:, :n], step[:, n:], torch.zeros_like(tau)), (step * grad).sum(1)
        if self.shared is not None:
            solved = torch.linalg.solve(hess, torch.stack([grad, couple], -1))
            a, c = solved[..., 0], solved[..., 1]
            groups = len(self.shared)

            def by_group(x):
                return x.reshape(groups, -1).sum(1)

            g_tau = by_group(sig) - self.shared
            h_tau = by_group(s2) - by_group(couple * c)
            d_tau = (g_tau - by_group(couple * a)) / h_tau.clamp_min(1e-300)
            step = a - c * d_tau.repeat_interleave(self.per).unsqueeze(1)
            decrement = by_group(step * grad) + d_tau * g_tau
            return (step[:, :n], step[:, n:], d_tau), decrement
        # one tau per set of the row: a (2n + sets) system per row; frozen sets do not move
        free = self.free.to(w.dtype)
        member = self.member.unsqueeze(0) * free.unsqueeze(1)
        sets = self.sets
        full = torch.zeros(len(w), 2 * n + sets, 2 * n + sets, dtype=w.dtype, device=w.device)
        full[:, :2 * n, :2 * n] = hess
        cross = torch.cat([couple[:, :n, None] * member, couple[:, n:, None] * member], 1)
        full[:, :2 * n, 2 * n:] = cross
        full[:, 2 * n:, :2 * n] = cross.transpose(1, 2)
        # a set whose savings all sit far from its tau has no curvature in tau: a tiny ridge
        curvature = (s2.unsqueeze(1) @ self.member).squeeze(1) + 1e-9
        full[:, 2 * n:, 2 * n:] = torch.diag_embed(curvature * free + (1 - free))
        g_tau = ((sig.unsqueeze(1) @ self.member).squeeze(1) - self.count) * free
        rhs = torch.cat([grad, g_tau], 1)
        step = torch.linalg.solve(full, rhs.unsqueeze(-1)).squeeze(-1)
        return (step[:, :n], step[:, n:2 * n], step[:, 2 * n:] * free), (step * rhs).sum(1)

    def _total(self, J, tau):
        """What the line search compares: per row, or per group of rows when ``tau`` is shared."""
        if self.shared is None:
            return J
        return J.reshape(len(self.shared), -1).sum(1) - self.shared * tau

    def _line_search(self, point, step, decrement, J, t, eps):
        """Backtracking (Armijo, 1/4) along the Newton step, from the largest step keeping
        ``d > 0``; per row (only the rows not yet accepted are evaluated again) unless ``tau`` is
        shared, then per group."""
        p, d, tau = point
        dp, dd, dt = step
        base = self._total(J, tau)
        room = torch.where(dd < 0, -0.99 * d / dd.clamp(max=-1e-300), torch.inf).amin(1)
        if self.shared is not None:
            room = room.reshape(len(self.shared), -1).amin(1)
        alpha = room.clamp(max=1.0)
        todo = decrement > 1e-12 * (1 + base.abs())  # the others are centred already
        slack = 1e-13 * (1 + base.abs())  # rounding of the objective
        accepted = torch.zeros_like(alpha)
        for _ in range(_BACKTRACK):
            if not bool(todo.any()):
                break
            if self.shared is None:
                rows = todo.nonzero().flatten()
                a = alpha[rows].unsqueeze(-1)
                trial = (p.clone(), d.clone(), tau.clone())
                trial[0][rows] += a * dp[rows]
                trial[1][rows] += a * dd[rows]
                trial[2][rows] += a * dt[rows]
                total = self.value(trial, t, eps, rows)
                good = total >= base[rows] + 0.25 * alpha[rows] * decrement[rows] - slack[rows]
                accepted[rows[good]] = alpha[rows[good]]
                todo[rows[good]] = False
            else:
                a = alpha.repeat_interleave(self.per).unsqueeze(-1)
                trial = (p + a * dp, d + a * dd, tau + alpha * dt)
                total = self._total(self.value(trial, t, eps), trial[2])
                good = todo & (total >= base + 0.25 * alpha * decrement - slack)
                accepted = torch.where(good, alpha, accepted)
                todo = todo & ~good
            alpha = torch.where(todo, alpha / 2, alpha)
        accepted = torch.where(todo, 0.0, accepted)
        if not bool((accepted > 0).any()):
            return point, False
        a = accepted.repeat_interleave(self.per).unsqueeze(-1) if self.shared is not None else \
            accepted.unsqueeze(-1)
        a_tau = accepted if self.shared is not None else a
        return (p + a * dp, d + a * dd, tau + a_tau * dt), True
