"""The funnel report over raw events, computed per visitor inside ClickHouse.

Per visitor, the step entries are sorted and folded with `arrayFold` by exactly the rule
of processor/funnel_stage.py, keeping per step the chain start and the time it was
reached; levels agree with the live processor (and with ClickHouse's `windowFunnel` for
funnels whose steps no event matches twice), and times to convert come from the same
chains. Only the project's events in the time range with the funnel's event names are
read, before any per-visitor work.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from query_api.sql.filters import Params, step_sql
from schemas.funnels import FunnelDefinition

# An unset slot: chain start -1.
_EMPTY_SLOT = "(toInt64(-1), toInt64(-1), toUUID('00000000-0000-0000-0000-000000000000'))"


def slots_expression(steps: int, window_param: str) -> str:
    """arrayFold over sorted entries x = (ts, first step, event id, -step) → Array(slot).

    Sorting on -step applies one event's entries deepest first (see funnel_stage.py).
    """
    positions = f"range(1, {steps + 1})"
    set_first = f"arrayMap((s, j) -> if(j = 1, (x.1, x.1, x.3), s), acc, {positions})"
    extend = f"arrayMap((s, j) -> if(j = 1 - x.4, (acc[-x.4].1, x.1, x.3), s), acc, {positions})"
    can_extend = f"acc[-x.4].1 >= 0 AND x.1 <= acc[-x.4].1 + {window_param}"
    initial = f"arrayMap(i -> {_EMPTY_SLOT}, range({steps}))"
    return (
        f"arrayFold((acc, x) -> if(x.4 = 0, {set_first}, if({can_extend}, {extend}, acc)), "
        f"arraySort(groupArray((ts, first_step, eid, -toInt64(step)))), {initial})"
    )


def per_visitor_sql(
    funnel: FunnelDefinition, project: str, start: datetime, end: datetime, params: Params
) -> str:
    conditions = ", ".join(step_sql(s, params) for s in funnel.steps)
    window = params.bind(funnel.window_seconds * 1000, "Int64")
    return f"""
SELECT visitor_id, {slots_expression(len(funnel.steps), window)} AS slots
FROM (
    SELECT visitor_id, toUnixTimestamp64Milli(timestamp) AS ts, event_id AS eid,
           arrayFilter(i -> [{conditions}][i + 1], range({len(funnel.steps)})) AS matched,
           matched[1] AS first_step,
           arrayJoin(matched) AS step
    FROM events
    WHERE project_id = {params.bind(project, "String")}
      AND timestamp >= {params.bind(start, "DateTime64(3, 'UTC')")}
      AND timestamp < {params.bind(end, "DateTime64(3, 'UTC')")}
      AND event IN {params.bind(funnel.event_names(), "Array(String)")}
)
GROUP BY visitor_id""".strip()


def report_sql(
    funnel: FunnelDefinition, project: str, start: datetime, end: datetime
) -> tuple[str, dict[str, Any]]:
    """Rows (step 1-based, visitors reaching it, median ms from the chain start)."""
    params = Params()
    inner = per_visitor_sql(funnel, project, start, end, params)
    sql = f"""
SELECT step, count() AS visitors, quantileExact(0.5)(s.2 - s.1) AS median_ms
FROM ({inner})
ARRAY JOIN slots AS s, arrayEnumerate(slots) AS step
WHERE s.1 >= 0
GROUP BY step
ORDER BY step""".strip()
    return sql, params.values


def levels_sql(
    funnel: FunnelDefinition, project: str, start: datetime, end: datetime
) -> tuple[str, dict[str, Any]]:
    """Per visitor: ClickHouse's own windowFunnel level (default mode), the cross-check of
    the fold for funnels whose steps no single event can match twice."""
    params = Params()
    conditions = ", ".join(step_sql(s, params) for s in funnel.steps)
    window = params.bind(funnel.window_seconds * 1000, "UInt64")
    sql = f"""
SELECT visitor_id,
       windowFunnel({window})(toUInt64(toUnixTimestamp64Milli(timestamp)), {conditions}) AS level
FROM events
WHERE project_id = {params.bind(project, "String")}
  AND timestamp >= {params.bind(start, "DateTime64(3, 'UTC')")}
  AND timestamp < {params.bind(end, "DateTime64(3, 'UTC')")}
  AND event IN {params.bind(funnel.event_names(), "Array(String)")}
GROUP BY visitor_id""".strip()
    return sql, params.values
