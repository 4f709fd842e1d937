"""The gradual schedule: Zhu & Gupta's formula, with both end points exact."""

import pytest

from l0prune.pipeline.schedules import scheduled_sparsity


@pytest.mark.parametrize("initial, final", [(0.0, 0.9), (0.1, 0.9), (0.3, 0.7), (0.05, 0.98),
                                            (0.0, 0.0), (0.2, 0.2)])
@pytest.mark.parametrize("steps", [1, 3, 7, 10])
@pytest.mark.parametrize("schedule", ["cubic", "linear"])
def test_the_schedule_hits_both_end_points_exactly(initial, final, steps, schedule):
    assert scheduled_sparsity(0, steps, initial, final, schedule) == initial
    assert scheduled_sparsity(steps, steps, initial, final, schedule) == final


def test_the_textbook_form_misses_an_end_point_which_this_one_hits():
    # s_f + (s_0 - s_f) (1 - 0)^3 is not s_0 in floating point for these values.
    assert 0.9 + (0.1 - 0.9) != 0.1
    assert scheduled_sparsity(0, 5, 0.1, 0.9) == 0.1


@pytest.mark.parametrize("schedule, power", [("cubic", 3), ("linear", 1)])
def test_the_schedule_is_zhu_and_guptas_formula_and_rises(schedule, power):
    values = [scheduled_sparsity(t, 8, 0.1, 0.95, schedule) for t in range(9)]
    expected = [0.95 + (0.1 - 0.95) * (1 - t / 8) ** power for t in range(9)]
    assert values == pytest.approx(expected, abs=1e-15)
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    if schedule == "cubic":  # large steps first, small ones at the end
        steps = [b - a for a, b in zip(values, values[1:], strict=False)]
        assert all(b < a for a, b in zip(steps, steps[1:], strict=False))


@pytest.mark.parametrize("kwargs, message", [
    ({"step": 0, "steps": 0}, "steps must be a positive integer"),
    ({"step": 4, "steps": 3}, r"step must be an integer in \[0, 3\]"),
    ({"step": 1, "steps": 3, "schedule": "exp"}, "schedule must be one of"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        scheduled_sparsity(initial=0.0, final=0.9, **kwargs)
