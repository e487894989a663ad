"""Funnel analyses built on the per-entity held attempts of funnel/sql/report.py, from
the same compiled definition (funnel/compiled.py): breakdowns with attribution, drop-off
lists, what dropped visitors did next, the time-to-convert histogram and the open funnel
(entry at any step).

Every query starts from the same per-entity evaluation as the report, so its counts add up
to the report's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from funnel.compiled import CompiledFunnel
from funnel.sql.filters import Params, step_sql
from funnel.sql.report import USER_ENTITY, entity_sql, held_sql, open_until_sql, user_join_sql
from schemas.funnels import PropertyFilter

# Session properties a breakdown can use (columns of the sessions table).
SESSION_FIELDS = (
    "entry_url",
    "referrer",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "device",
    "browser",
    "os",
    "country",
)


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Group entities by a property of one of their funnel events.

    `source`: "event" (a property of the attributed event) or "session" (a field of the
    session that event belongs to). `attribution`: "first_touch" (step 1 of the attempt
    holding the entity's deepest step), "last_touch" (the event that reached that deepest
    step) or "step" (the event holding step `step`, 0-based; '' if none).
    """

    property: str
    source: Literal["event", "session"] = "event"
    attribution: Literal["first_touch", "last_touch", "step"] = "first_touch"
    step: int = 0
    limit: int = 10


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def breakdown_sql(
    funnel: CompiledFunnel,
    project: str,
    start: datetime,
    end: datetime,
    by: Breakdown,
    segment: Sequence[PropertyFilter] = (),
) -> tuple[str, dict[str, Any]]:
    """Rows (top, value, level, entities): entities per attributed value and deepest step
    (level, 1-based). The `limit` values with the most entities (ties: by value) have
    top = 1; all others are summed into one row per level with top = 0 and value ''."""
    params = Params()
    if by.source == "session":
        value = "events.visitor_id"  # the session is found from the event's visitor
    else:
        value = f"events.properties[{params.bind(by.property, 'String')}]"
    if by.attribution == "first_touch":
        pick, at = "firsts[level]", "st[level]"
    elif by.attribution == "last_touch":
        pick, at = "vals[level]", "re[level]"
    else:
        pick, at = f"vals[{by.step + 1}]", f"re[{by.step + 1}]"
    held = held_sql(
        funnel,
        project,
        start,
        end,
        params,
        extra=f", {pick} AS picked, {at} AS attributed_at",
        value=value,
        segment=segment,
    )
    if by.source == "session":
        if by.property not in SESSION_FIELDS:
            raise ValueError(f"unknown session property {by.property!r}")
        attributed = f"""
    SELECT h.level AS level, s.{by.property} AS value
    FROM ({held}
    ) AS h
    ASOF LEFT JOIN (
        SELECT visitor_id, toUnixTimestamp64Milli(started_at) AS started_ms, {by.property}
        FROM sessions FINAL
        WHERE project_id = {params.bind(project, "String")} AND is_deleted = 0
    ) AS s ON h.picked = s.visitor_id AND h.attributed_at >= s.started_ms"""
    else:
        attributed = f"""
    SELECT level, picked AS value
    FROM ({held}
    )"""
    limit = params.bind(by.limit, "UInt32")
    sql = f"""
SELECT r <= {limit} AS top, if(top, value, '') AS bucket, level, sum(c) AS entities
FROM (
    SELECT value, level, c, dense_rank() OVER (ORDER BY total DESC, value) AS r
    FROM (
        SELECT value, level, count() AS c, sum(count()) OVER (PARTITION BY value) AS total
        FROM ({attributed}
        )
        GROUP BY value, level
    )
)
GROUP BY top, bucket, level
ORDER BY top DESC, bucket, level""".strip()
    return sql, params.values


def dropped_sql(
    funnel: CompiledFunnel,
    project: str,
    start: datetime,
    end: datetime,
    now: datetime,
    step: int,
    limit: int,
    after: str,
    segment: Sequence[PropertyFilter] = (),
) -> tuple[str, dict[str, Any]]:
    """Rows (entity, reached step at ms, attempt started ms): entities whose deepest step is
    `step` (0-based, not the last) and whose attempt can no longer take the next one
    (dropped, not in progress), ordered by entity, after the cursor `after`."""
    params = Params()
    open_until = open_until_sql(funnel.definition, params)
    held = held_sql(
        funnel, project, start, end, params, f", {open_until} AS open_until", segment=segment
    )
    sql = f"""
SELECT visitor_id, re[level] AS reached_ms, st[level] AS started_ms
FROM ({held}
)
WHERE level = {params.bind(step + 1, "UInt32")}
  AND open_until < {params.bind(_ms(now), "Int64")}
  AND visitor_id > {params.bind(after, "String")}
ORDER BY visitor_id
LIMIT {params.bind(limit, "UInt32")}""".strip()
    return sql, params.values


def next_events_sql(
    funnel: CompiledFunnel,
    project: str,
    start: datetime,
    end: datetime,
    now: datetime,
    step: int,
    limit: int,
    segment: Sequence[PropertyFilter] = (),
) -> tuple[str, dict[str, Any]]:
    """Rows (event name, entities): for entities that dropped at `step`, the first event
    each sent after reaching it (any event name, in [from, to)), most frequent first. The
    entity's event at the same millisecond as its step event does not count as next."""
    params = Params()
    open_until = open_until_sql(funnel.definition, params)
    held = held_sql(
        funnel, project, start, end, params, f", {open_until} AS open_until", segment=segment
    )
    project_param = params.bind(project, "String")
    entity, join = _entity(funnel, project_param, params, start, end)
    sql = f"""
SELECT next_event, count() AS entities
FROM (
    SELECT d.visitor_id AS entity, argMin(x.event, x.ms) AS next_event
    FROM (
        SELECT visitor_id, re[level] AS reached_ms
        FROM ({held}
        )
        WHERE level = {params.bind(step + 1, "UInt32")}
          AND open_until < {params.bind(_ms(now), "Int64")}
    ) AS d
    INNER JOIN (
        SELECT {entity} AS entity, event, toUnixTimestamp64Milli(timestamp) AS ms
        FROM events{join}
        WHERE project_id = {project_param}
          AND timestamp >= {params.bind(start, "DateTime64(3, 'UTC')")}
          AND timestamp < {params.bind(end, "DateTime64(3, 'UTC')")}
    ) AS x ON x.entity = d.visitor_id
    WHERE x.ms > d.reached_ms
    GROUP BY d.visitor_id
)
GROUP BY next_event
ORDER BY entities DESC, next_event
LIMIT {params.bind(limit, "UInt32")}""".strip()
    return sql, params.values


def histogram_sql(
    funnel: CompiledFunnel,
    project: str,
    start: datetime,
    end: datetime,
    step: int,
    bins: int,
    segment: Sequence[PropertyFilter] = (),
) -> tuple[str, dict[str, Any]]:
    """Rows (bin, attempts, bin start ms, bin width ms): times from step 1 to `step`
    (0-based, > 0) of the attempts holding it, in `bins` equal bins from 0 to the longest
    time (the longest falls in the last bin)."""
    params = Params()
    held = held_sql(funnel, project, start, end, params, segment=segment)
    k = step + 1
    nbins = params.bind(bins, "UInt32")
    sql = f"""
SELECT least(intDiv(t, width), {nbins} - 1) AS bin, count() AS attempts,
       bin * width AS bin_start_ms, width AS bin_width_ms
FROM (
    SELECT re[{k}] - st[{k}] AS t,
           max(re[{k}] - st[{k}]) OVER () AS longest,
           greatest(toInt64(ceil((longest + 1) / {nbins})), 1) AS width
    FROM ({held}
    )
    WHERE st[{k}] >= 0
)
GROUP BY bin, width
ORDER BY bin""".strip()
    return sql, params.values


def open_funnel_sql(
    funnel: CompiledFunnel, project: str, start: datetime, end: datetime
) -> tuple[str, dict[str, Any]]:
    """Rows (step 1-based, entities entering, entities continuing to the next step): the
    open funnel (entry at any step, as GA4 offers). An entity enters at step k when it
    sends an event matching step k in [from, to); it continues when one of those events is
    followed, strictly later and within the window (and step k+1's `within_seconds`, if
    shorter), by an event matching step k+1. Exclusions do not apply here."""
    params = Params()
    definition = funnel.definition
    n = len(definition.steps)
    conditions = [step_sql(s, params) for s in funnel.steps]
    project_param = params.bind(project, "String")
    window = definition.window_seconds
    gaps = [min(window, s.within_seconds or window) * 1000 for s in definition.steps[1:]]
    gap = params.bind([*gaps, 0], "Array(Int64)")
    at = ", ".join(f"arraySort(groupArrayIf(ms, {c}))" for c in conditions)
    entity, join = _entity(funnel, project_param, params, start, end)
    sql = f"""
SELECT step, count() AS entered, countIf(continued) AS continued
FROM (
    SELECT [{at}] AS at,
           arrayMap(k -> k < {n} AND arrayExists(
               b -> arrayExists(a -> a < b AND b <= a + {gap}[k], at[k]), at[k + 1]),
               range(1, {n + 1})) AS nexts
    FROM (
        SELECT {entity} AS entity, toUnixTimestamp64Milli(timestamp) AS ms, event, properties
        FROM events{join}
        WHERE project_id = {project_param}
          AND timestamp >= {params.bind(start, "DateTime64(3, 'UTC')")}
          AND timestamp < {params.bind(end, "DateTime64(3, 'UTC')")}
          AND event IN {params.bind(definition.step_event_names(), "Array(String)")}
    )
    GROUP BY entity
)
ARRAY JOIN at AS xs, nexts AS continued, arrayEnumerate(at) AS step
WHERE length(xs) > 0
GROUP BY step
ORDER BY step""".strip()
    return sql, params.values


def _entity(
    funnel: CompiledFunnel, project_param: str, params: Params, start: datetime, end: datetime
) -> tuple[str, str]:
    """(expression, join clause) naming the counted entity of an event row."""
    if funnel.definition.count_by == "user":
        return USER_ENTITY, user_join_sql(project_param, indent=" " * 8)
    return entity_sql(funnel, project_param, params, start, end)
