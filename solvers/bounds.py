"""Certified lower bounds on a layer problem's optimum, in tiers from cheap to tight.

A heuristic's objective ``f`` with a lower bound ``lb`` on the optimum ``f*`` has a known
optimality gap ``(f - lb) / f``. Every tier splits ``A = H + lam I = Q + diag(d)`` and evaluates the
dual function :func:`~solvers.certificate.dual_bound` at some point, so every number returned is
a valid bound however inexactly the point was found:

- ``"separable"``: drop ``Q``; every weight the budget drops costs at least ``d_j W_ij^2``, so the
  cheapest set it can drop (the complement of ``budget.select(d W^2)``) is a bound. Closed form,
  ``d = 0.999 lambda_min(H + lam I)`` (:func:`~solvers.diagonal.eig_diagonal`).
- ``"lagrangian"`` (the default): the perspective relaxation for the same ``d``, with the budget
  dualised by set (one shared multiplier for an unstructured layer budget: the reverse Huber
  form), solved by ADMM on all rows at once on one eigendecomposition (:mod:`solvers.lagrangian`);
  any layer size. It stops within ``tol`` (relative) of the relaxation's value.
- ``"perspective"``: the same relaxation as a cone program solved by Clarabel through cvxpy
  (:mod:`solvers.perspective`); the reference for the first-order one, for small layers (the
  separable bound if the solver fails).
- ``"sdp"``: the relaxation with the diagonal that maximises the separable bound
  (:func:`~solvers.diagonal.sdp_diagonal`, an ``in x in`` SDP, for small ``in``), or the
  ``"lagrangian"`` bound when that is higher.
- ``"row_sdp"``: the SDP (Shor) bound with one diagonal per row: the certificate maximised jointly
  over the dual point and every row's split by a barrier Newton method (:mod:`solvers.row_sdp`),
  the budget's sets exact (a layer budget's one multiplier shared by all rows). ``O(out n^3)`` per
  Newton step, no size guard. A Structured budget's gate spans the rows, so there the diagonals
  are those of the unstructured problem keeping as many weights, read by the structured
  certificate.
- ``"branch"``: ``"row_sdp"`` tightened by a few levels of branching on each row
  (:mod:`solvers.branch_bound`, about ``nodes`` nodes a row, each bounded by its own ``row_sdp``
  bound): a row's bound is the lowest over its tree's open nodes, so it is valid and never below
  the row's root. Per-row and N:M budgets branch on each row's own counts; a layer budget is
  split at the root's shared multiplier ``tau`` into penalised rows, ``f* >= sum_i min_v (f_i(v)
  + tau ||v_i||_0) - tau k``, and each row's penalised problem is branched; where every row's
  tree is proven, ``tau`` is moved towards the best split (:func:`_split`). A Structured budget
  (a gate spanning the rows) gets the ``"row_sdp"`` bound.

Every tier is at least the separable bound for its diagonal.
"""

from __future__ import annotations

import math
import warnings

import torch

from .cardinality import Cardinality
from .certificate import ROUNDING, dual_bound
from .diagonal import eig_diagonal, sdp_diagonal
from .lagrangian import relax
from .problem import LayerProblem

__all__ = ["BOUNDS", "lower_bound"]

BOUNDS = ("separable", "lagrangian", "perspective", "sdp", "row_sdp", "branch")

#: Size guards: ``out * in`` for the cone program; ``in`` (the PSD constraint) and ``out * in``
#: (the linear part) for the SDP.
PERSPECTIVE_MAX_WEIGHTS = 4096
SDP_MAX_INPUTS = 256
SDP_MAX_WEIGHTS = 32768
#: Splits of a layer budget tried by ``"branch"`` (only while every row's tree is proven).
SPLIT_TRIES = 8


def lower_bound(
    problem: LayerProblem,
    method: str = "lagrangian",
    *,
    max_iter: int = 2000,
    tol: float = 1e-3,
    init: torch.Tensor | None = None,
    nodes: int = 8,
) -> float:
    """A certified lower bound on ``min f(W')`` over ``problem.budget``.

    Args:
        problem: a :class:`~solvers.problem.LayerProblem` with a sized budget.
        method: one of :data:`BOUNDS` (see the module docstring).
        max_iter: ADMM steps of ``"lagrangian"`` / ``"sdp"``.
        tol: their relaxation gap (relative) at which to stop; for ``"row_sdp"`` and
            ``"branch"`` (its root and every node), the gain of a barrier stage (relative) below
            which it stops.
        init: a feasible weight to start them from (a heuristic's answer); for ``"branch"``,
            its support is the first incumbent of every row's tree.
        nodes: for ``"branch"``, the nodes bounded in each row's tree (about: children come in
            pairs).

    Returns:
        ``lb <= f*`` (0 when ``H + lam I`` is singular: no diagonal can be split off).

    Example:
        >>> import torch
        >>> from solvers import LayerProblem, lower_bound, solve
        >>> W, X = torch.randn(8, 16), torch.randn(64, 16)
        >>> problem = LayerProblem.from_inputs(W, X, sparsity=0.5)
        >>> lower_bound(problem) <= solve(problem, method="magnitude", refit=True).objective
        True
    """
    if not isinstance(problem, LayerProblem):
        raise ValueError(f"problem must be a LayerProblem, got {type(problem).__name__}")
    if method not in BOUNDS:
        raise ValueError(f"method must be one of {list(BOUNDS)}, got {method!r}")
    if not problem.budget.sized:
        raise ValueError(f"problem.budget={problem.budget!r} has no size: give sparsity= or k=")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
    if init is not None and tuple(init.shape) != problem.shape:
        raise ValueError(f"init must have W's shape {problem.shape}, got {tuple(init.shape)}")
    out, inp = problem.shape
    if method == "perspective" and out * inp > PERSPECTIVE_MAX_WEIGHTS:
        raise ValueError(
            f"method='perspective' takes layers with at most {PERSPECTIVE_MAX_WEIGHTS} weights "
            f"(out * in), got {out * inp}; use method='lagrangian' (the same relaxation, solved "
            f"first-order)"
        )
    if method == "sdp" and (inp > SDP_MAX_INPUTS or out * inp > SDP_MAX_WEIGHTS):
        raise ValueError(
            f"method='sdp' takes layers with at most {SDP_MAX_INPUTS} inputs (an in x in SDP) "
            f"and {SDP_MAX_WEIGHTS} weights, got {out} x {inp}; use method='lagrangian'"
        )
    W, A, budget = problem.W.double(), problem.damped.double(), problem.budget
    card = Cardinality.of(budget, problem.shape)
    if card.count >= card.set_size:  # every weight kept: the optimum is 0
        return 0.0
    if card.count == 0:  # every weight dropped: the optimum is f(0)
        return max(float(((W @ A) * W).sum()) * (1 - ROUNDING), 0.0)
    d = eig_diagonal(A)
    if not bool((d > 0).all()):
        return 0.0
    if method == "separable":
        return dual_bound(W, A, d, None, budget)
    if method == "perspective":
        return _perspective(W, A, d, card, budget)
    if method == "row_sdp":
        return _row_sdp(W, A, card, budget, tol)[0]
    if method == "branch":
        start = budget.select(W * W * A.diagonal()) if init is None else init != 0
        return _branch(W, A, card, budget, tol, nodes, start)
    bound, _ = relax(W, A, d, budget, init=init, max_iter=max_iter, tol=tol)
    if method == "lagrangian":
        return bound
    tight, _ = relax(W, A, sdp_diagonal(W, A, card), budget, init=init, max_iter=max_iter, tol=tol)
    return max(bound, tight)


def _perspective(W, A, d, card, budget) -> float:
    """The cone program's relaxed optimum, read as a dual point of the certificate."""
    from cvxpy.error import SolverError

    from .perspective import PerspectiveProgram

    program = PerspectiveProgram.build(W, A, d, card, integer=False)
    separable = dual_bound(W, A, d, None, budget)
    with warnings.catch_warnings():  # an inaccurate optimum is fine: it is only a dual point
        warnings.simplefilter("ignore", UserWarning)
        try:
            program.problem.solve(solver="CLARABEL")
        except SolverError:
            return separable
    weight, _ = program.solution()
    if weight is None:
        return separable
    X = torch.as_tensor(weight, dtype=torch.float64, device=W.device).reshape(W.shape) - W
    return max(dual_bound(W, A, d, X, budget), separable)


def _row_sdp(W, A, card, budget, tol):
    """The rows' SDP dual point (:func:`~solvers.row_sdp.maximise`), read by the certificate:
    ``(bound, point)``."""
    from .row_sdp import maximise

    out, inp = card.shape
    if card.group is not None:
        point = maximise(W, A, set_size=inp, shared=card.count * card.group * out, tol=tol)
    elif card.rows_independent:
        count = torch.full((out, inp // card.set_size), card.count, dtype=torch.float64)
        point = maximise(W, A, set_size=card.set_size, count=count, tol=tol)
    else:
        point = maximise(W, A, set_size=inp, shared=card.count, tol=tol)
    bound = max(dual_bound(W, A, point.d, point.X, budget),
                dual_bound(W, A, eig_diagonal(A), None, budget))
    return bound, point


def _branch(W, A, card, budget, tol, nodes, start) -> float:
    """The ``"row_sdp"`` bound, each row's share raised by its own branch and bound (see the
    module docstring)."""
    from .branch_bound import search

    root, point = _row_sdp(W, A, card, budget, tol)
    if card.group is not None:
        return root
    out, inp = card.shape
    limits = {"start": start.unsqueeze(1), "max_nodes": nodes, "batch": 2, "tol": tol}
    if card.rows_independent:
        count = torch.full((out, 1, inp // card.set_size), card.count)
        trees = search(W.unsqueeze(1), A, set_size=card.set_size, count=count, **limits)
        return max(root, sum(tree.bound for tree in trees))
    tau = max(float(point.tau.reshape(-1)[0]), 0.0)  # the split is valid for tau >= 0 only
    return max(root, _split(W, A, card.count, tau, limits))


def _split(W, A, k, tau, limits) -> float:
    """The highest split ``sum_i min_v (f_i(v) + tau ||v_i||_0) - tau k`` found from the root's
    ``tau``, each row's penalised problem bounded by its tree. The split is concave in ``tau``;
    while every tree is proven, the optimal supports' total size less ``k`` is its slope, so
    ``tau`` doubles (more kept than ``k``) or halves until the slope changes sign, then bisects
    the bracket in log scale; at most :data:`SPLIT_TRIES` splits. Any ``tau >= 0`` is valid."""
    from .branch_bound import search

    out, inp = W.shape
    best, low, high = -math.inf, 0.0, math.inf
    for _ in range(SPLIT_TRIES):
        trees = search(W.unsqueeze(1), A, set_size=inp,
                       penalty=torch.full((out,), tau, dtype=torch.float64), **limits)
        rows = sum(tree.bound for tree in trees)
        best = max(best, rows - tau * k - ROUNDING * (abs(rows) + tau * k))
        kept = sum(int(tree.mask.sum()) for tree in trees)
        if tau <= 0 or kept == k or not all(tree.proven for tree in trees):
            break
        low, high = (tau, high) if kept > k else (low, tau)
        tau = 2 * tau if high == math.inf else tau / 2 if low == 0 else math.sqrt(low * high)
    return best
