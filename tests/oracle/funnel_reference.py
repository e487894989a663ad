"""The funnel report in plain Python: the executable statement of our semantics.

Independent of the SQL (funnel/sql/report.py) and of the live stage machine
(funnel/fold.py), and deliberately written differently: events one at a time
instead of sorted (step, event) entries. The differential test (tests/query_api/
test_report_differential.py) checks that ClickHouse computes exactly this on random
streams. Slow and simple on purpose: test code, which nothing in the product imports (a
product that imported its own oracle could no longer be checked against it).

The rule, per counted entity (visitor, or the user a visitor last identified as):

1. Read the entity's events in [from, to) whose name is a step's or an exclusion's.
   Order them by timestamp; at the same timestamp exclusion events first, then by the
   first step each event matches, then by event id (ClickHouse's UUID order: low 64 bits,
   then high 64 bits), so the answer never depends on arrival order.
2. Keep one slot per step: the latest attempt that reached that step, as (started at,
   reached at, event id, reached previous step at).
3. An event matching steps S updates all of them at once from the slots as they were
   before it, so one event advances an attempt by at most one step:
   step 0 starts a new attempt; step k > 0 extends the attempt in slot k-1 if the event is
   within `window_seconds` of that attempt's start and within step k's `within_seconds`
   of its previous step (both inclusive).
4. An exclusion event for steps [i, j) discards every attempt whose depth (the deepest
   slot holding its start) is at least i and below j: all of that attempt's slots are
   emptied. Attempts already past j keep going; a later clean attempt counts.
   In strict order (`order: "strict"`) every event of the entity in [from, to) is read
   (events matching no step sort like exclusions), and step k > 0 extends slot k-1 only
   if the event that reached slot k-1 is the entity's event immediately before this one.
   In any order (`order: "any"`) see `_any_order`: slot k holds the latest attempt that
   matched k + 1 distinct steps within the window from its first event.
   By session (`count_by: "session"`) the entity is `<visitor>#<n>`: see `_sessions`.
   With `hold_property` each value of the property has its own attempts: see `_hold`.
   Optional steps (`steps[k].optional`): an event of step k may also extend the attempt
   held at a step before k-1 when every step between is optional (`sources`); of the
   attempts that may take it, the latest start (ties: the deepest step) is extended.
5. The entity reached step k if its deepest held slot is >= k. Times to convert are taken
   from the attempt held in slot k: reached - started, reached - reached previous step.
   Quantiles are ClickHouse's quantileExact: sorted[floor(q * n)].
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from schemas.funnels import EventMatch, Exclusion, FunnelDefinition, PropertyFilter
from schemas.properties import flatten_value

_LOW64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class RefEvent:
    event_id: str
    event: str
    visitor_id: str
    timestamp_ms: int
    user_id: str = ""
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Held:
    """The attempt holding one step."""

    started_ms: int
    reached_ms: int
    event_id: str
    previous_ms: int
    # The attempt's step-1 event (breakdowns attribute "first touch" to it).
    start_event_id: str = ""
    # order "strict": whether this event is the entity's last one (if not, the attempt
    # can never advance). Always True for other orders.
    tail: bool = True


@dataclass(frozen=True, slots=True)
class RefStep:
    entities: int
    median_ms: int | None = None
    p90_ms: int | None = None
    avg_ms: float | None = None
    median_from_previous_ms: int | None = None
    p90_from_previous_ms: int | None = None
    avg_from_previous_ms: float | None = None
    in_progress: int = 0


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _holds(f: PropertyFilter, props: Mapping[str, str]) -> bool:
    actual = props.get(f.property, "")
    match f.op:
        case "is_set":
            return f.property in props
        case "is_not_set":
            return f.property not in props
        case "gt" | "lt":
            number = _number(actual)
            if number is None:
                return False
            return number > float(f.value) if f.op == "gt" else number < float(f.value)
        case "in":
            return actual in [flatten_value(v) for v in f.value]
        case "not_in":
            return actual not in [flatten_value(v) for v in f.value]
        case "contains":
            return flatten_value(f.value) in actual
        case "regex":
            return re.search(str(f.value), actual) is not None
        case "eq":
            return actual == flatten_value(f.value)
        case _:
            return actual != flatten_value(f.value)


def _is(m: EventMatch | Exclusion, e: RefEvent) -> bool:
    return m.event == e.event and all(_holds(f, e.properties) for f in m.filters)


def _uuid_order(event_id: str) -> tuple[int, int]:
    value = uuid.UUID(event_id).int
    return value & _LOW64, value >> 64


SESSION_GAP_MS = 30 * 60 * 1000


def _sessions(events: list[RefEvent], start_ms: int, end_ms: int) -> dict[str, str]:
    """event id → `<visitor>#<n>`: per visitor, its events in [start, end) (any name) in
    time order; session n + 1 starts at an event 30 minutes or more after the previous."""
    by_visitor: dict[str, list[RefEvent]] = defaultdict(list)
    for e in events:
        if start_ms <= e.timestamp_ms < end_ms:
            by_visitor[e.visitor_id].append(e)
    out = {}
    for visitor, evs in by_visitor.items():
        n, last = 0, None
        for e in sorted(evs, key=lambda e: e.timestamp_ms):
            if last is None or e.timestamp_ms - last >= SESSION_GAP_MS:
                n += 1
            last = e.timestamp_ms
            out[e.event_id] = f"{visitor}#{n}"
    return out


def _entity_of(funnel: FunnelDefinition, events: list[RefEvent]) -> dict[str, str]:
    """visitor → counted entity (visitor or user)."""
    if funnel.count_by != "user":
        return {}
    latest: dict[str, tuple[int, str]] = {}
    for e in events:
        if e.user_id and (e.visitor_id not in latest or e.timestamp_ms > latest[e.visitor_id][0]):
            latest[e.visitor_id] = (e.timestamp_ms, e.user_id)
    return {v: user for v, (_, user) in latest.items()}


def held_steps(
    funnel: FunnelDefinition,
    events: Iterable[RefEvent],
    start_ms: int,
    end_ms: int,
    segment: Sequence[PropertyFilter] = (),
) -> dict[str, list[Held | None]]:
    """Per entity with at least one funnel event (and, with a segment, an event in range
    on which every filter holds): the slots after all its events."""
    fold = _any_order if funnel.order == "any" else _fold
    per_entity = _entity_events(funnel, events, start_ms, end_ms, segment)
    if funnel.hold_property is None:
        return {entity: fold(funnel, evs) for entity, evs in per_entity.items()}
    return {entity: _hold(funnel, evs) for entity, evs in per_entity.items()}


def _hold(funnel: FunnelDefinition, events: list[RefEvent]) -> list[Held | None]:
    """`hold_property`: attempts are made of events with the same value of the property
    (missing: ""); each value's events are folded apart. Step k is held by the value whose
    attempt holding it has the greatest (started, reached, value)."""
    prop = funnel.hold_property or ""
    by_value: dict[str, list[RefEvent]] = defaultdict(list)
    for e in events:
        by_value[e.properties.get(prop, "")].append(e)
    folded = [(value, _fold(funnel, evs)) for value, evs in by_value.items()]
    out: list[Held | None] = []
    for k in range(len(funnel.steps)):
        holding = [
            (h.started_ms, h.reached_ms, value, h) for value, slots in folded if (h := slots[k])
        ]
        out.append(max(holding, key=lambda t: t[:3])[3] if holding else None)
    return out


def attempt_counts(
    funnel: FunnelDefinition,
    events: Iterable[RefEvent],
    start_ms: int,
    end_ms: int,
    segment: Sequence[PropertyFilter] = (),
) -> dict[str, list[int]]:
    """`counting: "total"` (order "ordered", no exclusions): per entity and step, the
    attempts that reached the step. An attempt is identified by its start millisecond
    (step-0 events at the same millisecond start one attempt)."""
    out = {}
    for entity, evs in _entity_events(funnel, events, start_ms, end_ms, segment).items():
        seen: list[set[int]] = [set() for _ in funnel.steps]
        _fold(funnel, evs, seen)
        out[entity] = [len(s) for s in seen]
    return out


def _entity_events(
    funnel: FunnelDefinition,
    events: Iterable[RefEvent],
    start_ms: int,
    end_ms: int,
    segment: Sequence[PropertyFilter] = (),
) -> dict[str, list[RefEvent]]:
    """Per entity, the events the fold reads, in fold order (rule 1); with a segment, only
    entities with an event in range on which every filter holds."""
    everything = list(events)
    identified = _entity_of(funnel, everything)
    sessions = _sessions(everything, start_ms, end_ms) if funnel.count_by == "session" else {}
    members = {
        sessions.get(e.event_id) or identified.get(e.visitor_id, e.visitor_id)
        for e in everything
        if start_ms <= e.timestamp_ms < end_ms and all(_holds(f, e.properties) for f in segment)
    }
    names = set(funnel.event_names())
    strict = funnel.order == "strict"
    per_entity: dict[str, list[tuple[tuple[int, int, tuple[int, int]], RefEvent]]] = defaultdict(
        list
    )
    for e in everything:
        if (e.event not in names and not strict) or not start_ms <= e.timestamp_ms < end_ms:
            continue
        steps = [k for k, s in enumerate(funnel.steps) if any(_is(m, e) for m in s.matchers())]
        excluded = any(_is(x, e) for x in funnel.exclusions)
        if not steps and not excluded and not strict:
            continue
        # Exclusion events (and, in strict order, events matching nothing) sort first.
        rank = -1 if excluded or not steps else steps[0]
        entity = sessions.get(e.event_id) or identified.get(e.visitor_id, e.visitor_id)
        if segment and entity not in members:
            continue
        per_entity[entity].append(((e.timestamp_ms, rank, _uuid_order(e.event_id)), e))
    return {
        entity: [e for _, e in sorted(keyed, key=lambda p: p[0])]
        for entity, keyed in per_entity.items()
    }


def _any_order(funnel: FunnelDefinition, events: list[RefEvent]) -> list[Held | None]:
    """`order: "any"` (steps never share an event name, so an event matches one step):
    the attempt starting at each event covers it and the events after it within
    `window_seconds`; per step, its first event there counts. The attempt reaches its
    j-th step (1-based) at the j-th earliest of those first events (ties: by step). Slot
    j-1 holds the latest attempt that reached j steps."""
    window = funnel.window_seconds * 1000
    step_of = [
        next(k for k, s in enumerate(funnel.steps) if any(_is(m, e) for m in s.matchers()))
        for e in events
    ]
    slots: list[Held | None] = [None] * len(funnel.steps)
    for i, anchor in enumerate(events):
        first: dict[int, RefEvent] = {}
        for j in range(i, len(events)):
            if events[j].timestamp_ms > anchor.timestamp_ms + window:
                break
            first.setdefault(step_of[j], events[j])
        reached = sorted(first.items(), key=lambda p: (p[1].timestamp_ms, p[0]))
        previous = anchor.timestamp_ms
        for level, (_, e) in enumerate(reached):
            slots[level] = Held(
                anchor.timestamp_ms, e.timestamp_ms, e.event_id, previous, anchor.event_id
            )
            previous = e.timestamp_ms
    return slots


def _fold(
    funnel: FunnelDefinition, events: list[RefEvent], seen: list[set[int]] | None = None
) -> list[Held | None]:
    """The slots after `events`; with `seen`, also the starts of every attempt that
    reached each step."""
    window = funnel.window_seconds * 1000
    strict = funnel.order == "strict"
    slots: list[Held | None] = [None] * len(funnel.steps)
    previous_event = ""
    for e in events:
        for x in funnel.exclusions:
            if _is(x, e):
                slots = _discard(slots, *funnel.exclusion_range(x))
        before = list(slots)
        for k, step in enumerate(funnel.steps):
            if not any(_is(m, e) for m in step.matchers()):
                continue
            if k == 0:
                slots[0] = Held(
                    e.timestamp_ms, e.timestamp_ms, e.event_id, e.timestamp_ms, e.event_id
                )
                if seen is not None:
                    seen[0].add(e.timestamp_ms)
                continue
            # The attempt to extend: held at step k-1 or, past optional steps, earlier;
            # of those that may take this event, the latest start (ties: the deepest).
            candidates = []
            for j in funnel.sources(k):
                prev = before[j]
                if prev is None or e.timestamp_ms > prev.started_ms + window:
                    continue
                if strict and prev.event_id != previous_event:
                    continue
                if step.within_seconds is not None and (
                    e.timestamp_ms > prev.reached_ms + step.within_seconds * 1000
                ):
                    continue
                candidates.append((prev.started_ms, j, prev))
            if not candidates:
                continue
            prev = max(candidates, key=lambda c: c[:2])[2]
            slots[k] = Held(
                prev.started_ms, e.timestamp_ms, e.event_id, prev.reached_ms, prev.start_event_id
            )
            if seen is not None:
                seen[k].add(prev.started_ms)
        previous_event = e.event_id
    if strict:
        slots = [
            None if h is None else replace(h, tail=h.event_id == previous_event) for h in slots
        ]
    return slots


def _discard(slots: list[Held | None], lo: int, hi: int) -> list[Held | None]:
    def depth(started: int) -> int:
        return max(k for k, s in enumerate(slots) if s is not None and s.started_ms == started)

    return [None if s is not None and lo <= depth(s.started_ms) < hi else s for s in slots]


def _quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _still_open(funnel: FunnelDefinition, held: Held, level: int, now_ms: int) -> bool:
    """6. An entity stopped at step k < last is in progress (not dropped) while its deepest
    attempt could still take step k+1: now <= started + window and, with a per-step
    window on step k+1, now <= reached + that window; in strict order, only if no other
    event of the entity followed the one that reached step k."""
    if level >= len(funnel.steps) or not held.tail:
        return False
    until = held.started_ms + funnel.window_seconds * 1000
    # The next step, or any step after optional ones: the most lenient per-step window.
    windows = [funnel.steps[m].within_seconds for m in funnel.next_steps(level - 1)]
    if None not in windows:
        until = min(until, held.reached_ms + max(w for w in windows if w is not None) * 1000)
    return now_ms <= until


def report(
    funnel: FunnelDefinition,
    events: Iterable[RefEvent],
    start_ms: int,
    end_ms: int,
    now_ms: int | None = None,
    segment: Sequence[PropertyFilter] = (),
) -> list[RefStep]:
    """Per step: entities reaching it, times to convert (ms) and entities in progress
    (with `counting: "total"`: attempts reaching it and attempts in progress)."""
    now = end_ms if now_ms is None else now_ms
    everything = list(events)
    held = held_steps(funnel, everything, start_ms, end_ms, segment)
    open_at: dict[int, int] = defaultdict(int)
    counts: list[int] = []
    if funnel.counting == "total":
        # Every attempt held at step k that did not take step k+1 and still can.
        for slots in held.values():
            for k, h in enumerate(slots[:-1]):
                nxt = slots[k + 1]
                if h is None or (nxt is not None and nxt.started_ms == h.started_ms):
                    continue
                if _still_open(funnel, h, k + 1, now):
                    open_at[k] += 1
        per_entity = attempt_counts(funnel, everything, start_ms, end_ms, segment).values()
        counts = [sum(c[k] for c in per_entity) for k in range(len(funnel.steps))]
    else:
        for slots in held.values():
            level = max((k + 1 for k, s in enumerate(slots) if s is not None), default=0)
            deepest = slots[level - 1] if level else None
            if deepest is not None and _still_open(funnel, deepest, level, now):
                open_at[level - 1] += 1
    levels = [
        max((k + 1 for k, s in enumerate(slots) if s is not None), default=0)
        for slots in held.values()
    ]
    out = []
    for k in range(len(funnel.steps)):
        holding = [slots[k] for slots in held.values() if slots[k] is not None]
        entities = counts[k] if counts else sum(level > k for level in levels)
        if not holding:
            out.append(RefStep(entities, in_progress=open_at[k]))
            continue
        total = [h.reached_ms - h.started_ms for h in holding if h is not None]
        step = [h.reached_ms - h.previous_ms for h in holding if h is not None]
        out.append(
            RefStep(
                entities,
                _quantile(total, 0.5),
                _quantile(total, 0.9),
                sum(total) / len(total),
                _quantile(step, 0.5),
                _quantile(step, 0.9),
                sum(step) / len(step),
                open_at[k],
            )
        )
    return out


def breakdown(
    funnel: FunnelDefinition,
    events: Iterable[RefEvent],
    start_ms: int,
    end_ms: int,
    prop: str,
    attribution: str = "first_touch",
    step: int = 0,
    limit: int = 10,
    segment: Sequence[PropertyFilter] = (),
) -> dict[tuple[bool, str], list[int]]:
    """Entities reaching each step per attributed value of event property `prop`:
    {(is other, value): reached per step}. Attribution: the held attempt's step-1 event
    for the entity's deepest step ("first_touch"), the event that reached that step
    ("last_touch"), or the event holding step `step` ("step"; '' if none). Values ranked
    by entities (then by value); those past `limit` are summed under (True, "")."""
    everything = list(events)
    by_id = {e.event_id: e for e in everything}
    levels: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for slots in held_steps(funnel, everything, start_ms, end_ms, segment).values():
        level = max((k + 1 for k, s in enumerate(slots) if s is not None), default=0)
        if not level:
            continue
        deepest = slots[level - 1]
        assert deepest is not None
        if attribution == "first_touch":
            picked: str | None = deepest.start_event_id
        elif attribution == "last_touch":
            picked = deepest.event_id
        else:
            held = slots[step]
            picked = held.event_id if held is not None else None
        value = by_id[picked].properties.get(prop, "") if picked else ""
        levels[value][level] += 1
    ranked = sorted(levels, key=lambda v: (-sum(levels[v].values()), v))
    out: dict[tuple[bool, str], list[int]] = {}
    other: dict[int, int] = defaultdict(int)
    for rank, value in enumerate(ranked):
        if rank < limit:
            out[(False, value)] = _reached(levels[value], len(funnel.steps))
        else:
            for level, count in levels[value].items():
                other[level] += count
    if other:
        out[(True, "")] = _reached(other, len(funnel.steps))
    return out


def _reached(at_level: Mapping[int, int], steps: int) -> list[int]:
    return [sum(c for level, c in at_level.items() if level > k) for k in range(steps)]
