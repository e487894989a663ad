"""The trend's buckets equal a zoneinfo oracle in the local calendar of an IANA zone,
across DST changes.

Hypothesis draws short streams of a two-step funnel around a DST change (spring forward
and fall back, a 30-minute DST zone, a zone without DST) and an interval; per entity the
entry time (start of the attempt holding its deepest step) comes from the funnel reference
(tests/oracle/funnel_reference.py) and is bucketed by Python's zoneinfo: local hour, local
midnight, or local midnight of the Monday. The SQL trend must answer the same bucket
instants with the same entered and converted counts.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnel.compiled import compile_funnel
from funnel.sql.report import trend_sql
from funnelstream.clickhouse import ClickHouse
from processor.rows import ms_to_datetime
from schemas.funnels import FunnelDefinition
from tests.oracle import funnel_reference as reference
from tests.query_api.test_report_differential import insert

pytestmark = pytest.mark.clickhouse

# Moments near a DST change in each zone (UTC ms), and the zone.
CHANGES = {
    "Europe/Berlin": datetime(2025, 3, 30, 1, tzinfo=UTC),  # spring forward
    "America/New_York": datetime(2025, 11, 2, 6, tzinfo=UTC),  # fall back
    "Australia/Lord_Howe": datetime(2025, 4, 5, 15, tzinfo=UTC),  # 30-minute DST
    "Asia/Kolkata": datetime(2025, 3, 30, 1, tzinfo=UTC),  # +05:30, no DST
}
FUNNEL = FunnelDefinition.model_validate(
    {"id": "f", "project": "p", "window_seconds": 7200, "steps": [{"event": "a"}, {"event": "b"}]}
)
_projects = itertools.count()


def local_bucket(ms: int, interval: str, zone: ZoneInfo) -> int:
    """The oracle: the bucket's start (Unix seconds) in the local calendar of `zone`. An
    hour starts at the moment less its local minutes and seconds (in the half hour Lord
    Howe repeats, that is half an hour into the previous hour's bucket)."""
    local = datetime.fromtimestamp(ms / 1000, zone)
    if interval == "hour":
        return ms // 1000 - local.minute * 60 - local.second
    day = local.date()
    if interval == "week":
        day -= timedelta(days=day.weekday())
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    return int(start.timestamp())


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, str, list[reference.RefEvent]]:
    tz = draw(st.sampled_from(sorted(CHANGES)))
    change_ms = int(CHANGES[tz].timestamp() * 1000)
    events = []
    for v in range(draw(st.integers(1, 8))):
        # Within two days either side of the change, on a 15-minute grid (and a few ms off).
        ts = change_ms + draw(st.integers(-192, 192)) * 900_000 + draw(st.sampled_from([0, 1]))
        for name in draw(st.lists(st.sampled_from("ab"), min_size=1, max_size=3)):
            ts += draw(st.sampled_from([0, 60_000, 3_600_000]))
            events.append(
                reference.RefEvent(
                    event_id=str(uuid.uuid4()),
                    event=name,
                    visitor_id=f"v{v}",
                    timestamp_ms=ts,
                    user_id="",
                    properties={},
                )
            )
    return tz, draw(st.sampled_from(["hour", "day", "week"])), events


@settings(
    max_examples=int(os.environ.get("TREND_TZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
def test_trend_buckets_equal_zoneinfo(
    ch: ClickHouse, case: tuple[str, str, list[reference.RefEvent]]
) -> None:
    tz, interval, events = case
    project = f"tz{next(_projects)}"
    funnel = FUNNEL.model_copy(update={"project": project})
    insert(ch, project, events)
    start_ms = min(e.timestamp_ms for e in events)
    end_ms = max(e.timestamp_ms for e in events) + 1
    entered: Counter[int] = Counter()
    converted: Counter[int] = Counter()
    for slots in reference.held_steps(funnel, events, start_ms, end_ms).values():
        level = max((k + 1 for k, s in enumerate(slots) if s is not None), default=0)
        deepest = slots[level - 1] if level else None
        if deepest is None:
            continue
        bucket = local_bucket(deepest.started_ms, interval, ZoneInfo(tz))
        entered[bucket] += 1
        converted[bucket] += level == len(funnel.steps)
    query = trend_sql(
        compile_funnel(funnel),
        project,
        ms_to_datetime(start_ms),
        ms_to_datetime(end_ms),
        interval,
        tz=tz,
    )
    got = [(int(b), int(e), int(c)) for b, e, c in ch.query_rows_sync(*query)]
    assert got == [(b, entered[b], converted[b]) for b in sorted(entered)]
