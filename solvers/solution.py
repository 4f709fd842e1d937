"""What every solver returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Solution"]


@dataclass
class Solution:
    """A feasible solution of a :class:`~solvers.problem.LayerProblem`.

    Attributes:
        weight: the pruned weight, same shape as ``W``, zero off ``mask``.
        mask: boolean support; meets the budget exactly.
        objective: ``f(weight)``, ridge included (what the solvers minimise).
        relative_error: ``tr((W'-W) H (W'-W)^T) / tr(W H W^T)`` (ridge excluded).
        info: ``method``, ``options``, ``iterations``, ``seconds``, ``converged`` and
            ``history`` (objective per iteration, for convergence plots), plus solver extras.
        lower_bound: a certified lower bound on the optimal objective, when asked for.
        gap: ``(objective - lower_bound) / objective``, when a bound is known.
    """

    weight: torch.Tensor
    mask: torch.Tensor
    objective: float
    relative_error: float
    info: dict = field(default_factory=dict)
    lower_bound: float | None = None
    gap: float | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of weights removed."""
        return 1.0 - float(self.mask.sum()) / self.mask.numel() if self.mask.numel() else 0.0

    def __repr__(self) -> str:
        extra = f", gap={self.gap:.3g}" if self.gap is not None else ""
        return (
            f"Solution(method={self.info.get('method')!r}, sparsity={self.sparsity:.4f}, "
            f"objective={self.objective:.6g}, relative_error={self.relative_error:.4g}{extra})"
        )
