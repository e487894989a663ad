"""Any arrival order: events later than the lateness re-fold their visitor (processor/refold.py).

Random histories and funnel definitions are delivered in a random order (events days late
included), through `apply_event` as the processor runs it; whenever an event is too late
for the live state, its visitor is re-folded from the events "stored" so far and the
corrections are applied to in-memory copies of the tables, as the pipeline writes them.
At the end, whatever the order:

* each visitor's live progress and its funnel_state row equal the reference's,
* the sessions table equals the batch sessionization of all events,
* the transitions table's end state equals the one in-timestamp-order delivery leaves.

No server: the pipeline's reads and writes of these rows are covered by
tests/processor/test_pipeline_late.py against the real engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnel.fold import FunnelProgress
from processor.refold import StoredEvent, TransitionKey, corrections, refold
from processor.rows import Row
from processor.sessionize import reference_sessions
from processor.state import VisitorState
from processor.transform import Timing
from schemas.funnels import FunnelDefinition
from tests.oracle import funnel_reference as reference
from tests.processor.test_live_differential import (
    LATENESS_MS,
    apply_one,
    assert_live_equals_reference,
    live_funnels,
)
from tests.query_api.test_report_differential import streams

EXAMPLES = int(os.environ.get("FUNNEL_DIFF_EXAMPLES", "300"))
GAP_MS = 30 * 60 * 1000
DAY_MS = 24 * 3600 * 1000


@dataclass
class Tables:
    """The rows the pipeline leaves in ClickHouse, as FINAL reads them."""

    sessions: dict[tuple[str, str], Row] = field(default_factory=dict)
    states: dict[tuple[str, str], Row] = field(default_factory=dict)
    transitions: dict[tuple[str, str, int], Row] = field(default_factory=dict)

    def write_sessions(self, rows: list[Row]) -> None:
        for row in rows:
            key = (row[1], row[2])
            if row[-1]:  # is_deleted
                self.sessions.pop(key, None)
            else:
                self.sessions[key] = row

    def write_states(self, rows: list[Row]) -> None:
        for row in rows:
            self.states[(row[1], row[2])] = row

    def write_transitions(self, rows: list[Row]) -> None:
        for row in rows:
            self.transitions[(row[1], row[2], row[3])] = row

    def session_ids(self, visitor: str) -> set[str]:
        return {sid for v, sid in self.sessions if v == visitor}

    def transitions_of(self, visitor: str) -> dict[tuple[str, int], tuple[TransitionKey, str]]:
        return {
            (f, step): ((step, int(row[4]), int(row[5]), str(row[6])), str(row[8]))
            for (f, v, step), row in self.transitions.items()
            if v == visitor
        }

    def transition_end_state(self) -> dict[tuple[str, str, int], tuple[Any, ...]]:
        """Per key, what a reader sees: the transition (not how it was written), or
        nothing when the last row is a retraction."""
        return {
            key: (row[4], row[5], row[6])
            for key, row in self.transitions.items()
            if row[8] != "retracted"
        }


def deliver(
    funnel: FunnelDefinition, events: list[reference.RefEvent], lateness_ms: int
) -> tuple[dict[str, VisitorState], Tables]:
    """Each event through `apply_event` in the given order, one batch per event; a late
    one re-folds its visitor from what is stored so far."""
    timing = Timing(session_gap_ms=GAP_MS, lateness_ms=lateness_ms)
    states: dict[str, VisitorState] = {}
    stored: dict[str, list[StoredEvent]] = {}
    tables = Tables()
    for offset, e in enumerate(events):
        state = states.setdefault(e.visitor_id, VisitorState("p", e.visitor_id))
        out = apply_one(state, e, offset, funnel, timing)
        stored.setdefault(e.visitor_id, []).append(
            StoredEvent(e.event_id, e.event, e.timestamp_ms, dict(e.properties), {}, e.user_id, "")
        )
        tables.write_sessions(list(out.sessions.values()))
        tables.write_states(list(out.funnel_states.values()))
        for rows in out.transition_inserts():
            tables.write_transitions(rows)
        if not out.refold:
            continue
        assert out.refold == {("p", e.visitor_id)}  # too late, or a held value re-sorting
        new = refold(state, stored[e.visitor_id], [funnel], timing, offset)
        fixes = corrections(
            state,
            new,
            tables.session_ids(e.visitor_id),
            tables.transitions_of(e.visitor_id),
            [funnel],
            state.applied_offset,
            offset,
        )
        tables.write_sessions(fixes.sessions)
        tables.write_states(fixes.funnel_states)
        tables.write_transitions(fixes.retractions)
        tables.write_transitions(fixes.transitions)
        states[e.visitor_id] = new.state
    return states, tables


@st.composite
def late_orders(draw: st.DrawFn, events: list[reference.RefEvent]) -> list[reference.RefEvent]:
    """Any order: a random arrival delay per event, some of them hours or days."""
    delays = draw(
        st.lists(
            st.one_of(
                st.integers(0, 5_000),
                st.integers(0, 3 * 3600 * 1000),
                st.integers(0, 3 * DAY_MS),
            ),
            min_size=len(events),
            max_size=len(events),
        )
    )
    order = sorted(range(len(events)), key=lambda i: (events[i].timestamp_ms + delays[i], i))
    return [events[i] for i in order]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(live_funnels(), streams(), st.data())
def test_any_arrival_order_equals_reference(
    funnel: FunnelDefinition, events: list[reference.RefEvent], data: st.DataObject
) -> None:
    # A one-second lateness too: most out-of-order events then need the re-fold.
    lateness = data.draw(st.sampled_from((1_000, *LATENESS_MS)))
    arrived = data.draw(st.one_of(late_orders(events), st.permutations(events)))
    in_order = sorted(events, key=lambda e: (e.timestamp_ms, e.event_id))

    states, tables = deliver(funnel, arrived, lateness)
    assert_live_equals_reference(funnel, events, states, lateness)

    # The funnel_state rows (what live stage counts read) carry the same levels.
    for visitor, state in states.items():
        progress = state.funnels.get(funnel.id)
        row = tables.states.get((funnel.id, visitor))
        assert (row[3] if row else 0) == (progress.level if progress else 0), visitor

    # Sessions: the batch answer over every event of the visitor.
    for visitor in states:
        want = reference_sessions(
            [e.timestamp_ms for e in events if e.visitor_id == visitor], GAP_MS
        )
        got = sorted(
            (int(row[3]), int(row[4]), row[5])
            for (v, _), row in tables.sessions.items()
            if v == visitor
        )
        assert got == want, visitor

    # Transitions: the end state in-order delivery leaves.
    _, ordered_tables = deliver(funnel, in_order, lateness)
    assert tables.transition_end_state() == ordered_tables.transition_end_state()


def test_a_day_late_event_moves_the_visitor_back_into_the_funnel() -> None:
    """A view delivered a day late (after the cart it precedes) re-folds the visitor:
    step 1 and 2 become reached, and the session count is the batch one."""
    funnel = FunnelDefinition.model_validate(
        {"id": "f", "project": "p", "steps": [{"event": "view"}, {"event": "cart"}]}
    )
    t0 = 1_760_000_000_000
    view = reference.RefEvent("00000000-0000-4000-8000-000000000001", "view", "v", t0, "", {})
    cart = reference.RefEvent(
        "00000000-0000-4000-8000-000000000002", "cart", "v", t0 + 60_000, "", {}
    )
    later = reference.RefEvent(
        "00000000-0000-4000-8000-000000000003", "other", "v", t0 + DAY_MS, "", {}
    )
    states, tables = deliver(funnel, [cart, later, view], 600_000)
    assert states["v"].funnels["f"].level == 2
    assert tables.states[("f", "v")][3] == 2
    assert sorted(step for (_, _, step) in tables.transition_end_state()) == [1, 2]
    assert len(tables.sessions) == 2  # {view, cart} and {later}


def test_a_funnel_failing_in_the_refold_keeps_its_rows_and_the_others_are_corrected() -> None:
    """A definition whose rule raises on a stored event: reported (the pipeline
    quarantines it), its live progress and stored transitions left alone, and the good
    funnel re-folded as usual."""
    from tests.processor.test_transform import broken_funnel

    good = FunnelDefinition.model_validate(
        {"id": "f", "project": "p", "steps": [{"event": "view"}, {"event": "cart"}]}
    )
    broken = broken_funnel().model_copy(update={"steps": broken_funnel().steps[:2]})
    t0 = 1_760_000_000_000
    timing = Timing(session_gap_ms=GAP_MS, lateness_ms=600_000)
    cart = StoredEvent("00000000-0000-4000-8000-000000000002", "cart", t0 + 60_000, {}, {}, "", "")
    view = StoredEvent("00000000-0000-4000-8000-000000000001", "view", t0, {}, {}, "", "")
    old = VisitorState("p", "v")
    old.funnels["broken"] = marker = FunnelProgress(steps=2)
    stored = {("broken", 1): ((1, t0 + 60_000, t0, cart.event_id), "reached")}

    new = refold(old, [cart, view], [broken, good], timing, 0)
    assert set(new.outputs.failed) == {("p", "broken")}
    assert new.state.funnels["broken"] is marker
    assert new.state.funnels["f"].level == 2
    fixes = corrections(old, new, set(), stored, [broken, good], 0, 0)
    assert {row[1] for row in fixes.funnel_states} == {"f"}
    assert fixes.retractions == []
    assert sorted((row[1], row[3]) for row in fixes.transitions) == [("f", 1), ("f", 2)]


def test_funnels_left_out_of_a_refold_keep_their_rows() -> None:
    """A funnel whose backfill has not reached the visitor yet is not passed to the
    re-fold (the live fold skips it too): its stored transitions stay, its chunk writes."""
    good = FunnelDefinition.model_validate(
        {"id": "f", "project": "p", "steps": [{"event": "view"}, {"event": "cart"}]}
    )
    t0 = 1_760_000_000_000
    timing = Timing(session_gap_ms=GAP_MS, lateness_ms=600_000)
    view = StoredEvent("00000000-0000-4000-8000-000000000001", "view", t0, {}, {}, "", "")
    old = VisitorState("p", "v")
    stored = {("waiting", 1): ((1, t0, t0, view.event_id), "reached")}
    new = refold(old, [view], [good], timing, 0)
    fixes = corrections(old, new, set(), stored, [good], 0, 0)
    assert fixes.retractions == []
    assert {row[1] for row in fixes.transitions} == {"f"}
    assert {row[1] for row in fixes.funnel_states} == {"f"}
