"""Retention in plain Python: the statement of query_api/sql/cohorts.py's rule, written
entity by entity over all events, with Python's own calendar and time zones (zoneinfo)
instead of ClickHouse's.

Per counted entity (visitor, or the user a visitor last identified as): the cohort event
is its first `start_event` before `end` (by time, then event id in ClickHouse's UUID
order); the entity is in the cohort of that event's calendar period (day, week from
Monday, month, in the time zone) when the event is in [start, end). A return is a
`return_event` in [start, end) strictly later than the cohort event; its period is the
count of calendar periods between the two; only periods 0..`periods` count. With a
segment, only entities with an event in [start, end) on which every filter holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from schemas.funnels import PropertyFilter
from tests.oracle.funnel_reference import RefEvent, _holds, _uuid_order


@dataclass(frozen=True)
class RefCohort:
    entities: int
    repeated: int
    returned: tuple[int, ...]
    returned_on_or_after: tuple[int, ...]


def _bucket(ms: int, interval: str, tz: ZoneInfo) -> date:
    day = datetime.fromtimestamp(ms / 1000, tz).date()
    if interval == "week":
        return day - timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    return day


def _between(a: date, b: date, interval: str) -> int:
    if interval == "month":
        return (b.year - a.year) * 12 + b.month - a.month
    days = (b - a).days
    return days // 7 if interval == "week" else days


def retention(
    events: Iterable[RefEvent],
    start_ms: int,
    end_ms: int,
    start_event: str,
    return_event: str,
    interval: str,
    periods: int,
    tz: str,
    count_by: str = "visitor",
    breakdown: str | None = None,
    segment: Sequence[PropertyFilter] = (),
) -> dict[tuple[date, str], RefCohort]:
    everything = list(events)
    zone = ZoneInfo(tz)
    user_of: dict[str, tuple[int, str]] = {}
    for e in everything:
        if count_by == "user" and e.user_id:
            known = user_of.get(e.visitor_id)
            if known is None or e.timestamp_ms > known[0]:
                user_of[e.visitor_id] = (e.timestamp_ms, e.user_id)

    def entity(e: RefEvent) -> str:
        return user_of[e.visitor_id][1] if e.visitor_id in user_of else e.visitor_id

    in_segment = {
        entity(e)
        for e in everything
        if start_ms <= e.timestamp_ms < end_ms and all(_holds(f, e.properties) for f in segment)
    }
    first: dict[str, RefEvent] = {}
    for e in everything:
        if e.event != start_event or e.timestamp_ms >= end_ms:
            continue
        seen = first.get(entity(e))
        key = (e.timestamp_ms, _uuid_order(e.event_id))
        if seen is None or key < (seen.timestamp_ms, _uuid_order(seen.event_id)):
            first[entity(e)] = e
    returns: dict[str, set[int]] = defaultdict(set)
    for e in everything:
        cohort_event = first.get(entity(e))
        if (
            e.event != return_event
            or cohort_event is None
            or not start_ms <= e.timestamp_ms < end_ms
            or e.timestamp_ms <= cohort_event.timestamp_ms
        ):
            continue
        period = _between(
            _bucket(cohort_event.timestamp_ms, interval, zone),
            _bucket(e.timestamp_ms, interval, zone),
            interval,
        )
        if period <= periods:
            returns[entity(e)].add(period)
    members: dict[tuple[date, str], list[set[int]]] = defaultdict(list)
    for who, e in first.items():
        if e.timestamp_ms >= start_ms and (not segment or who in in_segment):
            value = e.properties.get(breakdown, "") if breakdown else ""
            members[(_bucket(e.timestamp_ms, interval, zone), value)].append(returns[who])
    return {
        key: RefCohort(
            len(sets),
            sum(1 for s in sets if s),
            tuple(sum(1 for s in sets if n in s) for n in range(periods + 1)),
            tuple(sum(1 for s in sets if s and max(s) >= n) for n in range(periods + 1)),
        )
        for key, sets in members.items()
    }
