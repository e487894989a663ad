"""Rows the processor writes, as tuples in the column order of each ClickHouse table.

Times are written as the int milliseconds the processor holds: clickhouse-connect takes an
int in a `DateTime64(3)` column as its ticks (milliseconds) as is, so a row never builds a
`datetime` (which cost more than the rest of the row) and the stored value is the same. A
column's values must all be ints or all be datetimes: every row of these tables is built
here or in processor/transform.py's row builders, all with ints.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

EVENT_COLUMNS = (
    "project_id",
    "event_id",
    "event",
    "visitor_id",
    "user_id",
    "client_session_id",
    "timestamp",
    "received_at",
    "properties",
    "context",
    "log_partition",
    "log_offset",
)
SESSION_COLUMNS = (
    "project_id",
    "visitor_id",
    "session_id",
    "started_at",
    "ended_at",
    "event_count",
    "entry_url",
    "referrer",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "device",
    "browser",
    "os",
    "country",
    "version",
    "is_deleted",
)
FUNNEL_STATE_COLUMNS = (
    "project_id",
    "funnel_id",
    "visitor_id",
    "level",
    "step_started_at",
    "step_reached_at",
    "step_attempts",
    "updated_at",
    "version",
)
TRANSITION_COLUMNS = (
    "project_id",
    "funnel_id",
    "visitor_id",
    "step",
    "reached_at",
    "chain_started_at",
    "event_id",
    "processed_at",
    "kind",
)
IDENTITY_COLUMNS = ("project_id", "user_id", "visitor_id", "identified_at", "is_deleted")
STATE_COLUMNS = ("consumer_group", "log_partition", "visitor_key", "state", "applied_offset")
DEAD_LETTER_COLUMNS = (
    "recorded_at",
    "source",
    "reason",
    "detail",
    "log_partition",
    "log_offset",
    "payload",
    "project_id",
)

# The entry fields a session keeps from its first event.
SESSION_ENTRY_FIELDS = ("url", "referrer", "utm_source", "utm_medium", "utm_campaign")
SESSION_CONTEXT_FIELDS = ("device", "browser", "os", "country")

EPOCH = datetime.fromtimestamp(0, UTC)


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def as_uuid(text: str) -> str:
    """UUID column value: clickhouse-connect takes the canonical string as is (ingest and
    the processor only ever hold canonical ids), which saves building a UUID object."""
    return text


Row = tuple[Any, ...]
