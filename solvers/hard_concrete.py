"""Hard-concrete L0 relaxation of the layer problem, solved by Adam with dual ascent on the count.

Each weight ``W~_ij`` gets a hard-concrete gate ``z_ij`` (:mod:`solvers.gates`) with a learnable
``log_alpha_ij``; a structured budget shares one gate by column group. In the diagonally scaled
coordinates (:mod:`solvers.scaling`, ``A = H~`` of unit diagonal) the relaxation is

    min_{W~, log_alpha}  E[f(W~ * z)] / f(0) + sum_u lam_u g_u / k + (mu / 2) sum_u g_u^2 / (k_u k)

with ``g_u = sum_{i in u} P(z_i != 0) - k_u(t)`` the expected L0 count of the budget's unit ``u``
over its target: one unit for an unstructured or structured budget, a row for per-row, a block of
``m`` inputs for N:M (``k = sum_u k_u``). ``f`` is quadratic and the gates independent, so the
expectation is exact in terms of each gate's mean and variance:

    E[f(W~ * z)] = f(W~ * E[z]) + sum_r sum_{j, l in one gate} W~_rj A_jl W~_rl Var[z]

(``sum W~^2 Var[z]`` for one gate per weight, ``A_jj = 1``), both moments being smooth functions
of ``log_alpha`` (:func:`solvers.gates.moments`). This is the default (``samples=0``): free of
the sampled objective's gradient noise, it measured clearly lower errors than one or four draws a
step. ``samples=n`` averages ``f`` over ``n`` reparameterised gate draws instead, as in the paper.

Adam updates ``W~`` (started at ``W``) and ``log_alpha`` (started at ``log((1 - p) / p)`` for the
initial drop rate ``p``, kept in ``[-8, 8]`` so a closed gate can reopen). The multipliers rise by
dual ascent, ``lam_u += dual_lr * g_u / k_u``, and the quadratic term (``mu = 10``, the method of
multipliers) pulls each count onto its target at once instead of after the multiplier's lag. The
targets ``k_u(t)`` fall from the initial expected counts to the budget's along the cubic schedule
of gradual pruning over the first ``warmup`` fraction of the steps, so gates close a few at a time
while the kept weights adapt; one jump to the target measured clearly worse. At the end the budget
keeps exactly its count of gates, ranked by ``log_alpha`` (the deterministic gate's order) with the
learned weight's magnitude breaking ties, and the weights are refitted on that support. As for ADMM
and IHT, the swap search (:mod:`solvers.swaps`) then polishes the support on small layers, and
:func:`solvers.safeguard.finish` returns the refitted magnitude support (``|W|`` or its diagonal
score ``(H_jj + lam) W_ij^2``) instead when that is better, which makes the result never worse than
``solve(p, "magnitude", refit=True)`` where the refit is exact; ``info["fallback"]`` names the
winner.

References:
    Louizos, Welling, Kingma. "Learning Sparse Neural Networks through L0 Regularization."
    ICLR 2018.
    Zhu & Gupta. "To prune, or not to prune: exploring the efficacy of pruning for model
    compression." 2017 (the cubic schedule).
    Bertsekas. "Constrained Optimization and Lagrange Multiplier Methods." 1982 (the method of
    multipliers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import gates
from .safeguard import finish

__all__ = ["hard_concrete"]

_LOG_ALPHA_BOUND = 8.0
_PENALTY = 10.0  # mu of the method of multipliers


@dataclass
class _Layout:
    """How gates map to weights and to the budget's counting units.

    ``gate_shape`` is the shape of ``log_alpha``; ``expand`` maps a gate tensor onto the weight;
    ``unit_counts`` sums a gate tensor over each unit; ``targets`` are the units' final counts.
    ``group`` is the columns per gate (0: one gate per weight).
    """

    gate_shape: tuple[int, ...]
    group: int
    targets: torch.Tensor

    def expand(self, gate: torch.Tensor) -> torch.Tensor:
        return gate.repeat_interleave(self.group)[None, :] if self.group else gate

    def unit_counts(self, gate: torch.Tensor) -> torch.Tensor:
        if self.targets.ndim == 0:
            return gate.sum()
        if self.targets.ndim == 1:
            return gate.sum(dim=1)
        return gate.reshape(*self.targets.shape, -1).sum(dim=-1)


def _layout(budget, shape: tuple[int, int], dtype, device) -> _Layout:
    """The gates and counting units of ``budget``: the constraint the dual ascent enforces.

    The units are the budget's counting sets (:meth:`~solvers.budgets.Budget.layout`): one for
    the whole layer (unstructured, structured), a row (per-row), ``m`` inputs of a row (N:M).
    """
    out, n_in = shape
    layout = budget.layout(shape)
    group = layout.group or 0
    gate_shape = (n_in // group,) if group else (out, n_in)
    sets = math.prod(gate_shape) // layout.set_size
    if sets == 1:
        return _Layout(gate_shape, group, torch.tensor(float(layout.count), dtype=dtype,
                                                       device=device))
    rows = gate_shape[-1] // layout.set_size
    units = (out,) if rows == 1 else (out, rows)
    return _Layout(gate_shape, group, torch.full(units, float(layout.count), dtype=dtype,
                                                 device=device))


def _check(name: str, value, ok: bool, expected: str) -> None:
    if isinstance(value, bool) or not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _expected_fit(V, V0, A, layout, temperature, samples, generator, log_alpha, blocks):
    """``E[f(V * z)]`` in scaled coordinates: exact (``samples=0``) or over gate draws."""
    if samples == 0:
        mean, var = gates.moments(log_alpha, temperature)
        D = V * layout.expand(mean) - V0
        fit = ((D @ A) * D).sum()
        if layout.group <= 1:
            return fit + (V * V * layout.expand(var)).sum()
        Vg = V.reshape(V.shape[0], -1, layout.group)
        return fit + (torch.einsum("rgi,gij,rgj->g", Vg, blocks, Vg) * var).sum()
    fit = V.new_zeros(())
    for _ in range(samples):
        D = V * layout.expand(gates.sample(log_alpha, generator, temperature)) - V0
        fit = fit + ((D @ A) * D).sum()
    return fit / samples


def _gate_score(log_alpha, weight, layout) -> torch.Tensor:
    """Rank of each gate by ``log_alpha``, ties by the gate's weight magnitude, on the weight.

    Ranks (exact integers in float64) keep the order lexicographic whatever the scales; remaining
    ties rank the lower index higher, as the budgets do. A structured budget sums the scores over
    a group's entries, which keeps the gates' order since every group has as many entries.
    """
    magnitude = weight * weight
    if layout.group:
        magnitude = magnitude.sum(dim=0).reshape(-1, layout.group).sum(dim=1)
    by_magnitude = torch.argsort(-magnitude.reshape(-1), stable=True)
    order = by_magnitude[torch.argsort(-log_alpha.reshape(-1)[by_magnitude], stable=True)]
    rank = torch.empty(order.numel(), dtype=torch.float64, device=order.device)
    rank[order] = torch.arange(order.numel(), 0, -1, dtype=torch.float64, device=order.device)
    return layout.expand(rank.reshape(log_alpha.shape)).expand(*weight.shape)


def hard_concrete(
    problem,
    *,
    steps: int = 3000,
    lr: float = 0.02,
    gate_lr: float = 0.4,
    temperature: float = gates.BETA,
    drop_rate: float = 0.1,
    samples: int = 0,
    warmup: float = 0.95,
    dual_lr: float = 0.05,
    seed: int = 0,
    swap_rounds: int = 10,
):
    """Hard-concrete L0 relaxation by Adam and dual ascent, then the budget's support and a refit.

    Args:
        steps: Adam steps.
        lr: Adam step on the weights, in units of their root mean square (scaled coordinates).
        gate_lr: Adam step on ``log_alpha``.
        temperature: the gates' ``beta`` (2/3 in the paper).
        drop_rate: initial ``P(gate closed)`` before stretching; sets the initial ``log_alpha``.
        samples: gate draws per step (``0``: the exact expectation, see the module docstring).
        warmup: fraction of ``steps`` over which the count target falls to the budget's.
        dual_lr: dual-ascent step on the multipliers.
        seed: seed of the gate draws (used when ``samples > 0``).
        swap_rounds: rounds of the swap local search on small layers (0: none).

    Returns:
        ``(weight, mask, info)``; ``info`` adds ``expected_l0`` (expected open gates per step,
        groups for a structured budget), ``multiplier`` (mean ``lam_u`` per step), ``open_gates``
        (deterministic gates above zero at the end), ``swaps`` and ``fallback``. ``history`` is
        ``E[f]`` per step (ridge included); ``converged`` says that the budget's support is
        exactly the set of open deterministic gates (no rounding was needed).

    Example:
        >>> import torch
        >>> from solvers import LayerProblem, solve
        >>> W = torch.randn(8, 16); X = torch.randn(64, 16)
        >>> problem = LayerProblem.from_inputs(W, X, sparsity=0.75)
        >>> solve(problem, method="hard_concrete", steps=200).mask.sum().item()
        32
    """
    _check("steps", steps, isinstance(steps, int) and steps >= 1, "a positive integer")
    _check("samples", samples, isinstance(samples, int) and samples >= 0, "an integer >= 0")
    _check("swap_rounds", swap_rounds, isinstance(swap_rounds, int) and swap_rounds >= 0,
           "an integer >= 0")
    for name, value in (("lr", lr), ("gate_lr", gate_lr), ("temperature", temperature)):
        _check(name, value, isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
               "a finite number > 0")
    _check("drop_rate", drop_rate, isinstance(drop_rate, (int, float)) and 0 < drop_rate < 1,
           "a number in (0, 1)")
    _check("warmup", warmup, isinstance(warmup, (int, float)) and 0 <= warmup <= 1,
           "a fraction in [0, 1]")
    _check("seed", seed, isinstance(seed, int), "an integer")
    _check("dual_lr", dual_lr, isinstance(dual_lr, (int, float)) and math.isfinite(dual_lr)
           and dual_lr >= 0, "a finite number >= 0")

    budget = problem.budget
    sc = problem.scaled
    V0, A = sc.W0, sc.H
    dtype, device = V0.dtype, V0.device
    layout = _layout(budget, problem.shape, dtype, device)
    # Normalisers only (``f0 = 0`` means W = 0 or A = 0, where every support is optimal).
    f0 = float(((V0 @ A) * V0).sum()) or 1.0
    rms = float(V0.pow(2).mean().sqrt()) if V0.numel() else 0.0
    rms = rms or 1.0
    blocks = None
    if layout.group > 1:
        idx = torch.arange(problem.shape[1], device=device).reshape(-1, layout.group)
        blocks = A[idx[:, :, None], idx[:, None, :]]
    generator = torch.Generator(device=device).manual_seed(seed)
    U = (V0 / rms).requires_grad_(True)
    start = math.log((1.0 - drop_rate) / drop_rate)
    log_alpha = torch.full(layout.gate_shape, start, dtype=dtype, device=device)
    log_alpha.requires_grad_(True)
    optimizer = torch.optim.Adam([{"params": [U]}, {"params": [log_alpha], "lr": gate_lr}], lr=lr)

    final = layout.targets
    with torch.no_grad():
        initial = layout.unit_counts(gates.prob_nonzero(log_alpha, temperature))
    total = max(float(final.sum()), 1.0)
    unit_scale = final.clamp_min(1.0)
    lam = torch.zeros_like(final)
    history, expected, multiplier = [], [], []
    for step in range(steps):
        progress = min(1.0, step / (warmup * steps)) if warmup > 0 else 1.0
        target = final + (initial - final) * (1.0 - progress) ** 3
        optimizer.zero_grad()
        fit = _expected_fit(
            U * rms, V0, A, layout, temperature, samples, generator, log_alpha, blocks
        )
        counts = layout.unit_counts(gates.prob_nonzero(log_alpha, temperature))
        gap = counts - target
        loss = (
            fit / f0
            + (lam * gap).sum() / total
            + _PENALTY / 2 * (gap * gap / unit_scale).sum() / total
        )
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            log_alpha.clamp_(-_LOG_ALPHA_BOUND, _LOG_ALPHA_BOUND)
            lam += dual_lr * gap.detach() / unit_scale
        history.append(fit.detach())
        expected.append(counts.detach().sum())
        multiplier.append(lam.mean())  # kept on the device: no synchronisation per step

    with torch.no_grad():
        log_alpha = log_alpha.detach()
        gate = gates.deterministic(log_alpha)
        learned = U.detach() * rms * layout.expand(gate)
        mask = budget.select(_gate_score(log_alpha, learned, layout))
        converged = bool((layout.expand(gate > 0).expand_as(mask) == mask).all())
    weight, mask, ending = finish(problem, mask, swap_rounds=swap_rounds)
    info = {
        "iterations": steps,
        "converged": converged,
        "history": torch.stack(history).tolist(),
        "expected_l0": torch.stack(expected).tolist(),
        "multiplier": torch.stack(multiplier).tolist(),
        "open_gates": int((gate > 0).sum()),
        **ending,
    }
    return weight, mask, info
