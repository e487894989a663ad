"""The processor's live funnel stage equals ClickHouse windowFunnel (default mode).

Random visitors with few event names and a narrow time range (so ties, repeats and
window edges are common) arrive shuffled within the allowed lateness. For each visitor
these answers must agree exactly: the streaming stage machine, the report's arrayFold in
ClickHouse (levels and chain times), a batch fold over all entries, and - for funnels
whose steps no single event can match twice - ClickHouse's own `windowFunnel(window)`.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pytest

from funnel.compiled import compile_funnel, fold_rule
from funnel.fold import Entry, entries_for, fold
from funnel.match import matching_steps
from funnel.sql.filters import Params
from funnel.sql.report import levels_sql, per_visitor_sql
from funnelstream.clickhouse import ClickHouse
from processor.rows import EVENT_COLUMNS
from processor.state import VisitorState
from processor.transform import Outputs, Timing, apply_event
from schemas.events import Event
from schemas.funnels import FunnelDefinition

pytestmark = pytest.mark.clickhouse

BASE_MS = 1_760_000_000_000
LATENESS_MS = 5_000
FAR = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))

# Funnels where no single event can match two steps: there windowFunnel's default mode
# and our rule coincide exactly.
EXCLUSIVE_STEPS = {"abc", "filtered"}

FUNNELS = [
    FunnelDefinition(
        id="abc",
        project="p",
        window_seconds=5,
        steps=({"event": "a"}, {"event": "b"}, {"event": "c"}),  # type: ignore[arg-type]
    ),
    FunnelDefinition(
        id="repeat",
        project="p",
        window_seconds=8,
        steps=({"event": "a"}, {"event": "a"}, {"event": "b"}, {"event": "a"}),  # type: ignore[arg-type]
    ),
    FunnelDefinition(
        id="filtered",
        project="p",
        window_seconds=6,
        steps=(  # type: ignore[arg-type]
            {"event": "a"},
            {"event": "b", "filters": [{"property": "n", "op": "gt", "value": 1}]},
            {"event": "c", "filters": [{"property": "k", "op": "in", "value": ["x", "y"]}]},
        ),
    ),
]


def random_events(rng: random.Random, visitors: int) -> list[Event]:
    events = []
    for v in range(visitors):
        ts = BASE_MS
        for _ in range(rng.randrange(1, 9)):
            # Steps of 0..3 s: many ties and exact window edges (windows are whole seconds).
            ts += rng.choice([0, 0, 1000, 1000, 2000, 3000, 1500])
            events.append(
                Event(
                    project_id="p",
                    event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    event=rng.choice("aabbccx"),
                    visitor_id=f"v{v}",
                    timestamp_ms=ts,
                    received_at_ms=ts,
                    properties={"n": rng.choice([0, 1, 2, 3]), "k": rng.choice("xyz")},
                )
            )
    return events


def arrival_order(rng: random.Random, events: list[Event]) -> list[Event]:
    """Shuffle, but never deliver an event more than LATENESS_MS after a newer one of its
    visitor: sort by timestamp plus a random delay below the lateness."""
    keyed = [(e.timestamp_ms + rng.randrange(0, LATENESS_MS), i, e) for i, e in enumerate(events)]
    return [e for _, _, e in sorted(keyed)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_live_stage_equals_windowfunnel(ch: ClickHouse, seed: int) -> None:
    rng = random.Random(seed)
    events = random_events(rng, visitors=400)
    states: dict[str, VisitorState] = {}
    out = Outputs()
    timing = Timing(session_gap_ms=30 * 60_000, lateness_ms=LATENESS_MS)
    for offset, event in enumerate(arrival_order(rng, events)):
        state = states.setdefault(event.visitor_id, VisitorState("p", event.visitor_id))
        apply_event(
            state,
            event,
            partition=0,
            offset=offset,
            funnels=FUNNELS,
            timing=timing,
            processed_at_ms=0,
            out=out,
        )
    assert out.too_late == 0 and out.duplicates == 0
    ch.insert_sync("events", out.events, EVENT_COLUMNS)
    by_visitor: dict[str, list[Event]] = {}
    for e in events:
        by_visitor.setdefault(e.visitor_id, []).append(e)

    for funnel in FUNNELS:
        p = Params()
        fold_rows = ch.query_rows_sync(
            per_visitor_sql(compile_funnel(funnel), "p", *FAR, p), p.values
        )
        sql_slots = {
            v: [None if s[0] < 0 else (int(s[0]), int(s[1])) for s in slots]
            for v, slots in fold_rows
        }
        fold_level = {v: sum(s is not None for s in slots) for v, slots in sql_slots.items()}
        if funnel.id in EXCLUSIVE_STEPS:
            sql, params = levels_sql(compile_funnel(funnel), "p", *FAR)
            clickhouse_level = {v: int(lv) for v, lv in ch.query_rows_sync(sql, params)}
            nonzero = {v: lv for v, lv in fold_level.items() if lv}
            assert {v: lv for v, lv in clickhouse_level.items() if lv} == nonzero, funnel.id
        else:
            clickhouse_level = fold_level
        for visitor, state in states.items():
            progress = state.funnels.get(funnel.id)
            live_level = progress.level if progress else 0
            assert live_level == clickhouse_level.get(visitor, 0), (funnel.id, visitor)
            # The batch fold over all of this visitor's entries, in sorted order.
            entries: list[Entry] = []
            for e in by_visitor[visitor]:
                props = {"n": str(e.properties["n"]), "k": str(e.properties["k"])}
                matched = matching_steps(funnel.steps, e.event, props)
                if matched:
                    entries.extend(entries_for(e.timestamp_ms, e.event_id, matched))
            entries.sort(key=Entry.sort_key)
            batch = [
                None if s is None else (s[0], s[1])
                for s in fold([None] * len(funnel.steps), entries, fold_rule(funnel))
            ]
            if visitor in sql_slots:
                assert sql_slots[visitor] == batch, (funnel.id, visitor)
            if progress is not None:
                live = [None if s is None else (s[0], s[1]) for s in progress.slots]
                assert live == batch, (funnel.id, visitor)
        # Not vacuous: every depth occurs in these streams.
        assert set(range(1, len(funnel.steps) + 1)) <= set(clickhouse_level.values())
