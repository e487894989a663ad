"""The fold's contract (processor/visitor_fold.py): one visitor's events as columns in,
the same state and rows as folding them one by one through `apply_event`."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.state import VisitorState
from processor.transform import Outputs, Timing, apply_event
from processor.visitor_fold import VisitorEvents, fold_visitor
from schemas.funnels import FunnelDefinition
from tests.oracle import funnel_reference as reference
from tests.processor.test_live_differential import as_event, live_funnels
from tests.query_api.test_report_differential import streams

TIMING = Timing(session_gap_ms=30 * 60 * 1000, lateness_ms=600_000)


@settings(max_examples=100, deadline=None)
@given(live_funnels(), streams(), st.randoms(use_true_random=False))
def test_columns_fold_as_events_one_by_one(
    funnel: FunnelDefinition, events: list[reference.RefEvent], rng: random.Random
) -> None:
    arrived = list(events)
    rng.shuffle(arrived)
    for visitor in sorted({e.visitor_id for e in events}):
        own = [e for e in arrived if e.visitor_id == visitor]
        # A replayed prefix (offsets already absorbed) and one resend among them.
        duplicate = [i == len(own) - 1 and len(own) > 2 for i in range(len(own))]
        one_by_one, expected = VisitorState("p", visitor), Outputs()
        one_by_one.applied_offset = 0
        columns = VisitorEvents("p", visitor, 0)
        for offset, (e, dup) in enumerate(zip(own, duplicate, strict=True)):
            apply_event(
                one_by_one,
                as_event(e),
                partition=0,
                offset=offset,
                funnels=[funnel],
                timing=TIMING,
                processed_at_ms=1,
                out=expected,
                duplicate=dup,
            )
            columns.append(offset, as_event(e), dup)
        state = VisitorState("p", visitor)
        state.applied_offset = 0
        got = Outputs()
        result = fold_visitor(
            state, columns, funnels=[funnel], timing=TIMING, processed_at_ms=1, out=got
        )
        assert result.state.dumps() == one_by_one.dumps()
        assert result.absorbed == list(range(1, len(own)))  # offset 0 was absorbed before
        assert got.events == expected.events
        assert got.transition_inserts() == expected.transition_inserts()
        assert got.funnel_states == expected.funnel_states
        assert got.sessions == expected.sessions
        assert got.duplicates == expected.duplicates
