"""`count_by: "session"` through every per-entity query on a real engine: sessions split
at the configured gap (30 minutes of inactivity by default; any event keeps a session
alive)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from funnel.compiled import compile_funnel
from funnel.sql.report import report_sql
from funnelstream.clickhouse import ClickHouse
from processor.state import VisitorState
from processor.transform import Outputs, Timing, apply_event
from query_api.sql.analysis import dropped_sql, next_events_sql, open_funnel_sql
from schemas.events import Event
from schemas.funnels import FunnelDefinition
from tests.query_api.routes.test_analysis import T0, events

pytestmark = pytest.mark.clickhouse

START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2025, 1, 3, tzinfo=UTC)
FUNNEL = FunnelDefinition.model_validate(
    {
        "id": "checkout",
        "project": "shop",
        "window_seconds": 7200,
        "count_by": "session",
        "steps": [{"event": "view"}, {"event": "cart"}, {"event": "buy"}],
    }
)


def test_sessions_are_entities(ch: ClickHouse) -> None:
    # v1: session 1 = view, cart (help keeps it alive past 30 min); session 2 starts
    # 30 min after help: view, search. The window (2 h) would join them, sessions don't.
    events(
        ch,
        [
            ("v1", "view", 0, {}), ("v1", "cart", 60, {}), ("v1", "help", 1700, {}),
            ("v1", "view", 3500, {}), ("v1", "search", 3510, {}), ("v1", "buy", 3520, {}),
        ],
    )  # fmt: skip
    rows = ch.query_rows_sync(*report_sql(compile_funnel(FUNNEL), "shop", START, END))
    assert [int(r[1]) for r in rows] == [2, 1, 0]
    opened = ch.query_rows_sync(*open_funnel_sql(compile_funnel(FUNNEL), "shop", START, END))
    assert [tuple(int(x) for x in r) for r in opened] == [(1, 2, 1), (2, 1, 0), (3, 1, 0)]
    dropped = ch.query_rows_sync(
        *dropped_sql(compile_funnel(FUNNEL), "shop", START, END, END, 0, 10, "")
    )
    assert [r[0] for r in dropped] == ["v1#2"]
    # After its view, session 2's next event is search; session 1's cart is followed by
    # help in the same session.
    nxt = ch.query_rows_sync(
        *next_events_sql(compile_funnel(FUNNEL), "shop", START, END, END, 0, 10)
    )
    assert [(r[0], int(r[1])) for r in nxt] == [("search", 1)]
    nxt = ch.query_rows_sync(
        *next_events_sql(compile_funnel(FUNNEL), "shop", START, END, END, 1, 10)
    )
    assert [(r[0], int(r[1])) for r in nxt] == [("help", 1)]


@pytest.mark.parametrize("gap_minutes", [20, 30, 60])
def test_live_fold_and_report_split_sessions_at_the_same_configured_gap(
    ch: ClickHouse, gap_minutes: int
) -> None:
    """The session gap is one setting: compiled into the definition, it is where the
    processor's live fold and the report both close a session."""
    rows = [
        ("v1", "view", 0), ("v1", "cart", 1500), ("v1", "help", 3000),
        ("v1", "view", 5000), ("v1", "buy", 5100),
    ]  # fmt: skip
    events(ch, [(v, name, s, {}) for v, name, s in rows])
    gap_ms = gap_minutes * 60_000
    compiled = compile_funnel(FUNNEL, session_gap_ms=gap_ms)
    assert compiled.rule.session_gap_ms == gap_ms
    report = [int(r[1]) for r in ch.query_rows_sync(*report_sql(compiled, "shop", START, END))]

    state = VisitorState("shop", "v1")
    timing = Timing(session_gap_ms=gap_ms, lateness_ms=0)
    out = Outputs()
    for offset, (visitor, name, seconds) in enumerate(rows):
        ts = T0 + seconds * 1000
        event = Event("shop", str(uuid.UUID(int=offset + 1)), name, visitor, ts, ts)
        apply_event(
            state,
            event,
            partition=0,
            offset=offset,
            funnels=[FUNNEL],
            timing=timing,
            processed_at_ms=ts,
            out=out,
        )
    # Per step, the sessions that reached it: closed ones and the open one.
    assert state.funnels[FUNNEL.id].attempts == report
    # Gaps of 25, 25, 33 and 2 minutes: 20 minutes splits at the first three, 30 at the
    # third only, 60 at none (view, cart and buy in one session and window).
    assert report == {20: [2, 0, 0], 30: [2, 1, 0], 60: [1, 1, 1]}[gap_minutes]
