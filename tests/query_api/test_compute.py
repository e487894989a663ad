"""Funnel arithmetic: cumulative counts, conversion, drop-off, times."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from query_api.compute import (
    ReportRows,
    StepReport,
    StepTimes,
    TrendPoint,
    build_steps,
    reached_per_step,
    step_changes,
    steps_from_rows,
    trend_points,
)


def test_reached_per_step_is_cumulative() -> None:
    # 5 stopped at level 1, 3 at level 2, 2 finished (level 3); level 0 reached nothing.
    assert reached_per_step({0: 9, 1: 5, 2: 3, 3: 2}, 3) == [10, 5, 2]


def test_reached_per_step_caps_levels_and_fills_zeros() -> None:
    assert reached_per_step({}, 3) == [0, 0, 0]
    assert reached_per_step({5: 1}, 3) == [1, 1, 1]
    assert reached_per_step({1: 4}, 3) == [4, 0, 0]


def test_build_steps_arithmetic() -> None:
    steps = build_steps(
        ["view", "cart", "buy"],
        ["Viewed", None, "Bought"],
        [10, 4, 3],
        [None, 1500.0, 90_000.0],
    )
    assert steps == [
        StepReport(0, "view", "Viewed", 10, 1.0, 1.0, 6, None),
        StepReport(1, "cart", None, 4, 0.4, 0.4, 1, 1.5),
        StepReport(2, "buy", "Bought", 3, 0.3, 0.75, 0, 90.0),
    ]


def test_ratios_are_rounded_to_six_places() -> None:
    steps = build_steps(["a", "b", "c"], [None] * 3, [3, 2, 1], [None] * 3)
    assert [s.conversion_from_start for s in steps] == [1.0, 0.666667, 0.333333]
    assert [s.conversion_from_previous for s in steps] == [1.0, 0.666667, 0.5]


def test_nobody_at_all_gives_zero_not_a_division_error() -> None:
    steps = build_steps(["a", "b"], [None, None], [0, 0], [None, None])
    assert [(s.conversion_from_start, s.conversion_from_previous, s.dropped) for s in steps] == [
        (0.0, 0.0, 0),
        (0.0, 0.0, 0),
    ]


def test_nobody_past_a_step() -> None:
    steps = build_steps(["a", "b", "c"], [None] * 3, [5, 0, 0], [None] * 3)
    assert [s.dropped for s in steps] == [5, 0, 0]
    assert [s.conversion_from_previous for s in steps] == [1.0, 0.0, 0.0]


def test_as_dict() -> None:
    times = StepTimes(1.0, 2.0, 1.5, 0.5, 0.9, 0.6)
    [_, second] = build_steps(["a", "b"], [None, "B"], [2, 1], [None, 1000.0], [None, times])
    assert second.as_dict() == {
        "index": 1,
        "event": "b",
        "name": "B",
        "visitors": 1,
        "conversion_from_start": 0.5,
        "conversion_from_previous": 0.5,
        "dropped": 0,
        "median_seconds_from_start": 1.0,
        "in_progress": 0,
        "time_to_convert": {
            "median_from_start": 1.0,
            "p90_from_start": 2.0,
            "avg_from_start": 1.5,
            "median_from_previous": 0.5,
            "p90_from_previous": 0.9,
            "avg_from_previous": 0.6,
        },
    }
    first = build_steps(["a"], [None], [2], [None])[0]
    assert first.as_dict()["time_to_convert"] is None
    assert first.as_dict()["median_seconds_from_start"] is None


def test_step_times_from_ms_rounds_to_milliseconds() -> None:
    assert StepTimes.from_ms([1234.4, 1234.6, 0.0, 1.0, 999_999.0, 1500.0]) == StepTimes(
        1.234, 1.235, 0.0, 0.001, 999.999, 1.5
    )


def test_in_progress_visitors_are_not_dropped() -> None:
    steps = build_steps(["a", "b", "c"], [None] * 3, [10, 4, 3], [None] * 3, in_progress=[2, 1, 3])
    assert [(s.dropped, s.in_progress) for s in steps] == [(4, 2), (0, 1), (0, 3)]
    assert steps[0].as_dict()["in_progress"] == 2


def test_steps_from_rows() -> None:
    rows = [
        (1, 10, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3),
        (3, 2, 60_000.0, 90_000.0, 65_000.0, 30_000.0, 45_000.0, 31_000.0, 1),
    ]
    assert steps_from_rows(rows, 4) == ReportRows(
        reached=[10, 0, 2, 0],
        medians_ms=[0.0, None, 60_000.0, None],
        times=[
            StepTimes(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            None,
            StepTimes(60.0, 90.0, 65.0, 30.0, 45.0, 31.0),
            None,
        ],
        in_progress=[3, 0, 1, 0],
    )


def test_steps_from_rows_nan_times_or_zero_entities_give_no_times() -> None:
    nan = math.nan
    rows = [(1, 4, nan, nan, nan, nan, nan, nan, 0), (2, 0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0)]
    got = steps_from_rows(rows, 2)
    assert got.reached == [4, 0]
    assert got.medians_ms == [None, None]
    assert got.times == [None, None]


def test_steps_from_rows_accepts_strings_from_the_driver() -> None:
    got = steps_from_rows([("2", "7", "1500", 1, 1, 1, 1, 1, "2")], 2)
    assert got.reached == [0, 7]
    assert got.medians_ms == [None, 1500.0]
    assert got.in_progress == [0, 2]


def _unix(*fields: int) -> int:
    """A bucket as the query answers it: its start in Unix seconds."""
    return int(datetime(*fields, tzinfo=UTC).timestamp())  # type: ignore[misc]


def test_trend_points_mark_periods_not_over() -> None:
    rows = [(_unix(2025, 10, 1), 10, 4), (_unix(2025, 10, 2), 0, 0), (_unix(2025, 10, 3), 5, 5)]
    now = datetime(2025, 10, 3, 12, tzinfo=UTC)
    points = trend_points(rows, "day", end=datetime(2025, 10, 9, tzinfo=UTC), now=now)
    assert points == [
        TrendPoint(datetime(2025, 10, 1, tzinfo=UTC), 10, 4, 0.4, False),
        TrendPoint(datetime(2025, 10, 2, tzinfo=UTC), 0, 0, 0.0, False),
        TrendPoint(datetime(2025, 10, 3, tzinfo=UTC), 5, 5, 1.0, True),
    ]
    assert points[0].as_dict() == {
        "bucket": datetime(2025, 10, 1, tzinfo=UTC),
        "entered": 10,
        "converted": 4,
        "conversion": 0.4,
        "incomplete": False,
    }


def test_trend_point_reaching_past_the_report_end_is_incomplete() -> None:
    rows = [(_unix(2025, 10, 1, 10), 1, 1)]
    far = datetime(2030, 1, 1, tzinfo=UTC)
    assert (
        trend_points(rows, "hour", end=datetime(2025, 10, 1, 11, tzinfo=UTC), now=far)[0].incomplete
        is False
    )
    assert (
        trend_points(rows, "hour", end=datetime(2025, 10, 1, 10, 59, tzinfo=UTC), now=far)[
            0
        ].incomplete
        is True
    )


def test_trend_day_across_dst_lasts_23_hours() -> None:
    """Europe/Berlin springs forward on 2025-03-30: that day starts at 23:00 UTC the day
    before and ends 23 hours later, at 22:00 UTC."""
    berlin_day = _unix(2025, 3, 29, 23)
    ends = datetime(2025, 3, 30, 22, tzinfo=UTC)
    far = datetime(2030, 1, 1, tzinfo=UTC)
    (point,) = trend_points([(berlin_day, 1, 0)], "day", end=ends, now=far, tz="Europe/Berlin")
    assert point.bucket.isoformat() == "2025-03-30T00:00:00+01:00"
    assert point.incomplete is False
    cut = ends - timedelta(seconds=1)
    (point,) = trend_points([(berlin_day, 1, 0)], "day", end=cut, now=far, tz="Europe/Berlin")
    assert point.incomplete is True


def test_step_changes_absolute_and_relative() -> None:
    changes = step_changes([200, 50, 10], [100, 50, 0])
    assert [c.visitors_change for c in changes] == [100, 0, 10]
    assert [c.visitors_change_relative for c in changes] == [1.0, 0.0, None]
    # Conversion from step 1: 0.25 against 0.5 at step 2, 0.05 against 0 at step 3.
    assert [c.conversion_change for c in changes] == [0.0, -0.25, 0.05]
    assert [c.conversion_change_relative for c in changes] == [0.0, -0.5, None]
    assert changes[1].as_dict()["compare_conversion_from_start"] == 0.5
