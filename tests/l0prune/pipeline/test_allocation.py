"""Allocation: uniform and per-layer sizes, and the global budget spread by error curves."""

import itertools

import pytest
from torch import nn

from l0prune.model.targets import Target
from l0prune.pipeline.allocation import Curve, kept, layer_family, per_layer, sized, spread, uniform
from solvers import NM, PerRow, Structured, Unstructured


def test_sizes_follow_each_family():
    linear, conv = Target("l", nn.Linear(16, 8)), Target("c", nn.Conv2d(4, 6, 3, groups=2))
    assert sized(linear, Unstructured(), 0.75).k == 32
    assert sized(linear, PerRow(), 0.75).k == 4
    assert kept(linear, sized(linear, PerRow(), 0.75)) == 32
    assert kept(linear, NM(2, 4)) == 64
    # A convolution's structured group spans whole input channels.
    family = layer_family(conv, Structured(group=1))
    assert family.group == 9
    assert kept(conv, sized(conv, Structured(group=1), 0.5)) == 2 * 3 * 9  # groups x rows x cols
    assert {n: b.k for n, b in uniform([linear, conv], Unstructured(), 0.5).items()} == {
        "l": 64, "c": 27
    }
    assert per_layer([linear], Unstructured(), {"l": 0.25})["l"].k == 96


def _curve(name, n, errors):
    """A layer of ``n`` weights with errors at counts n, n-1, ..., n-len(errors)+1."""
    return Curve(Target(name, nn.Linear(n, 1)), Unstructured(), list(range(n, n - len(errors), -1)),
                 errors)


def _brute_force(curves, kept_total):
    """The minimum summed error over every choice of grid points meeting the budget."""
    best = None
    for choice in itertools.product(*[range(len(c.counts)) for c in curves]):
        if sum(c.counts[i] for c, i in zip(curves, choice, strict=True)) > kept_total:
            continue
        err = sum(c.errors[i] for c, i in zip(curves, choice, strict=True))
        best = err if best is None else min(best, err)
    return best


@pytest.mark.parametrize("kept_total", range(2, 11))
def test_spread_is_optimal_on_convex_curves(kept_total):
    curves = [
        _curve("a", 4, [0.0, 0.1, 0.3, 0.6]),
        _curve("b", 4, [0.0, 0.02, 0.05, 0.5]),
        _curve("c", 4, [0.0, 0.2, 0.4, 0.9]),
    ]
    budgets = spread(curves, kept_total)
    counts = [budgets[c.target.name].k for c in curves]
    assert sum(counts) == max(kept_total, 3)  # a curve stops at its last point (1 weight)
    err = sum(c.errors[c.counts.index(k)] for c, k in zip(curves, counts, strict=True))
    assert err == pytest.approx(_brute_force(curves, max(kept_total, 3)))


def test_spread_takes_flat_layers_first_and_interpolates():
    flat = Curve(Target("flat", nn.Linear(100, 1)), Unstructured(), [100, 50, 0], [0, 0.01, 0.1])
    steep = Curve(Target("steep", nn.Linear(100, 1)), Unstructured(), [100, 50, 0], [0, 0.5, 1.0])
    budgets = spread([flat, steep], 120)
    assert budgets["flat"].k == 20 and budgets["steep"].k == 100
    budgets = spread([flat, steep], 30)
    assert budgets["flat"].k == 0 and budgets["steep"].k == 30


def test_spread_uses_the_hull_of_a_non_convex_curve():
    # Removed / error points (0, 0), (2, 0.5), (4, 0.5), (6, 0.6): the hull goes straight to
    # (6, 0.6) at 0.1 per weight, cheaper than the other layer's 0.15, though the first step
    # alone costs 0.25 per weight.
    bumpy = Curve(Target("b", nn.Linear(10, 1)), Unstructured(), [10, 8, 6, 4], [0, 0.5, 0.5, 0.6])
    other = Curve(Target("o", nn.Linear(10, 1)), Unstructured(), [10, 8], [0, 0.3])
    budgets = spread([bumpy, other], 16)
    assert budgets["b"].k == 6 and budgets["o"].k == 10
