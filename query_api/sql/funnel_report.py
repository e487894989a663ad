"""The funnel report over raw events, computed per counted entity inside ClickHouse.

Per entity (visitor, or user after identify), the step entries are sorted and folded with
`arrayFold` by exactly the rule of processor/funnel_stage.py, keeping per step the attempt
(chain) that holds it: when it started, when it reached this step, the event that did, and
when it reached the previous step. Levels agree with the live processor (and with
ClickHouse's `windowFunnel` for funnels whose steps no event matches twice); times to
convert come from the same chains. Per-step windows and exclusions are folded the same
way (query_api/reference.py states the rule in plain Python). Only the project's events in
the time range with the funnel's event names are read, before any per-entity work.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from query_api.sql.filters import Params, match_sql, step_sql
from schemas.funnels import FunnelDefinition

# An unset slot: chain start -1. Slot = (started ms, reached ms, event id, previous step ms).
_EMPTY_SLOT = (
    "(toInt64(-1), toInt64(-1), toUUID('00000000-0000-0000-0000-000000000000'), toInt64(-1))"
)
# A per-step window that never binds.
_NO_LIMIT = 1 << 62


def slots_expression(funnel: FunnelDefinition, window_param: str, params: Params) -> str:
    """arrayFold over sorted entries x = (ts, rank, event id, kind) → Array(slot).

    kind = -step for step entries (sorting on it applies one event's entries deepest
    first, see funnel_stage.py); kind = k (1-based) for exclusion k, whose rank is -1 so
    an exclusion applies before step entries with the same timestamp.
    """
    n = len(funnel.steps)
    positions = f"range(1, {n + 1})"
    set_first = f"arrayMap((s, j) -> if(j = 1, (x.1, x.1, x.3, x.1), s), acc, {positions})"
    extend = (
        f"arrayMap((s, j) -> if(j = 1 - x.4, (acc[-x.4].1, x.1, x.3, acc[-x.4].2), s), "
        f"acc, {positions})"
    )
    can_extend = f"acc[-x.4].1 >= 0 AND x.1 <= acc[-x.4].1 + {window_param}"
    if any(s.within_seconds is not None for s in funnel.steps):
        within = params.bind(
            [
                _NO_LIMIT if s.within_seconds is None else s.within_seconds * 1000
                for s in funnel.steps
            ],
            "Array(Int64)",
        )
        can_extend += f" AND x.1 <= acc[-x.4].2 + {within}[1 - x.4]"
    on_step = f"if(x.4 = 0, {set_first}, if({can_extend}, {extend}, acc))"
    body = on_step
    if funnel.exclusions:
        ranges = [funnel.exclusion_range(x) for x in funnel.exclusions]
        lo = params.bind([a for a, _ in ranges], "Array(Int64)")
        hi = params.bind([b for _, b in ranges], "Array(Int64)")
        # A slot's attempt is as deep as the deepest slot holding the same start; it is
        # discarded (every slot of it) when that depth is in [from_step, to_step).
        depth = "(arrayLastIndex(t -> t.1 = s.1, acc) - 1)"
        clear = (
            f"arrayMap(s -> if(s.1 >= 0 AND {depth} >= {lo}[x.4] AND {depth} < {hi}[x.4], "
            f"{_EMPTY_SLOT}, s), acc)"
        )
        body = f"if(x.4 > 0, {clear}, {on_step})"
    initial = f"arrayMap(i -> {_EMPTY_SLOT}, range({n}))"
    return f"arrayFold((acc, x) -> {body}, arraySort(groupArray((ts, rank, eid, kind))), {initial})"


def _entity(funnel: FunnelDefinition, project_param: str) -> tuple[str, str]:
    """(expression, join clause) naming the counted entity of an event row."""
    if funnel.count_by == "user":
        # After identify: a visitor's events (also those before identify) belong to the
        # user id it most recently identified as; never-identified visitors count alone.
        join = f"""
    LEFT JOIN (
        SELECT visitor_id, argMax(user_id, timestamp) AS identified
        FROM events
        WHERE project_id = {project_param} AND user_id != ''
        GROUP BY visitor_id
    ) AS ids ON ids.visitor_id = events.visitor_id"""
        return "if(ids.identified != '', ids.identified, events.visitor_id)", join
    return "visitor_id", ""


def per_visitor_sql(
    funnel: FunnelDefinition, project: str, start: datetime, end: datetime, params: Params
) -> str:
    """Rows (entity, slots); `visitor_id` holds the counted entity (visitor or user)."""
    n = len(funnel.steps)
    conditions = [step_sql(s, params) for s in funnel.steps]
    conditions += [match_sql(x, params) for x in funnel.exclusions]
    window = params.bind(funnel.window_seconds * 1000, "Int64")
    project_param = params.bind(project, "String")
    entity, join = _entity(funnel, project_param)
    slots = slots_expression(funnel, window, params)
    if funnel.exclusions:
        rank = f"if(matched[1] >= {n}, -1, matched[1])"
        kind = f"if(idx >= {n}, toInt64(idx) - {n} + 1, -toInt64(idx))"
    else:
        rank, kind = "matched[1]", "-toInt64(idx)"
    return f"""
SELECT visitor_id, {slots} AS slots
FROM (
    SELECT {entity} AS visitor_id, toUnixTimestamp64Milli(timestamp) AS ts, event_id AS eid,
           arrayFilter(i -> [{", ".join(conditions)}][i + 1], range({len(conditions)})) AS matched,
           {rank} AS rank,
           arrayJoin(matched) AS idx,
           {kind} AS kind
    FROM events{join}
    WHERE project_id = {project_param}
      AND timestamp >= {params.bind(start, "DateTime64(3, 'UTC')")}
      AND timestamp < {params.bind(end, "DateTime64(3, 'UTC')")}
      AND event IN {params.bind(funnel.event_names(), "Array(String)")}
)
GROUP BY visitor_id""".strip()


def report_sql(
    funnel: FunnelDefinition,
    project: str,
    start: datetime,
    end: datetime,
    now: datetime | None = None,
) -> tuple[str, dict[str, Any]]:
    """Rows per step (1-based): entities reaching it, then times to convert in ms from the
    attempt's step 1 (median, p90, average) and from its previous step (median, p90,
    average), over the attempts holding the step; then entities stopped at this step whose
    attempt can still advance at `now` (in progress, not dropped).

    An entity reaches step k when its deepest held step is >= k (with exclusions a
    discarded attempt can leave a hole below a surviving deeper one).
    """
    params = Params()
    inner = per_visitor_sql(funnel, project, start, end, params)
    open_until = _open_until_sql(funnel, params)
    now_ms = params.bind(int((now or end).timestamp() * 1000), "Int64")
    held = "s.1 >= 0"
    from_start, from_previous = "s.2 - s.1", "s.2 - s.4"
    sql = f"""
SELECT step,
       countIf(level >= step) AS entities,
       quantileExactIf(0.5)({from_start}, {held}) AS median_ms,
       quantileExactIf(0.9)({from_start}, {held}) AS p90_ms,
       avgIf({from_start}, {held}) AS avg_ms,
       quantileExactIf(0.5)({from_previous}, {held}) AS median_from_previous_ms,
       quantileExactIf(0.9)({from_previous}, {held}) AS p90_from_previous_ms,
       avgIf({from_previous}, {held}) AS avg_from_previous_ms,
       countIf(level = step AND step < {len(funnel.steps)} AND {now_ms} <= open_until)
           AS in_progress
FROM (
    SELECT slots, arrayLastIndex(s -> s.1 >= 0, slots) AS level, {open_until} AS open_until
    FROM ({inner})
    WHERE level > 0
)
ARRAY JOIN slots AS s, arrayEnumerate(slots) AS step
GROUP BY step
ORDER BY step""".strip()
    return sql, params.values


def _open_until_sql(funnel: FunnelDefinition, params: Params) -> str:
    """Until when (ms) the entity's deepest attempt can still take its next step."""
    window = params.bind(funnel.window_seconds * 1000, "Int64")
    until = f"slots[level].1 + {window}"
    if any(s.within_seconds is not None for s in funnel.steps):
        within = params.bind(
            [
                _NO_LIMIT if s.within_seconds is None else s.within_seconds * 1000
                for s in funnel.steps[1:]
            ]
            + [_NO_LIMIT],
            "Array(Int64)",
        )
        until = f"least({until}, slots[level].2 + {within}[level])"
    return until


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


TREND_BUCKETS = {"hour": "toStartOfHour", "day": "toStartOfDay", "week": "toMonday"}


def trend_sql(
    funnel: FunnelDefinition, project: str, start: datetime, end: datetime, interval: str
) -> tuple[str, dict[str, Any]]:
    """Rows (bucket start, entities entered, entities converted) by entry time: the start
    of the attempt holding the entity's deepest step, in UTC hour/day/week (Monday)."""
    params = Params()
    inner = per_visitor_sql(funnel, project, start, end, params)
    bucket = TREND_BUCKETS[interval]
    sql = f"""
SELECT toDateTime({bucket}(fromUnixTimestamp64Milli(slots[level].1, 'UTC')), 'UTC') AS bucket,
       count() AS entered,
       countIf(level = {len(funnel.steps)}) AS converted
FROM (
    SELECT slots, arrayLastIndex(s -> s.1 >= 0, slots) AS level
    FROM ({inner})
    WHERE level > 0
)
GROUP BY bucket
ORDER BY bucket""".strip()
    return sql, params.values
