"""The documented semantics, case by case, on the pure-Python reference (no ClickHouse).
The differential test then holds the SQL report to the same answers."""

from __future__ import annotations

import uuid
from typing import Any

from query_api.reference import RefEvent, report
from schemas.funnels import FunnelDefinition

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
