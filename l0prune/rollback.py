"""A :class:`~l0prune.snapshot.Snapshot` whose copies are taken lazily, part by part.

Block-by-block pruning changes one block at a time, so it needs no copy of the whole model up
front: :class:`Rollback` records every module's structure, hooks and mode at once (no tensor is
copied) and the values of a part of the model only when :meth:`Rollback.capture` is called on
it, just before that part changes. The copies are taken where the part is then (the CPU, for a
model kept there while its blocks visit the device). :meth:`~l0prune.snapshot.Snapshot.restore`
puts back everything captured, so a failure in block ``k`` still leaves the model exactly as it
was; by the end of a run the copies add up to the parts that changed (the blocks pruned).
"""

from __future__ import annotations

from torch import nn

from .snapshot import Snapshot, _ModuleState

__all__ = ["Rollback"]


class Rollback(Snapshot):
    """A snapshot of ``model``'s structure now and of its parts' values on demand.

    Args:
        model: the model.

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> rollback = Rollback(model)
        >>> rollback.capture(model[1])
        >>> with torch.no_grad():
        ...     _ = model[1].weight.zero_()
        >>> rollback.restore(); bool(model[1].weight.abs().sum() > 0)
        True
    """

    def __init__(self, model: nn.Module):
        self.modules = [(m, _ModuleState(m)) for m in model.modules()]
        self.values = {}

    def capture(self, part: nn.Module) -> None:
        """Copy the parameters and buffers of ``part`` (a submodule) not captured yet.

        Args:
            part: the part about to change (a block, a layer, or the whole model).

        Returns:
            None.
        """
        for tensor in (*part.parameters(), *part.buffers()):
            if id(tensor) not in self.values:
                grad = None if tensor.grad is None else tensor.grad.detach().clone()
                self.values[id(tensor)] = (
                    tensor, tensor.detach().clone(), tensor.requires_grad, grad
                )
