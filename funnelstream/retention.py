"""Retention: how long each project's rows are kept, as ClickHouse TTLs and a log bound.

A project's `retention_days` (the config file; else the `retention_days` setting; 0 =
forever) becomes one TTL per table that holds visitor data, an expression over the row's
project and time (`ttl_expression`): rows older than their project's retention are
deleted by ClickHouse's merges. One expression per table, not a column per row, so a
changed retention applies to rows already stored too: on start the TTL is replaced when
the settings changed (ClickHouse then recomputes it for the stored parts in the
background, `materialize_ttl_after_modify`), and the table's comment records which
settings it holds, so an unchanged start alters nothing.

Expiry happens at merges, so a row can outlive its time by up to the merge interval
(`merge_with_ttl_timeout`, 4 hours by default). Reads do not filter expired rows.

Tables without visitor data keep everything: funnel definitions, backfill markers and
progress, migrations. Dead letters have no project: they are kept for the longest
retention (forever if any project keeps its data forever).

The raw log holds every event too: its retention is at most the shortest project
retention (`log_retention_ms`), so no project's events outlive their retention there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from funnelstream.clickhouse import ClickHouse
from funnelstream.config import ProjectConfig

DAY_MS = 24 * 3600 * 1000
# What "forever" is in a TTL expression: its rows never reach it (DateTime ends in 2106).
FOREVER = "toDateTime('2105-12-31 00:00:00', 'UTC')"
_PROJECT_OF_KEY = "splitByChar('\\x1f', visitor_key)[1]"
_COMMENT_PREFIX = "funnelstream retention "


@dataclass(frozen=True, slots=True)
class Expiring:
    """A table with visitor data: the column its rows age by, and its project (None: the
    table does not know the project, so rows are kept for the longest retention)."""

    table: str
    time: str
    project: str | None


EXPIRING: tuple[Expiring, ...] = (
    Expiring("events", "timestamp", "project_id"),
    Expiring("sessions", "ended_at", "project_id"),
    Expiring("funnel_state", "updated_at", "project_id"),
    Expiring("funnel_transitions", "reached_at", "project_id"),
    Expiring("funnel_transitions_by_time", "reached_at", "project_id"),
    Expiring("visitor_identities", "identified_at", "project_id"),
    Expiring("processor_state", "written_at", _PROJECT_OF_KEY),
    Expiring("visitor_funnel_progress", "written_at", _PROJECT_OF_KEY),
    Expiring("dead_letters", "recorded_at", None),
)


def retention_days(config: ProjectConfig, default_days: int) -> dict[str, int]:
    """Project id → days its rows are kept (0: forever)."""
    return {
        p.id: default_days if p.retention_days is None else p.retention_days
        for p in config.projects
    }


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _after(time: str, days: int) -> str:
    # Every branch a DateTime('UTC'): multiIf needs one type, whatever the columns' zones.
    return FOREVER if days == 0 else f"toDateTime({time}, 'UTC') + toIntervalDay({days})"


def ttl_expression(table: Expiring, days: dict[str, int]) -> str | None:
    """When a row of `table` expires, as a ClickHouse expression; None: never."""
    if not days or all(d == 0 for d in days.values()):
        return None
    if table.project is None:
        longest = 0 if 0 in days.values() else max(days.values())
        return None if longest == 0 else _after(table.time, longest)
    branches = [
        f"{table.project} = {_quote(project)}, {_after(table.time, d)}"
        for project, d in sorted(days.items())
    ]
    # Rows of a project no longer in the config: kept, until it returns or they are erased.
    return f"multiIf({', '.join(branches)}, {FOREVER})"


def _marker(expression: str | None) -> str:
    digest = hashlib.sha256((expression or "none").encode()).hexdigest()[:16]
    return _COMMENT_PREFIX + digest


async def apply_retention(ch: ClickHouse, days: dict[str, int]) -> list[str]:
    """Set every expiring table's TTL to these retentions; return the tables changed."""
    rows = await ch.query_rows(
        "SELECT name, comment FROM system.tables WHERE database = currentDatabase()"
    )
    comments = {str(name): str(comment) for name, comment in rows}
    changed = []
    for table in EXPIRING:
        expression = ttl_expression(table, days)
        marker = _marker(expression)
        current = comments.get(table.table, "")
        if current == marker or (expression is None and not current.startswith(_COMMENT_PREFIX)):
            continue  # as wanted (or never given a TTL)
        if expression is None:
            await ch.command(f"ALTER TABLE {table.table} REMOVE TTL")
        else:
            await ch.command(f"ALTER TABLE {table.table} MODIFY TTL {expression}")
        await ch.command(f"ALTER TABLE {table.table} MODIFY COMMENT {_quote(marker)}")
        changed.append(table.table)
    return changed


def log_retention_ms(days: dict[str, int], log_default_ms: int | None) -> int | None:
    """The log's retention: its own default, shortened to the shortest project retention
    (None: no limit)."""
    bounds = [d * DAY_MS for d in days.values() if d > 0]
    if log_default_ms is not None:
        bounds.append(log_default_ms)
    return min(bounds) if bounds else None
