"""Diagonal scaling of the layer problem, shared by the first-order solvers.

With ``d = diag(H + lam I)`` and ``s = sqrt(d)``, the change of variables ``W~ = W diag(s)`` turns
``f`` into ``tr((W~' - W~) H~ (W~' - W~)^T)`` with ``H~ = diag(s)^-1 (H + lam I) diag(s)^-1``, a
matrix of unit diagonal. Column scaling keeps every zero where it was, so each budget is the same
set in both coordinates, while the Euclidean projection in the scaled ones keeps the largest
``d_j W_ij**2``: the exact removal cost of a weight when ``H`` is diagonal, and a much better proxy
than ``|W_ij|`` when it is not (ALPS, Meng et al. 2024, section 3).

A problem computes its scaled form once (:attr:`solvers.problem.LayerProblem.scaled`), with the
eigendecomposition ADMM needs and the Lipschitz constant IHT needs, and every solver and every
budget of the same layer shares it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = ["Scaled", "scale"]


@dataclass
class Scaled:
    """A layer problem in scaled coordinates: ``W0`` (= ``W diag(s)``), ``H`` (unit diagonal)."""

    s: torch.Tensor
    W0: torch.Tensor
    H: torch.Tensor

    def to_scaled(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.s

    def from_scaled(self, weight: torch.Tensor) -> torch.Tensor:
        return weight / self.s

    @cached_property
    def _spectrum(self) -> tuple[float, torch.Tensor, torch.Tensor]:
        # float64 on the CPU (LAPACK; a GPU's eigh is slow in float64), then moved back.
        e, Q = torch.linalg.eigh(self.H.detach().to("cpu", torch.float64))
        top = float(e[-1]) if e.numel() else 0.0
        return top, e.clamp_min(0).to(self.H), Q.to(self.H)

    @property
    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e, Q)`` with ``H~ = Q diag(e) Q^T`` (``e`` clamped at 0), in ``H~``'s dtype."""
        return self._spectrum[1:]

    @property
    def lipschitz(self) -> float:
        """``2 lambda_max(H~)``: the Lipschitz constant of the scaled gradient."""
        return 2.0 * self._spectrum[0]


def scale(problem) -> Scaled:
    """The scaled form of ``problem`` (columns with a zero diagonal are left unscaled)."""
    d = problem.damped_diagonal
    s = torch.where(d > 0, d, torch.ones_like(d)).sqrt()
    H = problem.damped / s[:, None] / s[None, :]
    return Scaled(s=s, W0=problem.W * s, H=H)
