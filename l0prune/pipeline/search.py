"""The loss-tolerance search: the sparsest model with ``L(W') <= alpha * L(W)`` on validation data.

``L`` is a property of the whole network, so every trial prunes all target layers and measures
the validation loss (after finetuning, when the run finetunes). Three stages (DESIGN.md 2.6):

1. *uniform*: bisection over one sparsity shared by every layer, in ``[0, MAX_SPARSITY]``, down
   to ``RESOLUTION``, then an upward scan (:func:`scan`); the best passing value is ``s*``;
2. *allocated*: each layer's error curve (its relative error at the sparsities of ``GRID``, on
   the statistics of the ``s*`` trial) spreads a global budget
   (:func:`l0prune.pipeline.allocation.spread`); bisection over the global sparsity in
   ``[s*, MAX_SPARSITY]``, then an upward scan;
3. *layer*: a layer the best trial leaves dense is pruned a little on top of it, then further
   while the model stays within ``alpha`` (:func:`scan` over that layer's sparsity alone).

Whether a trial passes is not monotone in the sparsity (a sparser model can have a lower loss,
and finetuning adds noise of the order of a tight tolerance), so bisection finds *a* boundary,
not necessarily the last passing point. The scan after each bisection looks past it: it tries
sparsities that keep ``SCAN_FACTOR`` of the weights of the point before, until ``SCAN_PATIENCE``
fail in a row, and bisects again between a new best and the failure above it. The run keeps the
sparsest trial that passed, whichever stage made it.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "GRID", "MAX_SPARSITY", "RESOLUTION", "SCAN_FACTOR", "SCAN_PATIENCE", "bisect",
    "bisect_and_scan", "scan", "two_stage",
]

#: The highest sparsity a search tries.
MAX_SPARSITY = 0.99
#: Bisection stops when the bracket is this narrow.
RESOLUTION = 0.005
#: Sparsities at which each layer's error curve is measured for the allocated stage.
GRID = (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
#: Each point of an upward scan keeps this fraction of the weights the point before kept.
SCAN_FACTOR = 0.8
#: An upward scan stops after this many failed points in a row.
SCAN_PATIENCE = 2

#: A trial: ``passes(value, phase) -> bool``, ``phase`` being ``"bisection"`` or ``"scan"``.
Trial = Callable[[float, str], bool]


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


def scan(
    passes: Callable[[float], bool],
    start: float,
    hi: float,
    resolution: float,
    *,
    factor: float = SCAN_FACTOR,
    patience: int = SCAN_PATIENCE,
) -> float:
    """The highest passing sparsity found scanning upward from ``start``.

    The points are ``s_{i+1} = 1 - factor (1 - s_i)`` (each keeps ``factor`` of the weights of
    the one before), below ``hi``, until ``patience`` fail in a row. If one passes, the bracket
    between the highest passing point and the first failure above it is bisected down to
    ``resolution``.

    Args:
        passes: the trial, ``sparsity -> bool``.
        start: a passing sparsity (not tried again).
        hi: the scan stays below it.
        resolution: the final bisection's resolution.
        factor: fraction of the weights each point keeps of the one before, in (0, 1).
        patience: failures in a row that end the scan.

    Returns:
        The highest passing sparsity found (``start`` if none above it passed).

    Example:
        >>> tried = []
        >>> def passes(s):
        ...     tried.append(round(s, 3))
        ...     return s <= 0.3 or 0.5 <= s <= 0.6   # not monotone
        >>> round(scan(passes, 0.3, 0.99, 0.01), 3), tried[:3]
        (0.597, [0.44, 0.552, 0.642])
    """
    best, point, fails, failed_above = start, start, 0, None
    while fails < patience:
        point = 1.0 - factor * (1.0 - point)
        if point >= hi:
            break
        if passes(point):
            best, fails, failed_above = point, 0, None
        else:
            fails += 1
            failed_above = point if failed_above is None else failed_above
    if best > start and failed_above is not None:
        best = bisect(passes, best, failed_above, resolution)
    return best


def bisect_and_scan(passes: Trial, lo: float, hi: float, resolution: float) -> float:
    """:func:`bisect` over ``[lo, hi]``, then :func:`scan` upward from its result.

    Args:
        passes: the trial, ``passes(sparsity, phase)``; ``phase`` names the step
            (``"bisection"`` or ``"scan"``), for the record.
        lo: a passing value (not tried).
        hi: the upper end (not tried).
        resolution: the bisection resolution.

    Returns:
        The highest passing value found.

    Example:
        >>> round(bisect_and_scan(lambda s, phase: s <= 0.3 or 0.5 <= s <= 0.6, 0.0, 0.99,
        ...                       0.01), 3)
        0.599
    """
    found = bisect(lambda s: passes(s, "bisection"), lo, hi, resolution)
    return scan(lambda s: passes(s, "scan"), found, hi, resolution)


def two_stage(
    uniform: Trial,
    allocated: Callable[[float], Trial | None],
    *,
    max_sparsity: float = MAX_SPARSITY,
    resolution: float = RESOLUTION,
) -> tuple[float, float]:
    """Run the uniform stage, then the allocated stage from its result, each a
    :func:`bisect_and_scan`.

    Args:
        uniform: trial at a uniform sparsity, ``uniform(s, phase)``.
        allocated: given ``s*``, the trial at a global sparsity (or ``None`` to skip stage 2).
        max_sparsity: upper end of both searches.
        resolution: bisection resolution.

    Returns:
        ``(s*, best allocated sparsity)``; the second is ``s*`` when stage 2 found nothing
        better or was skipped.

    Example:
        >>> two_stage(lambda s, _: s <= 0.5, lambda s: (lambda g, _: g <= 0.7),
        ...           max_sparsity=1.0, resolution=0.1)
        (0.5, 0.6875)
    """
    best_uniform = bisect_and_scan(uniform, 0.0, max_sparsity, resolution)
    trial = allocated(best_uniform)
    if trial is None:
        return best_uniform, best_uniform
    return best_uniform, bisect_and_scan(trial, best_uniform, max_sparsity, resolution)
