"""Retention and repeat purchase: cohorts by the first occurrence of one event, returns by
another, per calendar day, week (from Monday) or month after, in an IANA time zone.

Per counted entity (visitor, or the user a visitor last identified as, as the funnels
count users): its cohort event is its first `start_event` ever stored before `to` (by
time, then event id); the entity is in a cohort when that event falls in [from, to). A
return is a `return_event` strictly later than the cohort event and before `to`; its
period is the number of calendar periods between the cohort event's and the return's
(0: the same day, week or month). Only periods 0..`periods` are counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from funnel.sql.filters import Params
from funnel.sql.report import USER_ENTITY, user_join_sql
from funnel.sql.segments import segment_entities_sql
from schemas.funnels import PropertyFilter

Interval = Literal["day", "week", "month"]
# The calendar period holding a moment, as a Date in the time zone.
_BUCKETS: dict[str, str] = {"day": "toDate", "week": "toMonday", "month": "toStartOfMonth"}
_DATETIME = "DateTime64(3, 'UTC')"


@dataclass(frozen=True, slots=True)
class RetentionQuery:
    project: str
    start: datetime
    end: datetime
    start_event: str
    return_event: str
    interval: Interval
    periods: int
    tz: str
    count_by: Literal["visitor", "user"] = "visitor"
    breakdown: str | None = None
    segment: tuple[PropertyFilter, ...] = ()


def _entity(query: RetentionQuery, project_param: str) -> tuple[str, str]:
    if query.count_by == "user":
        return USER_ENTITY, user_join_sql(project_param, indent=" " * 8)
    return "events.visitor_id", ""


def _periods_between(interval: Interval, first: str, later: str, tz: str) -> str:
    """Calendar periods from the one holding `first` to the one holding `later`."""
    a, b = (f"{_BUCKETS[interval]}({t}, {tz})" for t in (first, later))
    if interval == "week":
        return f"intDiv(dateDiff('day', {a}, {b}), 7)"
    return f"dateDiff('{interval}', {a}, {b})"


def retention_sql(query: RetentionQuery) -> tuple[str, dict[str, Any]]:
    """Rows (kind, cohort, value, period, entities):

    * kind 'on': entities of the cohort (and breakdown value) that returned in `period`;
    * kind 'last': entities of the cohort whose latest return period is `period` (-1: no
      return), from which cohort sizes, returns in a period or later, and repeat rates
      are summed (query_api/cohorts.py).

    `cohort` is the Date of the cohort's period in the time zone; `value` the breakdown
    property on the cohort event ('' without a breakdown)."""
    params = Params()
    project = params.bind(query.project, "String")
    tz = params.bind(query.tz, "String")
    start = params.bind(query.start, _DATETIME)
    end = params.bind(query.end, _DATETIME)
    entity, join = _entity(query, project)
    value = (
        f"events.properties[{params.bind(query.breakdown, 'String')}]"
        if query.breakdown is not None
        else "''"
    )
    period = _periods_between(query.interval, "f.first_at", "r.at", tz)
    members = ""
    if query.segment:
        inside = segment_entities_sql(
            query.segment, entity, join, project, params, query.start, query.end
        )
        members = f"\n       AND entity IN ({inside}\n    )"
    sql = f"""
WITH firsts AS (
    SELECT {entity} AS entity,
           min(events.timestamp) AS first_at,
           argMin({value}, (events.timestamp, events.event_id)) AS value
    FROM events{join}
    WHERE events.project_id = {project}
      AND events.event = {params.bind(query.start_event, "String")}
      AND events.timestamp < {end}
    GROUP BY entity
    HAVING first_at >= {start}{members}
),
returns AS (
    SELECT {entity} AS entity, events.timestamp AS at
    FROM events{join}
    WHERE events.project_id = {project}
      AND events.event = {params.bind(query.return_event, "String")}
      AND events.timestamp >= {start}
      AND events.timestamp < {end}
),
per_entity AS (
    SELECT f.entity AS entity,
           {_BUCKETS[query.interval]}(f.first_at, {tz}) AS cohort,
           f.value AS value,
           arrayFilter(p -> p >= 0 AND p <= {params.bind(query.periods, "Int64")},
                       groupUniqArray(if(r.at > f.first_at, {period}, -1))) AS ps
    FROM firsts AS f
    LEFT JOIN returns AS r ON r.entity = f.entity
    GROUP BY entity, cohort, value
)
SELECT 'on' AS kind, cohort, value, arrayJoin(ps) AS period, count() AS entities
FROM per_entity
GROUP BY cohort, value, period
UNION ALL
SELECT 'last' AS kind, cohort, value, if(empty(ps), -1, arrayMax(ps)) AS period,
       count() AS entities
FROM per_entity
GROUP BY cohort, value, period
ORDER BY kind, cohort, value, period
SETTINGS join_use_nulls = 0""".strip()
    return sql, params.values
