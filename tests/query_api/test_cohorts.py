"""Retention arithmetic (query_api/cohorts.py) on hand-made rows: bounded and unbounded
counts, repeat rates, which periods are complete in a time zone, and totals over the
complete cohorts only. (The rows themselves are held to an oracle in
tests/query_api/test_cohorts_differential.py.)"""

from __future__ import annotations

from datetime import UTC, date, datetime

from query_api.cohorts import cohorts_from_rows, period_start, totals


def test_period_start_by_calendar() -> None:
    assert period_start(date(2025, 1, 6), "week", 2) == date(2025, 1, 20)
    assert period_start(date(2025, 11, 1), "month", 3) == date(2026, 2, 1)
    assert period_start(date(2025, 2, 28), "day", 1) == date(2025, 3, 1)


def test_bounded_unbounded_and_repeat() -> None:
    # Cohort of 10: 4 never returned; latest returns in periods 0 (1), 1 (2), 2 (3).
    # Returns in period 0: 3 entities, period 1: 4, period 2: 3.
    rows = [
        ("last", date(2025, 1, 6), "", -1, 4),
        ("last", date(2025, 1, 6), "", 0, 1),
        ("last", date(2025, 1, 6), "", 1, 2),
        ("last", date(2025, 1, 6), "", 2, 3),
        ("on", date(2025, 1, 6), "", 0, 3),
        ("on", date(2025, 1, 6), "", 1, 4),
        ("on", date(2025, 1, 6), "", 2, 3),
    ]
    (c,) = cohorts_from_rows(rows, 3, "week", "UTC", datetime(2026, 1, 1, tzinfo=UTC))
    assert (c.entities, c.repeated, c.repeat_rate) == (10, 6, 0.6)
    assert [p.returned for p in c.periods] == [3, 4, 3, 0]
    assert [p.returned_on_or_after for p in c.periods] == [6, 5, 3, 0]
    assert [p.rate_on_or_after for p in c.periods] == [0.6, 0.5, 0.3, 0.0]


def test_complete_in_the_time_zone() -> None:
    # Day cohort 2025-01-06 in Asia/Kolkata (+05:30): its day 0 ends at 2025-01-06T18:30Z.
    rows = [("last", date(2025, 1, 6), "", -1, 1)]
    at = datetime(2025, 1, 6, 18, 30, tzinfo=UTC)
    (c,) = cohorts_from_rows(rows, 1, "day", "Asia/Kolkata", at)
    assert [p.complete for p in c.periods] == [True, False]
    (c,) = cohorts_from_rows(rows, 1, "day", "UTC", at)
    assert [p.complete for p in c.periods] == [False, False]


def test_totals_sum_complete_cohorts() -> None:
    rows = [
        ("last", date(2025, 1, 6), "", -1, 5),
        ("last", date(2025, 1, 6), "", 1, 5),
        ("on", date(2025, 1, 6), "", 1, 5),
        ("last", date(2025, 1, 13), "", -1, 10),
    ]
    # At 2025-01-20 week 1 of the first cohort has ended, of the second it has not.
    cohorts = cohorts_from_rows(rows, 1, "week", "UTC", datetime(2025, 1, 20, tzinfo=UTC))
    (total,) = totals(cohorts, 1)
    assert (total.entities, total.repeated) == (20, 5)
    week0, week1 = total.periods
    assert (week0.returned, week0.rate, week0.complete) == (0, 0.0, True)
    assert (week1.returned, week1.rate, week1.complete) == (5, 0.5, True)  # 5 of the first 10
