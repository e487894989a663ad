"""Retention from ClickHouse equals the plain-Python oracle (tests/oracle/
cohort_reference.py) exactly: random event streams over weeks and months, cohorts by
day, week and month in time zones with odd offsets and daylight saving, by visitor and
by user, with and without a breakdown."""

from __future__ import annotations

import itertools
import os
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnelstream.clickhouse import ClickHouse
from processor.rows import ms_to_datetime
from query_api.cohorts import cohorts_from_rows
from query_api.sql.cohorts import RetentionQuery, retention_sql
from schemas.funnels import PropertyFilter
from tests.oracle import cohort_reference, funnel_reference
from tests.query_api.test_report_differential import insert

pytestmark = pytest.mark.clickhouse

# 2025-03-01T00:00:00Z: streams cross the spring daylight-saving changes.
BASE_MS = 1_740_787_200_000
DAY_MS = 86_400_000
START, END = BASE_MS + 2 * DAY_MS, BASE_MS + 70 * DAY_MS
ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Kiritimati"]
_projects = itertools.count()


@st.composite
def streams(draw: st.DrawFn) -> list[funnel_reference.RefEvent]:
    events = []
    for v in range(draw(st.integers(1, 8))):
        user = draw(st.sampled_from(["", "", "u1", "u2"]))
        ts = BASE_MS + draw(st.integers(0, 20)) * DAY_MS + draw(st.integers(0, DAY_MS))
        for _ in range(draw(st.integers(1, 8))):
            ts += draw(
                st.sampled_from([0, 1, 3_600_000, DAY_MS // 2, DAY_MS, 3 * DAY_MS, 9 * DAY_MS])
            )
            events.append(
                funnel_reference.RefEvent(
                    event_id=str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)), version=4)),
                    event=draw(st.sampled_from("aab")),
                    visitor_id=f"v{v}",
                    timestamp_ms=ts,
                    user_id=user if user and draw(st.booleans()) else "",
                    properties={"plan": draw(st.sampled_from(["x", "y", ""]))},
                )
            )
    return list({e.event_id: e for e in events}.values())


@settings(
    # RETENTION_DIFF_EXAMPLES=1000 for a long run.
    max_examples=int(os.environ.get("RETENTION_DIFF_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=streams(),
    start_event=st.sampled_from("ab"),
    return_event=st.sampled_from("ab"),
    interval=st.sampled_from(["day", "week", "month"]),
    periods=st.integers(0, 12),
    tz=st.sampled_from(ZONES),
    count_by=st.sampled_from(["visitor", "user"]),
    breakdown=st.sampled_from([None, "plan"]),
    segment=st.sampled_from(
        [
            (),
            (PropertyFilter(property="plan", op="eq", value="x"),),
            (
                PropertyFilter(property="plan", op="is_set"),
                PropertyFilter(property="plan", op="neq", value="y"),
            ),
        ]
    ),
)
def test_retention_equals_reference(
    ch: ClickHouse,
    events: list[funnel_reference.RefEvent],
    start_event: str,
    return_event: str,
    interval: str,
    periods: int,
    tz: str,
    count_by: str,
    breakdown: str | None,
    segment: tuple[PropertyFilter, ...],
) -> None:
    project = f"r{next(_projects)}"
    insert(ch, project, events)
    query = RetentionQuery(
        project,
        ms_to_datetime(START),
        ms_to_datetime(END),
        start_event,
        return_event,
        interval,  # type: ignore[arg-type]
        periods,
        tz,
        count_by,  # type: ignore[arg-type]
        breakdown,
        segment,
    )
    rows = ch.query_rows_sync(*retention_sql(query))
    cohorts = cohorts_from_rows(rows, periods, interval, tz, datetime.now(UTC))
    got = {
        (c.start, c.value): cohort_reference.RefCohort(
            c.entities,
            c.repeated,
            tuple(p.returned for p in c.periods),
            tuple(p.returned_on_or_after for p in c.periods),
        )
        for c in cohorts
    }
    want = cohort_reference.retention(
        events,
        START,
        END,
        start_event,
        return_event,
        interval,
        periods,
        tz,
        count_by,
        breakdown,
        segment,
    )
    assert got == want
