"""A budget as cardinality constraints on gates: what the exact solve and the relaxations need.

Every budget in :mod:`solvers.budgets` is a set of supports ``{z in {0,1}: sum of z over a set
<= count}``: one gate ``z`` per *atom* (a weight, or for :class:`~solvers.budgets.Structured` a
group of input columns shared by all rows), the atoms cut into sets of equal size, at most
``count`` gates open per set:

============== ============================ ============================ =========
budget         atom                         set                          count
============== ============================ ============================ =========
Unstructured   one weight                   the whole layer              ``k``
PerRow         one weight                   one row                      ``k``
NM(n, m)       one weight                   ``m`` consecutive inputs     ``n``
Structured(g)  ``g`` input columns          all column groups            ``k``
============== ============================ ============================ =========

With the gates relaxed to ``[0, 1]`` these inequalities describe the convex hull of the supports
(the sets are disjoint cardinality constraints), which is what makes the relaxations exact
descriptions of the budget. Solvers still select supports through ``budget.select``; this module
turns each budget's own :meth:`~solvers.budgets.Budget.layout` into the constraint structure
those programs use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .budgets import Budget

__all__ = ["Cardinality"]


@dataclass(frozen=True)
class Cardinality:
    """The gate layout of a budget on a weight of ``shape``.

    Attributes:
        shape: ``(out, in)`` of the weight.
        group: ``None`` for one gate per weight; ``g`` for one gate per ``g`` input columns,
            shared by all rows.
        set_size: atoms per set; the atoms, in row-major order, fill the sets in turn.
        count: the most gates open in one set.
    """

    shape: tuple[int, int]
    group: int | None
    set_size: int
    count: int

    @classmethod
    def of(cls, budget: Budget, shape: tuple[int, int]) -> Cardinality:
        """The gates of ``budget`` on a weight of ``shape``."""
        if not isinstance(budget, Budget):
            raise ValueError(f"budget must be a solvers Budget, got {budget!r}")
        layout = budget.layout(shape)
        return cls(shape, layout.group, layout.set_size, layout.count)

    @property
    def atoms(self) -> int:
        """Number of gates (binary variables of the exact program)."""
        out, inp = self.shape
        return out * inp if self.group is None else inp // self.group

    @property
    def rows_independent(self) -> bool:
        """Whether no set and no atom spans two rows, so the problem separates by row."""
        return self.group is None and self.shape[1] % self.set_size == 0

    def pool(self, values: torch.Tensor) -> torch.Tensor:
        """Per-weight ``values`` (out x in) summed into their atoms, as ``(sets, set_size)``."""
        if self.group is None:
            return values.reshape(-1, self.set_size)
        return values.sum(dim=0).reshape(-1, self.group).sum(dim=1).reshape(1, -1)

    def spread(self, gates: torch.Tensor) -> torch.Tensor:
        """Atom values ``(sets, set_size)`` back onto the weights (out x in)."""
        if self.group is None:
            return gates.reshape(self.shape)
        return gates.reshape(-1).repeat_interleave(self.group)[None, :].expand(self.shape)

    def per_atom(self, column_values: torch.Tensor) -> torch.Tensor:
        """A per-input-column quantity as ``(sets, set_size)`` per atom (a group's first column)."""
        if self.group is None:
            return column_values.expand(self.shape).reshape(-1, self.set_size)
        return column_values.reshape(-1, self.group)[:, 0].reshape(1, -1)

    def atom_index(self) -> torch.Tensor:
        """The atom of each weight, out x in (row-major atom numbering)."""
        index = torch.arange(self.atoms).reshape(-1, self.set_size)
        return self.spread(index)
