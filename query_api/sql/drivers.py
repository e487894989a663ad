"""Conversion drivers' counts: for one funnel step, what the entities that went on to the
next step did or had, against those that dropped. Built on the report's per-entity
evaluation (funnel/sql/report.py), from the same compiled definition.

The population: entities whose deepest step is at least `step` (0-based), either
converted (reached step + 1) or dropped there (deepest step `step` and their attempt can
no longer advance); entities still in progress are left out.

Features, each counted once per entity, read in one pass over the population:
* `event`: an event name the entity sent after reaching `step` and before reaching the
  next step (converted) or before its attempt's window closed or `to` (dropped);
* `property`: a property (key=value) of the event holding `step`;
* `session`: a field of the session that event belongs to (utm_source, device, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from funnel.compiled import CompiledFunnel
from funnel.sql.filters import Params
from funnel.sql.report import held_sql, open_until_sql
from query_api.sql.analysis import SESSION_FIELDS, _entity
from schemas.funnels import PropertyFilter

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
    segment: Sequence[PropertyFilter] = (),
) -> tuple[str, dict[str, Any]]:
    """Rows (kind, name, value, converted, dropped): per feature, entities of the
    population (in the segment, if any) with it that converted and that dropped; the
    first row is kind 'total' (all entities of the population). At most `limit` features,
    the most frequent."""
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
        segment=segment,
    )
    window = params.bind(funnel.definition.window_seconds * 1000, "Int64")
    end_ms = params.bind(_ms(end), "Int64")
    project_param = params.bind(project, "String")
    entity, join = _entity(funnel, project_param, params, start, end)
    in_range = (
        f"events.timestamp >= {params.bind(start, _DATETIME)} "
        f"AND events.timestamp < {params.bind(end, _DATETIME)}"
    )
    fields = ", ".join(f"('session', '{f}', s.{f})" for f in SESSION_FIELDS)
    plain = in_range.replace("events.", "")
    # One pass over the population (a CTE read twice is computed twice): each entity's
    # features as one array of (kind, name, value), a 'total' entry for everyone.
    sql = f"""
WITH population AS (
    SELECT visitor_id AS entity,
           level > {k} AS converted,
           if(converted, pr[{k + 1}], re[{k}]) AS from_ms,
           if(converted, re[{k + 1}], least(st[{k}] + {window}, {end_ms})) AS until_ms,
           toUUID(vals[{k}]) AS step_event
    FROM ({held}
    )
    WHERE (level > {k} OR (level = {k} AND open_until < {params.bind(_ms(now), "Int64")}))
)
SELECT feature.1 AS kind, feature.2 AS name, feature.3 AS value,
       countIf(converted) AS converted_with, countIf(NOT converted) AS dropped_with
FROM (
    SELECT p.converted AS converted,
           arrayJoin(arrayConcat(
               [('total', '', '')],
               arrayMap(n -> ('event', n, ''), arrayDistinct(arrayFilter(
                   (n, ms) -> ms > p.from_ms AND ms < p.until_ms, x.names, x.times))),
               arrayMap(kv -> ('property', kv.1, kv.2),
                        arrayZip(mapKeys(e.properties), mapValues(e.properties))),
               arrayFilter(f -> f.3 != '', [{fields}])
           )) AS feature
    FROM population AS p
    LEFT JOIN (
        SELECT entity, groupArray(event) AS names, groupArray(ms) AS times
        FROM (
            SELECT {entity} AS entity, toString(events.event) AS event,
                   toUnixTimestamp64Milli(events.timestamp) AS ms
            FROM events{join}
            WHERE events.project_id = {project_param} AND {in_range}
        )
        GROUP BY entity
    ) AS x ON x.entity = p.entity
    LEFT JOIN (
        SELECT event_id, visitor_id, toUnixTimestamp64Milli(timestamp) AS ms, properties
        FROM events
        WHERE project_id = {project_param} AND {plain}
    ) AS e ON e.event_id = p.step_event
    LEFT ASOF JOIN (
        SELECT visitor_id, toUnixTimestamp64Milli(started_at) AS started_ms,
               {", ".join(SESSION_FIELDS)}
        FROM sessions FINAL
        WHERE project_id = {project_param} AND is_deleted = 0
    ) AS s ON e.visitor_id = s.visitor_id AND e.ms >= s.started_ms
)
GROUP BY kind, name, value
ORDER BY kind = 'total' DESC, count() DESC, kind, name, value
LIMIT {params.bind(limit + 1, "UInt32")}""".strip()
    return sql, params.values
