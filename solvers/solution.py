"""What every solver returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .problem import LayerProblem

__all__ = ["Solution"]


@dataclass
class Solution:
    """A feasible solution of a :class:`~solvers.problem.LayerProblem`.

    ``objective`` and ``relative_error`` are computed on first use (each one ``out x in x in``
    product): a caller that measures the solution its own way (the sequential output error)
    does not pay for them.

    Attributes:
        weight: the pruned weight, same shape as ``W``, zero off ``mask``.
        mask: boolean support; meets the budget exactly.
        problem: the problem it solves (``None`` once :meth:`detach` ed).
        info: ``method``, ``options``, ``iterations``, ``seconds``, ``converged`` and
            ``history`` (objective per iteration, for convergence plots), plus solver extras.
        lower_bound: a certified lower bound on the optimal objective, when asked for.
        gap: ``(objective - lower_bound) / objective``, when a bound is known.
    """

    weight: torch.Tensor
    mask: torch.Tensor
    problem: LayerProblem | None = field(repr=False)
    info: dict = field(default_factory=dict)
    lower_bound: float | None = None
    gap: float | None = None

    @cached_property
    def objective(self) -> float:
        """``f(weight)``, ridge included (what the solvers minimise)."""
        return self.problem.objective(self.weight)

    @cached_property
    def relative_error(self) -> float:
        """``tr((W'-W) H (W'-W)^T) / tr(W H W^T)`` (ridge excluded)."""
        return self.problem.relative_error(self.weight)

    def detach(self) -> Solution:
        """Compute ``objective`` and ``relative_error`` now and drop the problem (its ``H`` and
        factorisations), before the solution travels to another process.

        Returns:
            The solution itself.
        """
        _ = self.objective, self.relative_error
        self.problem = None
        return self

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
