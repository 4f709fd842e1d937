"""The perspective formulation in cvxpy: the exact mixed-integer program and its cone relaxation.

With ``A = H + lam I = Q + diag(d)`` (:mod:`solvers.diagonal`) and ``F^T F = Q``, each row's
objective is ``||F (v - w)||^2 + sum_j d_j (v_j - w_j)^2``, and each ``d_j (v_j - w_j)^2`` is
written ``d_j s_j - 2 d_j w_j v_j + d_j w_j^2`` with the rotated cone ``v_j^2 <= s_j z_j``,
``s_j >= 0``. With binary gates ``z`` the program is exact without big-M (``z_j = 0`` forces
``v_j = 0``; ``z_j = 1`` makes ``s_j = v_j^2`` at the optimum); with ``z`` in [0, 1] it is the
perspective relaxation, a lower bound. The budget enters as the cardinality constraints of
:class:`~solvers.cardinality.Cardinality`. Valid big-M bounds can still be added
(:meth:`PerspectiveProgram.build`'s ``upper``): not for exactness but to guard branch and bound's
integrality tolerance.

The data are scaled so that the conic solvers' tolerances mean the same on every layer: each
input column to unit ``A_jj`` (``v = v~ / sqrt(A_jj)``, the Jacobi preconditioner; supports do not
change) and the scaled ``W`` to unit RMS. The rotated cones are one vectorised ``SOC``
over ``(s + z, [2 v; s - z])``: cvxpy 1.9.3 compiles such a cone wrongly when a ``diag`` of a
matrix variable appears inside the ``vstack``, so every variable here is a plain vector.

References:
    A. Frangioni, C. Gentile, "Perspective cuts for a class of convex 0-1 mixed integer
    programs", Math. Programming 106 (2006). O. Gunluk, J. Linderoth, "Perspective reformulations
    of mixed integer nonlinear programs with indicator variables", Math. Programming 124 (2010).
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import torch

from .cardinality import Cardinality

__all__ = ["PerspectiveProgram"]


@dataclass
class PerspectiveProgram:
    """The perspective program of ``W`` (some rows of a layer) under ``cardinality``.

    Attributes:
        problem: the cvxpy problem (minimisation of the scaled objective).
        weight: the cvxpy variable of the pruned weight, flattened row-major, scaled.
        gates: the cvxpy variable of the gates, one per atom.
        w_scale: ``weight.value * w_scale`` (per weight) is the weight in the layer's units.
    """

    problem: cp.Problem
    weight: cp.Variable
    gates: cp.Variable
    w_scale: np.ndarray

    @classmethod
    def build(
        cls,
        W: torch.Tensor,
        A: torch.Tensor,
        d: torch.Tensor,
        cardinality: Cardinality,
        *,
        integer: bool,
        upper: float | None = None,
    ) -> PerspectiveProgram:
        """The program for weight ``W`` (out x in), ``A = H + lam I`` and the split ``d``.

        ``upper``, an objective some feasible weight reaches, adds the valid bounds
        ``|v_ij| <= (|W_ij| + sqrt(upper [A^-1]_jj)) z``: an optimum has
        ``(v - w)^T A (v - w) <= upper`` in every row. They keep a gate that branch and bound
        counts as closed (``z`` within its integrality tolerance of 0) from carrying weight
        through a huge ``s``, which a small ``d`` would otherwise make cheap.
        """
        out, inp = cardinality.shape
        A, W, d = A.double().cpu().numpy(), W.double().cpu().numpy(), d.double().cpu().numpy()
        column = 1 / np.sqrt(A.diagonal())  # v = column * v~ gives A~ a unit diagonal
        scaled = W / column
        w_scale = max(float(np.sqrt((scaled**2).mean())), 1e-300)
        w = (scaled / w_scale).reshape(-1)
        d_np = d * column**2
        q, U = np.linalg.eigh(column[:, None] * A * column[None, :] - np.diag(d_np))
        keep = q > 1e-12 * max(q[-1], 1e-300)
        F = (U[:, keep] * np.sqrt(q[keep])).T

        v = cp.Variable(out * inp)
        s = cp.Variable(out * inp, nonneg=True)
        z = cp.Variable(cardinality.atoms, boolean=integer)
        gate = z if cardinality.group is None else z[cardinality.atom_index().reshape(-1).numpy()]
        sets = cp.reshape(z, (cardinality.atoms // cardinality.set_size, cardinality.set_size),
                          order="C")
        constraints = [
            cp.SOC(s + gate, cp.vstack([2 * v, s - gate]), axis=0),
            cp.sum(sets, axis=1) <= cardinality.count,
        ]
        if not integer:
            constraints += [z >= 0, z <= 1]
        if upper is not None:
            reach = (np.abs(W) + np.sqrt(upper * np.linalg.inv(A).diagonal())) / column / w_scale
            constraints.append(cp.abs(v) <= cp.multiply(reach.reshape(-1), gate))
        dw = np.tile(d_np, out)
        rows = cp.reshape(v, (out, inp), order="C")
        objective = (
            cp.sum_squares(rows @ F.T - w.reshape(out, inp) @ F.T)
            + dw @ s - 2 * (dw * w) @ v + float(dw @ (w * w))
        )
        problem = cp.Problem(cp.Minimize(objective), constraints)
        return cls(problem, v, z, np.tile(column, out) * w_scale)

    def solution(self) -> tuple[np.ndarray, np.ndarray]:
        """``(weight, gates)`` of the last solve: the weight flattened, in the layer's units."""
        return self.weight.value * self.w_scale, self.gates.value
