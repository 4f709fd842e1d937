"""Search: bisection finds the boundary of a monotone test, the second stage starts from it."""

import pytest

from l0prune.search import bisect, two_stage


@pytest.mark.parametrize("boundary", [0.0, 0.1234, 0.5, 0.97])
def test_bisect_finds_the_boundary(boundary):
    tried = []

    def passes(s):
        tried.append(s)
        return s <= boundary

    found = bisect(passes, 0.0, 0.99, 0.005)
    assert found <= boundary < found + 0.005 or (boundary >= 0.985 and found <= boundary)
    assert 0.0 not in tried and 0.99 not in tried
    assert len(tried) == 8


def test_two_stage_starts_the_second_stage_at_the_first_result():
    seen = {}

    def allocated(start):
        seen["start"] = start
        return lambda s: s <= 0.8

    uniform_best, allocated_best = two_stage(lambda s: s <= 0.6, allocated, resolution=0.01)
    assert uniform_best == seen["start"] and 0.59 <= uniform_best <= 0.6
    assert 0.79 <= allocated_best <= 0.8
    assert two_stage(lambda s: s <= 0.6, lambda start: None, resolution=0.01)[1] == uniform_best
