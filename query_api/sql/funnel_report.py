"""The funnel report over raw events, computed per counted entity inside ClickHouse.

Per entity (visitor, or user after identify) the step entries are put in fold order and
evaluated by exactly the rule of processor/funnel_stage.py (stated in plain Python in
query_api/reference.py), keeping per step the attempt that holds it: when it started,
when it reached this step and when it reached the previous step. Two evaluations, chosen
per funnel, compute the same thing:

* **Level passes** (funnels without exclusions; the fast path). Entries are packed into
  one Int64, `(ms - from) * 64 + step`, and one pass per step runs over the whole array
  with vectorized array functions: an entry for step k succeeds if the attempt held at
  step k-1 just before it (a forward fill, `arrayFill`, of the previous pass's
  successes) started within the window (and reached step k-1 within step k's
  `within_seconds`). The held attempt of step k is the last success of pass k. This is
  the fold read column-wise: an entry for step k only ever reads slot k-1, so the passes
  can run one after another instead of entry by entry. When no event can match two
  steps, the event id is never needed to order entries (events tied on timestamp and
  step change the same slot to the same values), so entries sort as plain integers.
* **Fold** (funnels with exclusions, which discard whole attempts across slots): an
  `arrayFold` over sorted entries, one slot array rebuilt per entry. Slower; exact.

Only the project's events in the time range with the funnel's event names are read,
before any per-entity work. Levels agree with the live processor (and with ClickHouse's
`windowFunnel` for funnels whose steps no event matches twice).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from query_api.sql.filters import Params, match_sql, step_sql
from schemas.funnels import FunnelDefinition

# An unset slot in the fold: (started ms, reached ms, reached previous step ms).
_EMPTY_SLOT = "(toInt64(-1), toInt64(-1), toInt64(-1))"
_EMPTY_VALUED_SLOT = "(toInt64(-1), toInt64(-1), toInt64(-1), '', '')"
# A per-step window that never binds.
_NO_LIMIT = 1 << 62
# Packed entry: (ms - from) * 64 + step; 32 steps fit in the low 6 bits.


def one_step_per_event(funnel: FunnelDefinition) -> bool:
    """No event can match two steps (no event name is used by two steps)."""
    seen: set[str] = set()
    for step in funnel.steps:
        names = {m.event for m in step.matchers()}
        if names & seen:
            return False
        seen |= names
    return True


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


def _scan(
    funnel: FunnelDefinition,
    project: str,
    start: datetime,
    end: datetime,
    params: Params,
    columns: str,
) -> str:
    """The event rows a report reads: project, time range and event names first."""
    project_param = params.bind(project, "String")
    entity, join = _entity(funnel, project_param)
    return f"""
    SELECT {entity} AS visitor_id, {columns}
    FROM events{join}
    WHERE project_id = {project_param}
      AND timestamp >= {params.bind(start, "DateTime64(3, 'UTC')")}
      AND timestamp < {params.bind(end, "DateTime64(3, 'UTC')")}
      AND event IN {params.bind(funnel.event_names(), "Array(String)")}"""


def sort_key(major: str, event_id: str, minor: str) -> str:
    """One UInt256 that sorts entries as (major, event id in ClickHouse's UUID order,
    minor): major < 2^64 in the top 64 bits, the UUID (as UInt128, which sorts like the
    UUID) in the middle, minor < 2^64 at the bottom. Sorting one wide integer is much
    cheaper than sorting tuples."""
    return (
        f"bitOr(bitOr(bitShiftLeft(toUInt256({major}), 192), "
        f"bitShiftLeft(toUInt256(reinterpretAsUInt128({event_id})), 64)), toUInt256({minor}))"
    )


def _passes_sql(
    funnel: FunnelDefinition,
    project: str,
    start: datetime,
    end: datetime,
    params: Params,
    value: str | None = None,
) -> str:
    """Rows (visitor_id, st, re, pr) by level passes; see the module docstring. With
    `value` (a String expression per event row), also `firsts` and `vals`: per step, the
    value of the held attempt's step-1 event and of the event holding the step."""
    n = len(funnel.steps)
    conditions = [step_sql(s, params) for s in funnel.steps]
    from_ms = params.bind(_ms(start), "Int64")
    rel = f"(toUnixTimestamp64Milli(timestamp) - {from_ms})"
    if one_step_per_event(funnel) and value is None:
        step = "multiIf(" + ", ".join(f"{c}, {k}" for k, c in enumerate(conditions)) + ", -1)"
        scan = _scan(
            funnel, project, start, end, params, f"{step} AS step, {rel} * 64 + step AS packed"
        )
        entries = f"""
    SELECT visitor_id, arraySort(groupArray(packed)) AS e
    FROM ({scan}
    )
    WHERE step >= 0
    GROUP BY visitor_id"""
    else:
        # Sort key: (ms, first step the event matches), event id, deepest step first.
        # Carried values must follow the event-id order too, so they take this path.
        matched = f"arrayFilter(i -> [{', '.join(conditions)}][i + 1], range({n}))"
        columns = f"{rel} AS rel, event_id AS eid, {matched} AS matched, arrayJoin(matched) AS idx"
        if value is not None:
            columns += f", {value} AS value"
        scan = _scan(funnel, project, start, end, params, columns)
        key = sort_key("rel * 64 + matched[1]", "eid", "63 - idx")
        carried = ""
        if value is not None:
            carried = (
                ",\n           arraySort((v, k) -> k, groupArray(value), groupArray(key)) AS v"
            )
        entries = f"""
    SELECT visitor_id,
           arrayMap(k -> toInt64(bitShiftRight(k, 198)) * 64 + 63 - toInt64(bitAnd(k, 63)),
                    arraySort(groupArray({key} AS key))) AS e{carried}
    FROM ({scan}
    )
    GROUP BY visitor_id"""
    window = funnel.window_seconds * 1000 * 64
    lines = [
        "arrayMap(x -> if(bitAnd(x, 63) = 0, x, -1), e) AS s0",
        "arrayFill(x -> x >= 0, s0) AS f0",
    ]
    for k in range(1, n):
        within = funnel.steps[k].within_seconds
        # x: the entry; a: the packed start of the attempt held at step k-1 just before
        # it (low bits 0); b: that attempt's step k-1 entry (low bits k-1).
        check = f"bitAnd(x, 63) = {k} AND a >= 0 AND x <= a + {window + k}"
        if within is None:
            lines.append(f"arrayMap((x, a) -> if({check}, a, -1), e, f{k - 1}) AS s{k}")
        else:
            check += f" AND x <= b + {within * 1000 * 64 + 1}"
            lines.append(
                f"arrayMap((x, a, b) -> if({check}, a, -1), e, f{k - 1}, g{k - 1}) AS s{k}"
            )
        if k < n - 1:
            lines.append(f"arrayFill(x -> x >= 0, s{k}) AS f{k}")
            lines.append(
                f"arrayFill(x -> x >= 0, arrayMap((x, a) -> if(a >= 0, x, -1), e, s{k})) AS g{k}"
            )
    lines[1] += ", f0 AS g0"
    lines += [f"arrayLastIndex(x -> x >= 0, s{k}) AS i{k}" for k in range(n)]
    if value is not None:
        # q{k}: position of the step-1 entry of the attempt each step-k success extends.
        lines.append("arrayMap((x, j) -> if(bitAnd(x, 63) = 0, j, 0), e, arrayEnumerate(e)) AS q0")
        for k in range(n):
            if k:
                lines.append(f"arrayMap((a, j) -> if(a >= 0, j, 0), s{k}, h{k - 1}) AS q{k}")
            if k < n - 1:
                lines.append(f"arrayFill(x -> x > 0, q{k}) AS h{k}")
        lines.append("[" + ", ".join(f"v[q{k}[i{k}]]" for k in range(n)) + "] AS firsts")
        lines.append("[" + ", ".join(f"v[i{k}]" for k in range(n)) + "] AS vals")

    def unpack(packed: str, k: int) -> str:
        return f"if(i{k} > 0, bitShiftRight({packed}, 6) + {from_ms}, -1)"

    starts = ", ".join(unpack(f"s{k}[i{k}]", k) for k in range(n))
    reached = ", ".join(unpack(f"e[i{k}]", k) for k in range(n))
    previous = ", ".join(unpack("e[i0]" if k == 0 else f"g{k - 1}[i{k}]", k) for k in range(n))
    exprs = ",\n       ".join(lines)
    return f"""
SELECT visitor_id,
       {exprs},
       [{starts}] AS st,
       [{reached}] AS re,
       [{previous}] AS pr
FROM ({entries}
)""".strip()


def _fold_sql(
    funnel: FunnelDefinition,
    project: str,
    start: datetime,
    end: datetime,
    params: Params,
    value: str | None = None,
) -> str:
    """Rows (visitor_id, st, re, pr) by arrayFold over entries x = (ms, kind) sorted by
    (ms, rank, event id, kind): kind = -step for step entries (one event's entries apply
    deepest first), kind = k (1-based) for exclusion k, whose rank -1 puts it before step
    entries at the same millisecond."""
    n = len(funnel.steps)
    conditions = [step_sql(s, params) for s in funnel.steps]
    conditions += [match_sql(x, params) for x in funnel.exclusions]
    window = params.bind(funnel.window_seconds * 1000, "Int64")
    positions = f"range(1, {n + 1})"
    set_first = f"arrayMap((s, j) -> if(j = 1, (x.1, x.1, x.1), s), acc, {positions})"
    extend = (
        f"arrayMap((s, j) -> if(j = 1 - x.2, (acc[-x.2].1, x.1, acc[-x.2].2), s), acc, {positions})"
    )
    can_extend = f"acc[-x.2].1 >= 0 AND x.1 <= acc[-x.2].1 + {window}"
    if any(s.within_seconds is not None for s in funnel.steps):
        within = params.bind(
            [
                _NO_LIMIT if s.within_seconds is None else s.within_seconds * 1000
                for s in funnel.steps
            ],
            "Array(Int64)",
        )
        can_extend += f" AND x.1 <= acc[-x.2].2 + {within}[1 - x.2]"
    on_step = f"if(x.2 = 0, {set_first}, if({can_extend}, {extend}, acc))"
    ranges = [funnel.exclusion_range(x) for x in funnel.exclusions]
    lo = params.bind([a for a, _ in ranges], "Array(Int64)")
    hi = params.bind([b for _, b in ranges], "Array(Int64)")
    # A slot's attempt is as deep as the deepest slot holding the same start; it is
    # discarded (every slot of it) when that depth is in [from_step, to_step).
    depth = "(arrayLastIndex(t -> t.1 = s.1, acc) - 1)"
    clear = (
        f"arrayMap(s -> if(s.1 >= 0 AND {depth} >= {lo}[x.2] AND {depth} < {hi}[x.2], "
        f"{_EMPTY_SLOT}, s), acc)"
    )
    body = f"if(x.2 > 0, {clear}, {on_step})"
    initial = f"arrayMap(i -> {_EMPTY_SLOT}, range({n}))"
    from_ms = params.bind(_ms(start), "Int64")
    key = sort_key(f"(ts - {from_ms}) * 64 + rank + 1", "eid", f"kind + {1 << 32}")
    decode = (
        f"toInt64(bitShiftRight(k, 198)) + {from_ms}, "
        f"toInt64(bitAnd(k, {(1 << 64) - 1})) - {1 << 32}"
    )
    entries = f"arrayMap(k -> ({decode}), arraySort(groupArray({key})))"
    if value is not None:
        # Slots carry (..., value of the attempt's step-1 event, value of this event).
        entries = (
            f"arrayMap((k, v) -> ({decode}, v), arraySort(groupArray({key} AS key)), "
            "arraySort((v, k) -> k, groupArray(value), groupArray(key)))"
        )
        for old, new in (
            ("(x.1, x.1, x.1)", "(x.1, x.1, x.1, x.3, x.3)"),
            (
                "(acc[-x.2].1, x.1, acc[-x.2].2)",
                "(acc[-x.2].1, x.1, acc[-x.2].2, acc[-x.2].4, x.3)",
            ),
            (_EMPTY_SLOT, _EMPTY_VALUED_SLOT),
        ):
            body = body.replace(old, new)
        initial = initial.replace(_EMPTY_SLOT, _EMPTY_VALUED_SLOT)
    fold = f"arrayFold((acc, x) -> {body}, {entries}, {initial})"
    matched = f"arrayFilter(i -> [{', '.join(conditions)}][i + 1], range({len(conditions)}))"
    columns = f"""toUnixTimestamp64Milli(timestamp) AS ts, event_id AS eid,
           {matched} AS matched,
           if(matched[1] >= {n}, -1, matched[1]) AS rank,
           arrayJoin(matched) AS idx,
           if(idx >= {n}, toInt64(idx) - {n} + 1, -toInt64(idx)) AS kind"""
    if value is not None:
        columns += f", {value} AS value"
    scan = _scan(funnel, project, start, end, params, columns)
    carried = ""
    if value is not None:
        carried = ",\n       arrayMap(s -> s.4, slots) AS firsts, arrayMap(s -> s.5, slots) AS vals"
    return f"""
SELECT visitor_id,
       arrayMap(s -> s.1, slots) AS st,
       arrayMap(s -> s.2, slots) AS re,
       arrayMap(s -> s.3, slots) AS pr{carried}
FROM (
    SELECT visitor_id, {fold} AS slots
    FROM ({scan}
    )
    GROUP BY visitor_id
)""".strip()


def per_entity_sql(
    funnel: FunnelDefinition,
    project: str,
    start: datetime,
    end: datetime,
    params: Params,
    value: str | None = None,
) -> str:
    """Rows (visitor_id, st, re, pr) per counted entity with at least one step or
    exclusion event: per step, the held attempt's start, the time it reached the step and
    the time it reached the previous step (ms; -1: no attempt holds the step).
    `visitor_id` holds the counted entity (visitor or user). With `value` (a String
    expression per event row), also `firsts` and `vals`: per step, that value on the held
    attempt's step-1 event and on the event holding the step ('' where none)."""
    if funnel.exclusions:
        return _fold_sql(funnel, project, start, end, params, value)
    return _passes_sql(funnel, project, start, end, params, value)


def per_visitor_sql(
    funnel: FunnelDefinition, project: str, start: datetime, end: datetime, params: Params
) -> str:
    """Rows (entity, slots): slots = Array((started, reached, reached previous)), ms,
    (-1, -1, -1) where no attempt holds the step."""
    inner = per_entity_sql(funnel, project, start, end, params)
    return f"""
SELECT visitor_id, arrayMap((s, r, p) -> (s, r, p), st, re, pr) AS slots
FROM ({inner})""".strip()


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def held_sql(
    funnel: FunnelDefinition,
    project: str,
    start: datetime,
    end: datetime,
    params: Params,
    extra: str = "",
    value: str | None = None,
) -> str:
    """Entities that reached step 1: visitor_id (the entity), st, re, pr, level (1-based
    deepest held step), plus `extra` columns (and firsts, vals with `value`)."""
    inner = per_entity_sql(funnel, project, start, end, params, value)
    carried = ", firsts, vals" if value is not None else ""
    return f"""
    SELECT visitor_id, st, re, pr{carried}, arrayLastIndex(x -> x >= 0, st) AS level{extra}
    FROM ({inner})
    WHERE level > 0"""


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
    discarded attempt can leave a hole below a surviving deeper one). Aggregates are one
    column per step over one row per entity (cheaper than an ARRAY JOIN per step); step 1
    times are 0 by definition (an attempt starts at its step 1), so they are not sorted.
    """
    params = Params()
    n = len(funnel.steps)
    open_until = open_until_sql(funnel, params)
    held = held_sql(funnel, project, start, end, params, f", {open_until} AS open_until")
    now_ms = params.bind(_ms(now or end), "Int64")
    entities = [f"countIf(level >= {k})" for k in range(1, n + 1)]
    in_progress = [f"countIf(level = {k} AND {now_ms} <= open_until)" for k in range(1, n)]
    quantiles: dict[str, list[str]] = {"s": ["[0, 0]"], "p": ["[0, 0]"]}
    averages: dict[str, list[str]] = {"s": ["avgIf(0, st[1] >= 0)"], "p": ["avgIf(0, st[1] >= 0)"]}
    for k in range(2, n + 1):
        for base, column in (("s", "st"), ("p", "pr")):
            value, cond = f"re[{k}] - {column}[{k}]", f"st[{k}] >= 0"
            quantiles[base].append(f"quantilesExactIf(0.5, 0.9)({value}, {cond})")
            averages[base].append(f"avgIf({value}, {cond})")

    def array(items: list[str]) -> str:
        return "[" + ",\n        ".join(items) + "]"

    sql = f"""
SELECT step,
       reach[step] AS entities,
       q_start[step][1] AS median_ms,
       q_start[step][2] AS p90_ms,
       avg_start[step] AS avg_ms,
       q_previous[step][1] AS median_from_previous_ms,
       q_previous[step][2] AS p90_from_previous_ms,
       avg_previous[step] AS avg_from_previous_ms,
       waiting[step] AS in_progress
FROM (
    SELECT {array(entities)} AS reach,
       {array(quantiles["s"])} AS q_start,
       {array(averages["s"])} AS avg_start,
       {array(quantiles["p"])} AS q_previous,
       {array(averages["p"])} AS avg_previous,
       {array([*in_progress, "0"])} AS waiting
    FROM ({held}
    )
)
ARRAY JOIN arrayEnumerate(reach) AS step
ORDER BY step""".strip()
    return sql, params.values


def open_until_sql(funnel: FunnelDefinition, params: Params) -> str:
    """Until when (ms) the entity's deepest attempt can still take its next step."""
    window = params.bind(funnel.window_seconds * 1000, "Int64")
    until = f"st[level] + {window}"
    if any(s.within_seconds is not None for s in funnel.steps):
        within = params.bind(
            [
                _NO_LIMIT if s.within_seconds is None else s.within_seconds * 1000
                for s in funnel.steps[1:]
            ]
            + [_NO_LIMIT],
            "Array(Int64)",
        )
        until = f"least({until}, re[level] + {within}[level])"
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
    held = held_sql(funnel, project, start, end, params)
    bucket = TREND_BUCKETS[interval]
    sql = f"""
SELECT toDateTime({bucket}(fromUnixTimestamp64Milli(st[level], 'UTC')), 'UTC') AS bucket,
       count() AS entered,
       countIf(level = {len(funnel.steps)}) AS converted
FROM ({held}
)
GROUP BY bucket
ORDER BY bucket""".strip()
    return sql, params.values
