"""Spreading a model's sparsity budget over its layers.

A run's ``budget`` names a family (unstructured, per-row, N:M, structured); each layer gets a
member of it, sized per problem (per convolution group). Two ways to size them:

- :func:`uniform`: every layer at the same sparsity (a structured budget keeps at least one
  group of each layer: :func:`least_count`);
- :func:`spread`: a global number of kept weights split by each layer's error curve. Each layer's
  curve (relative error against weights removed) is replaced by its lower convex hull; the
  removals are then taken in order of cheapest error per weight removed, across layers, until
  the global budget is met. So a layer whose error stays flat as it loses weights gives up more
  of them than a sensitive one: the sum of the layers' relative errors is minimised over the
  hulls.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from l0prune.model.targets import Target
from solvers import Budget, Structured

__all__ = [
    "Curve", "IncompatibleBudget", "fitting", "given", "kept", "layer_family", "least_count",
    "per_layer", "sized", "spread", "uniform",
]


def layer_family(target: Target, family: Budget) -> Budget:
    """The run's budget family as it applies to ``target``.

    A :class:`~solvers.Structured` group counts input features, so on a convolution it spans
    the ``kh * kw`` columns of each input channel (whole channels are kept or dropped).

    Args:
        target: the layer.
        family: the run's budget (family).

    Returns:
        The budget family for ``target``'s problems.

    Example:
        >>> from torch import nn
        >>> from solvers import Structured
        >>> layer_family(Target("c", nn.Conv2d(4, 8, 3)), Structured(group=1)).group
        9
    """
    return family.with_feature_width(target.kernel)


def least_count(family: Budget) -> int:
    """The smallest count a layer is given: one group for a structured budget, else 0.

    A structured count is whole column groups (input channels); rounding a sparsity to 0 of
    them would remove the layer, which no one asks for (a convolution with one input channel
    has a single group, so it stays dense).

    Example:
        >>> from solvers import Unstructured
        >>> least_count(Structured(group=9)), least_count(Unstructured())
        (1, 0)
    """
    return 1 if isinstance(family, Structured) else 0


def sized(target: Target, family: Budget, sparsity: float) -> Budget:
    """``family`` sized for one problem of ``target`` at ``sparsity`` (rounded to a count).

    Args:
        target: the layer.
        family: the run's budget family.
        sparsity: fraction removed, in [0, 1).

    Returns:
        A sized budget.

    Example:
        >>> from torch import nn
        >>> from solvers import Unstructured
        >>> sized(Target("l", nn.Linear(10, 4)), Unstructured(), 0.75)
        Unstructured(sparsity=None, k=10)
    """
    family = layer_family(target, family)
    count = int(round((1.0 - sparsity) * family.max_count(target.shape)))
    return family.with_count(max(count, least_count(family)))


def given(target: Target, family: Budget) -> Budget:
    """A sized ``family`` (the user's own budget) as it applies to ``target``, keeping at least
    :func:`least_count` groups.

    Example:
        >>> from torch import nn
        >>> given(Target("c", nn.Conv2d(1, 8, 3)), Structured(sparsity=0.5)).k
        1
    """
    family = layer_family(target, family)
    if least_count(family) == 0:
        return family
    return family.with_count(max(family.count(target.shape), least_count(family)))


def kept(target: Target, budget: Budget) -> int:
    """Weights ``target`` keeps under ``budget`` (all its convolution groups together).

    Args:
        target: the layer.
        budget: a sized budget for one of its problems.

    Returns:
        The count.

    Example:
        >>> from torch import nn
        >>> from solvers import NM
        >>> kept(Target("l", nn.Linear(8, 4)), NM(2, 4))
        16
    """
    return budget.kept(target.shape) * target.groups


def uniform(targets: Sequence[Target], family: Budget, sparsity: float) -> dict[str, Budget]:
    """Every target at the same ``sparsity``.

    Args:
        targets: the layers.
        family: the run's budget family.
        sparsity: fraction removed, in [0, 1).

    Returns:
        A sized budget per target name.

    Example:
        >>> from torch import nn
        >>> from solvers import Unstructured
        >>> uniform([Target("l", nn.Linear(10, 4))], Unstructured(), 0.5)["l"].k
        20
    """
    return {t.name: sized(t, family, sparsity) for t in targets}


@dataclass
class Curve:
    """A layer's error curve: relative error at budget counts (dense count first, error 0).

    Attributes:
        target: the layer.
        family: its budget family (from :func:`layer_family`).
        counts: budget counts, decreasing.
        errors: relative error at each count.

    Example:
        >>> from torch import nn
        >>> from solvers import Unstructured
        >>> Curve(Target("l", nn.Linear(8, 2)), Unstructured(), [16, 8], [0.0, 0.2]).kept(8)
        8
    """

    target: Target
    family: Budget
    counts: list[int]
    errors: list[float]

    def kept(self, count: int) -> int:
        """Weights kept at ``count``."""
        return kept(self.target, self.family.with_count(count))


def _hull(curve: Curve) -> list[tuple[int, int, float]]:
    """Lower convex hull of (removed, error), as ``(count, removed, error)`` from the dense one."""
    dense = curve.kept(curve.counts[0])
    points = sorted(
        (dense - curve.kept(c), e, c) for c, e in zip(curve.counts, curve.errors, strict=True)
    )
    hull: list[tuple[int, float, int]] = []
    for point in points:
        if hull and point[0] == hull[-1][0]:
            continue
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            if (y2 - y1) * (point[0] - x1) >= (point[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(point)
    return [(c, r, e) for r, e, c in hull]


def spread(curves: Sequence[Curve], kept_total: int) -> dict[str, Budget]:
    """Per-layer budgets keeping about ``kept_total`` weights in all, by the curves' slopes.

    A layer stops at the last point of its curve, so the result keeps more than
    ``kept_total`` when that is below what the curves reach.

    Args:
        curves: one :class:`Curve` per target.
        kept_total: weights to keep over all targets.

    Returns:
        A sized budget per target name.

    Example:
        >>> from torch import nn
        >>> from solvers import Unstructured
        >>> flat = Curve(Target("a", nn.Linear(10, 1)), Unstructured(), [10, 0], [0.0, 0.1])
        >>> steep = Curve(Target("b", nn.Linear(10, 1)), Unstructured(), [10, 0], [0.0, 1.0])
        >>> {n: b.k for n, b in spread([flat, steep], 10).items()}
        {'a': 0, 'b': 10}
    """
    hulls = [_hull(c) for c in curves]
    segments = sorted(
        ((e2 - e1) / (r2 - r1), i, j)
        for i, hull in enumerate(hulls)
        for j, ((_, r1, e1), (_, r2, e2)) in enumerate(zip(hull, hull[1:], strict=False))
    )
    need = sum(c.kept(c.counts[0]) for c in curves) - kept_total
    counts = [hull[0][0] for hull in hulls]
    for _, i, j in segments:
        if need <= 0:
            break
        (c1, r1, _), (c2, r2, _) = hulls[i][j], hulls[i][j + 1]
        take = min(need, r2 - r1)
        counts[i] = c2 if take == r2 - r1 else int(round(c1 + (c2 - c1) * take / (r2 - r1)))
        need -= take
    return {c.target.name: c.family.with_count(n) for c, n in zip(curves, counts, strict=True)}


def per_layer(
    targets: Sequence[Target], family: Budget, sparsity: Mapping[str, float]
) -> dict[str, Budget]:
    """Each target at its own sparsity from ``sparsity`` (a dict by layer name).

    Args:
        targets: the layers.
        family: the run's budget family.
        sparsity: fraction removed per target name.

    Returns:
        A sized budget per target name.

    Example:
        >>> from torch import nn
        >>> from solvers import Unstructured
        >>> per_layer([Target("l", nn.Linear(10, 4))], Unstructured(), {"l": 0.9})["l"].k
        4
    """
    return {t.name: sized(t, family, sparsity[t.name]) for t in targets}


class IncompatibleBudget(ValueError):
    """The budget cannot apply to a target layer (an N:M budget on an input width that M does
    not divide, a structured group that does not divide it).

    Attributes:
        layer: the layer's name.
        budget: the budget, as text (``NM(n=2, m=4)``).
        shape: the weight's shape, out x in (x kernel).
        reason: why, from the budget.
    """

    def __init__(self, layer: str, budget: str, shape: tuple[int, ...], reason: str):
        self.layer, self.budget, self.shape, self.reason = layer, budget, shape, reason
        super().__init__(
            f"budget {budget} does not fit layer {layer!r} (weight "
            f"{'x'.join(map(str, shape))}): {reason}; leave it dense with ignore=[{layer!r}], "
            "or every such layer with skip_incompatible=True"
        )


def fitting(targets: Sequence[Target], family: Budget,
            skip: bool) -> tuple[list[Target], dict[str, str]]:
    """The targets ``family`` fits, and why each other one does not (by name); without
    ``skip`` the first misfit raises :class:`IncompatibleBudget`."""
    fit, skipped = [], {}
    for t in targets:
        try:
            layer_family(t, family).max_count(t.shape)
            if family.sized:
                layer_family(t, family).check(t.shape)
        except ValueError as err:
            misfit = IncompatibleBudget(t.name, family.text, t.out_in_shape, str(err))
            if not skip:
                raise misfit from None
            warnings.warn(f"layer {t.name!r} left dense: {misfit.reason}", stacklevel=3)
            skipped[t.name] = misfit.reason
        else:
            fit.append(t)
    if not fit:
        raise ValueError(
            f"budget {family.text} fits none of the target layers "
            f"({', '.join(skipped)}): nothing to prune"
        )
    return fit, skipped
