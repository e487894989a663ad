"""The experiment comparison's counts: the report's per-entity evaluation (funnel/sql/
report.py, built from the same compiled definition) grouped by the variant each counted
entity was assigned.

Assignment: a counted entity (visitor, user or session, as the funnel counts) belongs to
the first value of the variant property seen on its events in [from, to) (any event name;
an empty value is no value). An entity seen with two or more values is in no variant: it
is excluded and counted. An entity that entered the funnel without a value is counted as
unassigned.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from funnel.compiled import CompiledFunnel
from funnel.sql.filters import Params
from funnel.sql.report import entity_sql, held_sql
from schemas.funnels import PropertyFilter

# status of a row of experiment_sql
UNASSIGNED, ASSIGNED, SEVERAL_VALUES = 0, 1, 2


def assignment_sql(
    funnel: CompiledFunnel, project: str, start: datetime, end: datetime, prop: str, params: Params
) -> str:
    """Rows (entity, seen, variant) per counted entity with a value of `prop` on an
    event in [start, end): how many distinct values, and the first one (by time, then
    event id)."""
    project_param = params.bind(project, "String")
    entity, join = entity_sql(funnel, project_param, params, start, end)
    value = f"events.properties[{params.bind(prop, 'String')}]"
    return f"""
    SELECT entity AS visitor_id, uniqExact(value) AS seen,
           argMin(value, (timestamp, event_id)) AS variant
    FROM (
        SELECT {entity} AS entity, {value} AS value, events.timestamp AS timestamp,
               events.event_id AS event_id
        FROM events{join}
        WHERE events.project_id = {project_param}
          AND events.timestamp >= {params.bind(start, "DateTime64(3, 'UTC')")}
          AND events.timestamp < {params.bind(end, "DateTime64(3, 'UTC')")}
          AND value != ''
    )
    GROUP BY entity"""


def experiment_sql(
    funnel: CompiledFunnel,
    project: str,
    start: datetime,
    end: datetime,
    prop: str,
    segment: Sequence[PropertyFilter] = (),
) -> tuple[str, dict[str, Any]]:
    """Rows (status, variant, level, entities) over the entities that reached step 1 (and
    are in the segment, if any): status ASSIGNED with the entity's variant, SEVERAL_VALUES
    or UNASSIGNED with variant ''; level is the deepest step held (1-based), as in the
    report."""
    params = Params()
    held = held_sql(funnel, project, start, end, params, segment=segment)
    assigned = assignment_sql(funnel, project, start, end, prop, params)
    sql = f"""
SELECT multiIf(a.seen = 0, {UNASSIGNED}, a.seen = 1, {ASSIGNED}, {SEVERAL_VALUES}) AS status,
       if(status = {ASSIGNED}, a.variant, '') AS variant,
       h.level AS level,
       count() AS entities
FROM ({held}
) AS h
LEFT JOIN ({assigned}
) AS a ON a.visitor_id = h.visitor_id
GROUP BY status, variant, level
ORDER BY status, variant, level
SETTINGS join_use_nulls = 0""".strip()
    return sql, params.values
