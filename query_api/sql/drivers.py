"""Conversion drivers' counts: for one funnel step, what the entities that went on to the
next step did or had, against those that dropped. Built on the report's per-entity
evaluation (funnel/sql/report.py), from the same compiled definition.

The population: entities whose deepest step is at least `step` (0-based), either
converted (reached step + 1) or dropped there (deepest step `step` and their attempt can
no longer advance); entities still in progress are left out.

Features, each counted once per entity:
* `event`: an event name the entity sent after reaching `step` and before reaching the
  next step (converted) or before its attempt's window closed or `to` (dropped);
* `property`: a property (key=value) of the event holding `step`;
* `session`: a field of the session that event belongs to (utm_source, device, ...).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from funnel.compiled import CompiledFunnel
from funnel.sql.filters import Params
from funnel.sql.report import held_sql, open_until_sql
from query_api.sql.analysis import SESSION_FIELDS, _entity

_DATETIME = "DateTime64(3, 'UTC')"


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def drivers_sql(
    funnel: CompiledFunnel,
    project: str,
    start: datetime,
    end: datetime,
    now: datetime,
    step: int,
    limit: int,
) -> tuple[str, dict[str, Any]]:
    """Rows (kind, name, value, converted, dropped): per feature, entities of the
    population with it that converted and that dropped; the first row is kind 'total'
    (all entities of the population). At most `limit` features, the most frequent."""
    params = Params()
    k = step + 1  # 1-based slot of `step`
    open_until = open_until_sql(funnel.definition, params)
    held = held_sql(
        funnel,
        project,
        start,
        end,
        params,
        f", {open_until} AS open_until",
        value="toString(events.event_id)",
    )
    window = params.bind(funnel.definition.window_seconds * 1000, "Int64")
    end_ms = params.bind(_ms(end), "Int64")
    project_param = params.bind(project, "String")
    entity, join = _entity(funnel, project_param, params, start, end)
    in_range = (
        f"events.timestamp >= {params.bind(start, _DATETIME)} "
        f"AND events.timestamp < {params.bind(end, _DATETIME)}"
    )
    fields = ", ".join(f"('{f}', s.{f})" for f in SESSION_FIELDS)
    sql = f"""
WITH population AS (
    SELECT visitor_id AS entity,
           level > {k} AS converted,
           if(converted, pr[{k + 1}], re[{k}]) AS from_ms,
           if(converted, re[{k + 1}], least(st[{k}] + {window}, {end_ms})) AS until_ms,
           toUUID(vals[{k}]) AS step_event
    FROM ({held}
    )
    WHERE level > {k} OR (level = {k} AND open_until < {params.bind(_ms(now), "Int64")})
),
features AS (
    SELECT DISTINCT p.entity AS entity, p.converted AS converted, 'event' AS kind,
           x.event AS name, '' AS value
    FROM population AS p
    INNER JOIN (
        SELECT {entity} AS entity, events.event AS event,
               toUnixTimestamp64Milli(events.timestamp) AS ms
        FROM events{join}
        WHERE events.project_id = {project_param} AND {in_range}
    ) AS x ON x.entity = p.entity
    WHERE x.ms > p.from_ms AND x.ms < p.until_ms
    UNION ALL
    SELECT p.entity, p.converted, 'property', kv.1, kv.2
    FROM population AS p
    INNER JOIN (
        SELECT event_id, visitor_id, toUnixTimestamp64Milli(timestamp) AS ms, properties
        FROM events
        WHERE project_id = {project_param} AND {in_range.replace("events.", "")}
    ) AS e ON e.event_id = p.step_event
    ARRAY JOIN arrayZip(mapKeys(e.properties), mapValues(e.properties)) AS kv
    UNION ALL
    SELECT entity, converted, 'session', field.1, field.2
    FROM (
        SELECT p.entity AS entity, p.converted AS converted, [{fields}] AS fields
        FROM (
            SELECT p.entity AS entity, p.converted AS converted, e.visitor_id AS visitor,
                   e.ms AS ms
            FROM population AS p
            INNER JOIN (
                SELECT event_id, visitor_id, toUnixTimestamp64Milli(timestamp) AS ms
                FROM events
                WHERE project_id = {project_param} AND {in_range.replace("events.", "")}
            ) AS e ON e.event_id = p.step_event
        ) AS p
        ASOF INNER JOIN (
            SELECT visitor_id, toUnixTimestamp64Milli(started_at) AS started_ms,
                   {", ".join(SESSION_FIELDS)}
            FROM sessions FINAL
            WHERE project_id = {project_param} AND is_deleted = 0
        ) AS s ON p.visitor = s.visitor_id AND p.ms >= s.started_ms
    )
    ARRAY JOIN fields AS field
    WHERE field.2 != ''
)
SELECT 'total' AS kind, '' AS name, '' AS value,
       countIf(converted) AS converted_with, countIf(NOT converted) AS dropped_with
FROM population
UNION ALL
SELECT * FROM (
    SELECT kind, name, value, countIf(converted), countIf(NOT converted)
    FROM features
    GROUP BY kind, name, value
    ORDER BY count() DESC, kind, name, value
    LIMIT {params.bind(limit, "UInt32")}
)""".strip()
    return sql, params.values
