"""The funnel report over raw events, computed per counted entity inside ClickHouse.

Per entity (visitor, or user after identify) the step entries are put in fold order and
evaluated by exactly the rule of funnel/fold.py (stated in plain Python by the test
oracle, tests/oracle/funnel_reference.py), keeping per step the attempt that holds it:
when it started, when it reached this step and when it reached the previous step. Two
evaluations, chosen per funnel, compute the same thing:

* **Level passes** (funnels without exclusions; the fast path). Entries are packed into
  one Int64, `(ms - from) * 64 + step`, and one pass per step runs over the whole array
  with vectorized array functions: an entry for step k succeeds if the attempt held at
  step k-1 just before it (a forward fill, `arrayFill`, of the previous pass's
  successes; for step 0 a running sum that restarts at each step-0 entry) started
  within the window (and reached step k-1 within step k's `within_seconds`). The held
  attempt of step k is the last success of pass k. This is the fold read column-wise:
  an entry for step k only ever reads slot k-1, so the passes can run one after another
  instead of entry by entry. When no event can match two steps, the event id is never
  needed to order entries (events tied on timestamp and step change the same slot to the
  same values), so entries sort as plain integers. The report reads one column per step
  from these rows.
* **Fold** (funnels with exclusions, which discard whole attempts across slots; strict
  order, where any other event breaks an attempt; optional steps, where an entry picks
  among several slots): an `arrayFold` over sorted entries, one slot array rebuilt per
  entry. Slower; exact.
* **Any order**: per entry, the attempt starting there (its first entry per step within
  the window), then per slot the latest attempt with that many steps. Quadratic; exact.

With `hold_property`, each (entity, value) is evaluated on its own and the rows merged
per entity (`_hold_sql`). With `count_by: "session"`, sessions are computed from the
visitor's events in the range (`entity_sql`).

Only the project's events in the time range with the funnel's event names (all names,
for strict order) are read, before any per-entity work. With a segment, only the events of
entities in it (funnel/sql/segments.py): one condition in `_scan`, so every report built on
these rows (report, trend, breakdown, drop-off, time to convert, forecast, experiment,
drivers) takes it.

Every query is built from the compiled definition (funnel/compiled.py): step conditions
from its compiled matchers, sessions split at its session gap. Each function below returns
one clause, expression or subquery; `per_entity_sql` chooses the evaluation and
`report_sql` composes the report from it. Levels agree with the live
processor for every option (and with ClickHouse's `windowFunnel` for funnels whose
steps no event matches twice).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from funnel.compiled import CompiledFunnel
from funnel.sql.filters import Params, step_sql
from funnel.sql.segments import segment_entities_sql
from schemas.funnels import FunnelDefinition, PropertyFilter

# A per-step window that never binds.
_NO_LIMIT = 1 << 62
# Packed entry: (ms - from) * 64 + step; 32 steps fit in the low 6 bits.
# Added to a running sum of packed differences (>= 0, < 2^62) it makes the sum negative,
# so arrayCumSumNonNegative starts again from 0 there.
_RESTART = (1 << 63) - 1

_MS = "toUnixTimestamp64Milli(timestamp)"
_DATETIME = "DateTime64(3, 'UTC')"


@dataclass(frozen=True, slots=True)
class Scope:
    """What every clause of one query reads: the compiled funnel, the project, the time
    range and the query's bound parameters (bound in the order the clauses are built)."""

    compiled: CompiledFunnel
    project: str
    start: datetime
    end: datetime
    params: Params
    # Segment filters: only entities with an event in [start, end) on which all hold.
    segment: tuple[PropertyFilter, ...] = ()

    @property
    def funnel(self) -> FunnelDefinition:
        return self.compiled.definition

    def bind(self, value: Any, type_name: str) -> str:
        return self.params.bind(value, type_name)

    def conditions(self) -> list[str]:
        """Per step, its condition on an event row."""
        return [step_sql(s, self.params) for s in self.compiled.steps]

    def window(self) -> str:
        return self.bind(self.funnel.window_seconds * 1000, "Int64")

    def from_ms(self) -> str:
        return self.bind(_ms(self.start), "Int64")


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _where(conditions: list[str], indent: str = "    ") -> str:
    return f"{indent}WHERE " + f"\n{indent}  AND ".join(conditions)


def one_step_per_event(funnel: FunnelDefinition) -> bool:
    """No event can match two steps (no event name is used by two steps)."""
    seen: set[str] = set()
    for step in funnel.steps:
        names = {m.event for m in step.matchers()}
        if names & seen:
            return False
        seen |= names
    return True


# --- The counted entity ------------------------------------------------------------------


def _in_range(params: Params, start: datetime, end: datetime) -> list[str]:
    return [
        f"timestamp >= {params.bind(start, _DATETIME)}",
        f"timestamp < {params.bind(end, _DATETIME)}",
    ]


def session_join_sql(
    gap_ms: int, project_param: str, params: Params, start: datetime, end: datetime
) -> str:
    """The join clause naming each event's session: per visitor, from its events in
    [start, end) (every event name), a session starts at the first event and at every event
    `gap_ms` or more after the previous one (the processor's sessionizer rule)."""
    frame = (
        "PARTITION BY visitor_id ORDER BY timestamp "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"
    )
    where = _where([f"project_id = {project_param}", *_in_range(params, start, end)], " " * 12)
    return f"""
    ANY LEFT JOIN (
        SELECT event_id AS session_event,
               concat(visitor_id, '#', toString(sum(new) OVER ({frame}))) AS session
        FROM (
            SELECT event_id, visitor_id, timestamp,
                   if({_MS} - lagInFrame({_MS}) OVER ({frame}) >= {gap_ms}, 1, 0) AS new
            FROM events
{where}
        )
    ) AS sessions ON sessions.session_event = events.event_id"""


def user_join_sql(project_param: str, indent: str = "    ") -> str:
    """The join clause naming each event's user: after identify, a visitor's events (also
    those before identify) belong to the user id it most recently identified as."""
    lines = [
        "LEFT JOIN (",
        "    SELECT visitor_id, argMax(user_id, timestamp) AS identified",
        "    FROM events",
        f"    WHERE project_id = {project_param} AND user_id != ''",
        "    GROUP BY visitor_id",
        ") AS ids ON ids.visitor_id = events.visitor_id",
    ]
    return "".join(f"\n{indent}{line}" for line in lines)


# Never-identified visitors count alone.
USER_ENTITY = "if(ids.identified != '', ids.identified, events.visitor_id)"


def entity_sql(
    funnel: CompiledFunnel, project_param: str, params: Params, start: datetime, end: datetime
) -> tuple[str, str]:
    """(expression, join clause) naming the counted entity of an event row.

    `count_by: "session"`: the visitor's session (`session_join_sql`, split at the
    compiled session gap); the entity is `<visitor id>#<session number>`, numbered from 1
    in time order. `count_by: "user"`: the user (`user_join_sql`). Else the visitor.
    """
    count_by = funnel.definition.count_by
    if count_by == "session":
        join = session_join_sql(funnel.session_gap_ms, project_param, params, start, end)
        return "sessions.session", join
    if count_by == "user":
        return USER_ENTITY, user_join_sql(project_param)
    return "visitor_id", ""


def _scan(scope: Scope, columns: str) -> str:
    """The event rows a report reads: project, time range and event names first (every
    event name for `order: "strict"`, where any other event breaks an attempt)."""
    funnel, params = scope.funnel, scope.params
    project_param = scope.bind(scope.project, "String")
    entity, join = entity_sql(scope.compiled, project_param, params, scope.start, scope.end)
    where = [f"project_id = {project_param}", *_in_range(params, scope.start, scope.end)]
    if scope.segment:
        members = segment_entities_sql(
            scope.segment, entity, join, project_param, params, scope.start, scope.end
        )
        # Qualified: the SELECT below names its entity column visitor_id too.
        counted = "events.visitor_id" if entity == "visitor_id" else entity
        where.append(f"{counted} IN ({members}\n    )")
    if funnel.hold_property is not None:
        # (entity, held value): each value's attempts are evaluated apart (_hold_sql).
        entity = f"({entity}, events.properties[{scope.bind(funnel.hold_property, 'String')}])"
    if funnel.order != "strict":
        where.append(f"event IN {scope.bind(funnel.event_names(), 'Array(String)')}")
    return f"""
    SELECT {entity} AS visitor_id, {columns}
    FROM events{join}
{_where(where)}"""


def sort_key(major: str, event_id: str, minor: str) -> str:
    """One UInt256 that sorts entries as (major, event id in ClickHouse's UUID order,
    minor): major < 2^64 in the top 64 bits, the UUID (as UInt128, which sorts like the
    UUID) in the middle, minor < 2^64 at the bottom. Sorting one wide integer is much
    cheaper than sorting tuples."""
    return (
        f"bitOr(bitOr(bitShiftLeft(toUInt256({major}), 192), "
        f"bitShiftLeft(toUInt256(reinterpretAsUInt128({event_id})), 64)), toUInt256({minor}))"
    )


def _carried_values(indent: str = "           ") -> str:
    """Per entity, the held values of its entries in entry order (sorted by `key`)."""
    return f",\n{indent}arraySort((v, k) -> k, groupArray(value), groupArray(key)) AS v"


# --- Level passes ------------------------------------------------------------------------


def _packed_entries_sql(scope: Scope, conditions: list[str], rel: str) -> str:
    """Per entity, its entries packed as plain integers (no event matches two steps, so
    the event id never orders them)."""
    step = "multiIf(" + ", ".join(f"{c}, {k}" for k, c in enumerate(conditions)) + ", -1)"
    scan = _scan(scope, f"{step} AS step, {rel} * 64 + step AS packed")
    return f"""
    SELECT visitor_id, arraySort(groupArray(packed)) AS e
    FROM ({scan}
    )
    WHERE step >= 0
    GROUP BY visitor_id"""


def _keyed_entries_sql(scope: Scope, conditions: list[str], rel: str, value: str | None) -> str:
    """Per entity, its entries packed from a sort key: (ms, first step the event matches),
    event id, deepest step first. Carried values must follow the event-id order too, so
    they take this path."""
    n = len(conditions)
    matched = f"arrayFilter(i -> [{', '.join(conditions)}][i + 1], range({n}))"
    columns = f"{rel} AS rel, event_id AS eid, {matched} AS matched, arrayJoin(matched) AS idx"
    if value is not None:
        columns += f", {value} AS value"
    scan = _scan(scope, columns)
    key = sort_key("rel * 64 + matched[1]", "eid", "63 - idx")
    carried = _carried_values() if value is not None else ""
    return f"""
    SELECT visitor_id,
           arrayMap(k -> toInt64(bitShiftRight(k, 198)) * 64 + 63 - toInt64(bitAnd(k, 63)),
                    arraySort(groupArray({key} AS key))) AS e{carried}
    FROM ({scan}
    )
    GROUP BY visitor_id"""


def _pass_lines(funnel: FunnelDefinition) -> list[str]:
    """The passes: f0 (step 0), then per step k the successes s{k}, their forward fill f{k}
    and, where step k+1 has its own window, g{k}."""
    n = len(funnel.steps)
    window = funnel.window_seconds * 1000 * 64
    # f0: the packed start of the latest attempt started at or before each entry. A forward
    # fill done as a running sum that restarts at every step-0 entry (cheaper than
    # arrayFill): entries' milliseconds never decrease and a start's low bits are 0, so the
    # sum (x - f0) never goes below 0 after the first step-0 entry; before it, where a
    # negative difference restarts the sum too, f0 is an entry of another step (low bits
    # not 0), which no step-1 entry takes as a start.
    lines = [
        "arrayMap((x, g) -> x - g, e, arrayCumSumNonNegative(arrayMap((x, d) -> "
        f"if(bitAnd(x, 63) = 0, {-_RESTART}, d), e, arrayDifference(e)))) AS f0, f0 AS g0",
    ]
    for k in range(1, n):
        within = funnel.steps[k].within_seconds
        # x: the entry; a: the packed start of the attempt held at step k-1 just before
        # it (low bits 0); b: that attempt's step k-1 entry (low bits k-1).
        held = "bitAnd(a, 63) = 0" if k == 1 else "a >= 0"
        check = f"bitAnd(x, 63) = {k} AND {held} AND x <= a + {window + k}"
        if within is None:
            lines.append(f"arrayMap((x, a) -> if({check}, a, -1), e, f{k - 1}) AS s{k}")
        else:
            check += f" AND x <= b + {within * 1000 * 64 + 1}"
            lines.append(
                f"arrayMap((x, a, b) -> if({check}, a, -1), e, f{k - 1}, g{k - 1}) AS s{k}"
            )
        if k < n - 1:
            lines.append(f"arrayFill(x -> x >= 0, s{k}) AS f{k}")
            if funnel.steps[k + 1].within_seconds is not None:
                # g{k}: the packed step-k entry of the attempt held at step k, carried
                # forward (only a per-step window on step k+1 needs it at every entry).
                lines.append(
                    f"arrayFill(x -> x >= 0, arrayMap((x, a) -> if(a >= 0, x, -1), e, s{k}))"
                    f" AS g{k}"
                )
    return lines


def _pass_attempts(n: int) -> str:
    """Attempts (distinct starts, by millisecond) that reached each step; step-0
    successes are the step-0 entries themselves."""
    successes = ["arrayFilter(x -> bitAnd(x, 63) = 0, e)"]
    successes += [f"arrayFilter(x -> x >= 0, s{k})" for k in range(1, n)]
    counts = ", ".join(f"length(arrayDistinct({s}))" for s in successes)
    return f"[{counts}] AS attempts"


def _pass_held_indexes(n: int) -> list[str]:
    """i{k}: the position of the last success of pass k (the entry holding step k)."""
    return ["arrayLastIndex(x -> bitAnd(x, 63) = 0, e) AS i0"] + [
        f"arrayLastIndex(x -> x >= 0, s{k}) AS i{k}" for k in range(1, n)
    ]


def _pass_values(n: int) -> list[str]:
    """firsts, vals: per step, the value of the held attempt's step-1 event and of the
    event holding the step. q{k}: position of the step-1 entry of the attempt each step-k
    success extends."""
    lines = ["arrayMap((x, j) -> if(bitAnd(x, 63) = 0, j, 0), e, arrayEnumerate(e)) AS q0"]
    for k in range(n):
        if k:
            lines.append(f"arrayMap((a, j) -> if(a >= 0, j, 0), s{k}, h{k - 1}) AS q{k}")
        if k < n - 1:
            lines.append(f"arrayFill(x -> x > 0, q{k}) AS h{k}")
    lines.append("[" + ", ".join(f"v[q{k}[i{k}]]" for k in range(n)) + "] AS firsts")
    lines.append("[" + ", ".join(f"v[i{k}]" for k in range(n)) + "] AS vals")
    return lines


def _pass_scalars(n: int, from_ms: str) -> list[str]:
    """One scalar column per step and value (st1, re1, pr1, ...; the report reads these)."""

    def unpack(packed: str, k: int) -> str:
        return f"if(i{k} > 0, bitShiftRight({packed}, 6) + {from_ms}, -1)"

    def previous_entry(k: int) -> str:
        # The step k-1 entry the step-k entry at i{k} extended: the last step k-1 success
        # before it (one lookup instead of carrying it forward through every entry). For
        # step 1 that is the attempt's start.
        if k < 2:
            return "e[i0]" if k == 0 else "s1[i1]"
        return f"e[arrayLastIndex(x -> x >= 0, arraySlice(s{k - 1}, 1, i{k}))]"

    scalars = []
    for k in range(n):
        start_entry = "e[i0]" if k == 0 else f"s{k}[i{k}]"
        scalars.append(
            f"{unpack(start_entry, k)} AS st{k + 1}, {unpack(f'e[i{k}]', k)} AS re{k + 1}, "
            f"{unpack(previous_entry(k), k)} AS pr{k + 1}"
        )
    return scalars


def _passes_sql(scope: Scope, value: str | None = None) -> str:
    """Rows (visitor_id, st, re, pr) by level passes; see the module docstring. With
    `value` (a String expression per event row), also `firsts` and `vals`: per step, the
    value of the held attempt's step-1 event and of the event holding the step."""
    funnel = scope.funnel
    n = len(funnel.steps)
    conditions = scope.conditions()
    from_ms = scope.from_ms()
    rel = f"({_MS} - {from_ms})"
    if one_step_per_event(funnel) and value is None:
        entries = _packed_entries_sql(scope, conditions, rel)
    else:
        entries = _keyed_entries_sql(scope, conditions, rel, value)
    lines = _pass_lines(funnel)
    if funnel.counting == "total":
        lines.append(_pass_attempts(n))
    lines += _pass_held_indexes(n)
    if value is not None:
        lines += _pass_values(n)
    exprs = ",\n       ".join(lines + _pass_scalars(n, from_ms))

    def array(column: str) -> str:
        return "[" + ", ".join(f"{column}{k}" for k in range(1, n + 1)) + f"] AS {column}"

    return f"""
SELECT visitor_id,
       {exprs},
       {array("st")}, {array("re")}, {array("pr")}
FROM ({entries}
)""".strip()


# --- Fold --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FoldShape:
    """Field positions and tuple templates of the fold: entry (ms, kind[, ordinal][,
    value]); slot (started, reached, reached previous[, ordinal][, step-1 value, value])."""

    strict: bool
    values: bool

    @property
    def entry_value(self) -> int:
        return 4 if self.strict else 3

    @property
    def slot_value(self) -> int:
        return 5 if self.strict else 4

    def started(self) -> str:
        """The slot an entry of step 0 fills: a new attempt."""
        ordinal = ", x.3" if self.strict else ""
        values = f", x.{self.entry_value}, x.{self.entry_value}" if self.values else ""
        return f"(x.1, x.1, x.1{ordinal}{values})"

    def extended(self, source: str) -> str:
        """The slot an entry fills by extending the attempt in slot `source`."""
        ordinal = ", x.3" if self.strict else ""
        values = f", {source}.{self.slot_value}, x.{self.entry_value}" if self.values else ""
        return f"({source}.1, x.1, {source}.2{ordinal}{values})"

    def empty(self) -> str:
        ordinal = ", toInt64(-1)" if self.strict else ""
        values = ", '', ''" if self.values else ""
        return f"(toInt64(-1), toInt64(-1), toInt64(-1){ordinal}{values})"


def _can_extend(source: str, window: str, within: str | None, strict: bool) -> str:
    """Whether the entry x may extend the attempt in slot `source`: it holds an attempt
    started within the window (and reached its step within the entry's step window); in
    strict order only if that step's event came right before x."""
    ok = f"{source}.1 >= 0 AND x.1 <= {source}.1 + {window}"
    if within is not None:
        ok += f" AND x.1 <= {source}.2 + {within}[1 - x.2]"
    if strict:
        ok += f" AND {source}.4 = x.3 - 1"
    return ok


def _fold_on_step(scope: Scope, shape: _FoldShape, window: str) -> str:
    """The fold's update for a step entry (x.2 = -step)."""
    funnel = scope.funnel
    n = len(funnel.steps)
    positions = f"range(1, {n + 1})"
    set_first = f"arrayMap((s, j) -> if(j = 1, {shape.started()}, s), acc, {positions})"
    within = None
    if any(s.within_seconds is not None for s in funnel.steps):
        within = scope.bind(
            [
                _NO_LIMIT if s.within_seconds is None else s.within_seconds * 1000
                for s in funnel.steps
            ],
            "Array(Int64)",
        )

    def extend(source: str) -> str:
        return f"arrayMap((s, j) -> if(j = 1 - x.2, {shape.extended(source)}, s), acc, {positions})"

    if not any(s.optional for s in funnel.steps):
        ok = _can_extend("acc[-x.2]", window, within, shape.strict)
        return f"if(x.2 = 0, {set_first}, if({ok}, {extend('acc[-x.2]')}, acc))"
    # Candidate slots (1-based) per step: k-1 and those reached by skipping optional
    # steps; of the ones that may take the entry, the latest start (then the deepest).
    sources = scope.bind(
        [[]] + [[j + 1 for j in funnel.sources(k)] for k in range(1, n)],
        "Array(Array(Int64))",
    )
    ok = _can_extend("acc[j]", window, within, shape.strict)
    pick = f"arrayReverseSort(j -> (acc[j].1, j), arrayFilter(j -> {ok}, {sources}[1 - x.2]))[1]"
    return (
        f"if(x.2 = 0, {set_first}, "
        f"arrayMap(src -> if(src > 0, {extend('acc[src]')}, acc), [{pick}])[1])"
    )


def _fold_body(scope: Scope, shape: _FoldShape, window: str) -> str:
    """The fold's update for one entry: exclusion k (x.2 = k), another event (strict
    order, x.2 = exclusions + 1) or a step."""
    funnel = scope.funnel
    on_step = _fold_on_step(scope, shape, window)
    m = len(funnel.exclusions)
    if not m:
        return f"if(x.2 > 0, acc, {on_step})"
    ranges = [funnel.exclusion_range(x) for x in funnel.exclusions]
    lo = scope.bind([a for a, _ in ranges], "Array(Int64)")
    hi = scope.bind([b for _, b in ranges], "Array(Int64)")
    # A slot's attempt is as deep as the deepest slot holding the same start; it is
    # discarded (every slot of it) when that depth is in [from_step, to_step).
    depth = "(arrayLastIndex(t -> t.1 = s.1, acc) - 1)"
    clear = (
        f"arrayMap(s -> if(s.1 >= 0 AND {depth} >= {lo}[x.2] AND {depth} < {hi}[x.2], "
        f"{shape.empty()}, s), acc)"
    )
    body = f"if(x.2 > 0, {clear}, {on_step})"
    if shape.strict:
        body = f"if(x.2 > {m}, acc, {body})"
    return body


def _fold_entries(scope: Scope, shape: _FoldShape) -> tuple[str, str]:
    """(entries, tail column): per entity, its entries sorted by (ms, rank, event id,
    kind), decoded from one sort key each; in strict order with each entry's event ordinal
    (and `last`, the last event's ordinal); with values, the held values."""
    from_ms = scope.from_ms()
    key = sort_key(f"(ts - {from_ms}) * 64 + rank + 1", "eid", f"kind + {1 << 32}")
    decode = (
        f"toInt64(bitShiftRight(k, 198)) + {from_ms}, "
        f"toInt64(bitAnd(k, {(1 << 64) - 1})) - {1 << 32}"
    )
    if not shape.strict and not shape.values:
        return f"arrayMap(k -> ({decode}), arraySort(groupArray({key})))", ""
    names, fields, arrays = ["k"], [decode], [f"arraySort(groupArray({key} AS key))"]
    tail = ""
    if shape.strict:
        # Ordinal of each entry's event: one event's entries are adjacent and share
        # (ms, rank, event id), the key's top 192 bits.
        arrays[0] = f"({arrays[0]} AS ks)"
        new_event = "i = 1 OR bitShiftRight(k, 64) != bitShiftRight(ks[i - 1], 64)"
        ordinals = f"arrayCumSum(arrayMap((k, i) -> toInt64({new_event}), ks, arrayEnumerate(ks)))"
        names.append("o")
        fields.append("o")
        arrays.append(f"({ordinals} AS ords)")
        tail = ", ords[-1] AS last"
    if shape.values:
        names.append("v")
        fields.append("v")
        arrays.append("arraySort((v, k) -> k, groupArray(value), groupArray(key))")
    entries = f"arrayMap(({', '.join(names)}) -> ({', '.join(fields)}), {', '.join(arrays)})"
    return entries, tail


def _fold_scan_columns(conditions: list[str], n: int, strict: bool, value: str | None) -> str:
    """The fold's columns per event row: one row per step or exclusion it matches (kind:
    -step, or exclusion k 1-based) with its rank (first step matched, -1 for exclusions);
    in strict order an event matching nothing is one row too."""
    matched = f"arrayFilter(i -> [{', '.join(conditions)}][i + 1], range({len(conditions)}))"
    if strict:
        # An event matching no step or exclusion is an entry too: it breaks attempts.
        matched = (
            f"arrayResize(({matched} AS found), greatest(1, length(found)), {len(conditions)})"
        )
    columns = f"""toUnixTimestamp64Milli(timestamp) AS ts, event_id AS eid,
           {matched} AS matched,
           if(matched[1] >= {n}, -1, matched[1]) AS rank,
           arrayJoin(matched) AS idx,
           if(idx >= {n}, toInt64(idx) - {n} + 1, -toInt64(idx)) AS kind"""
    if value is not None:
        columns += f", {value} AS value"
    return columns


def _fold_sql(scope: Scope, value: str | None = None) -> str:
    """Rows (visitor_id, st, re, pr) by arrayFold over entries x = (ms, kind) sorted by
    (ms, rank, event id, kind): kind = -step for step entries (one event's entries apply
    deepest first), kind = k (1-based) for exclusion k, whose rank -1 puts it before step
    entries at the same millisecond.

    With `order: "strict"` every event of the entity is an entry (kind = exclusions + 1 and
    rank -1 for an event matching nothing), entries carry the event's ordinal among the
    entity's events (x.3) and slots the ordinal of the event that reached them: step k
    extends slot k-1 only if that event came immediately before. `tail` says, per slot,
    whether its event is the entity's last one (else its attempt can never advance)."""
    funnel, compiled = scope.funnel, scope.compiled
    n = len(funnel.steps)
    shape = _FoldShape(strict=funnel.order == "strict", values=value is not None)
    conditions = scope.conditions()
    conditions += [step_sql(x, scope.params) for x in compiled.exclusions]
    window = scope.window()
    body = _fold_body(scope, shape, window)
    initial = f"arrayMap(i -> {shape.empty()}, range({n}))"
    entries, tail = _fold_entries(scope, shape)
    fold = f"arrayFold((acc, x) -> {body}, {entries}, {initial})"
    scan = _scan(scope, _fold_scan_columns(conditions, n, shape.strict, value))
    carried = ""
    if value is not None:
        sv = shape.slot_value
        carried = (
            f",\n       arrayMap(s -> s.{sv}, slots) AS firsts, "
            f"arrayMap(s -> s.{sv + 1}, slots) AS vals"
        )
    if shape.strict:
        carried += ",\n       arrayMap(s -> s.4 = last, slots) AS tail"
    return f"""
SELECT visitor_id,
       arrayMap(s -> s.1, slots) AS st,
       arrayMap(s -> s.2, slots) AS re,
       arrayMap(s -> s.3, slots) AS pr{carried}
FROM (
    SELECT visitor_id, {fold} AS slots{tail}
    FROM ({scan}
    )
    GROUP BY visitor_id
)""".strip()


# --- Any order ---------------------------------------------------------------------------


def _any_order_sql(scope: Scope, value: str | None = None) -> str:
    """Rows (visitor_id, st, re, pr) for `order: "any"` (no event name is used by two
    steps, so an event matches at most one step). Entries sort as (ms, step, event id);
    the attempt starting at entry i covers the entries from i on within the window and,
    per step, takes its first entry there: `att[i]` lists them as (ms, step, position),
    sorted by (ms, step). Slot j holds the latest attempt with at least j steps.
    Quadratic in an entity's step events: exact, not fast."""
    n = len(scope.funnel.steps)
    conditions = scope.conditions()
    window = scope.window()
    from_ms = scope.from_ms()
    step = "multiIf(" + ", ".join(f"{c}, {k}" for k, c in enumerate(conditions)) + ", -1)"
    rel = f"({_MS} - {from_ms})"
    columns = f"{rel} AS rel, event_id AS eid, {step} AS step"
    if value is not None:
        columns += f", {value} AS value"
    scan = _scan(scope, columns)
    key = sort_key("rel * 64 + step", "eid", "0")
    carried_inner = _carried_values() if value is not None else ""
    # Position of step s's first entry from entry i on, within the window (0: none).
    first = f"arrayFirstIndex((t, p, j) -> p = s AND j >= i AND t <= ms[i] + {window}, ms, sp, pos)"
    attempts = (
        f"arrayMap(i -> arraySort(arrayFilter(x -> x.3 > 0, arrayMap(s -> "
        f"(ms[{first}], s, {first}), range({n})))), pos) AS att"
    )
    lines = [
        "arrayMap(k -> toInt64(bitShiftRight(k, 198)) + " + from_ms + ", ks) AS ms",
        "arrayMap(k -> toInt64(bitAnd(bitShiftRight(k, 192), 63)), ks) AS sp",
        "arrayEnumerate(ks) AS pos",
        attempts,
    ]
    lines += [f"arrayLastIndex(x -> length(x) >= {j}, att) AS a{j}" for j in range(1, n + 1)]

    def at(j: int, expr: str) -> str:
        return f"if(a{j} > 0, {expr}, -1)"

    starts = ", ".join(at(j, f"ms[a{j}]") for j in range(1, n + 1))
    reached = ", ".join(at(j, f"att[a{j}][{j}].1") for j in range(1, n + 1))
    previous = ", ".join(
        at(j, f"ms[a{j}]" if j == 1 else f"att[a{j}][{j - 1}].1") for j in range(1, n + 1)
    )
    carried = ""
    if value is not None:
        firsts = ", ".join(f"if(a{j} > 0, v[a{j}], '')" for j in range(1, n + 1))
        vals = ", ".join(f"if(a{j} > 0, v[att[a{j}][{j}].3], '')" for j in range(1, n + 1))
        carried = f",\n       [{firsts}] AS firsts,\n       [{vals}] AS vals"
    exprs = ",\n       ".join(lines)
    return f"""
SELECT visitor_id,
       {exprs},
       [{starts}] AS st,
       [{reached}] AS re,
       [{previous}] AS pr{carried}
FROM (
    SELECT visitor_id, arraySort(groupArray({key} AS key)) AS ks{carried_inner}
    FROM ({scan}
    )
    WHERE step >= 0
    GROUP BY visitor_id
)""".strip()


# --- Per entity --------------------------------------------------------------------------


def _hold_sql(funnel: FunnelDefinition, inner: str, value: str | None) -> str:
    """Merge per (entity, held value) rows of `inner` into one row per entity: step k is
    held by the value whose attempt holding it has the greatest (start, reached, value)."""
    n = len(funnel.steps)
    out = ["st", "re", "pr"] + (["firsts", "vals"] if value is not None else [])
    picks = ",\n       ".join(
        f"arrayMap((c, k) -> c.{i + 1}[k], chosen, range(1, {n + 1})) AS {name}"
        for i, name in enumerate(out)
    )
    return f"""
SELECT entity AS visitor_id,
       arrayMap(k -> arrayReverseSort(p -> (p.1[k], p.2[k], p.{len(out) + 1}), parts)[1],
                range(1, {n + 1})) AS chosen,
       {picks}
FROM (
    SELECT visitor_id.1 AS entity, groupArray(({", ".join(out)}, visitor_id.2)) AS parts
    FROM ({inner})
    GROUP BY entity
)""".strip()


def _by_passes(funnel: FunnelDefinition) -> bool:
    """Whether per_entity_sql evaluates this funnel by level passes alone."""
    return (
        funnel.hold_property is None
        and funnel.order == "ordered"
        and not funnel.exclusions
        and not any(s.optional for s in funnel.steps)
    )


def per_entity_sql(
    funnel: CompiledFunnel,
    project: str,
    start: datetime,
    end: datetime,
    params: Params,
    value: str | None = None,
    segment: Sequence[PropertyFilter] = (),
) -> str:
    """Rows (visitor_id, st, re, pr) per counted entity with at least one step or
    exclusion event (any event, for `order: "strict"`; then also `tail`, see _fold_sql):
    per step, the held attempt's start, the time it reached the step and the time it
    reached the previous step (ms; -1: no attempt holds the step).
    `visitor_id` holds the counted entity (visitor or user). With `value` (a String
    expression per event row), also `firsts` and `vals`: per step, that value on the held
    attempt's step-1 event and on the event holding the step ('' where none).

    The one place that chooses the evaluation (module docstring)."""
    scope = Scope(funnel, project, start, end, params, tuple(segment))
    definition = funnel.definition
    if definition.hold_property is not None:
        return _hold_sql(definition, _passes_sql(scope, value), value)
    if definition.order == "any":
        return _any_order_sql(scope, value)
    if not _by_passes(definition):
        return _fold_sql(scope, value)
    return _passes_sql(scope, value)


def per_visitor_sql(
    funnel: CompiledFunnel,
    project: str,
    start: datetime,
    end: datetime,
    params: Params,
    segment: Sequence[PropertyFilter] = (),
) -> str:
    """Rows (entity, slots): slots = Array((started, reached, reached previous)), ms,
    (-1, -1, -1) where no attempt holds the step."""
    inner = per_entity_sql(funnel, project, start, end, params, segment=segment)
    return f"""
SELECT visitor_id, arrayMap((s, r, p) -> (s, r, p), st, re, pr) AS slots
FROM ({inner})""".strip()


def held_sql(
    funnel: CompiledFunnel,
    project: str,
    start: datetime,
    end: datetime,
    params: Params,
    extra: str = "",
    value: str | None = None,
    segment: Sequence[PropertyFilter] = (),
) -> str:
    """Entities that reached step 1: visitor_id (the entity), st, re, pr, level (1-based
    deepest held step), plus `extra` columns (and firsts, vals with `value`)."""
    inner = per_entity_sql(funnel, project, start, end, params, value, segment)
    definition = funnel.definition
    carried = ", firsts, vals" if value is not None else ""
    if definition.counting == "total":
        carried += ", attempts"
    if definition.order == "strict":
        carried += ", tail"
    return f"""
    SELECT visitor_id, st, re, pr{carried}, arrayLastIndex(x -> x >= 0, st) AS level{extra}
    FROM ({inner})
    WHERE level > 0"""


# --- The report --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _HeldRows:
    """The per-entity rows a report aggregates, and how to read them: `at(column, k)` is
    the held attempt's st/re/pr at step k (1-based); `reached(k)`, `stopped(k)` and
    `open_until(k)` are conditions and expressions on one row."""

    sql: str
    at: Callable[[str, int], str]
    reached: Callable[[int], str]
    stopped: Callable[[int], str]
    open_until: Callable[[int], str]


def _scalar(column: str, k: int) -> str:
    return f"{column}{k}"


def _element(column: str, k: int) -> str:
    return f"{column}[{k}]"


def _held_rows(scope: Scope, window: str) -> _HeldRows:
    funnel = scope.funnel
    if _by_passes(funnel):
        # Straight from the level passes' rows, one column per step and value (st1, re1,
        # ...). Passes leave no hole below the deepest step, so level >= k is st_k >= 0
        # and entities without any step count nowhere.
        return _HeldRows(
            _passes_sql(scope),
            _scalar,
            lambda k: f"st{k} >= 0",
            lambda k: f"st{k} >= 0 AND st{k + 1} < 0",
            lambda k: step_open_until_sql(funnel, window, k, _scalar),
        )
    until = open_until_sql(funnel, scope.params, window)
    held = held_sql(
        scope.compiled,
        scope.project,
        scope.start,
        scope.end,
        scope.params,
        f", {until} AS open_until",
        segment=scope.segment,
    )
    return _HeldRows(
        held,
        _element,
        lambda k: f"level >= {k}",
        lambda k: f"level = {k}",
        lambda k: "open_until",
    )


def _report_columns(funnel: FunnelDefinition, held: _HeldRows, now_ms: str, window: str) -> str:
    """The report's per-step arrays: entities (or attempts) reaching each step, quantiles
    and averages of the times to convert, and entities (or attempts) in progress."""
    n = len(funnel.steps)
    at = held.at
    entities = [f"countIf({held.reached(k)})" for k in range(1, n + 1)]
    in_progress = [
        f"countIf({held.stopped(k)} AND {now_ms} <= {held.open_until(k)})" for k in range(1, n)
    ]
    if funnel.counting == "total":
        # Attempts, not entities: every attempt held at step k that did not take step k+1
        # and can still take it is in progress.
        entities = [f"sum(attempts[{k}])" for k in range(1, n + 1)]
        in_progress = [
            f"countIf({at('st', k)} >= 0 AND {at('st', k + 1)} != {at('st', k)} AND "
            f"{now_ms} <= {step_open_until_sql(funnel, window, k, at)})"
            for k in range(1, n)
        ]
    quantiles: dict[str, list[str]] = {"s": ["[0, 0]"], "p": ["[0, 0]"]}
    first = f"avgIf(0, {at('st', 1)} >= 0)"
    averages: dict[str, list[str]] = {"s": [first], "p": [first]}
    for k in range(2, n + 1):
        for base, column in (("s", "st"), ("p", "pr")):
            if base == "p" and k == 2:
                # Step 2's previous step is step 1, reached when the attempt started: the
                # same times as from the start, so they are not sorted twice.
                quantiles["p"].append("q_start[2]")
                averages["p"].append("avg_start[2]")
                continue
            value, cond = f"{at('re', k)} - {at(column, k)}", f"{at('st', k)} >= 0"
            quantiles[base].append(f"quantilesExactIf(0.5, 0.9)({value}, {cond})")
            averages[base].append(f"avgIf({value}, {cond})")

    def array(items: list[str]) -> str:
        return "[" + ",\n        ".join(items) + "]"

    return f"""{array(entities)} AS reach,
       {array(quantiles["s"])} AS q_start,
       {array(averages["s"])} AS avg_start,
       {array(quantiles["p"])} AS q_previous,
       {array(averages["p"])} AS avg_previous,
       {array([*in_progress, "0"])} AS waiting"""


def report_sql(
    funnel: CompiledFunnel,
    project: str,
    start: datetime,
    end: datetime,
    now: datetime | None = None,
    segment: Sequence[PropertyFilter] = (),
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
    scope = Scope(funnel, project, start, end, Params(), tuple(segment))
    window = scope.window()
    held = _held_rows(scope, window)
    now_ms = scope.bind(_ms(now or end), "Int64")
    columns = _report_columns(scope.funnel, held, now_ms, window)
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
    SELECT {columns}
    FROM ({held.sql}
    )
)
ARRAY JOIN arrayEnumerate(reach) AS step
ORDER BY step""".strip()
    return sql, scope.params.values


def open_until_sql(funnel: FunnelDefinition, params: Params, window: str | None = None) -> str:
    """Until when (ms) the entity's deepest attempt can still take its next step (`window`:
    the window in ms, if already bound)."""
    window = window or params.bind(funnel.window_seconds * 1000, "Int64")
    until = f"st[level] + {window}"
    if any(s.within_seconds is not None for s in funnel.steps):
        # Per level: the most lenient per-step window of the steps it can take next (the
        # next one, and those after optional steps).
        def lenient(k: int) -> int:
            nexts = [funnel.steps[m].within_seconds for m in funnel.next_steps(k)]
            if not nexts or None in nexts:
                return _NO_LIMIT
            return max(w for w in nexts if w is not None) * 1000

        within = params.bind([lenient(k) for k in range(len(funnel.steps))], "Array(Int64)")
        until = f"least({until}, re[level] + {within}[level])"
    if funnel.order == "strict":
        # Another event after the deepest step's event: the attempt can never advance.
        until = f"if(tail[level], {until}, -1)"
    return until


def step_open_until_sql(
    funnel: FunnelDefinition, window: str, k: int, at: Callable[[str, int], str]
) -> str:
    """Until when (ms) the attempt held at step k (1-based) can still take step k+1.
    `window`: the bound window in ms; `at(column, k)` reads the held attempt's `st` or `re`
    at step k."""
    until = f"{at('st', k)} + {window}"
    within = funnel.steps[k].within_seconds
    if within is not None:
        until = f"least({until}, {at('re', k)} + {within * 1000})"
    return until


def levels_sql(
    funnel: CompiledFunnel, project: str, start: datetime, end: datetime
) -> tuple[str, dict[str, Any]]:
    """Per visitor: ClickHouse's own windowFunnel level (default mode), the cross-check of
    the fold for funnels whose steps no single event can match twice."""
    params = Params()
    conditions = ", ".join(step_sql(s, params) for s in funnel.steps)
    definition = funnel.definition
    window = params.bind(definition.window_seconds * 1000, "UInt64")
    where = [
        f"project_id = {params.bind(project, 'String')}",
        *_in_range(params, start, end),
        f"event IN {params.bind(definition.event_names(), 'Array(String)')}",
    ]
    sql = f"""
SELECT visitor_id,
       windowFunnel({window})(toUInt64({_MS}), {conditions}) AS level
FROM events
{_where(where, "")}
GROUP BY visitor_id""".strip()
    return sql, params.values


# Day and week: the local midnight (of the Monday), as a Date turned back into a moment.
TREND_BUCKETS = {"day": "toStartOfDay", "week": "toMonday"}


def trend_sql(
    funnel: CompiledFunnel,
    project: str,
    start: datetime,
    end: datetime,
    interval: str,
    segment: Sequence[PropertyFilter] = (),
    tz: str = "UTC",
) -> tuple[str, dict[str, Any]]:
    """Rows (bucket start as Unix seconds, entities entered, entities converted) by entry
    time: the start of the attempt holding the entity's deepest step, in the hour, day or
    week (from Monday) of the local calendar of IANA zone `tz`. A day starts at its local
    midnight, so across a DST change it lasts 23 or 25 hours. An hour starts at the moment
    minus its local minutes and seconds (toStartOfHour puts the hours of a zone with a
    30-minute offset change, Lord Howe, on whole UTC hours after the change)."""
    params = Params()
    held = held_sql(funnel, project, start, end, params, segment=segment)
    zone = params.bind(tz, "String")
    local = f"fromUnixTimestamp64Milli(st[level], {zone})"
    if interval == "hour":
        bucket = f"toUnixTimestamp({local}) - toMinute({local}) * 60 - toSecond({local})"
    else:
        bucket = f"toUnixTimestamp(toDateTime({TREND_BUCKETS[interval]}({local}), {zone}))"
    sql = f"""
SELECT {bucket} AS bucket,
       count() AS entered,
       countIf(level = {len(funnel.definition.steps)}) AS converted
FROM ({held}
)
GROUP BY bucket
ORDER BY bucket""".strip()
    return sql, params.values
