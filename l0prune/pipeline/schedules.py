"""Sparsity schedules for gradual pruning: the sparsity to reach at step ``t`` of ``T``.

Zhu & Gupta's gradual schedule (tfmot's ``PolynomialDecay`` with ``power=3``) moves from the
initial sparsity ``s_0`` to the final one ``s_f`` along

    s_t = s_f + (s_0 - s_f) (1 - t / T)^p,      t = 0, ..., T,

with ``p = 3``: large steps first, while many redundant weights remain, and small ones at the
end, where every weight counts. ``p = 1`` is the linear schedule. It is computed as
``w s_0 + (1 - w) s_f`` with ``w = (1 - t/T)^p``, which gives both end points exactly in floating
point (``s_f + (s_0 - s_f)`` need not equal ``s_0``).

References:
    Zhu, Gupta. "To prune, or not to prune: exploring the efficacy of pruning for model
    compression." ICLR workshop 2018, equation (1).
"""

from __future__ import annotations

__all__ = ["SCHEDULES", "scheduled_sparsity"]

#: Schedule name -> the power ``p`` of ``(1 - t/T)``.
SCHEDULES = {"cubic": 3, "linear": 1}


def scheduled_sparsity(step: int, steps: int, initial: float, final: float,
                       schedule: str = "cubic") -> float:
    """The sparsity of step ``step`` of ``steps`` on ``schedule``.

    Args:
        step: ``t``, from 0 (the start) to ``steps``.
        steps: ``T``, at least 1.
        initial: ``s_0``.
        final: ``s_f``.
        schedule: a :data:`SCHEDULES` name.

    Returns:
        ``s_t``; exactly ``initial`` at ``t = 0`` and exactly ``final`` at ``t = T``.

    Example:
        >>> [round(scheduled_sparsity(t, 4, 0.0, 0.9), 4) for t in range(5)]
        [0.0, 0.5203, 0.7875, 0.8859, 0.9]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= steps:
        raise ValueError(f"step must be an integer in [0, {steps}], got {step!r}")
    weight = (1.0 - step / steps) ** SCHEDULES[schedule]
    return weight * initial + (1.0 - weight) * final
