"""OBS / SparseGPT: one sweep over the columns, each pruning error pushed onto the later columns.

Optimal Brain Surgeon removes weight ``j`` of a row at the cost ``w_j**2 / [Hinv]_jj`` and
moves the others by ``-(w_j / [Hinv]_jj) Hinv[j, :]``, where ``Hinv = (H + lam I)^-1`` is taken
over the weights still free. SparseGPT makes this a single left-to-right sweep: with
``Hinv = U^T U`` (``U`` upper Cholesky), row ``j`` of ``U`` is ``Hinv[j, j:] / sqrt([Hinv]_jj)``
for the inverse over columns ``j..n``, so fixing column ``j`` to ``q`` costs
``((w - q) / U_jj)**2`` per row and the optimal correction of the later columns is
``-((w - q) / U_jj) U[j, j:]``. Columns are processed in blocks; the corrections of a block reach
the columns after it in one matmul (lazy batch updates). Every step leaves the free columns
optimal given the fixed ones, so the objective ``f`` (ridge included) of the result is exactly
the sum of the step costs, which is what ``info["history"]`` records after each block.

Masks are chosen by the OBS saliency ``w**2 / U_jj**2`` on the current (already corrected)
weights. SparseGPT gives every block the same sparsity; here the budget is met *exactly* through
``budget.select``: at the start of each block (every ``m`` columns for N:M, as SparseGPT does)
the support is re-selected over the whole layer, columns already processed forced to their
decision and the rest scored afresh; the block keeps its part of that support. The last
selection is then a feasible support of the budget, so the final mask holds exactly
``budget.kept(shape)`` weights, and the layer-wide count flows to the blocks where the saliency
says it is cheapest. With a diagonal ``H`` nothing is corrected and the scores do not change, so
the result is the exact top-k of ``(H_jj + lam) W_ij**2`` (magnitude pruning for ``H = I``).

Structured budgets (whole column groups) use group OBS instead: drop, one at a time, the group
``G`` of smallest cost ``sum_rows w_G^T ([Hinv]_GG)^-1 w_G``, correct every row by
``-w_G^T ([Hinv]_GG)^-1 Hinv[G, :]`` and downdate ``Hinv`` to the remaining columns; ``f`` is
again the sum of the costs.

``H + lam I`` is the problem's ``damped`` matrix (the default ``lam = 0.01 mean(diag H)`` is
SparseGPT's damping); if it is singular (``lam = 0``) the Cholesky factor gets the engine's
growing jitter. Factorisations and group OBS run in float64, the column sweep in the problem's
dtype; everything on the problem's device.

References:
    Hassibi & Stork, "Second order derivatives for network pruning: Optimal Brain Surgeon",
    NIPS 1992.
    Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
    One-Shot", ICML 2023.
    Frantar, Singh & Alistarh, "Optimal Brain Compression: A Framework for Accurate
    Post-Training Quantization and Pruning", NeurIPS 2022 (the group OBS step).
"""

from __future__ import annotations

import torch

from .refit import damped_cholesky

__all__ = ["obs"]


def obs(problem, *, blocksize: int = 128, refit: bool = False):
    """SparseGPT's OBS sweep (group OBS for structured budgets) under the problem's budget.

    Args:
        blocksize: columns per block of lazy updates (for N:M rounded down to a multiple of
            ``m``, at least ``m``); unused by structured budgets.
        refit: replace the kept weights by the optimal ones on the support found.

    Returns:
        ``(weight, mask, info)``; ``info["history"]`` is the objective after each block
        (after each group dropped for structured budgets), ``info["iterations"]`` their number.

    Example:
        >>> import torch
        >>> from solvers import LayerProblem, solve
        >>> W = torch.randn(8, 16); X = torch.randn(64, 16)
        >>> solution = solve(LayerProblem(W, X.T @ X / 64, sparsity=0.5), method="obs")
        >>> int(solution.mask.sum())
        64
    """
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive integer, got {blocksize!r}")
    layout = problem.budget.layout(problem.shape)
    if layout.group is not None:
        weight, mask, history = _group_obs(problem, layout.group)
    else:
        weight, mask, history = _sweep(problem, blocksize, layout.set_size)
    if refit:
        weight = problem.refit(mask)
    return weight, mask, {"iterations": len(history), "converged": True, "history": history}


def _inverse(damped: torch.Tensor) -> torch.Tensor:
    """``(H + lam I)^-1`` in float64 (a singular matrix gets the engine's jitter)."""
    return torch.cholesky_inverse(damped_cholesky(damped.double()))


def _inverse_factor(damped: torch.Tensor) -> torch.Tensor:
    """The upper triangular ``U`` with ``U^T U = (H + lam I)^-1``, float64, from one Cholesky
    and one triangular inverse (no inverse formed): with ``J`` the reversal,
    ``J A J = R R^T`` (``R`` lower) gives ``A = V V^T`` for the upper ``V = J R J``, so
    ``A^-1 = V^-T V^-1`` and ``U = V^-1`` (the upper Cholesky factor is unique)."""
    V = damped_cholesky(damped.double().flip(0, 1)).flip(0, 1)
    eye = torch.eye(V.shape[0], dtype=V.dtype, device=V.device)
    return torch.linalg.solve_triangular(V, eye, upper=True)


def _select(budget, mask: torch.Tensor, start: int, score: torch.Tensor) -> torch.Tensor:
    """The budget's best support for ``score`` on columns ``start:``, columns ``:start`` fixed.

    Decided weights are forced: kept ones score above any sum of free scores, pruned ones below
    zero, so ``budget.select`` keeps exactly the earlier decisions and fills the rest.
    """
    top = 2 * score.sum() + 1
    fixed = torch.where(mask[:, :start], top, -1.0)
    return budget.select(torch.cat([fixed, score], dim=1))[:, start:]


def _sweep(problem, blocksize: int, set_size: int):
    """SparseGPT's column sweep; returns the weight, the mask and the objective per block.

    ``set_size`` is the budget's counting set; sets of a few columns within a row (N:M) are
    independent of everything after them, so each is chosen when the sweep reaches it.
    """
    budget = problem.budget
    W = problem.W.clone()
    n = W.shape[1]
    U = _inverse_factor(problem.damped).to(W.dtype)  # Hinv = U^T U
    d2 = U.diagonal() ** 2
    nm = set_size < n and n % set_size == 0
    window = set_size if nm else blocksize
    step = max(window, blocksize - blocksize % window)
    mask = torch.zeros_like(W, dtype=torch.bool)
    history, loss = [], 0.0
    for i1 in range(0, n, step):
        i2 = min(i1 + step, n)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        err = torch.zeros_like(W1)
        if not nm:
            rest = torch.cat([W1, W[:, i2:]], dim=1)
            mask[:, i1:] = _select(budget, mask, i1, rest * rest / d2[i1:])
        for j in range(i2 - i1):
            i = i1 + j
            if nm and j % window == 0:
                group = W1[:, j : j + window]
                mask[:, i : i + window] = budget.select(group * group / d2[i : i + window])
            e = W1[:, j] * ~mask[:, i] / U1[j, j]
            W1[:, j:] -= e[:, None] * U1[j, j:][None, :]
            err[:, j] = e
        W[:, i1:i2] = W1 * mask[:, i1:i2]
        W[:, i2:] -= err @ U[i1:i2, i2:]
        loss += float((err * err).sum())
        history.append(loss)
    return W, mask, history


def _group_obs(problem, g: int):
    """Greedy group OBS over groups of ``g`` columns; returns the weight, the mask and the
    objective per group dropped."""
    budget = problem.budget
    out, n = problem.shape
    n_groups = n // g
    W = problem.W.to(torch.float64, copy=True)
    Hinv = _inverse(problem.damped)
    alive = torch.ones(n_groups, dtype=torch.bool, device=W.device)
    eye = torch.eye(g, dtype=W.dtype, device=W.device)
    history, loss = [], 0.0
    for _ in range(n_groups - budget.count(problem.shape)):
        blocks = Hinv.reshape(n_groups, g, n_groups, g).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        blocks = torch.where(alive[:, None, None], blocks, eye)  # dropped groups: inert
        inv = torch.cholesky_inverse(damped_cholesky(blocks))  # ([Hinv]_GG)^-1 per group
        Wg = W.reshape(out, n_groups, g)
        gram = torch.einsum("ogi,ogj->gij", Wg, Wg)  # sum over rows of w_G w_G^T
        cost = torch.where(alive, (inv * gram).sum(dim=(1, 2)), torch.inf)
        G = n_groups - 1 - int(torch.argmin(cost.flip(0)))  # ties: drop the last, as select
        cols = slice(G * g, (G + 1) * g)
        W -= W[:, cols] @ inv[G] @ Hinv[cols, :]
        Hinv -= Hinv[:, cols] @ inv[G] @ Hinv[cols, :]
        alive[G] = False
        loss += float(cost[G])
        history.append(loss)
    keep = alive.repeat_interleave(g).expand(out, n)
    mask = budget.select(keep.to(problem.W.dtype))
    return (W * mask).to(problem.W.dtype), mask, history
