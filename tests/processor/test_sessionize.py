"""Sessionization: gap edges, late events that extend or bridge sessions, forgetting."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.sessionize import (
    Session,
    SessionChange,
    forget_closed,
    new_session_id,
    place,
    reference_sessions,
    session_of,
)

GAP = 100
LATENESS = 250


def put(sessions: list[Session], ts: int, new_id: str, url: str = "") -> list[SessionChange]:
    return place(sessions, timestamp_ms=ts, entry={"url": url}, new_id=new_id, gap_ms=GAP)


def shape(sessions: list[Session]) -> list[tuple[str, int, int, int]]:
    return [(s.session_id, s.started_at_ms, s.ended_at_ms, s.event_count) for s in sessions]


def test_first_event_opens_a_session() -> None:
    sessions: list[Session] = []
    changes = put(sessions, 1000, "s1", url="/home")
    assert changes == [SessionChange(Session("s1", 1000, 1000, 1, {"url": "/home"}))]
    assert sessions == [Session("s1", 1000, 1000, 1, {"url": "/home"})]


def test_event_less_than_gap_after_joins() -> None:
    sessions: list[Session] = []
    put(sessions, 1000, "s1")
    changes = put(sessions, 1000 + GAP - 1, "s2")
    assert shape(sessions) == [("s1", 1000, 1000 + GAP - 1, 2)]
    assert [c.deleted for c in changes] == [False]


def test_event_exactly_gap_after_opens_a_new_session() -> None:
    sessions: list[Session] = []
    put(sessions, 1000, "s1")
    put(sessions, 1000 + GAP, "s2")
    assert shape(sessions) == [("s1", 1000, 1000, 1), ("s2", 1000 + GAP, 1000 + GAP, 1)]


def test_late_event_exactly_gap_before_opens_a_new_session() -> None:
    sessions: list[Session] = []
    put(sessions, 1000, "s1")
    put(sessions, 1000 - GAP, "s0")
    assert shape(sessions) == [("s0", 900, 900, 1), ("s1", 1000, 1000, 1)]


def test_late_event_less_than_gap_before_becomes_the_start_and_entry() -> None:
    sessions: list[Session] = []
    put(sessions, 1000, "s1", url="/second")
    changes = put(sessions, 1000 - GAP + 1, "s0", url="/landing")
    # The id stays the one fixed at creation; start and entry move to the earlier event.
    assert shape(sessions) == [("s1", 901, 1000, 2)]
    assert sessions[0].entry == {"url": "/landing"}
    assert [(c.session.session_id, c.deleted) for c in changes] == [("s1", False)]


def test_event_inside_a_session_only_counts() -> None:
    sessions: list[Session] = []
    put(sessions, 1000, "s1")
    put(sessions, 1080, "s2")
    put(sessions, 1040, "s3", url="/late")
    assert shape(sessions) == [("s1", 1000, 1080, 3)]
    assert sessions[0].entry == {"url": ""}


def test_late_event_bridging_two_sessions_merges_them() -> None:
    sessions: list[Session] = []
    put(sessions, 1000, "s1")
    put(sessions, 1010, "s1b")
    put(sessions, 1160, "s2")
    put(sessions, 1170, "s2b")
    assert shape(sessions) == [("s1", 1000, 1010, 2), ("s2", 1160, 1170, 2)]

    changes = put(sessions, 1100, "bridge")

    assert shape(sessions) == [("s1", 1000, 1170, 5)]
    assert [(c.session.session_id, c.deleted) for c in changes] == [("s1", False), ("s2", True)]


def test_late_event_bridging_three_sessions_deletes_two() -> None:
    sessions = [
        Session("a", 0, 0, 1),
        Session("b", 120, 120, 1),
        Session("c", 240, 240, 1),
    ]
    # 60 is within GAP of a and b only.
    changes = put(sessions, 60, "x")
    assert shape(sessions) == [("a", 0, 120, 3), ("c", 240, 240, 1)]
    assert [(c.session.session_id, c.deleted) for c in changes] == [("a", False), ("b", True)]


def test_sessions_stay_sorted_by_start() -> None:
    sessions: list[Session] = []
    for ts, sid in [(500, "c"), (100, "a"), (300, "b")]:
        put(sessions, ts, sid)
    assert [s.session_id for s in sessions] == ["a", "b", "c"]


def test_session_of_is_inclusive_at_both_ends() -> None:
    sessions = [Session("a", 100, 200, 2)]
    assert session_of(sessions, 100) is sessions[0]
    assert session_of(sessions, 200) is sessions[0]
    assert session_of(sessions, 99) is None
    assert session_of(sessions, 201) is None


def test_forget_closed_keeps_sessions_a_late_event_can_still_reach() -> None:
    newest = 1000
    # Earliest placeable event: 1000 - 250 = 750; it joins a session ending after 650.
    sessions = [Session("gone", 0, 650, 1), Session("kept", 0, 651, 1)]
    forget_closed(sessions, newest, GAP, LATENESS)
    assert [s.session_id for s in sessions] == ["kept"]


def test_session_ids_are_stable_and_distinct() -> None:
    a = new_session_id("p", "v", "e1")
    assert a == new_session_id("p", "v", "e1")
    assert a != new_session_id("p", "v", "e2")
    assert a != new_session_id("p", "v2", "e1")
    assert a != new_session_id("p2", "v", "e1")


def test_session_json_roundtrip() -> None:
    s = Session("s", 1, 2, 3, {"url": "/x"})
    assert s.to_json() == ["s", 1, 2, 3, {"url": "/x"}]
    assert Session.from_json(s.to_json()) == s


def test_reference_sessions() -> None:
    assert reference_sessions([], GAP) == []
    assert reference_sessions([300, 0, 99, 199, 200], GAP) == [
        (0, 99, 2),
        (199, 200, 2),
        (300, 300, 1),
    ]


@st.composite
def arrivals(draw: st.DrawFn) -> list[int]:
    """Timestamps in an order where each is at most LATENESS behind the newest seen so far:
    every event arrives at its timestamp plus a delay of at most LATENESS."""
    timestamps = draw(st.lists(st.integers(0, 2000), min_size=1, max_size=30))
    delays = draw(
        st.lists(st.integers(0, LATENESS), min_size=len(timestamps), max_size=len(timestamps))
    )
    order = sorted(range(len(timestamps)), key=lambda i: (timestamps[i] + delays[i], i))
    return [timestamps[i] for i in order]


@settings(max_examples=300, deadline=None)
@given(arrivals())
def test_any_arrival_within_lateness_gives_the_batch_sessions(timestamps: list[int]) -> None:
    live: list[Session] = []
    forgotten: list[Session] = []
    deleted: set[str] = set()
    newest = 0
    for n, ts in enumerate(timestamps):
        assert ts >= newest - LATENESS  # the generator never makes a too-late event
        newest = max(newest, ts)
        changes = put(live, ts, f"e{n}")
        deleted |= {c.session.session_id for c in changes if c.deleted}
        before = list(live)
        forget_closed(live, newest, GAP, LATENESS)
        forgotten += [s for s in before if s not in live]

    got = sorted((s.started_at_ms, s.ended_at_ms, s.event_count) for s in live + forgotten)
    assert got == reference_sessions(timestamps, GAP)
    assert deleted.isdisjoint(s.session_id for s in live + forgotten)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=20), st.text(max_size=40), st.text(max_size=40))
def test_session_ids_are_the_standard_uuid5(project: str, visitor: str, event_id: str) -> None:
    name = f"{project}\x1f{visitor}\x1f{event_id}"
    expected = str(uuid.uuid5(uuid.UUID("6f1d8a43-5a0e-4b8e-9a51-9d2f2f7c1e10"), name))
    assert new_session_id(project, visitor, event_id) == expected
