"""The stored visitor state: a state the previous release wrote loads, and is written
back byte for byte (so a rollback reads what this release writes)."""

from __future__ import annotations

from pathlib import Path

import orjson

from processor.state import VisitorState

# Written by the previous release's `VisitorState.dumps` (format 2): a visitor identified
# as a user, two sessions, and four funnels using every optional part of a funnel's
# progress (order "any", a held property counted by session, total counting, strict
# order), with pending entries, marks and emitted transitions.
STORED = (Path(__file__).parent / "data" / "visitor_state_fmt2.json").read_bytes().strip()
STEPS = {"any": 3, "held": 2, "total": 2, "strict": 2}


def test_a_state_of_the_previous_release_loads_and_is_written_back_the_same() -> None:
    state = VisitorState.loads(STORED, STEPS)
    assert set(state.funnels) == set(STEPS)
    assert state.identity == (1_760_002_460_000, "alice")
    assert len(state.sessions) == 2
    assert state.dumps() == STORED


def test_a_written_state_loads_as_the_same_state() -> None:
    state = VisitorState.loads(STORED, STEPS)
    again = VisitorState.loads(state.dumps(), STEPS)
    assert again == state
    assert orjson.loads(again.dumps()) == orjson.loads(STORED)
