"""Branch and bound over the support, with each node's own SDP bound.

A node fixes some gates: ``K`` kept, ``Z`` dropped, the rest ``U`` free. Row by row its problem
is again a layer problem, on ``U`` alone:

- dropping ``Z`` fixes ``x_Z = -w_Z``; minimising over ``R = K u U`` leaves the target
  ``t = w_R + A_RR^-1 A_RZ w_Z`` and the constant ``w_Z^T (A_ZZ - A_ZR A_RR^-1 A_RZ) w_Z``;
- keeping ``K`` (no count) and minimising over it leaves the Schur complement
  ``S = A_UU - A_UK A_KK^-1 A_KU`` with the targets ``t_U`` and the counts less ``|K|``.

So a node's bound is a constant plus the SDP bound (:func:`~solvers.row_sdp.maximise`, read by
:func:`~solvers.certificate.row_bounds`) of ``(S, t_U)`` with its own optimised diagonals: valid
for every support below the node, and tighter with depth. Free inputs sit in place (``S`` is padded
with a diagonal, the target with 0), so every node has the layer's width and one batched call
bounds many nodes. A set whose count is used up drops its free inputs; one with room for all of
them keeps them; a node with nothing free is a leaf, its value a refit.

The search is best first, in batches: the ``batch`` open nodes with the lowest bounds of every
tree branch together and their children are bounded in one call. It branches on the free gate
whose saving is nearest its multiplier ``tau`` (the relaxation's most undecided gate); at every
node the relaxation's largest savings, refitted, are an incumbent. A tree is proven when its
lowest open bound is within ``gap`` of its incumbent; past ``time_limit`` or ``max_nodes`` the
lowest open bound is still a valid bound.

Three kinds of trees, many at once (a forest): ``count`` (rows with per-set counts: one row per
tree for per-row and N:M budgets), ``shared`` (a block of rows under one count: a layer budget)
and ``penalty`` (one row, ``min f(v) + tau ||v||_0``: the pieces of a Lagrangian layer bound).

References:
    D. Bertsimas, A. King, R. Mazumder, "Best subset selection via a modern optimization lens",
    Ann. Statist. 44 (2016). H. Hazimeh, R. Mazumder, A. Saab, "Sparse regression at scale:
    branch-and-bound rooted in first-order optimization", Math. Programming 196 (2022).
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass

import torch

from .certificate import row_bounds
from .row_sdp import maximise

__all__ = ["Tree", "search", "support_cost"]


@dataclass
class Tree:
    """One tree's outcome.

    Attributes:
        mask: the best support found, ``(r, n)``.
        objective: its value (``f``, plus ``tau |S|`` for a penalty tree).
        bound: a lower bound on the tree's optimum: its lowest open bound, at most
            ``objective * (1 - gap)`` (the bounds of the nodes pruned).
        nodes: nodes bounded.
        proven: whether ``bound`` is within ``gap`` of ``objective``.
    """

    mask: torch.Tensor
    objective: float
    bound: float
    nodes: int
    proven: bool


def support_cost(A: torch.Tensor, w: torch.Tensor, keep: torch.Tensor) -> float:
    """``min f`` of row ``w`` on the support ``keep``: ``w^T A w - b_S^T A_SS^-1 b_S``."""
    b = A @ w
    total = float(w @ b)
    if not bool(keep.any()):
        return total
    bS = b[keep]
    return max(total - float(bS @ torch.linalg.solve(A[keep][:, keep], bS)), 0.0)


class _Forest:
    """The trees' data and the node operations (see the module docstring)."""

    def __init__(self, W, A, set_size, count, penalty, shared, tol):
        self.W, self.A, self.m, self.tol = W.double(), A.double(), set_size, tol
        self.count, self.penalty, self.shared = count, penalty, shared
        self.n = W.shape[-1]

    # -- nodes --------------------------------------------------------------------------------
    def propagate(self, tree: int, fix: torch.Tensor) -> torch.Tensor:
        """Fix what the counts decide: a used-up set drops its free inputs, one with room keeps
        them all."""
        fix = fix.clone()
        free = fix == 0
        if self.penalty is not None:
            return fix
        if self.shared is not None:
            left = int(self.shared[tree]) - int((fix == 1).sum())
            if left <= 0:
                fix[free] = -1
            elif left >= int(free.sum()):
                fix[free] = 1
            return fix
        r = fix.shape[0]
        sets = fix.reshape(r, -1, self.m)
        left = self.count[tree] - (sets == 1).sum(-1)
        free_sets = (sets == 0).sum(-1)
        drop = (left <= 0).unsqueeze(-1) & (sets == 0)
        keep = (left >= free_sets).unsqueeze(-1) & (sets == 0)
        sets = torch.where(drop, -1, torch.where(keep, 1, sets))
        return sets.reshape(r, -1).to(fix.dtype)

    def leaf_value(self, tree: int, keep: torch.Tensor) -> float:
        """The tree's objective on a full support ``keep`` ``(r, n)``."""
        value = sum(support_cost(self.A, w, k) for w, k in zip(self.W[tree], keep, strict=True))
        if self.penalty is not None:
            value += float(self.penalty[tree]) * int(keep.sum())
        return value

    def reduce(self, w: torch.Tensor, fix: torch.Tensor):
        """One row's node problem: ``(A', t, constant)`` padded to the full width."""
        A = self.A
        drop, keep_or_free, free = fix == -1, fix != -1, fix == 0
        target = w.clone()
        constant = 0.0
        if bool(drop.any()):
            wZ = w[drop]
            if bool(keep_or_free.any()):
                ARZ = A[keep_or_free][:, drop] @ wZ
                c = torch.linalg.solve(A[keep_or_free][:, keep_or_free], ARZ)
                target[keep_or_free] = w[keep_or_free] + c
                constant = float(wZ @ A[drop][:, drop] @ wZ - ARZ @ c)
            else:
                constant = float(wZ @ A[drop][:, drop] @ wZ)
        S = A[free][:, free]
        kept = fix == 1
        if bool(kept.any()) and bool(free.any()):
            AUK = A[free][:, kept]
            S = S - AUK @ torch.linalg.solve(A[kept][:, kept], AUK.T)
        pad = float(S.diagonal().mean()) if S.numel() else 1.0
        padded = torch.eye(self.n, dtype=A.dtype, device=A.device) * pad
        index = free.nonzero().flatten()
        padded[index.unsqueeze(1), index.unsqueeze(0)] = S
        return padded, torch.where(free, target, 0.0), max(constant, 0.0)

    def bound(self, nodes: list[tuple[int, torch.Tensor]]):
        """Bounds of ``nodes`` ``[(tree, fix)]`` (none a leaf), their branching gates (row,
        input) and incumbent candidates (supports)."""
        r = self.W.shape[1]
        As, ws, consts = [], [], []
        for tree, fix in nodes:
            for row in range(r):
                A_, t_, c_ = self.reduce(self.W[tree, row], fix[row])
                As.append(A_)
                ws.append(t_)
                consts.append(c_)
        A = torch.stack(As)
        w = torch.stack(ws)
        constant = torch.tensor(consts, dtype=torch.float64).reshape(len(nodes), r).sum(1)
        fixes = torch.stack([fix for _, fix in nodes])
        trees = [tree for tree, _ in nodes]
        kept = (fixes == 1).reshape(len(nodes), r, -1, self.m).sum(-1)
        options = {}
        if self.penalty is not None:
            penalty = self.penalty[trees].reshape(-1, 1).expand(-1, self.n // self.m)
            options["penalty"] = penalty
            constant = constant + self.penalty[trees] * (fixes == 1).sum((1, 2))
        elif self.shared is not None:
            options["shared"] = (self.shared[trees] - kept.sum((1, 2))).to(torch.float64)
        else:
            options["count"] = (self.count[trees] - kept).reshape(len(nodes) * r, -1).double()
        point = maximise(w, A, set_size=self.m, tol=self.tol, **options)
        values = row_bounds(w, A, point.d, point.X, self.m, **options)
        values = values.reshape(len(nodes), -1).sum(1) + constant
        P = (point.X.unsqueeze(1) @ A).squeeze(1) - point.X * point.d
        saving = (point.d * w - P) ** 2 / point.d
        choices = self._choices(fixes, saving, point.tau)
        return values, choices, self._roundings(trees, fixes, saving)

    def _choices(self, fixes, saving, tau):
        """Per node, the free gate ``(row, input)`` whose saving is nearest its ``tau``."""
        count, r = len(fixes), fixes.shape[1]
        if self.shared is not None:
            tau = tau.repeat_interleave(r).unsqueeze(1).expand(-1, self.n)
        else:
            tau = tau.repeat_interleave(self.m, dim=1)
        tau = tau.reshape(count, r, self.n)
        distance = (saving.reshape(count, r, self.n) - tau).abs() / tau.abs().clamp_min(1e-300)
        distance = torch.where(fixes == 0, distance, torch.inf).reshape(count, -1)
        flat = distance.argmin(1)
        return [(int(i) // self.n, int(i) % self.n) for i in flat]

    def _roundings(self, trees, fixes, saving):
        """Per node, a support: the kept inputs and the largest savings the counts allow."""
        count, r = len(fixes), fixes.shape[1]
        score = torch.where(fixes == 0, saving.reshape(count, r, self.n), -1.0)
        score = torch.where(fixes == 1, torch.inf, score)
        masks = []
        for i, tree in enumerate(trees):
            s = score[i]
            if self.penalty is not None:
                masks.append((fixes[i] == 1) | ((fixes[i] == 0) & (s > self.penalty[tree])))
            elif self.shared is not None:
                k = int(self.shared[tree])
                order = s.reshape(-1).argsort(descending=True)[:k]
                mask = torch.zeros(r * self.n, dtype=torch.bool)
                mask[order] = True
                masks.append(mask.reshape(r, self.n) & (fixes[i] != -1))
            else:
                ranked = s.reshape(r, -1, self.m).argsort(-1, descending=True).argsort(-1)
                mask = ranked < self.count[tree].unsqueeze(-1)
                masks.append(mask.reshape(r, self.n) & (fixes[i] != -1))
        return masks


def search(
    W: torch.Tensor,
    A: torch.Tensor,
    *,
    set_size: int,
    count: torch.Tensor | None = None,
    penalty: torch.Tensor | None = None,
    shared: torch.Tensor | None = None,
    start: torch.Tensor,
    time_limit: float | None = None,
    max_nodes: int | None = None,
    gap: float = 1e-6,
    batch: int = 8,
    tol: float = 1e-5,
) -> list[Tree]:
    """Branch and bound on every tree of a forest (see the module docstring).

    Args:
        W: the trees' rows, ``(T, r, n)``.
        A: ``H + lam I`` ``(n, n)``, positive definite.
        set_size: inputs per counting set.
        count: gates per set, ``(T, r, n / set_size)``; or
        penalty: ``tau`` per tree, ``(T,)`` (``r = 1``); or
        shared: a count per tree over its ``r`` rows, ``(T,)`` (``set_size == n``).
        start: a feasible support per tree, ``(T, r, n)``: the first incumbents.
        time_limit: seconds for the whole forest; ``None`` for none.
        max_nodes: nodes bounded per tree at most; ``None`` for no limit.
        gap: relative gap at which a tree counts as proven.
        batch: nodes per tree branched together.
        tol: each node's bound stops when a barrier stage raises it by less than this
            (relative; :func:`~solvers.row_sdp.maximise`): looser is faster and still valid.

    Returns:
        One :class:`Tree` per tree.
    """
    begin = time.monotonic()
    forest = _Forest(W, A, set_size, count, penalty, shared, tol)
    trees = W.shape[0]
    best = [(forest.leaf_value(t, start[t]), start[t].clone()) for t in range(trees)]
    heaps: list[list] = [[] for _ in range(trees)]
    nodes = [0] * trees
    tie = itertools.count()
    root = torch.zeros(W.shape[1:], dtype=torch.int8)
    pending = [(t, forest.propagate(t, root), -torch.inf) for t in range(trees)]

    def out_of_time() -> bool:
        return time_limit is not None and time.monotonic() - begin > time_limit

    while pending:
        inner = []
        for tree, fix, parent in pending:
            if bool((fix == 0).any()):
                inner.append((tree, fix, parent))
                continue
            value = forest.leaf_value(tree, fix == 1)
            nodes[tree] += 1
            if value < best[tree][0]:
                best[tree] = (value, fix == 1)
        pending = []
        if inner:
            values, choices, roundings = forest.bound([(t, f) for t, f, _ in inner])
            for (tree, fix, parent), value, choice, mask in zip(
                inner, values.tolist(), choices, roundings, strict=True
            ):
                nodes[tree] += 1
                candidate = forest.leaf_value(tree, mask)
                if candidate < best[tree][0]:
                    best[tree] = (candidate, mask)
                bound = max(value, parent)
                if bound < best[tree][0] * (1 - gap):
                    heapq.heappush(heaps[tree], (bound, next(tie), fix, choice))
        if out_of_time():
            break
        for tree in range(trees):
            if max_nodes is not None and nodes[tree] >= max_nodes:
                continue
            for _ in range(batch):
                if not heaps[tree]:
                    break
                bound, _, fix, (row, col) = heapq.heappop(heaps[tree])
                if bound >= best[tree][0] * (1 - gap):
                    heaps[tree].clear()
                    break
                for side in (1, -1):
                    child = fix.clone()
                    child[row, col] = side
                    pending.append((tree, forest.propagate(tree, child), bound))
    results = []
    for tree in range(trees):
        value, mask = best[tree]
        open_bounds = [b for b, *_ in heaps[tree] if b < value * (1 - gap)]
        pending_bounds = [b for t, _, b in pending if t == tree]
        lowest = min(open_bounds + pending_bounds, default=value * (1 - gap))
        proven = lowest >= value * (1 - gap)
        results.append(Tree(mask, value, min(lowest, value * (1 - gap)), nodes[tree], proven))
    return results
