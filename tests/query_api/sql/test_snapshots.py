"""Snapshots of generated SQL, so a change to a query shows up in review.

Each case renders a builder into tests/query_api/sql/snapshots/<case>.sql (the SQL, then
its bound parameters as comments). Run with UPDATE_SQL_SNAPSHOTS=1 to rewrite them after
an intended change, and review the diff.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from funnel.compiled import CompiledFunnel, compile_funnel
from funnel.sql.report import levels_sql, report_sql, trend_sql
from query_api.sql.analysis import (
    Breakdown,
    breakdown_sql,
    dropped_sql,
    next_events_sql,
    open_funnel_sql,
)
from query_api.sql.board import BoardCursor, BoardQuery, board_page_sql, board_totals_sql
from query_api.sql.cohorts import RetentionQuery, retention_sql
from query_api.sql.drivers import drivers_sql
from query_api.sql.experiment import experiment_sql
from query_api.sql.live import recent_transitions_sql, stage_counts_sql
from schemas.funnels import FunnelDefinition, PropertyFilter

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("UPDATE_SQL_SNAPSHOTS") == "1"
START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2025, 2, 1, tzinfo=UTC)


def funnel(**extra: Any) -> CompiledFunnel:
    body: dict[str, Any] = {
        "id": "checkout",
        "project": "shop",
        "window_seconds": 86400,
        "steps": [
            {"event": "page_view"},
            {"event": "add_to_cart", "filters": [{"property": "price", "op": "gt", "value": 10}]},
            {"event": "purchase"},
        ],
    }
    body.update(extra)
    return compile_funnel(FunnelDefinition.model_validate(body))


CASES: dict[str, Callable[[], tuple[str, dict[str, Any]]]] = {
    "report_basic": lambda: report_sql(funnel(), "shop", START, END),
    "report_segment_by_user": lambda: report_sql(
        funnel(count_by="user", exclusions=[{"event": "refund", "from_step": 0, "to_step": 2}]),
        "shop",
        START,
        END,
        segment=(PropertyFilter(property="utm_source", op="eq", value="google"),),
    ),
    "trend_hour_lord_howe": lambda: trend_sql(
        funnel(), "shop", START, END, "hour", tz="Australia/Lord_Howe"
    ),
    "trend_week_berlin": lambda: trend_sql(
        funnel(), "shop", START, END, "week", tz="Europe/Berlin"
    ),
    "levels_windowfunnel": lambda: levels_sql(funnel(), "shop", START, END),
    "report_any_of_step_windows": lambda: report_sql(
        funnel(
            steps=[
                {"any_of": [{"event": "page_view"}, {"event": "landing"}]},
                {"event": "add_to_cart", "within_seconds": 600},
                {"event": "purchase", "within_seconds": 3600},
            ]
        ),
        "shop",
        START,
        END,
    ),
    "report_exclusions_by_user": lambda: report_sql(
        funnel(
            exclusions=[{"event": "support_ticket", "from_step": 1, "to_step": 2}],
            count_by="user",
        ),
        "shop",
        START,
        END,
    ),
    "report_repeated_step_event": lambda: report_sql(
        funnel(steps=[{"event": "page_view"}, {"event": "page_view"}, {"event": "purchase"}]),
        "shop",
        START,
        END,
    ),
    "report_strict": lambda: report_sql(funnel(order="strict"), "shop", START, END),
    "breakdown_strict_last_touch": lambda: breakdown_sql(
        funnel(order="strict", exclusions=[{"event": "support_ticket", "from_step": 0}]),
        "shop",
        START,
        END,
        Breakdown("plan", "event", "last_touch"),
    ),
    "report_any_order": lambda: report_sql(funnel(order="any"), "shop", START, END),
    "breakdown_any_order_first_touch": lambda: breakdown_sql(
        funnel(order="any"), "shop", START, END, Breakdown("plan", "event", "first_touch")
    ),
    "report_total_counting": lambda: report_sql(
        funnel(counting="total", steps=[{"event": "a"}, {"event": "b", "within_seconds": 60}]),
        "shop",
        START,
        END,
    ),
    "report_by_session": lambda: report_sql(funnel(count_by="session"), "shop", START, END),
    "next_events_by_session": lambda: next_events_sql(
        funnel(count_by="session"), "shop", START, END, END, 0, 10
    ),
    "report_hold_property": lambda: report_sql(
        funnel(hold_property="product_id"), "shop", START, END
    ),
    "breakdown_hold_property_last_touch": lambda: breakdown_sql(
        funnel(hold_property="product_id"),
        "shop",
        START,
        END,
        Breakdown("plan", "event", "last_touch"),
    ),
    "report_optional_step": lambda: report_sql(
        funnel(
            steps=[
                {"event": "page_view"},
                {"event": "add_to_cart", "optional": True},
                {"event": "purchase", "within_seconds": 3600},
            ]
        ),
        "shop",
        START,
        END,
    ),
    "breakdown_session_first_touch": lambda: breakdown_sql(
        funnel(), "shop", START, END, Breakdown("utm_source", "session", "first_touch")
    ),
    "breakdown_event_step_with_exclusion": lambda: breakdown_sql(
        funnel(exclusions=[{"event": "support_ticket", "from_step": 0, "to_step": 1}]),
        "shop",
        START,
        END,
        Breakdown("plan", "event", "step", 1, 5),
    ),
    "dropped": lambda: dropped_sql(funnel(), "shop", START, END, END, 1, 100, ""),
    "open_funnel": lambda: open_funnel_sql(funnel(), "shop", START, END),
    "live_stages": lambda: stage_counts_sql("shop", "checkout"),
    "live_recent_transitions": lambda: recent_transitions_sql("shop", "checkout", START),
    "retention_weekly_by_user_breakdown": lambda: retention_sql(
        RetentionQuery(
            "shop", START, END, "purchase", "purchase", "week", 8, "Europe/Berlin", "user", "plan"
        )
    ),
    "drivers_step_1": lambda: drivers_sql(funnel(), "shop", START, END, END, 1, 500),
    "experiment_segment": lambda: experiment_sql(
        funnel(),
        "shop",
        START,
        END,
        "variant",
        (PropertyFilter(property="utm_source", op="in", value=["google", "bing"]),),
    ),
    "experiment_by_user": lambda: experiment_sql(
        funnel(count_by="user"), "shop", START, END, "variant"
    ),
    "board_page": lambda: board_page_sql(
        BoardQuery("shop", "checkout", 2, START, ("owner",)), BoardCursor(2, 0, "v1"), 101
    ),
    "board_page_where": lambda: board_page_sql(
        BoardQuery("shop", "checkout", properties=("owner",), where=(("owner", "ann"),)),
        BoardCursor(2, 0, "v1"),
        101,
    ),
    "board_totals_where": lambda: board_totals_sql(
        BoardQuery("shop", "checkout", properties=("owner",), where=(("owner", "ann"),))
    ),
}


def render(sql: str, params: dict[str, Any]) -> str:
    lines = [sql, "", *(f"-- {k} = {v!r}" for k, v in params.items())]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_sql_snapshot(case: str) -> None:
    got = render(*CASES[case]())
    path = SNAPSHOTS / f"{case}.sql"
    if UPDATE or not path.exists():
        path.write_text(got)
        if not UPDATE:
            pytest.fail(f"wrote new snapshot {path.name}; review it and rerun")
    assert got == path.read_text(), "SQL changed; rerun with UPDATE_SQL_SNAPSHOTS=1 if intended"
