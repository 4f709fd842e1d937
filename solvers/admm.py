"""ADMM for the layer problem, with the adaptive penalty of ALPS.

Split ``W = D`` with ``D`` in the budget set ``S`` and run, in the diagonally scaled coordinates
(:mod:`solvers.scaling`), with ``A = H~`` (unit diagonal):

    W <- (A + rho I)^-1 (A W0 - V + rho D)
    D <- P_S(W + V / rho)
    V <- V + rho (W - D)

``A = Q diag(e) Q^T`` is factored once per layer (and cached on the problem). On a layer with
fewer outputs than inputs ``W`` and ``V`` live in the eigenbasis, where the first step is a
division by ``e + rho``, so each iteration costs two ``out x in x in`` matmuls (back to the
original basis for the projection, and ``D`` into the eigenbasis) whatever ``rho`` does. Where
``out >= in`` (and the layer is not tiny) the iteration forms ``M = (A + rho I)^-1 = Q diag(1 /
(e + rho)) Q^T`` instead, one ``in x in x in`` product each time ``rho`` changes (at most once
per check), and costs one ``out x in x in`` product: ``W = (A W0 - V + rho D) M``. Both are the
same iterates in exact arithmetic.

``rho`` grows with the support's movement: every ``check_every`` iterations the number ``c`` of
weights that entered or left the support since the last check sets the factor (``c >= 0.1 k``,
``c >= 0.005 k``, ``c >= 1``; ``k`` weights kept). The run stops once the support has been stable
for ``patience`` consecutive checks; the weights are then refitted on the support by batched
preconditioned CG from ``D``. The loop itself never waits for the device: the support movement
and the objective are read once per check.

Schedules (``schedule=``), each an initial ``rho`` and a growth rule; all start from the
projection of ``W`` onto the budget (or ``init``):

- ``"alps"``: the published one: ``rho0 = 0.01`` (in scaled coordinates), factors 1.3 / 1.2 / 1.1,
  stop at the first stable check.
- ``"default"``: ``rho0 = 0.3 x`` the median eigenvalue of ``H~``, factors 1.1 / 1.05 / 1.03 and
  two stable checks, where a check counts as stable when at most 0.3 % of the kept weights moved
  (the last flickers of a settled support change nothing the refit does not recover). While
  ``rho`` is far below most of the spectrum the support churns (on a BERT-class layer about the
  whole kept count moves between two checks) and nothing is gained: from 0.01 the slow factors
  spent 60-75 iterations there. Starting at the scale of the spectrum
  skips that phase, and the slow growth lets the support settle 1-3 % lower than the published
  schedule.
- ``"fast"``: the same start, the published factors while the support churns (1.3 / 1.15 /
  1.05), one stable check (at most 0.5 % moved), and the swap search only on layers where a
  round is cheap (``swap_flops=3e7``: the digits layers, not the BERT-class ones): about half the
  published schedule's iterations on the BERT-class layers at about its error, a lower error on
  the small layers the swaps reach. A layer's fixed costs (the eigendecomposition, the refit,
  the safeguard) are the same for every schedule, so its time ends at 0.6-1.0x the published
  schedule's per layer, 0.8-0.9x over the benchmark (docs, "ADMM against the published
  schedule").
- ``"auto"`` (the default): ``"default"`` where an iteration is cheap, ``"fast"`` where it costs
  ``out * in * min(out, in)`` of at least :data:`AUTO_FAST_FLOPS` (2e8: a transformer's MLP
  projections from a width of about 384 on; its attention projections up to a width of about
  580 stay on ``"default"``). On all-MiniLM-L6-v2's layers ``"fast"`` ends 1-2 % above
  ``"default"``'s error in half its time, and the whole model's embeddings are as close to the
  dense ones (cosine 0.9592 against 0.9593 at 50 %, ``l0prune bench llmcompressor``); the MLP
  projections are where the time goes.

ADMM on this non-convex set is a heuristic, and its dual can carry it away from a start that was
already optimal (a diagonal ``H``): :func:`solvers.safeguard.finish` keeps the scaled-magnitude or
the magnitude support, refitted, when either is better.

Figures: ``l0prune bench solvers`` and ``l0prune bench admm`` (docs, "Layer solvers").

References:
    Meng, Behdin, Wang, Mazumder. "ALPS: Improved Optimization for Highly Sparse One-Shot
    Pruning for Large Language Models." NeurIPS 2024.
    Boyd et al. "Distributed Optimization and Statistical Learning via the Alternating Direction
    Method of Multipliers." 2011.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .safeguard import curvature, finish

__all__ = ["AUTO_FAST_FLOPS", "admm", "auto_schedule", "SCHEDULES", "Schedule"]


@dataclass(frozen=True)
class Schedule:
    """How one ADMM run's penalty starts and grows.

    Attributes:
        rho0: initial penalty, in scaled coordinates (where ``diag H~ = 1``); with
            ``relative``, a multiple of the median eigenvalue of ``H~``.
        relative: whether ``rho0`` scales with the median eigenvalue of ``H~``.
        factors: growth of ``rho`` when the support moved by at least ``tiers[0] * k``,
            ``tiers[1] * k``, ... weights since the last check; the last factor applies
            below the last tier (one more factor than tiers).
        patience: consecutive stable checks that stop the run.
        swap_rounds: rounds of the swap local search (:mod:`solvers.swaps`).
        swap_flops: the search runs only where ``out * in * width**2`` (``width`` the widest
            row's support) is below this: a cost measure of one round.
        settled: a check counts as stable when at most this fraction of ``k`` moved.
        tiers: the movement thresholds of ``factors``, as fractions of ``k``.
    """

    rho0: float
    factors: tuple[float, ...]
    patience: int
    relative: bool = False
    swap_rounds: int = 10
    settled: float = 0.0
    tiers: tuple[float, ...] = (0.1, 0.005)
    swap_flops: float = 5e8


SCHEDULES = {
    "default": Schedule(0.3, (1.1, 1.05, 1.03), 2, relative=True, settled=3e-3),
    "fast": Schedule(0.3, (1.3, 1.15, 1.05), 1, relative=True, settled=5e-3, swap_flops=3e7),
    "alps": Schedule(0.01, (1.3, 1.2, 1.1), 1),
}
#: ``schedule="auto"`` runs ``"fast"`` on layers whose ``out * in * min(out, in)`` (the cost of
#: one iteration's product) is at least this, ``"default"`` below.
AUTO_FAST_FLOPS = 2e8


def auto_schedule(shape: tuple[int, int]) -> str:
    """The schedule ``"auto"`` picks for a layer of ``shape`` (out x in).

    Example:
        >>> auto_schedule((384, 384)), auto_schedule((384, 1536))
        ('default', 'fast')
    """
    out, inp = shape
    return "fast" if out * inp * min(out, inp) >= AUTO_FAST_FLOPS else "default"


def admm(
    problem,
    *,
    schedule: str | Schedule = "auto",
    rho0: float | None = None,
    check_every: int = 3,
    max_iter: int = 500,
    init: torch.Tensor | None = None,
    swap_rounds: int | None = None,
    refit_iter: int = 100,
):
    """ADMM with an adaptive penalty schedule, then a PCG refit on the support found.

    Args:
        schedule: ``"auto"`` (by the layer's size), ``"default"``, ``"fast"`` or ``"alps"``
            (the published schedule; see the module docstring), or a :class:`Schedule` of
            your own.
        rho0: initial penalty in scaled coordinates; default: the schedule's. Most of the
            spectrum of ``H~`` lies far below its mean of 1 on real layers (medians of 0.02-0.4
            on the benchmark layers), and while ``rho`` dominates those eigenvalues the
            ``W``-step barely leaves ``D``; far below them the support churns.
        check_every: iterations between two support-movement checks.
        max_iter: iteration cap (reached means ``converged=False``).
        init: a starting weight (e.g. a solution at a nearby sparsity); default ``W``.
        swap_rounds: rounds of the swap local search on small layers
            (:mod:`solvers.swaps`; 0: none); default: the schedule's (10; ``"fast"`` runs them
            only on layers under its ``swap_flops``).
        refit_iter: PCG iterations for the final refit.

    Returns:
        ``(weight, mask, info)``; ``info`` adds ``rho`` (per iteration), ``support_changes``
        (per check), ``history`` (``f(D)`` per check, ridge included), ``swaps`` and
        ``fallback`` (``"diagonal"`` or ``"magnitude"`` when that support won).

    Example:
        >>> import torch
        >>> from solvers import LayerProblem, solve
        >>> W = torch.randn(16, 32); X = torch.randn(256, 32)
        >>> problem = LayerProblem.from_inputs(W, X, sparsity=0.75)
        >>> fast = solve(problem, "admm", schedule="fast")
        >>> fast.relative_error <= solve(problem, "magnitude", refit=True).relative_error
        True
    """
    if not isinstance(schedule, Schedule) and schedule not in (*SCHEDULES, "auto"):
        raise ValueError(
            f"schedule must be one of {sorted(SCHEDULES) + ['auto']} or a Schedule, got "
            f"{schedule!r}"
        )
    if schedule == "auto":
        schedule = auto_schedule(problem.shape)
    plan = schedule if isinstance(schedule, Schedule) else SCHEDULES[schedule]
    if rho0 is not None and not rho0 > 0:
        raise ValueError(f"rho0 must be > 0, got {rho0!r}")
    patience = plan.patience
    if len(plan.factors) != len(plan.tiers) + 1:
        raise ValueError(f"a Schedule needs one more factor than tiers, got factors="
                         f"{plan.factors!r} and tiers={plan.tiers!r}")
    budget = problem.budget
    kept = max(budget.kept(problem.shape), 1)
    settled = plan.settled * kept
    sc = problem.scaled
    e, Q = sc.eigh
    rho = rho0 if rho0 is not None else plan.rho0 * (
        max(float(e.median()), 1e-6) if plan.relative and e.numel() else 1.0)

    start = sc.W0 if init is None else sc.to_scaled(init.to(sc.W0))
    mask = budget.select(start * start)
    steps = (_InverseSteps if _one_product(problem.shape) else _EigenSteps)(sc, start * mask)
    checked_mask = mask
    history, rhos, changes = [], [], []
    stable, converged, iterations = 0, False, 0
    for iterations in range(1, max_iter + 1):
        mask = steps.step(rho, budget)
        rhos.append(rho)
        if iterations % check_every and iterations < max_iter:
            continue
        history.append(steps.objective())
        moved = int((mask != checked_mask).sum())  # the one read from the device per check
        checked_mask = mask
        changes.append(moved)
        if moved <= settled:
            stable += 1
            if stable >= patience:
                converged = True
                break
            continue
        stable = 0
        rho *= next((factor for factor, tier in zip(plan.factors, plan.tiers, strict=False)
                     if moved >= tier * kept), plan.factors[-1])

    D = steps.D
    weight, mask, ending = finish(
        problem, mask, init=sc.from_scaled(D), max_iter=refit_iter,
        swap_rounds=plan.swap_rounds if swap_rounds is None else swap_rounds,
        swap_flops=plan.swap_flops, curvature=curvature(e),
    )
    info = {
        "iterations": iterations,
        "converged": converged,
        "history": torch.stack(history).tolist() if history else [],
        "rho": rhos,
        "support_changes": changes,
        **ending,
    }
    return weight, mask, info


#: Below this many weights a layer keeps the eigenbasis iteration whatever its shape: both are
#: a few small products there, and the stored reference solutions of small problems stay as
#: they were.
_ONE_PRODUCT_MIN_WEIGHTS = 1 << 15


def _one_product(shape: tuple[int, int]) -> bool:
    """Whether ADMM iterates with ``(A + rho I)^-1`` formed (:class:`_InverseSteps`): one
    ``out x in x in`` product per iteration instead of two, plus one ``in x in x in`` product
    whenever ``rho`` changes (at most once per check), which pays where ``out >= in``."""
    out, inp = shape
    return out >= inp and out * inp >= _ONE_PRODUCT_MIN_WEIGHTS


class _EigenSteps:
    """ADMM's iterations with ``W`` and ``V`` in the eigenbasis of ``A = H~``: the ``W``-step is
    a division by ``e + rho``, and ``D`` goes back and forth, two products per iteration."""

    def __init__(self, sc, D: torch.Tensor):
        self.e, self.Q = sc.eigh
        self.W0_eig = sc.W0 @ self.Q
        self.B_eig = self.W0_eig * self.e  # W0 A Q = W0 Q diag(e)
        self.D = D
        self.D_eig = D @ self.Q
        self.V_eig = torch.zeros_like(self.D_eig)

    def step(self, rho: float, budget) -> torch.Tensor:
        """One iteration; returns the new support."""
        W_eig = (self.B_eig - self.V_eig + rho * self.D_eig) / (self.e + rho)
        Z = (W_eig + self.V_eig / rho) @ self.Q.T
        mask = budget.select(Z * Z)
        self.D = Z * mask
        self.D_eig = self.D @ self.Q
        self.V_eig = self.V_eig + rho * (W_eig - self.D_eig)
        return mask

    def objective(self) -> torch.Tensor:
        """``f(D)`` in scaled coordinates (ridge included), on the device."""
        diff = self.D_eig - self.W0_eig
        return (diff * diff * self.e).sum()


class _InverseSteps:
    """The same iterations with ``M = (A + rho I)^-1 = Q diag(1 / (e + rho)) Q^T`` formed, all
    in the scaled coordinates: ``W = (A W0 - V + rho D) M``, one product per iteration; ``M`` is
    formed again when ``rho`` changes."""

    def __init__(self, sc, D: torch.Tensor):
        self.e, self.Q = sc.eigh
        self.A, self.W0 = sc.H, sc.W0
        self.B = sc.W0 @ sc.H
        self.D = D
        self.V = torch.zeros_like(D)
        self.rho, self.M = None, None

    def step(self, rho: float, budget) -> torch.Tensor:
        """One iteration; returns the new support."""
        if rho != self.rho:
            self.rho, self.M = rho, (self.Q / (self.e + rho)) @ self.Q.T
        W = (self.B - self.V + rho * self.D) @ self.M
        Z = W + self.V / rho
        mask = budget.select(Z * Z)
        self.D = Z * mask
        self.V = self.V + rho * (W - self.D)
        return mask

    def objective(self) -> torch.Tensor:
        """``f(D)`` in scaled coordinates (ridge included), on the device."""
        diff = self.D - self.W0
        return ((diff @ self.A) * diff).sum()
