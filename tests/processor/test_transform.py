"""One event in, rows out: dedupe, replay skip, lateness, and state that survives a restart."""

from __future__ import annotations

import dataclasses
import uuid

import orjson
import pytest

from funnel.fold import Transition
from processor.sessionize import new_session_id
from processor.state import STATE_FORMAT, StateFormatError, VisitorState, visitor_key
from processor.transform import Outputs, Timing, apply_event
from schemas.events import Event
from schemas.funnels import FunnelDefinition, FunnelStep

T0 = 1_760_000_000_000
MIN = 60_000
TIMING = Timing(session_gap_ms=30 * MIN, lateness_ms=10 * MIN)
PROCESSED_AT = T0 + 999
FUNNEL = FunnelDefinition.model_validate(
    {
        "id": "f",
        "project": "p",
        "window_seconds": 3600,
        "steps": [{"event": "view"}, {"event": "cart"}, {"event": "buy"}],
    }
)
# Exclusions cannot be held live yet: such a funnel must not get live rows.
EXCLUDING = FunnelDefinition.model_validate(
    {
        "id": "x",
        "project": "p",
        "steps": [{"event": "view"}, {"event": "cart"}, {"event": "buy"}],
        "exclusions": [{"event": "refund", "to_step": 2}],
    }
)
BY_USER = FunnelDefinition.model_validate(
    {"id": "u", "project": "p", "steps": [{"event": "view"}, {"event": "buy"}], "count_by": "user"}
)
HELD_SESSIONS = FunnelDefinition.model_validate(
    {
        "id": "h",
        "project": "p",
        "steps": [{"event": "view"}, {"event": "buy"}],
        "count_by": "session",
        "hold_property": "sku",
    }
)
STRICT = FunnelDefinition.model_validate(
    {"id": "s", "project": "p", "steps": [{"event": "view"}, {"event": "cart"}], "order": "strict"}
)


def eid(n: int) -> str:
    return str(uuid.UUID(int=n))


def ev(n: int, name: str, minute: float, **props: object) -> Event:
    return Event(
        project_id="p",
        event_id=eid(n),
        event=name,
        visitor_id="v",
        timestamp_ms=T0 + int(minute * MIN),
        received_at_ms=T0,
        properties=dict(props),
        context={"browser": "Firefox", "os": "Linux", "device": "desktop", "country": "SE"},
    )


def apply_all(
    state: VisitorState,
    events: list[Event],
    first_offset: int = 0,
    funnels: list[FunnelDefinition] | None = None,
    stored: dict[str, int] | None = None,
) -> Outputs:
    """`stored`: event id → offset of the copy accepted first, standing in for the events
    table the processor dedupes against (processor/dedupe.py); shared across calls to
    dedupe across them. A copy at another offset is a resend; at its own, a replay."""
    out = Outputs()
    stored = {} if stored is None else stored
    for k, event in enumerate(events):
        offset = first_offset + k
        apply_event(
            state,
            event,
            partition=3,
            offset=offset,
            funnels=[FUNNEL] if funnels is None else funnels,
            timing=TIMING,
            processed_at_ms=PROCESSED_AT,
            out=out,
            duplicate=stored.setdefault(event.event_id, offset) != offset,
        )
    return out


def fresh() -> VisitorState:
    return VisitorState("p", "v")


def test_event_row_columns() -> None:
    out = apply_all(fresh(), [ev(1, "view", 0, url="/a", product={"id": 7})])
    assert out.events == [
        (
            "p",
            eid(1),
            "view",
            "v",
            "",
            "",
            T0,
            T0,
            {"url": "/a", "product.id": "7"},
            {"browser": "Firefox", "os": "Linux", "device": "desktop", "country": "SE"},
            3,
            0,
        )
    ]


def test_session_row_takes_entry_from_properties_and_context() -> None:
    out = apply_all(fresh(), [ev(1, "view", 0, url="/a", utm_source="mail")])
    sid = new_session_id("p", "v", eid(1))
    assert out.sessions == {
        sid: (
            "p",
            "v",
            sid,
            T0,
            T0,
            1,
            "/a",
            "",
            "mail",
            "",
            "",
            "desktop",
            "Firefox",
            "Linux",
            "SE",
            0,
            0,
        )
    }


def test_funnel_rows_for_each_step_reached() -> None:
    out = apply_all(fresh(), [ev(1, "view", 0), ev(2, "cart", 1), ev(3, "other", 2)])
    assert out.transitions == [
        ("p", "f", "v", 1, T0, T0, eid(1), PROCESSED_AT, "reached"),
        ("p", "f", "v", 2, T0 + MIN, T0, eid(2), PROCESSED_AT, "reached"),
    ]
    assert out.funnel_states == {
        ("p", "f", "v"): (
            "p",
            "f",
            "v",
            2,
            [T0, T0, 0],
            [T0, T0 + MIN, 0],
            [],  # step attempts: only for funnels counting total attempts
            PROCESSED_AT,
            1,  # the offset of the last event that moved this funnel
        )
    }


def test_duplicate_event_id_is_counted_and_writes_nothing() -> None:
    state = fresh()
    out = apply_all(state, [ev(1, "view", 0), ev(1, "view", 0), ev(2, "cart", 1)])
    assert out.duplicates == 1
    assert [row[11] for row in out.events] == [0, 2]
    assert [t[3] for t in out.transitions] == [1, 2]
    assert state.applied_offset == 2


def test_duplicate_is_recognised_even_with_a_different_payload() -> None:
    state, stored = fresh(), dict[str, int]()
    apply_all(state, [ev(1, "view", 0)], stored=stored)
    out = apply_all(state, [ev(1, "cart", 5)], first_offset=1, stored=stored)
    assert out.duplicates == 1
    assert out.row_count() == 0


def test_state_does_not_grow_with_events() -> None:
    # Events further apart than the lateness: state keeps what is within it, no more.
    state = fresh()
    apply_all(state, [ev(n, "view", n * 11) for n in range(1, 101)])
    small = len(state.dumps())
    apply_all(state, [ev(n, "view", n * 11) for n in range(101, 5001)], first_offset=100)
    assert len(state.dumps()) <= small + 10  # a few more digits in offsets and times


def test_state_of_the_previous_release_loads() -> None:
    # Written by the release that kept the visitor's last 512 event ids ("seen"), after
    # view, view and that view again at offsets 5, 6, 7.
    old = (
        '{"p":"p","v":"v","n":1760000060000,"o":7,"seen":["00000000-0000-0000-0000-0000000'
        '00001","00000000-0000-0000-0000-000000000002"],"s":[["31ec2cc7-6f90-59af-9af5-3cf77'
        '14aa685",1760000000000,1760000060000,2,{"url":"/","referrer":"","utm_source":"","ut'
        'm_medium":"","utm_campaign":"","device":"desktop","browser":"Firefox","os":"Linux","'
        'country":"SE"}]],"f":{"f":{"c":[null,null,null],"p":[[1760000000000,0,"00000000-000'
        '0-0000-0000-000000000001",0],[1760000060000,0,"00000000-0000-0000-0000-000000000002'
        '",0]],"l":1,"s":[[1760000060000,1760000060000,"00000000-0000-0000-0000-000000000002'
        '"],null,null],"ct":"","st":"00000000-0000-0000-0000-000000000002"}},"u":null}'
    )
    restored = VisitorState.loads(old, {"f": 3})
    same = fresh()
    apply_all(same, [ev(1, "view", 0, url="/"), ev(2, "view", 1), ev(2, "view", 1)], 5)
    # The transitions the table holds were not kept then: the steps held stand in.
    assert restored.funnels["f"].table() == {1: Transition(1, T0 + MIN, T0 + MIN, eid(2))}
    for progress in (restored.funnels["f"], same.funnels["f"]):
        progress.marks, progress.emitted = {}, []
    assert restored == same
    # It goes on from there, and keeps the key the previous release requires to load.
    out = apply_all(restored, [ev(3, "cart", 2)], first_offset=8)
    assert [t[3] for t in out.transitions] == [2]
    assert orjson.loads(restored.dumps())["seen"] == []


def test_replaying_applied_offsets_yields_no_rows() -> None:
    events = [ev(1, "view", 0), ev(2, "cart", 1), ev(3, "buy", 2)]
    state = fresh()
    first = apply_all(state, events)
    assert first.row_count() == 3 + 1 + 1 + 3
    before = state.dumps()

    again = apply_all(state, events)

    assert again.row_count() == 0
    assert again.duplicates == 0  # skipped by offset, not by id
    assert state.dumps() == before


def test_replay_skips_up_to_the_applied_offset_only() -> None:
    state = fresh()
    apply_all(state, [ev(1, "view", 0), ev(2, "cart", 1)], first_offset=10)
    out = apply_all(state, [ev(2, "cart", 1), ev(3, "buy", 2)], first_offset=11)
    assert [row[11] for row in out.events] == [12]
    assert [t[3] for t in out.transitions] == [3]


def test_too_late_event_is_stored_but_not_placed() -> None:
    state = fresh()
    apply_all(state, [ev(1, "view", 60)])
    out = apply_all(state, [ev(2, "cart", 49.99)], first_offset=1)  # 10m01s behind
    assert out.too_late == 1
    assert out.refold == {("p", "v")}  # placed by a re-fold after the write
    assert len(out.events) == 1
    assert out.sessions == {}
    assert out.funnel_states == {}
    assert out.transitions == []
    assert state.newest_ms == T0 + 60 * MIN


def test_event_exactly_lateness_behind_is_still_placed() -> None:
    state = fresh()
    apply_all(state, [ev(1, "view", 60)])
    out = apply_all(state, [ev(2, "view", 50)], first_offset=1)
    assert out.too_late == 0
    assert len(out.sessions) == 1
    session = next(iter(out.sessions.values()))
    assert (session[3], session[4], session[5]) == (
        T0 + 50 * MIN,
        T0 + 60 * MIN,
        2,
    )


def test_late_event_merging_sessions_writes_a_deleted_row() -> None:
    state = fresh()
    apply_all(state, [ev(1, "view", 0), ev(2, "view", 35)])
    # 28 is < 30 min after the first session and within the 10 min lateness of 35.
    out = apply_all(state, [ev(3, "view", 28)], first_offset=2)
    first, second = new_session_id("p", "v", eid(1)), new_session_id("p", "v", eid(2))
    assert set(out.sessions) == {first, second}
    assert out.sessions[first][3:6] == (T0, T0 + 35 * MIN, 3)
    assert out.sessions[first][-1] == 0
    assert out.sessions[second][-1] == 1
    assert [s.session_id for s in state.sessions] == [first]


def test_sessions_with_a_held_property_split_each_session_by_value() -> None:
    state = fresh()
    out = apply_all(
        state, [ev(1, "view", 0, sku="a"), ev(2, "buy", 1, sku="b")], funnels=[HELD_SESSIONS]
    )
    assert out.funnel_states[("p", "h", "v")][3] == 1  # a buy of another product
    out = apply_all(state, [ev(3, "buy", 2, sku="a")], 2, funnels=[HELD_SESSIONS])
    assert out.funnel_states[("p", "h", "v")][3] == 2  # a's attempt converts
    # A 30-minute gap starts a new session.
    out = apply_all(
        state, [ev(4, "page", 3), ev(5, "view", 40, sku="a")], 3, funnels=[HELD_SESSIONS]
    )
    row = out.funnel_states[("p", "h", "v")]
    assert row[3] == 1 and row[6] == [2, 1]  # sessions reaching each step: both, the first
    restored = VisitorState.loads(state.dumps(), {"h": 2})
    out = apply_all(restored, [ev(6, "buy", 41, sku="a")], 5, funnels=[HELD_SESSIONS])
    assert out.funnel_states[("p", "h", "v")][6] == [2, 2]


def as_user(event: Event, user: str) -> Event:
    return dataclasses.replace(event, user_id=user)


def test_user_funnel_folds_a_visitor_until_it_identifies_then_touches_its_user() -> None:
    state = fresh()
    out = apply_all(state, [ev(1, "view", 0)], funnels=[BY_USER])
    assert out.funnel_states[("p", "u", "v")][3] == 1  # anonymous: counted on its own
    assert out.users == set() and out.identities == []

    out = apply_all(state, [as_user(ev(2, "page", 1), "alice")], 1, funnels=[BY_USER])
    at = T0 + MIN
    assert out.identities == [("p", "alice", "v", at, 0)]
    assert out.users == {("p", "alice")}
    # Its own row is emptied: from now on its events count in alice's row.
    assert out.funnel_states[("p", "u", "v")][3] == 0
    assert "u" not in state.funnels and out.transitions == []

    out = apply_all(state, [ev(3, "buy", 2), ev(4, "page", 3)], 2, funnels=[BY_USER])
    assert out.users == {("p", "alice")} and out.funnel_states == {}
    out = apply_all(state, [ev(5, "page", 4)], 4, funnels=[BY_USER])
    assert out.users == set()  # concerns no user funnel: nothing to rebuild

    # The newest user id wins; the user left behind is rebuilt too.
    out = apply_all(state, [as_user(ev(6, "page", 5), "bob")], 5, funnels=[BY_USER])
    at = T0 + 5 * MIN
    assert out.identities == [("p", "bob", "v", at, 0), ("p", "alice", "v", at, 1)]
    assert out.users == {("p", "alice"), ("p", "bob")}
    # An older event with another user id changes nothing (the report's rule as well).
    out = apply_all(state, [as_user(ev(7, "page", 4.5), "carol")], 6, funnels=[BY_USER])
    assert out.identities == [] and out.users == set()
    assert state.identity == (T0 + 5 * MIN, "bob")
    restored = VisitorState.loads(state.dumps(), {"u": 2})
    assert restored.identity == state.identity


def test_an_exclusion_takes_the_live_level_back_down() -> None:
    state = fresh()
    out = apply_all(state, [ev(1, "view", 0), ev(2, "cart", 1)], funnels=[EXCLUDING])
    assert out.funnel_states[("p", "x", "v")][3] == 2
    out = apply_all(state, [ev(3, "refund", 2)], first_offset=2, funnels=[EXCLUDING])
    assert out.funnel_states[("p", "x", "v")][3] == 0  # the attempt at step 2 is discarded
    out = apply_all(
        state, [ev(4, "view", 3), ev(5, "cart", 4)], first_offset=3, funnels=[EXCLUDING]
    )
    assert out.funnel_states[("p", "x", "v")][3] == 2  # a later clean attempt counts
    assert [t[3] for t in out.transitions] == [1, 2]


def test_strict_order_breaks_on_another_event_and_writes_rows_only_when_moved() -> None:
    state = fresh()
    out = apply_all(state, [ev(1, "view", 0), ev(2, "other", 1)], funnels=[STRICT])
    assert out.funnel_states[("p", "s", "v")][3] == 1
    out = apply_all(state, [ev(3, "cart", 2), ev(4, "other", 3)], first_offset=2, funnels=[STRICT])
    assert out.funnel_states[("p", "s", "v")][-1] == 2  # the cart's offset: "other" wrote nothing
    assert out.funnel_states[("p", "s", "v")][3] == 1 and not out.transitions
    out = apply_all(state, [ev(5, "view", 4), ev(6, "cart", 5)], first_offset=4, funnels=[STRICT])
    assert out.funnel_states[("p", "s", "v")][3] == 2
    # A late event between view and cart breaks the chain again: the row is rewritten.
    out = apply_all(state, [ev(7, "other", 4.5)], first_offset=6, funnels=[STRICT])
    assert out.funnel_states[("p", "s", "v")][3] == 1


def stream() -> list[Event]:
    """Two sessions, late arrivals within lateness, a duplicate, a too-late event."""
    return [
        ev(1, "view", 0, url="/"),
        ev(2, "cart", 5),
        ev(3, "view", 3, url="/late"),
        ev(2, "cart", 5),
        ev(4, "view", 50),
        ev(5, "view", 45),
        ev(6, "cart", 20),  # too late: 30 min behind
        ev(7, "buy", 55),
        ev(8, "view", 120),
        ev(9, "cart", 115),
        ev(10, "buy", 121),
    ]


def test_state_dump_and_load_in_the_middle_changes_nothing() -> None:
    events = stream()
    for cut in range(len(events) + 1):
        whole, stored = fresh(), dict[str, int]()
        apply_all(whole, events[:cut], stored=stored)
        expected = apply_all(whole, events[cut:], first_offset=cut, stored=stored)

        head, stored = fresh(), dict[str, int]()
        apply_all(head, events[:cut], stored=stored)
        restored = VisitorState.loads(head.dumps(), {"f": 3})
        assert restored == head
        got = apply_all(restored, events[cut:], first_offset=cut, stored=stored)

        assert got == expected, cut
        assert restored.dumps() == whole.dumps()


def test_stream_final_state() -> None:
    state = fresh()
    out = apply_all(state, stream())
    assert out.duplicates == 1
    assert out.too_late == 1
    assert len(out.events) == 10
    assert state.funnels["f"].level == 3
    assert [t[3] for t in out.transitions] == [1, 2, 3]
    # The chain that converted started at 3 (the late view restarted it), not at 0; buy at 55
    # is within the hour of it.
    assert out.transitions[-1][5] == T0 + 3 * MIN
    assert [(s.started_at_ms, s.ended_at_ms, s.event_count) for s in state.sessions] == [
        (T0 + 115 * MIN, T0 + 121 * MIN, 3)
    ]


def test_loads_drops_funnels_deleted_or_redefined() -> None:
    state = fresh()
    apply_all(state, [ev(1, "view", 0)])
    raw = state.dumps()
    assert set(VisitorState.loads(raw, {"f": 3}).funnels) == {"f"}
    assert VisitorState.loads(raw, {"f": 4}).funnels == {}
    assert VisitorState.loads(raw, {}).funnels == {}


def test_visitor_key() -> None:
    assert visitor_key("p", "v") == "p\x1fv"


def broken_funnel() -> FunnelDefinition:
    """A definition validation would refuse (a step window that is text), built around it
    the way a definition saved by an older release could be: its fold raises on an event."""
    cart = FunnelStep.model_construct(
        event="cart", filters=(), any_of=(), name=None, within_seconds="5", optional=False
    )
    return FunnelDefinition.model_construct(
        **{**FUNNEL.__dict__, "id": "broken", "steps": (FUNNEL.steps[0], cart, FUNNEL.steps[2])}
    )


def test_a_funnel_that_fails_on_an_event_is_reported_and_others_go_on() -> None:
    state = fresh()
    broken = broken_funnel()
    out = apply_all(state, [ev(1, "view", 0), ev(2, "cart", 1)], funnels=[broken, FUNNEL])
    assert set(out.failed) == {("p", "broken")}
    funnel, error = out.failed[("p", "broken")]
    assert funnel is broken and isinstance(error, TypeError)
    assert state.funnels["f"].level == 2  # the good funnel advanced on the same events
    assert len(out.events) == 2


def test_state_format_is_versioned_and_a_newer_one_is_refused() -> None:
    state = fresh()
    apply_all(state, [ev(1, "view", 0), ev(2, "cart", 1)])
    doc = orjson.loads(state.dumps())
    assert doc["fmt"] == STATE_FORMAT
    assert VisitorState.loads(state.dumps(), {"f": 3}) == state
    doc["fmt"] = STATE_FORMAT + 1
    with pytest.raises(StateFormatError, match="format"):
        VisitorState.loads(orjson.dumps(doc), {"f": 3})
