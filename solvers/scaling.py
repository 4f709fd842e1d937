"""Diagonal scaling of the layer problem, shared by the first-order solvers.

With ``d = diag(H + lam I)`` and ``s = sqrt(d)``, the change of variables ``W~ = W diag(s)`` turns
``f`` into ``tr((W~' - W~) H~ (W~' - W~)^T)`` with ``H~ = diag(s)^-1 (H + lam I) diag(s)^-1``, a
matrix of unit diagonal. Column scaling keeps every zero where it was, so each budget is the same
set in both coordinates, while the Euclidean projection in the scaled ones keeps the largest
``d_j W_ij**2``: the exact removal cost of a weight when ``H`` is diagonal, and a much better proxy
than ``|W_ij|`` when it is not (ALPS, Meng et al. 2024, section 3).
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def objective(self, weight: torch.Tensor) -> torch.Tensor:
        """``f`` at a scaled weight (ridge included), as a 0-d tensor."""
        D = weight - self.W0
        return ((D @ self.H) * D).sum()

    def gradient(self, weight: torch.Tensor) -> torch.Tensor:
        return 2.0 * (weight - self.W0) @ self.H


def scale(problem) -> Scaled:
    """The scaled form of ``problem`` (columns with a zero diagonal are left unscaled)."""
    d = problem.damped_diagonal
    s = torch.where(d > 0, d, torch.ones_like(d)).sqrt()
    H = problem.damped / s[:, None] / s[None, :]
    return Scaled(s=s, W0=problem.W * s, H=H)
