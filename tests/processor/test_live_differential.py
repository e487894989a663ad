"""The live stage machine equals the pure-Python reference (tests/oracle/funnel_reference.py).

For every option the processor keeps live (strict and any order, exclusions, per-step windows,
optional steps, any_of alternatives and filters, total attempts), random streams go through
`apply_event` as the processor runs it, once in timestamp order and once shuffled within
the allowed lateness; each visitor's live level, held slots and attempt counts must be the
reference's over the same events. The SQL report is checked against the same reference in
tests/query_api/test_report_differential.py, so the three agree. No server needed.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnel.fold import FunnelProgress
from processor.backfill import rebuild_progress
from processor.state import VisitorState
from processor.transform import Outputs, Timing, apply_event
from processor.user_funnels import group_by_user, rebuild_user
from schemas.events import Event
from schemas.funnels import FunnelDefinition, validate_funnel
from tests.oracle import funnel_reference as reference
from tests.query_api.test_report_differential import funnels, streams

# A short lateness, and one longer than the 30-minute session gap: late events then land
# in gaps that already split sessions and merge them.
LATENESS_MS = (10_000, 2_000_000)
EXAMPLES = int(os.environ.get("FUNNEL_DIFF_EXAMPLES", "300"))


@st.composite
def live_funnels(draw: st.DrawFn) -> FunnelDefinition:
    """Funnels of the report's differential suite, turned into ones kept live per visitor:
    counted by visitor or session (by user: `test_live_user_state_equals_reference`)."""
    funnel = draw(funnels())
    live = funnel
    if funnel.count_by == "user":
        live = funnel.model_copy(update={"count_by": "visitor"})
    assert validate_funnel(live) == []
    return live


def feed(
    funnel: FunnelDefinition,
    events: list[reference.RefEvent],
    lateness_ms: int,
    users: Outputs | None = None,
) -> dict[str, VisitorState]:
    """Each event through `apply_event`; `users` collects the users touched."""
    timing = Timing(session_gap_ms=30 * 60 * 1000, lateness_ms=lateness_ms)
    states: dict[str, VisitorState] = {}
    for offset, e in enumerate(events):
        state = states.setdefault(e.visitor_id, VisitorState("p", e.visitor_id))
        out = apply_one(state, e, offset, funnel, timing)
        assert out.too_late == 0
        if users is not None:
            users.users |= out.users
    return states


def as_event(e: reference.RefEvent) -> Event:
    """A reference event as the processor decodes it (project "p")."""
    event = Event(
        "p", e.event_id, e.event, e.visitor_id, e.timestamp_ms, e.timestamp_ms, user_id=e.user_id
    )
    event.properties.update(e.properties)
    return event


def apply_one(
    state: VisitorState,
    e: reference.RefEvent,
    offset: int,
    funnel: FunnelDefinition,
    timing: Timing,
) -> Outputs:
    """One event through `apply_event` as the processor runs it (processed at `offset`)."""
    out = Outputs()
    apply_event(
        state,
        as_event(e),
        partition=0,
        offset=offset,
        funnels=[funnel],
        timing=timing,
        processed_at_ms=offset,
        out=out,
    )
    return out


def expected(
    funnel: FunnelDefinition, events: list[reference.RefEvent]
) -> tuple[dict[str, list[reference.Held | None]], dict[str, list[int]]]:
    """Per visitor, the reference's slots (by session: those of the visitor's last session,
    the one still open) and what the processor counts per step besides the visitor:
    attempts (counting total) or sessions (count_by session) over all its sessions."""
    everything = (0, 2**62)
    held = reference.held_steps(funnel, events, *everything)
    per_entity: dict[str, list[int]] = {}
    if funnel.counting == "total":
        per_entity = reference.attempt_counts(funnel, events, *everything)
    elif funnel.count_by == "session":
        per_entity = {
            entity: [int(slots[k:] != [None] * (len(slots) - k)) for k in range(len(slots))]
            for entity, slots in held.items()
        }
    if funnel.count_by != "session":
        return held, per_entity
    steps = len(funnel.steps)
    session_of = reference._sessions(events, *everything)
    last: dict[str, str] = {}
    for e in events:
        last[e.visitor_id] = max(last.get(e.visitor_id, ""), session_of[e.event_id], key=_number)
    sums: dict[str, list[int]] = {v: [0] * steps for v in last}
    for entity, counts in per_entity.items():
        visitor = entity.split("#")[0]
        sums[visitor] = [a + b for a, b in zip(sums[visitor], counts, strict=True)]
    return {v: held.get(s, [None] * steps) for v, s in last.items()}, sums


def _number(session: str) -> int:
    return int(session.split("#")[1]) if session else 0


def arrival_order(events: list[reference.RefEvent], delays: list[int]) -> list[int]:
    """Each event arrives at its timestamp plus a delay within the lateness, so none is
    ever older than the newest one minus the lateness when it arrives."""
    return sorted(range(len(events)), key=lambda i: (events[i].timestamp_ms + delays[i], i))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(live_funnels(), streams(), st.data())
def test_live_state_equals_reference(
    funnel: FunnelDefinition, events: list[reference.RefEvent], data: st.DataObject
) -> None:
    lateness = data.draw(st.sampled_from(LATENESS_MS))
    delays = data.draw(st.lists(st.integers(0, lateness), min_size=len(events)))
    in_order = sorted(events, key=lambda e: (e.timestamp_ms, e.event_id))
    shuffled = [events[i] for i in arrival_order(events, delays)]
    for stream in (in_order, shuffled):
        assert_live_equals_reference(funnel, events, feed(funnel, stream, lateness), lateness)


def assert_live_equals_reference(
    funnel: FunnelDefinition,
    events: list[reference.RefEvent],
    states: dict[str, VisitorState],
    lateness: int,
) -> None:
    """Each visitor's live progress is the reference's over `events` (and a backfill of the
    same events rebuilds it)."""
    held, attempts = expected(funnel, events)
    for visitor, state in states.items():
        progress = state.funnels.get(funnel.id)
        slots = held.get(visitor, [None] * len(funnel.steps))
        want_slots = [
            None if h is None else (h.started_ms, h.reached_ms, h.event_id) for h in slots
        ]
        want_level = max((k + 1 for k, s in enumerate(slots) if s is not None), default=0)
        if progress is None:
            assert want_level == 0, (visitor, funnel)
            continue
        assert progress.level == want_level, (visitor, funnel)
        if funnel.hold_property is None and funnel.order != "any":
            # Held values whose attempts can no longer move keep only their level;
            # any order keeps levels only (the latest attempt needs a window's events).
            assert progress.slots == want_slots, (visitor, funnel)
        if visitor in attempts:
            assert progress.attempts == attempts[visitor], (visitor, funnel)
        # Saving the funnel later rebuilds the same state from the stored events.
        rows = [
            (e.event_id, e.event, e.timestamp_ms, dict(e.properties))
            for e in events
            if e.visitor_id == visitor
        ]
        rebuilt, _ = rebuild_progress(funnel, rows, state.newest_ms, lateness)
        assert rebuilt is not None
        assert rebuilt.level == progress.level
        if funnel.hold_property is None:
            assert rebuilt.slots == progress.slots
        assert rebuilt.attempts == progress.attempts


@st.composite
def user_funnels(draw: st.DrawFn) -> FunnelDefinition:
    """Funnels of the report's differential suite, counted by user."""
    funnel = draw(funnels()).model_copy(update={"count_by": "user"})
    assert validate_funnel(funnel) == []
    return funnel


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(user_funnels(), streams(), st.data())
def test_live_user_state_equals_reference(
    funnel: FunnelDefinition, events: list[reference.RefEvent], data: st.DataObject
) -> None:
    """Counting by user: never-identified visitors are folded live, each user is rebuilt
    from its visitors' events (what the processor reads back from ClickHouse after each
    batch: processor/user_funnels.py). Together they are the reference's entities."""
    lateness = data.draw(st.sampled_from(LATENESS_MS))
    delays = data.draw(st.lists(st.integers(0, lateness), min_size=len(events)))
    held = reference.held_steps(funnel, events, 0, 2**62)
    totals = (
        reference.attempt_counts(funnel, events, 0, 2**62) if funnel.counting == "total" else {}
    )
    for stream in (
        sorted(events, key=lambda e: e.timestamp_ms),
        [events[i] for i in arrival_order(events, delays)],
    ):
        outputs = Outputs()
        states = feed(funnel, stream, lateness, outputs)
        user_of = {v: s.identity[1] for v, s in states.items() if s.identity is not None}
        assert {u for _, u in outputs.users} == set(user_of.values())
        live: dict[str, FunnelProgress] = {}
        for visitor, state in states.items():
            progress = state.funnels.get(funnel.id)
            if visitor in user_of:
                assert progress is None  # its events count in its user's row
            elif progress is not None:
                live[visitor] = progress
        members = [(u, v) for v, u in user_of.items()]
        rows = [
            (e.visitor_id, e.event_id, e.event, e.timestamp_ms, dict(e.properties)) for e in stream
        ]
        for user, user_events in group_by_user(set(user_of.values()), members, rows).items():
            live[user], _ = rebuild_user(funnel, user_events, lateness, None)
        for entity in set(held) | set(live):
            slots = held.get(entity, [None] * len(funnel.steps))
            want_level = max((k + 1 for k, s in enumerate(slots) if s is not None), default=0)
            got = live.get(entity)
            assert (got.level if got else 0) == want_level, (entity, funnel)
            if got is not None and funnel.hold_property is None and funnel.order != "any":
                want = [
                    None if h is None else (h.started_ms, h.reached_ms, h.event_id) for h in slots
                ]
                assert got.slots == want, (entity, funnel)
            if entity in totals:
                assert got is not None and got.attempts == totals[entity], (entity, funnel)
