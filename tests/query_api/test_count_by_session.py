"""`count_by: "session"` through every per-entity query on a real engine: sessions split
at 30 minutes of inactivity (any event keeps a session alive)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from funnel.compiled import compile_funnel
from funnel.sql.report import report_sql
from funnelstream.clickhouse import ClickHouse
from query_api.sql.analysis import dropped_sql, next_events_sql, open_funnel_sql
from schemas.funnels import FunnelDefinition
from tests.query_api.routes.test_analysis import events

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
