"""The SQL report equals the pure-Python reference (tests/oracle/funnel_reference.py) exactly.

Hypothesis draws funnels (filters, any_of alternatives, per-step windows, exclusions,
counting by visitor, user or session, ordered, strict or any order, unique or total, a
held property, optional steps), segments (the same property filters) and event streams
with few names, few visitors and a narrow time range, so ties, repeated steps and window
edges are common. Each example writes its events under its own project id, so examples
never see each other's rows.
"""

from __future__ import annotations

import itertools
import os
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnel.compiled import compile_funnel
from funnel.sql.filters import Params
from funnel.sql.report import per_visitor_sql, report_sql
from funnelstream.clickhouse import ClickHouse
from processor.rows import EVENT_COLUMNS, as_uuid, ms_to_datetime
from query_api import compute
from query_api.sql.analysis import Breakdown, breakdown_sql
from schemas.funnels import FunnelDefinition, PropertyFilter, validate_funnel
from tests.oracle import funnel_reference as reference

pytestmark = pytest.mark.clickhouse

# FUNNEL_DIFF_EXAMPLES=2000 for a long run.
BASE_MS = 1_760_000_000_000
# Some events fall outside the range; streams with session gaps (30 min) reach past END.
START, END = BASE_MS - 1000, BASE_MS + 40_000 + 2 * 1_800_000
NAMES = "abcd"
EXCLUDED = "xy"
_projects = itertools.count()

filters = st.one_of(
    st.builds(lambda v: {"property": "n", "op": "gt", "value": v}, st.sampled_from([0, 1, 1.5])),
    st.builds(lambda v: {"property": "n", "op": "lt", "value": v}, st.sampled_from([1, 2])),
    st.builds(lambda v: {"property": "k", "op": "eq", "value": v}, st.sampled_from("xyz")),
    st.builds(lambda v: {"property": "k", "op": "neq", "value": v}, st.sampled_from("xy")),
    st.builds(
        lambda v: {"property": "k", "op": "in", "value": v},
        st.lists(st.sampled_from("xyz"), min_size=1, max_size=2),
    ),
    st.just({"property": "k", "op": "is_set"}),
    st.just({"property": "n", "op": "is_not_set"}),
    st.just({"property": "k", "op": "regex", "value": "^[xy]"}),
    st.just({"property": "k", "op": "contains", "value": "z"}),
)
matches = st.fixed_dictionaries(
    {"event": st.sampled_from(NAMES), "filters": st.lists(filters, max_size=2)}
)
steps = st.one_of(
    matches,
    st.builds(lambda alts: {"any_of": alts}, st.lists(matches, min_size=2, max_size=3)),
)


@st.composite
def funnels(draw: st.DrawFn) -> FunnelDefinition:
    chosen = draw(st.lists(steps, min_size=2, max_size=5))
    for step in chosen[1:]:
        if draw(st.booleans()):
            step["within_seconds"] = draw(st.integers(1, 6))
    order = draw(st.sampled_from(["ordered", "ordered", "strict", "any"]))
    if order == "any":
        # Any order: steps never share an event name; no exclusions, no per-step windows.
        names = draw(st.permutations(NAMES))
        chosen = [
            {"any_of": [{**m, "event": names[i]} for m in s["any_of"][:1]]}
            if "any_of" in s
            else {**s, "event": names[i]}
            for i, s in enumerate(chosen[: len(NAMES)])
        ]
        for step in chosen:
            step.pop("within_seconds", None)
    exclusions = []
    for _ in range(draw(st.integers(0, 2) if order != "any" else st.just(0))):
        lo = draw(st.integers(0, len(chosen) - 2))
        hi = draw(st.integers(lo + 1, len(chosen) - 1))
        exclusions.append(
            {"event": draw(st.sampled_from(EXCLUDED)), "from_step": lo, "to_step": hi}
        )
    counting = "unique"
    if order == "ordered" and not exclusions:
        counting = draw(st.sampled_from(["unique", "unique", "total"]))
    hold = None
    if order == "ordered" and not exclusions and counting == "unique":
        hold = draw(st.sampled_from([None, None, "k", "n"]))
    if order != "any" and hold is None and counting == "unique":
        for step in chosen[1:]:
            if draw(st.integers(0, 3)) == 0:
                step["optional"] = True
    funnel = FunnelDefinition.model_validate(
        {
            "id": "f",
            "project": "p",
            "steps": chosen,
            "window_seconds": draw(st.integers(1, 12)),
            "exclusions": exclusions,
            "count_by": draw(st.sampled_from(["visitor", "user", "session"])),
            "order": order,
            "counting": counting,
            "hold_property": hold,
        }
    )
    assert validate_funnel(funnel) == []
    return funnel


@st.composite
def streams(draw: st.DrawFn) -> list[reference.RefEvent]:
    events = []
    steps = [0, 0, 1000, 1000, 2000, 3000, 500, 6000]
    if draw(st.booleans()):
        # Session gaps: a new session starts 30 minutes (or more) after the last event.
        steps += [1_799_999, 1_800_000]
    for v in range(draw(st.integers(1, 6))):
        # Some visitors start just before END, so their later events fall outside.
        ts = draw(st.sampled_from([BASE_MS - 2000, BASE_MS, BASE_MS + 500, END - 3000]))
        user = draw(st.sampled_from(["", "", "u1", "u2"]))
        for _ in range(draw(st.integers(1, 10))):
            ts += draw(st.sampled_from(steps))
            props = {}
            if draw(st.booleans()):
                props["n"] = draw(st.sampled_from(["0", "1", "2", "1.5", "x"]))
            if draw(st.booleans()):
                props["k"] = draw(st.sampled_from(["x", "y", "z", "yz", ""]))
            events.append(
                reference.RefEvent(
                    event_id=str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)), version=4)),
                    event=draw(st.sampled_from(NAMES + NAMES + EXCLUDED + "q")),
                    visitor_id=f"v{v}",
                    timestamp_ms=ts,
                    user_id=user if user and draw(st.booleans()) else "",
                    properties=props,
                )
            )
    # Event ids are unique, as the processor guarantees before it writes.
    unique = {e.event_id: e for e in events}
    return list(unique.values())


def insert(ch: ClickHouse, project: str, events: list[reference.RefEvent]) -> None:
    rows: list[tuple[Any, ...]] = [
        (
            project,
            as_uuid(e.event_id),
            e.event,
            e.visitor_id,
            e.user_id,
            "",
            ms_to_datetime(e.timestamp_ms),
            ms_to_datetime(e.timestamp_ms),
            dict(e.properties),
            {},
            0,
            i,
        )
        for i, e in enumerate(events)
    ]
    ch.insert_sync("events", rows, EVENT_COLUMNS)


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-6 * max(1.0, abs(a))


def assert_report_equals_reference(
    ch: ClickHouse,
    funnel: FunnelDefinition,
    events: list[reference.RefEvent],
    now_ms: int,
    segment: tuple[PropertyFilter, ...] = (),
) -> str:
    """Held attempts per entity and the report (in `segment`, if any) equal the
    reference; returns the project the events were written under."""
    project = f"h{next(_projects)}"
    funnel = funnel.model_copy(update={"project": project})
    insert(ch, project, events)
    start, end = ms_to_datetime(START), ms_to_datetime(END)

    # Per entity, the held attempts (start, reached, previous) are the same.
    params = Params()
    rows = ch.query_rows_sync(
        per_visitor_sql(compile_funnel(funnel), project, start, end, params, segment),
        params.values,
    )
    sql_held = {
        entity: [None if s[0] < 0 else (s[0], s[1], s[2]) for s in slots] for entity, slots in rows
    }
    expected_held = {
        entity: [None if h is None else (h.started_ms, h.reached_ms, h.previous_ms) for h in slots]
        for entity, slots in reference.held_steps(funnel, events, START, END, segment).items()
    }
    assert sql_held == expected_held

    # The report: counts exact, times exact (averages to float precision).
    now = ms_to_datetime(now_ms)
    sql, params_ = report_sql(compile_funnel(funnel), project, start, end, now, segment)
    by_step = {int(r[0]): r for r in ch.query_rows_sync(sql, params_)}
    for k, want in enumerate(reference.report(funnel, events, START, END, now_ms, segment)):
        row = by_step.get(k + 1)
        got_entities = int(row[1]) if row else 0
        assert got_entities == want.entities, k
        assert (int(row[8]) if row else 0) == want.in_progress, k
        if want.median_ms is None:
            continue
        assert row is not None
        assert (row[2], row[3], row[5], row[6]) == (
            want.median_ms,
            want.p90_ms,
            want.median_from_previous_ms,
            want.p90_from_previous_ms,
        ), k
        assert _close(row[4], want.avg_ms) and _close(row[7], want.avg_from_previous_ms), k
    return project


breakdowns = st.builds(
    Breakdown,
    property=st.sampled_from(["k", "n"]),
    attribution=st.sampled_from(["first_touch", "last_touch", "step"]),
    step=st.integers(0, 4),
    limit=st.integers(1, 3),
)

# Half the examples without a segment, half with one or two filters (on event properties
# the streams carry, so a segment keeps some entities and drops others).
segments = st.one_of(
    st.just(()),
    st.lists(filters, min_size=1, max_size=2).map(
        lambda fs: tuple(PropertyFilter.model_validate(f) for f in fs)
    ),
)


@settings(
    max_examples=int(os.environ.get("FUNNEL_DIFF_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    funnel=funnels(),
    events=streams(),
    now_ms=st.integers(BASE_MS, BASE_MS + 30_000),
    by=breakdowns,
    segment=segments,
)
def test_sql_report_equals_reference(
    ch: ClickHouse,
    funnel: FunnelDefinition,
    events: list[reference.RefEvent],
    now_ms: int,
    by: Breakdown,
    segment: tuple[PropertyFilter, ...],
) -> None:
    project = assert_report_equals_reference(ch, funnel, events, now_ms, segment)
    start, end = ms_to_datetime(START), ms_to_datetime(END)

    # Breakdown by an event property, with each attribution, top N + other.
    by = Breakdown(by.property, "event", by.attribution, by.step % len(funnel.steps), by.limit)
    query = breakdown_sql(compile_funnel(funnel), project, start, end, by, segment)
    rows = ch.query_rows_sync(*query)
    got = {(g.other, g.value): g.reached for g in compute.breakdown_groups(rows, len(funnel.steps))}
    want_groups = reference.breakdown(
        funnel, events, START, END, by.property, by.attribution, by.step, by.limit, segment
    )
    assert got == want_groups


def test_far_range_reads_nothing_else(ch: ClickHouse) -> None:
    """Guard for the generator: a bound outside [START, END) really excludes events."""
    assert ms_to_datetime(START) < ms_to_datetime(BASE_MS) < ms_to_datetime(END)
    assert datetime(2000, 1, 1, tzinfo=UTC) < ms_to_datetime(START)


@pytest.mark.parametrize(
    "names",
    [["a", "b", "c"], ["a", "a", "b"], ["a", "b", "a"]],
    ids=["distinct", "repeated_first", "repeated_last"],
)
def test_entries_before_the_first_start(ch: ClickHouse, names: list[str]) -> None:
    """Step entries before an entity's first step-0 entry (with a step event used by two
    steps, also one event's own entries, deepest first) never start or extend an attempt:
    the level passes' running sum behind the latest start must not take them for one."""
    funnel = FunnelDefinition.model_validate(
        {"id": "f", "project": "p", "window_seconds": 5, "steps": [{"event": e} for e in names]}
    )
    assert validate_funnel(funnel) == []
    streams = {
        "v1": [("b", 0), ("c", 1), ("a", 5000)],
        "v2": [("a", 0), ("b", 1), ("c", 2)],
        "v3": [("c", 0), ("b", 0), ("b", 10), ("a", 20), ("c", 20), ("b", 20), ("a", 30)]
        + [("b", 1030), ("c", 6000), ("a", 7000), ("b", 7000), ("c", 7001)],
    }
    rows = [(visitor, name, ms) for visitor, stream in streams.items() for name, ms in stream]
    events = [
        reference.RefEvent(
            event_id=str(uuid.UUID(int=i + 1, version=4)),
            event=name,
            visitor_id=visitor,
            timestamp_ms=BASE_MS + ms,
            user_id="",
            properties={},
        )
        for i, (visitor, name, ms) in enumerate(rows)
    ]
    assert_report_equals_reference(ch, funnel, events, BASE_MS + 1000)
