"""Search: bisection finds the boundary of a monotone test, the scan looks past it, the second
stage starts from the first one's result."""

import pytest

from l0prune.pipeline.search import SCAN_FACTOR, bisect, bisect_and_scan, scan, two_stage


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


def test_scan_on_a_monotone_test_costs_two_failures_and_changes_nothing():
    tried = []

    def passes(s):
        tried.append(s)
        return s <= 0.6

    assert scan(passes, 0.6, 0.99, 0.005) == 0.6
    assert tried == pytest.approx([1 - SCAN_FACTOR * 0.4, 1 - SCAN_FACTOR**2 * 0.4])


def test_scan_finds_a_passing_band_past_a_failure_and_refines_its_edge():
    # Passing at and below 0.3 and again in [0.5, 0.7]: bisection from [0, 0.99] stops at 0.3;
    # the scan's first point (0.44) fails, its second (0.55) passes.
    def passes(s):
        return s <= 0.3 or 0.5 <= s <= 0.7

    assert 0.3 - 0.005 <= bisect(passes, 0.0, 0.99, 0.005) <= 0.3
    found = bisect_and_scan(lambda s, _: passes(s), 0.0, 0.99, 0.005)
    assert 0.7 - 0.005 <= found <= 0.7  # the band's upper edge, to the resolution


def test_scan_stops_below_the_upper_end():
    tried = []
    scan(lambda s: tried.append(s) or True, 0.9, 0.95, 0.005)
    assert tried == pytest.approx([0.92, 0.936, 0.9488])  # the next, 0.959, is past 0.95


def test_bisect_and_scan_names_each_trial_phase():
    phases = []
    bisect_and_scan(lambda s, phase: phases.append(phase) or s <= 0.5, 0.0, 0.99, 0.1)
    assert set(phases) == {"bisection", "scan"}
    assert phases[-2:] == ["scan", "scan"] and "scan" not in phases[:-2]


def test_two_stage_starts_the_second_stage_at_the_first_result():
    seen = {}

    def allocated(start):
        seen["start"] = start
        return lambda s, _: s <= 0.8

    uniform_best, allocated_best = two_stage(lambda s, _: s <= 0.6, allocated, resolution=0.01)
    assert uniform_best == seen["start"] and 0.59 <= uniform_best <= 0.6
    assert 0.79 <= allocated_best <= 0.8
    assert two_stage(lambda s, _: s <= 0.6, lambda start: None, resolution=0.01)[1] == uniform_best
