"""The documented semantics, case by case, on the pure-Python reference (no ClickHouse).
The differential test then holds the SQL report to the same answers."""

from __future__ import annotations

import uuid
from typing import Any

from schemas.funnels import FunnelDefinition
from tests.oracle.funnel_reference import RefEvent, report

FAR = (0, 10**13)


def funnel(*steps: Any, **extra: Any) -> FunnelDefinition:
    body = {"id": "f", "project": "p", "window_seconds": 10, "steps": list(steps), **extra}
    return FunnelDefinition.model_validate(body)


def stream(*items: tuple[str, float], visitor: str = "v", user: str = "") -> list[RefEvent]:
    """(event, seconds); ids ascend in ClickHouse's UUID order (low 64 bits first)."""
    return [
        RefEvent(str(uuid.UUID(int=i + 1)), name, visitor, int(s * 1000), user)
        for i, (name, s) in enumerate(items)
    ]


def reached(f: FunnelDefinition, events: list[RefEvent]) -> list[int]:
    return [s.entities for s in report(f, events, *FAR)]


A, B, C = {"event": "a"}, {"event": "b"}, {"event": "c"}


def test_window_is_inclusive_from_step_one() -> None:
    assert reached(funnel(A, B), stream(("a", 0), ("b", 10))) == [1, 1]
    assert reached(funnel(A, B), stream(("a", 0), ("b", 10.001))) == [1, 0]


def test_one_event_advances_an_attempt_one_step() -> None:
    assert reached(funnel(A, A, B), stream(("a", 0), ("b", 1))) == [1, 0, 0]
    assert reached(funnel(A, A, B), stream(("a", 0), ("a", 0), ("b", 1))) == [1, 1, 1]


def test_same_timestamp_counts_in_funnel_order() -> None:
    assert reached(funnel(A, B), stream(("b", 5), ("a", 5))) == [1, 1]


def test_a_later_attempt_restarts_the_window() -> None:
    events = stream(("a", 0), ("a", 8), ("b", 15))
    assert reached(funnel(A, B), events) == [1, 1]


def test_any_of_alternatives() -> None:
    step = {"any_of": [{"event": "a"}, {"event": "c"}]}
    assert reached(funnel(step, B), stream(("c", 0), ("b", 1))) == [1, 1]


def test_per_step_window_from_previous_step() -> None:
    f = funnel(A, B, {"event": "c", "within_seconds": 2})
    assert reached(f, stream(("a", 0), ("b", 5), ("c", 7))) == [1, 1, 1]
    assert reached(f, stream(("a", 0), ("b", 5), ("c", 7.5))) == [1, 1, 0]


def test_exclusion_discards_the_attempt_and_a_clean_one_counts() -> None:
    f = funnel(A, B, C, exclusions=[{"event": "x", "from_step": 1, "to_step": 2}])
    assert reached(f, stream(("a", 0), ("b", 1), ("x", 2), ("c", 3))) == [0, 0, 0]
    # x before b: the attempt was not between steps 1 and 2 yet.
    assert reached(f, stream(("a", 0), ("x", 0.5), ("b", 1), ("c", 3))) == [1, 1, 1]
    # After the discarded attempt, a clean one counts.
    events = stream(("a", 0), ("b", 1), ("x", 2), ("a", 4), ("b", 5), ("c", 6))
    assert reached(f, events) == [1, 1, 1]
    # At the same timestamp the exclusion applies first.
    assert reached(f, stream(("a", 0), ("b", 1), ("c", 2), ("x", 2))) == [0, 0, 0]


def test_count_by_user_joins_visitors_after_identify() -> None:
    events = stream(("a", 0), visitor="v1") + [
        RefEvent(str(uuid.UUID(int=99)), "b", "v2", 1000, "u1")
    ]
    anonymous_first = [RefEvent(e.event_id, e.event, e.visitor_id, e.timestamp_ms, "u1")
                       for e in events[:1]] + events[1:]  # fmt: skip
    assert reached(funnel(A, B), events) == [1, 0]
    assert reached(funnel(A, B, count_by="user"), events) == [1, 0]  # v1 never identified
    assert reached(funnel(A, B, count_by="user"), anonymous_first) == [1, 1]


def test_in_progress_until_the_window_expires() -> None:
    f = funnel(A, B)
    events = stream(("a", 0))
    assert report(f, events, 0, 10**13, now_ms=10_000)[0].in_progress == 1
    assert report(f, events, 0, 10**13, now_ms=10_001)[0].in_progress == 0


def test_strict_order_allows_no_other_event_between_steps() -> None:
    f = funnel(A, B, C, order="strict")
    assert reached(f, stream(("a", 0), ("b", 1), ("c", 2))) == [1, 1, 1]
    # Any other event of the visitor breaks the attempt, also one of no step's name.
    assert reached(f, stream(("a", 0), ("q", 1), ("b", 2), ("c", 3))) == [1, 0, 0]
    assert reached(f, stream(("a", 0), ("b", 1), ("a", 2), ("c", 3))) == [1, 1, 0]
    # A later clean attempt counts.
    assert reached(f, stream(("a", 0), ("q", 1), ("a", 2), ("b", 3), ("c", 4))) == [1, 1, 1]
    # At the same millisecond, an event matching no step sorts before step events.
    assert reached(f, stream(("a", 0), ("q", 0), ("b", 1), ("c", 2))) == [1, 1, 1]
    assert reached(f, stream(("a", 0), ("b", 1), ("q", 1), ("c", 2))) == [1, 0, 0]


def test_strict_order_repeated_step_events() -> None:
    # Steps a, a, b: consecutive a's take steps 0 and 1.
    assert reached(funnel(A, A, B, order="strict"), stream(("a", 0), ("a", 1), ("b", 2))) == [
        1,
        1,
        1,
    ]


def test_strict_attempt_followed_by_another_event_is_dropped_not_in_progress() -> None:
    f = funnel(A, B, order="strict")
    assert report(f, stream(("a", 0)), *FAR, now_ms=5_000)[0].in_progress == 1
    assert report(f, stream(("a", 0), ("q", 1)), *FAR, now_ms=5_000)[0].in_progress == 0


def test_any_order_counts_distinct_steps_within_the_window() -> None:
    f = funnel(A, B, C, order="any")
    assert reached(f, stream(("c", 0), ("a", 1), ("b", 2))) == [1, 1, 1]
    assert reached(f, stream(("c", 0), ("c", 1), ("b", 2))) == [1, 1, 0]
    # The window runs from the attempt's first event: c at 0 and a at 11 are too far apart,
    # but the attempt from b at 5 sees a at 11.
    assert reached(f, stream(("c", 0), ("b", 5), ("a", 11))) == [1, 1, 0]
    assert reached(f, stream(("c", 0), ("b", 5), ("a", 11), ("c", 12))) == [1, 1, 1]


def test_any_order_times_follow_the_order_steps_were_taken() -> None:
    steps = report(funnel(A, B, C, order="any"), stream(("b", 0), ("c", 3), ("a", 7)), *FAR)
    # Each step holds the latest attempt that took that many steps: 3 steps from b at 0;
    # 2 steps from c at 3 (c, a); 1 step from a at 7.
    assert [s.median_ms for s in steps] == [0, 4000, 7000]
    assert [s.median_from_previous_ms for s in steps] == [0, 4000, 4000]


def test_total_counting_counts_attempts() -> None:
    f = funnel(A, B, counting="total")
    # Two attempts converted, a third one started; a repeated b re-times, not a new one.
    events = stream(("a", 0), ("b", 1), ("b", 2), ("a", 20), ("b", 21), ("a", 40))
    steps = report(f, events, *FAR, now_ms=45_000)
    assert [s.entities for s in steps] == [3, 2]
    assert steps[0].in_progress == 1
    # Step-0 events at the same millisecond start one attempt.
    assert reached(f, stream(("a", 0), ("a", 0), ("b", 1))) == [1, 1]
    # An attempt replaced at step 0 before it went on still counts as reaching step 0.
    assert reached(f, stream(("a", 0), ("a", 1), ("b", 2))) == [2, 1]


def test_count_by_session_splits_at_30_minutes_of_inactivity() -> None:
    f = funnel(A, B, count_by="session", window_seconds=3600)
    # 29:59.999 apart: one session; 30:00 apart: two sessions (b starts the second).
    assert reached(f, stream(("a", 0), ("b", 1799.999))) == [1, 1]
    assert reached(f, stream(("a", 0), ("b", 1800))) == [1, 0]
    # Any event keeps the session alive; sessions count separately.
    events = stream(("a", 0), ("q", 1000), ("b", 2000), ("a", 5000))
    assert reached(f, events) == [2, 1]


def test_hold_property_keeps_one_value_per_attempt() -> None:
    f = funnel(A, B, hold_property="product")

    def ev(i: int, name: str, s: float, product: str | None) -> RefEvent:
        props = {} if product is None else {"product": product}
        return RefEvent(str(uuid.UUID(int=i)), name, "v", int(s * 1000), "", props)

    # a(1), a(2), b(1): product 1's attempt converts although a(2) came later.
    assert reached(f, [ev(1, "a", 0, "1"), ev(2, "a", 1, "2"), ev(3, "b", 2, "1")]) == [1, 1]
    assert reached(f, [ev(1, "a", 0, "1"), ev(2, "b", 1, "2")]) == [1, 0]
    # A missing property is the value "".
    assert reached(f, [ev(1, "a", 0, None), ev(2, "b", 1, "")]) == [1, 1]


def test_optional_step_may_be_skipped() -> None:
    f = funnel(A, {"event": "b", "optional": True}, C)
    # Skipping b: the entity reaches c (and counts as past b); times from a.
    steps = report(f, stream(("a", 0), ("c", 2)), *FAR)
    assert [s.entities for s in steps] == [1, 1, 1]
    assert steps[1].median_ms is None and steps[2].median_from_previous_ms == 2000
    assert reached(f, stream(("a", 0), ("b", 1), ("c", 2))) == [1, 1, 1]
    # c extends the attempt with the latest start: a at 5 (skipping b), not a at 0 via b.
    steps = report(f, stream(("a", 0), ("b", 1), ("a", 5), ("c", 6)), *FAR)
    assert steps[2].median_ms == 1000
