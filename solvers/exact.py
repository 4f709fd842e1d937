"""The exact layer optimum: a mixed-integer second-order cone program through cvxpy, or l0prune's
own branch and bound.

With ``solver="BNB"`` the search is :mod:`solvers.branch_bound` (each node bounded by its own
rows' SDP bound, ADMM's support the first incumbent): one tree per row for per-row and N:M
budgets, one for the layer under an unstructured budget (not for structured ones). It reaches
programs of 100-200 binaries on real ``H`` where the cone solvers stop near 40, reports
``info["nodes"]``, and its ``info["lower_bound"]`` is valid even when the time limit stops it.

Otherwise, the perspective formulation (:mod:`solvers.perspective`) with binary gates and
``d = 0.999 lambda_min(H + lam I)`` (:func:`~solvers.diagonal.eig_diagonal`: a full-rank ``Q``
keeps the conic solves inside branch and bound accurate), solved by ECOS_BB (the default) or
SCIP. When no set of the budget spans two rows (per-row, N:M) every row is its own small program;
otherwise (unstructured, structured) the layer is one program.

Branch and bound accepts a gate within its integrality tolerance (``1e-4`` for ECOS_BB) as closed,
and with a small ``d`` such a gate can carry weight cheaply through a huge ``s``: on
ill-conditioned ``H`` (condition number ``1e5`` and up) ECOS_BB then proves wrong optima. The
program therefore also bounds ``|v_ij| <= M_ij z`` with ``M`` valid for any solution at most as
bad as the magnitude + refit start (see :meth:`~solvers.perspective.PerspectiveProgram.build`);
on 250 random instances with condition numbers up to ``1e7`` that left no wrong claim (one
instance was not proven within 20 s instead).

The answer is polished, not trusted: the support is read off the gates (``z > 0.5``; SCIP may
return values just past its feasibility tolerance), completed to the budget's exact count,
refitted by least squares, and its objective recomputed. Branch and bound runs in a child process
so that the time limit holds even inside a solver that cannot be interrupted; rows (or the layer)
not proven by then keep the start. A proven optimum comes with
``info["lower_bound"] = f * (1 - 1e-6)``: the solver's relative gap (``1e-7``) and its conic
tolerances, rounded up.

References:
    A. Frangioni, C. Gentile, "Perspective cuts for a class of convex 0-1 mixed integer
    programs", Math. Programming 106 (2006). O. Gunluk, J. Linderoth, "Perspective
    reformulations of mixed integer nonlinear programs with indicator variables", Math.
    Programming 124 (2010).
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections import Counter

import torch

from .cardinality import Cardinality
from .diagonal import eig_diagonal
from .magnitude import magnitude
from .perspective import PerspectiveProgram

__all__ = ["TooLarge", "exact", "program_binaries"]

SOLVERS = ("ECOS_BB", "SCIP", "BNB")
PROVEN_GAP = 1e-6
_OPTIONS = {
    "ECOS_BB": {"mi_rel_eps": 1e-7, "mi_abs_eps": 1e-9, "mi_max_iters": 10**6},
    "SCIP": {},
}


class TooLarge(ValueError):
    """A layer whose exact program has more gates than ``max_binaries``."""

    def __init__(self, binaries: int, max_binaries: int):
        self.binaries, self.max_binaries = binaries, max_binaries
        super().__init__(
            f"instance too large for the exact solve: one program has {binaries} binary "
            f"variables, over max_binaries={max_binaries} (branch and bound grows "
            f"exponentially). Use a heuristic with a certified gap instead, e.g. "
            f"solve(problem, method='admm', certify=True), or lower_bound(problem)."
        )


def program_binaries(problem) -> int:
    """The gates (binary variables) of one program of ``problem``'s exact solve: a row's
    weights for per-row and N:M budgets, the layer's for unstructured, its column groups for
    structured."""
    card = Cardinality.of(problem.budget, problem.shape)
    rows = 1 if card.rows_independent else problem.shape[0]
    return Cardinality.of(problem.budget, (rows, problem.shape[1])).atoms


def exact(
    problem,
    *,
    solver: str = "ECOS_BB",
    time_limit: float | None = 300.0,
    max_binaries: int = 40,
):
    """The optimal pruned weight of ``problem``, for every budget type.

    Args:
        solver: ``"ECOS_BB"`` (package ``ecos``), ``"SCIP"`` (package ``pyscipopt``) or
            ``"BNB"`` (:mod:`solvers.branch_bound`; budgets with one gate per weight).
        time_limit: seconds for all the branch and bound together; ``None`` for no limit.
            Past it the unsolved rows keep the magnitude + refit start and ``converged`` is
            False.
        max_binaries: the size guard: the most gates one program may have (one per weight of a
            row for per-row and N:M budgets, of the layer for unstructured, one per column group
            for structured). Branch and bound grows exponentially with it.

    Returns:
        ``(weight, mask, info)``; ``info`` adds ``status`` (``"optimal"`` or what stopped each
        unproven program), ``programs``, ``solver`` and, when every program is proven optimal,
        ``lower_bound``; ``"BNB"`` adds ``nodes`` and always gives ``lower_bound``.

    Example:
        >>> import torch
        >>> from solvers import LayerProblem, PerRow, solve
        >>> W, X = torch.randn(2, 8), torch.randn(64, 8)
        >>> solve(LayerProblem.from_inputs(W, X, budget=PerRow(k=3)), "exact").info["status"]
        'optimal'
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")
    if time_limit is not None and not (
        isinstance(time_limit, (int, float)) and math.isfinite(time_limit) and time_limit > 0
    ):
        raise ValueError(
            f"time_limit must be a positive number of seconds or None, got {time_limit!r}"
        )
    if isinstance(max_binaries, bool) or not isinstance(max_binaries, int) or max_binaries < 1:
        raise ValueError(f"max_binaries must be a positive integer, got {max_binaries!r}")
    out, inp = problem.shape
    card = Cardinality.of(problem.budget, problem.shape)
    rows = [[r] for r in range(out)] if card.rows_independent else [list(range(out))]
    program_card = Cardinality.of(problem.budget, (len(rows[0]), inp))
    if program_card.atoms > max_binaries:
        raise TooLarge(program_card.atoms, max_binaries)
    A = problem.damped.double()
    e = torch.linalg.eigvalsh(A)
    if not float(e[0]) > 1e-10 * float(e[-1]):
        raise ValueError(
            f"the exact solve needs H + lam I well conditioned, got eigenvalues "
            f"[{float(e[0]):.3g}, {float(e[-1]):.3g}]: give lam > 0"
        )
    if solver == "BNB" and card.group is not None:
        raise ValueError(
            f"solver='BNB' needs a budget with one gate per weight, got {problem.budget!r}; "
            f"use solver='ECOS_BB' or 'SCIP'"
        )
    start, start_mask, _ = magnitude(problem, refit=True)
    f_start = problem.objective(start)
    if card.count == 0 or card.count >= card.set_size:  # nothing to choose
        info = {"iterations": 0, "converged": True, "history": [f_start], "status": "optimal",
                "programs": 0, "solver": solver, "lower_bound": f_start * (1 - PROVEN_GAP)}
        return start, start_mask, info
    if solver == "BNB":
        return _branch_and_bound(problem, card, rows, start_mask, f_start, time_limit)

    D = start.double() - problem.W.double()
    row_f = ((D @ A) * D).sum(dim=1) * (1 + 1e-9)  # each row's objective at the start
    d = eig_diagonal(A)
    jobs = [(problem.W[r].double(), A, d, program_card, float(row_f[r].sum())) for r in rows]
    results = _run(jobs, solver, time_limit)

    gates = start_mask.to(torch.float64)
    for i, (status, z) in results.items():
        if status == "optimal":
            gate = program_card.spread(torch.as_tensor(z).reshape(-1, program_card.set_size))
            gates[rows[i]] = gate.to(gates)
    mask = _complete(problem, gates > 0.5)
    weight = problem.refit(mask, method="exact")
    f = problem.objective(weight)
    unproven = Counter(
        results[i][0] if i in results else "past the time limit"
        for i in range(len(jobs))
        if i not in results or results[i][0] != "optimal"
    )
    status = "optimal" if not unproven else "not proven: " + ", ".join(
        f"{n} program(s) {what}" for what, n in unproven.items()
    )
    if f_start < f * (1 - PROVEN_GAP):  # a claimed optimum worse than the start is refuted
        weight, mask, f = start, start_mask, f_start
        status = "not proven: the solver's support is worse than magnitude + refit"
    info = {
        "iterations": len(results),
        "converged": status == "optimal",
        "history": [f_start, f],
        "status": status,
        "programs": len(rows),
        "solver": solver,
    }
    if info["converged"]:
        info["lower_bound"] = f * (1 - PROVEN_GAP)
    return weight.to(problem.W.dtype), mask, info


def _branch_and_bound(problem, card, rows, start_mask, f_start, time_limit):
    """``solver="BNB"``: one tree per program, ADMM's or magnitude's support the first incumbent."""
    from .admm import admm
    from .branch_bound import search

    _, admm_mask, _ = admm(problem)
    start = admm_mask if problem.objective(problem.refit(admm_mask)) < f_start else start_mask
    W, A = problem.W.double(), problem.damped.double()
    out, inp = problem.shape
    if card.rows_independent:
        count = torch.full((out, 1, inp // card.set_size), card.count)
        trees = search(W.unsqueeze(1), A, set_size=card.set_size, count=count,
                       start=start.unsqueeze(1), time_limit=time_limit, gap=PROVEN_GAP)
    else:
        trees = search(W.unsqueeze(0), A, set_size=inp, shared=torch.tensor([card.count]),
                       start=start.unsqueeze(0), time_limit=time_limit, gap=PROVEN_GAP)
    mask = torch.cat([tree.mask for tree in trees]).reshape(problem.shape)
    weight = problem.refit(mask, method="exact")
    f = problem.objective(weight)
    unproven = sum(not tree.proven for tree in trees)
    status = "optimal" if not unproven else f"not proven: {unproven} program(s) past the time limit"
    info = {
        "iterations": len(trees),
        "converged": not unproven,
        "history": [f_start, f],
        "status": status,
        "programs": len(rows),
        "solver": "BNB",
        "nodes": sum(tree.nodes for tree in trees),
        "lower_bound": min(sum(tree.bound for tree in trees), f),
    }
    return weight.to(problem.W.dtype), mask, info


def _complete(problem, support: torch.Tensor) -> torch.Tensor:
    """The budget's exact count: ``support`` first, then the largest ``(H_jj + lam) W_ij^2``."""
    score = problem.W.double() ** 2 * problem.damped_diagonal.double()
    score = score / score.max().clamp_min(1e-300)
    return problem.budget.select(torch.where(support, 2.0 + score, score))


def _run(jobs, solver: str, time_limit: float | None) -> dict[int, tuple[str, object]]:
    """Solve the jobs in a child process: ``{index: (status, gates)}`` for those done in time."""
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    )
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_solve_all, args=(send, jobs, solver, time_limit), daemon=True)
    child.start()
    send.close()
    deadline = None if time_limit is None else time.monotonic() + time_limit
    results: dict[int, tuple[str, object]] = {}
    try:
        while len(results) < len(jobs):
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not receive.poll(wait):
                break
            try:
                index, status, z = receive.recv()
            except EOFError:
                break
            results[index] = (status, z)
    finally:
        child.kill()
        child.join()
        receive.close()
    return results


def _solve_all(send, jobs, solver: str, time_limit: float | None) -> None:
    """In the child: build and solve each program, sending ``(index, status, gates)``."""
    start = time.monotonic()
    for index, (W, A, d, card, upper) in enumerate(jobs):
        program = PerspectiveProgram.build(W, A, d, card, integer=True, upper=upper)
        options = dict(_OPTIONS[solver])
        if solver == "SCIP" and time_limit is not None:
            left = time_limit - (time.monotonic() - start)
            options["scip_params"] = {"limits/time": max(left, 1.0)}
        try:
            program.problem.solve(solver=solver, **options)
            status = program.problem.status
        except Exception as error:  # a solver failure is reported, not raised, across the pipe
            status = f"solver error: {error}"
        _, z = program.solution()
        send.send((index, status, z))
    send.close()
