"""What a run asks of a pruning pipeline, whichever way the calibration data flows.

Two pipelines prune a model's targets at given budgets: the whole-model path
(:class:`~l0prune.pipeline.layerwise.LayerPruner`, the model run over the calibration data for
the statistics) and the block-by-block one (:class:`~l0prune.pipeline.blockwise.BlockPruner`,
block 0's inputs captured once and carried through the blocks). A run (:mod:`l0prune.pruning`,
the search of :mod:`l0prune.pipeline.trials`) uses either through :class:`Pipeline` alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from solvers import Budget

from ..model.masks import pack, unpack
from ..model.targets import Target
from .allocation import Curve

__all__ = ["LayerResult", "Pipeline"]


@dataclass
class LayerResult:
    """One layer's solution.

    Attributes:
        name: the layer's name.
        shape: the stored weight's shape.
        kept: weights kept.
        total: weights in the layer.
        relative_error: ``||X W'^T - X_0 W^T||^2 / ||X_0 W^T||^2`` over all its groups (see
            :mod:`l0prune.pipeline.layerwise`).
        seconds: solver time.
        weight: the pruned weight, in the stored shape.
        bits: its support, packed a bit per weight (:func:`~l0prune.model.masks.pack`): the
            results of a whole run take 1/32 of a float32 model beside it.

    Example:
        >>> result = LayerResult.of("fc", 0.1, 0.0, torch.eye(2), torch.eye(2) > 0)
        >>> result.kept, result.total, result.mask.tolist()
        (2, 4, [[True, False], [False, True]])
    """

    name: str
    shape: tuple[int, ...]
    kept: int
    total: int
    relative_error: float
    seconds: float
    weight: torch.Tensor
    bits: torch.Tensor

    @classmethod
    def of(cls, name: str, relative_error: float, seconds: float, weight: torch.Tensor,
           mask: torch.Tensor) -> LayerResult:
        """The result for a ``weight`` and its boolean ``mask`` (shape, counts and bits from
        them)."""
        return cls(name, tuple(weight.shape), int(mask.count_nonzero()), mask.numel(),
                   relative_error, seconds, weight, pack(mask))

    @property
    def mask(self) -> torch.Tensor:
        """The support, boolean in the stored shape (unpacked now, where the bits are)."""
        return unpack(self.bits, self.shape)


class Pipeline(Protocol):
    """Prunes a model's targets at given budgets and gives the layers' error curves.

    Attributes:
        targets: the layers it prunes, in the order they run.
        passes: passes over the calibration data so far.
        curves_reset_model: whether :meth:`curves` leaves the model dense (the block-by-block
            pipeline recomputes its statistics by pruning the blocks again); otherwise it
            leaves the model as it was.
        model_device: where the model is while it runs (the run's device on the whole-model
            path; block by block, only the block being pruned visits the run's device), so
            where its losses and finetuning run.
        blocks: the stack pruned block by block, as the report names it (``"model.layers, 32
            blocks"``), or ``None``.
    """

    targets: list[Target]
    passes: int
    curves_reset_model: bool
    model_device: torch.device
    blocks: str | None

    def run(self, budgets: Mapping[str, Budget]) -> dict[str, LayerResult]:
        """Prune every target (dense when called) under its budget and attach the masks.

        Args:
            budgets: a sized budget per target name, for one problem of the layer.

        Returns:
            A :class:`LayerResult` per target name, in the order the layers run.
        """

    def curve_basis(self) -> object:
        """What :meth:`curves` needs to give the error curves of the run just done (kept by a
        search with its best trial, and given back to :meth:`curves` later)."""

    def curves(self, family: Budget, grid: Sequence[float], basis: object) -> list[Curve]:
        """Each target's error curve at the sparsities of ``grid``.

        Args:
            family: the run's budget family.
            grid: sparsities in [0, 1).
            basis: what :meth:`curve_basis` gave after the run whose statistics to use.

        Returns:
            One :class:`~l0prune.pipeline.allocation.Curve` per target.
        """
