"""The row builders write times as int milliseconds (processor/rows.py): what the real
engine stores from them is what it stored from the `datetime` rows of the previous
release, read back column by column."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from funnel.fold import FunnelProgress, Transition
from funnelstream.clickhouse import ClickHouse
from processor.rows import (
    EVENT_COLUMNS,
    FUNNEL_STATE_COLUMNS,
    IDENTITY_COLUMNS,
    SESSION_COLUMNS,
    TRANSITION_COLUMNS,
    Row,
    ms_to_datetime,
)
from processor.sessionize import Session
from processor.transform import event_row, funnel_state_row, session_row, transition_row
from schemas.events import Event

pytestmark = pytest.mark.clickhouse

# Milliseconds that a float division could round wrongly, one before the epoch, and 0.
T = 1_764_770_000_123
EARLY = -1_001
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EID = "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


def _as_datetimes(row: Row, columns: tuple[int, ...]) -> Row:
    """The row as the previous release built it: a `datetime` per time column."""

    def old(value: Any) -> Any:
        return (
            [ms_to_datetime(v) for v in value] if isinstance(value, list) else ms_to_datetime(value)
        )

    return tuple(old(v) if i in columns else v for i, v in enumerate(row))


def _stored(ch: ClickHouse, table: str, columns: tuple[str, ...], key: str) -> list[Any]:
    return ch.query_rows_sync(
        f"SELECT {', '.join(columns)} FROM {table} WHERE {key} ORDER BY {key}"  # noqa: S608
    )


def _progress() -> FunnelProgress:
    progress = FunnelProgress(steps=3)
    progress.current.slots[0] = (EARLY, T)
    progress.current.slots[1] = (T, T + 1)
    return progress


Case = tuple[str, tuple[str, ...], Callable[[str], Row], tuple[int, ...], str]
CASES: list[Case] = [
    (
        "events",
        EVENT_COLUMNS,
        lambda visitor: event_row(
            Event(
                project_id="p",
                event_id=EID,
                event="view",
                visitor_id=visitor,
                timestamp_ms=T,
                received_at_ms=T + 7,
                session_id="s",
                context={"os": "Linux"},
            ),
            {"url": "/a"},
            2,
            9,
        ),
        (6, 7),
        "visitor_id",
    ),
    (
        "sessions",
        SESSION_COLUMNS,
        lambda visitor: session_row(
            "p", visitor, Session("s1", EARLY, T, 3, {"url": "/a", "os": "Linux"}), 9, False
        ),
        (3, 4),
        "visitor_id",
    ),
    (
        "funnel_state",
        FUNNEL_STATE_COLUMNS,
        lambda visitor: funnel_state_row("p", "f", visitor, _progress(), 9, T + 5),
        (4, 5, 7),
        "visitor_id",
    ),
    (
        "funnel_transitions",
        TRANSITION_COLUMNS,
        lambda visitor: transition_row(
            "p", "f", visitor, Transition(2, T, EARLY, EID, "corrected"), T + 5
        ),
        (4, 5, 7),
        "visitor_id",
    ),
    (
        "visitor_identities",
        IDENTITY_COLUMNS,
        lambda visitor: ("p", "u", visitor, T, 0),
        (3,),
        "visitor_id",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_int_times_store_what_datetimes_stored(ch: ClickHouse, case: Case) -> None:
    table, columns, build, time_columns, key = case
    new, old = build("v-new"), _as_datetimes(build("v-old"), time_columns)
    ch.insert_sync(table, [new], columns)
    ch.insert_sync(table, [old], columns)
    got_new, got_old = (
        _stored(ch, table, columns, f"{key} = '{v}'")[0] for v in ("v-new", "v-old")
    )
    strip = columns.index(key)
    assert got_new[:strip] + got_new[strip + 1 :] == got_old[:strip] + got_old[strip + 1 :]
    # And the times are the milliseconds the row held.
    for i in time_columns:
        assert _millis(got_new[i]) == new[i]


def _millis(value: Any) -> Any:
    if isinstance(value, list):
        return [_millis(v) for v in value]
    at = value if value.tzinfo else value.replace(tzinfo=UTC)
    return (at - EPOCH) // timedelta(milliseconds=1)
