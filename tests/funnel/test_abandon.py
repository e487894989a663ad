"""The abandoned-stage timer rule (funnel/abandon.py) against an oracle stated from the
funnel's meaning, over random in-order histories folded by the real live fold.

The oracle, for an ordered funnel a → b → c without windows in reach: each `a` starts an
attempt; a later step extends the latest attempt holding the step before it. An attempt
reaching stage k at time r fires iff the event that reached it was received before
r + T (live, not history), it reached no later step before r + T, and the watermark (the
newest event time) got to r + T. Each attempt fires at most once.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from funnel.abandon import AbandonRule, AbandonTimers, Due
from processor.state import VisitorState
from processor.transform import Outputs, Timing, apply_event
from schemas.events import Event
from schemas.funnels import FunnelDefinition

FUNNEL = FunnelDefinition.model_validate(
    {
        "id": "cart",
        "project": "p",
        "window_seconds": 30 * 86400,
        "steps": [{"event": "a"}, {"event": "b"}, {"event": "c"}],
    }
)
STEP = {"a": 0, "b": 1, "c": 2}
EXAMPLES = int(os.environ.get("FUNNELSTREAM_ABANDON_EXAMPLES", "200"))
MINUTE = 60_000
# Far from the session gap and window: sessions and windows play no part here.
TIMING = Timing(session_gap_ms=10 * 86400 * 1000, lateness_ms=0)


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, str, int, int]]:
    """(visitor, event, timestamp, receive delay) in timestamp order, distinct timestamps;
    a delay of a day plays imported history."""
    size = draw(st.integers(0, 25))
    times = sorted(draw(st.sets(st.integers(0, 240), min_size=size, max_size=size)))
    out = []
    for t in times:
        visitor = draw(st.sampled_from(["v1", "v2"]))
        name = draw(st.sampled_from(["a", "b", "c", "x"]))
        delay = draw(st.sampled_from([0, 1, 1440]))
        out.append((visitor, name, t * MINUTE, delay * MINUTE))
    return out


def oracle(history: list[tuple[str, str, int, int]], rule: AbandonRule) -> set[Due]:
    k, after = rule.stage, rule.after_ms
    watermark = max((t for _, _, t, _ in history), default=0)
    slots: dict[str, list[int | None]] = {}  # per visitor and step: the holding start
    reached: dict[tuple[str, int], tuple[int, int]] = {}  # (visitor, start) → (r, received)
    converted: dict[tuple[str, int], int] = {}  # (visitor, start) → time it passed stage k
    for visitor, name, t, delay in history:
        held = slots.setdefault(visitor, [None, None, None])
        if name not in STEP:
            continue
        j = STEP[name]
        start = t if j == 0 else held[j - 1]
        if start is None:
            continue
        held[j] = start
        if j == k:
            reached.setdefault((visitor, start), (t, t + delay))
        if j > k:
            converted.setdefault((visitor, start), t)
    fired = set()
    for (visitor, start), (r, received) in reached.items():
        deadline = r + after
        passed = converted.get((visitor, start))
        if received < deadline and deadline <= watermark and (passed is None or passed >= deadline):
            fired.add(Due(visitor, start, r, deadline))
    return fired


def run(
    history: list[tuple[str, str, int, int]], rule: AbandonRule, timing: Timing = TIMING
) -> list[Due]:
    """The history through the live fold and the timers as the processor would run them:
    per event, the watermark moves and what is due fires, then the event is folded."""
    timers = AbandonTimers(rule)
    states: dict[str, VisitorState] = {}
    fired: list[Due] = []
    watermark = 0
    for n, (visitor, name, t, delay) in enumerate(history):
        watermark = max(watermark, t)
        fired += timers.due(watermark)
        state = states.setdefault(visitor, VisitorState("p", visitor))
        event = Event("p", f"00000000-0000-4000-8000-{n:012d}", name, visitor, t, t + delay)
        apply_event(
            state,
            event,
            partition=0,
            offset=n,
            funnels=[FUNNEL],
            timing=timing,
            processed_at_ms=t + delay,
            out=Outputs(),
        )
        progress = state.funnels.get(FUNNEL.id)
        if progress is not None:
            timers.observe(visitor, progress.slots, t + delay)
    return fired + timers.due(watermark)


@settings(max_examples=EXAMPLES, deadline=None)
@given(histories(), st.sampled_from([0, 1]), st.sampled_from([5, 30, 90]))
def test_timers_fire_as_the_oracle_says(
    history: list[tuple[str, str, int, int]], stage: int, minutes: int
) -> None:
    rule = AbandonRule("cart", stage, minutes * MINUTE)
    fired = run(history, rule)
    assert len(fired) == len(set(fired))  # never twice
    assert set(fired) == oracle(history, rule)


def test_a_conversion_before_the_deadline_fires_nothing_and_a_return_fires_again() -> None:
    rule = AbandonRule("cart", 0, 30 * MINUTE)
    converted = [("v", "a", 0, 0), ("v", "b", 10 * MINUTE, 0), ("v", "x", 60 * MINUTE, 0)]
    assert run(converted, rule) == []
    twice = [
        ("v", "a", 0, 0),
        ("v", "x", 40 * MINUTE, 0),  # the first attempt fires here
        ("v", "a", 50 * MINUTE, 0),  # back: a new attempt
        ("v", "x", 90 * MINUTE, 0),  # and it fires too
    ]
    assert run(twice, rule) == [
        Due("v", 0, 0, 30 * MINUTE),
        Due("v", 50 * MINUTE, 50 * MINUTE, 80 * MINUTE),
    ]
    # The same, imported a day late: history never fires.
    history = [(v, e, t, 1440 * MINUTE) for v, e, t, _ in twice]
    assert run(history, rule) == []


def test_a_late_event_showing_the_conversion_cancels_a_pending_trigger() -> None:
    rule = AbandonRule("cart", 0, 30 * MINUTE)
    late = Timing(session_gap_ms=10 * 86400 * 1000, lateness_ms=60 * MINUTE)
    history = [
        ("v", "a", 0, 0),
        ("v", "x", 20 * MINUTE, 0),
        ("v", "b", 10 * MINUTE, 11 * MINUTE),  # arrives after x: the visitor did convert
        ("v", "x", 45 * MINUTE, 0),  # the deadline passes
    ]
    assert run(history, rule, late) == []
    # Arriving after the deadline passed, the same event recalls nothing already sent.
    after = [*history[:2], ("v", "x", 45 * MINUTE, 0), ("v", "b", 10 * MINUTE, 36 * MINUTE)]
    assert run(after, rule, late) == [Due("v", 0, 0, 30 * MINUTE)]
