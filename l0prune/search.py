"""The loss-tolerance search: the sparsest model with ``L(W') <= alpha * L(W)`` on validation data.

``L`` is a property of the whole network, so every trial prunes all target layers and measures
the validation loss (after finetuning, when the run finetunes). Two stages (DESIGN.md 2.6):

1. *uniform*: bisection over one sparsity shared by every layer, in ``[0, MAX_SPARSITY]``, down
   to ``RESOLUTION``; the best passing value is ``s*``;
2. *allocated*: each layer's error curve (its relative error at the sparsities of ``GRID``, on
   the statistics of the ``s*`` trial) spreads a global budget
   (:func:`l0prune.allocation.spread`); bisection over the global sparsity in
   ``[s*, MAX_SPARSITY]``.

Whether a trial passes is not exactly monotone in the sparsity, so bisection finds a boundary,
not necessarily the last passing point; the run keeps the sparsest trial that passed.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["GRID", "MAX_SPARSITY", "RESOLUTION", "bisect", "two_stage"]

#: The highest sparsity a search tries.
MAX_SPARSITY = 0.99
#: Bisection stops when the bracket is this narrow.
RESOLUTION = 0.005
#: Sparsities at which each layer's error curve is measured for the allocated stage.
GRID = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


def bisect(passes: Callable[[float], bool], lo: float, hi: float, resolution: float) -> float:
    """The highest value found by bisection in ``[lo, hi]`` with ``passes`` true.

    ``lo`` is taken to pass and is never tried; ``hi`` is never tried either.

    Args:
        passes: the trial, ``value -> bool``.
        lo: a passing value.
        hi: the upper end.
        resolution: stop when ``hi - lo <= resolution``.

    Returns:
        The last passing value (``lo`` if none passed).

    Example:
        >>> round(bisect(lambda s: s <= 0.62, 0.0, 1.0, 0.01), 3)
        0.617
    """
    while hi - lo > resolution:
        mid = (lo + hi) / 2
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return lo


def two_stage(
    uniform: Callable[[float], bool],
    allocated: Callable[[float], Callable[[float], bool] | None],
    *,
    max_sparsity: float = MAX_SPARSITY,
    resolution: float = RESOLUTION,
) -> tuple[float, float]:
    """Run the uniform stage, then the allocated stage from its result.

    Args:
        uniform: trial at a uniform sparsity.
        allocated: given ``s*``, the trial at a global sparsity (or ``None`` to skip stage 2).
        max_sparsity: upper end of both searches.
        resolution: bisection resolution.

    Returns:
        ``(s*, best allocated sparsity)``; the second is ``s*`` when stage 2 found nothing
        better or was skipped.

    Example:
        >>> two_stage(lambda s: s <= 0.5, lambda s: (lambda g: g <= 0.7), max_sparsity=1.0,
        ...           resolution=0.1)
        (0.5, 0.6875)
    """
    best_uniform = bisect(uniform, 0.0, max_sparsity, resolution)
    trial = allocated(best_uniform)
    if trial is None:
        return best_uniform, best_uniform
    return best_uniform, bisect(trial, best_uniform, max_sparsity, resolution)
