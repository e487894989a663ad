"""The funnel-stage machine: ties, repeated steps, window edges, late arrivals, checkpoints."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from funnel.fold import (
    Entry,
    FoldRule,
    FunnelProgress,
    Slot,
    Transition,
    entries_for,
    fold,
    level_of,
    reference_level,
)

WINDOW = 1000
LATENESS = 500
FAR = 10**12  # a horizon nothing reaches: everything stays pending


def run(
    events: list[tuple[int, str, list[int]]], steps: int, window: int = WINDOW
) -> tuple[FunnelProgress, list[Transition]]:
    """Feed (timestamp, event id, matched steps) in the given order, like the processor."""
    progress = FunnelProgress(steps=steps)
    newest = 0
    transitions: list[Transition] = []
    for ts, event_id, matched in events:
        newest = max(newest, ts)
        transitions += progress.add(
            entries_for(ts, event_id, matched), FoldRule(steps, window), newest - LATENESS
        )
    return progress, transitions


def test_entries_for_orders_deepest_step_first() -> None:
    assert entries_for(5, "e", [0, 2, 1]) == [
        Entry(5, 2, "e", 0),
        Entry(5, 1, "e", 0),
        Entry(5, 0, "e", 0),
    ]


def test_in_order_funnel_emits_one_transition_per_step_in_order() -> None:
    progress, transitions = run([(100, "a", [0]), (200, "b", [1]), (300, "c", [2])], steps=3)
    assert transitions == [
        Transition(1, 100, 100, "a"),
        Transition(2, 200, 100, "b"),
        Transition(3, 300, 100, "c"),
    ]
    assert progress.level == 3
    assert progress.slots == [(100, 100, "a"), (100, 200, "b"), (100, 300, "c")]


def test_repeated_step_event_is_not_reported_again() -> None:
    _, transitions = run([(100, "a", [0]), (150, "a2", [0]), (200, "b", [1])], steps=2)
    assert [t.step for t in transitions] == [1, 2]
    # The chain restarted at 150, so step 2 hangs off the newer start.
    assert transitions[1] == Transition(2, 200, 150, "b")


def test_one_event_that_skips_ahead_reports_every_level_it_crosses() -> None:
    # An out-of-order step 1 arrival can lift the level by two at once.
    progress, transitions = run([(200, "b", [1]), (100, "a", [0])], steps=2)
    assert transitions == [Transition(1, 100, 100, "a"), Transition(2, 200, 100, "b")]
    assert progress.level == 2


def test_same_timestamp_events_count_in_step_order_whatever_the_arrival() -> None:
    # The step 2 event has the smaller id: step order, not id order, must decide.
    step1, step2 = (100, "z", [0]), (100, "a", [1])
    for order in ([step2, step1], [step1, step2]):
        progress, transitions = run(order, steps=2)
        assert progress.level == 2
        assert transitions[-1] == Transition(2, 100, 100, "a")


def test_step_before_its_previous_step_does_not_count() -> None:
    progress, transitions = run([(100, "b", [1]), (200, "a", [0])], steps=2)
    assert progress.level == 1
    assert transitions == [Transition(1, 200, 200, "a")]


def test_one_event_matching_two_steps_advances_one_step_only() -> None:
    # Steps a, a, b: a single `a` reaches step 1 only ('strict_once').
    progress, _ = run([(100, "a1", [0, 1])], steps=3)
    assert progress.level == 1
    progress, _ = run([(100, "a1", [0, 1]), (200, "b", [2])], steps=3)
    assert progress.level == 1
    progress, transitions = run([(100, "a1", [0, 1]), (150, "a2", [0, 1]), (200, "b", [2])], 3)
    assert progress.level == 3
    assert transitions == [
        Transition(1, 100, 100, "a1"),
        Transition(2, 150, 100, "a2"),
        Transition(3, 200, 100, "b"),
    ]


def test_two_matching_events_at_the_same_timestamp_reach_step_two() -> None:
    progress, _ = run([(100, "a2", [0, 1]), (100, "a1", [0, 1])], steps=3)
    assert progress.level == 2
    assert progress.slots[1] == (100, 100, "a2")  # event ids break the tie: a1 then a2


def test_window_is_inclusive() -> None:
    progress, _ = run([(0, "a", [0]), (WINDOW, "b", [1])], steps=2)
    assert progress.level == 2
    progress, _ = run([(0, "a", [0]), (WINDOW + 1, "b", [1])], steps=2)
    assert progress.level == 1


def test_window_counts_from_the_chain_start_not_the_previous_step() -> None:
    events = [(0, "a", [0]), (WINDOW, "b", [1]), (WINDOW + 1, "c", [2])]
    progress, _ = run(events, steps=3)
    assert progress.level == 2
    assert (
        reference_level(
            [e for ts, i, m in events for e in entries_for(ts, i, m)], FoldRule(3, WINDOW)
        )
        == 2
    )


def test_a_late_restart_rescues_a_chain_the_window_had_closed() -> None:
    events = [(0, "a1", [0]), (900, "a2", [0]), (1500, "b", [1])]
    progress, transitions = run(events, steps=2)
    assert progress.level == 2
    assert transitions[-1] == Transition(2, 1500, 900, "b")


def test_level_never_goes_down() -> None:
    progress, _ = run([(0, "a", [0]), (10, "b", [1]), (20, "a2", [0])], steps=2)
    assert level_of(progress.slots) == 2
    assert progress.level == 2


def test_old_pending_entries_fold_into_the_checkpoint() -> None:
    progress, _ = run([(0, "a", [0]), (400, "b", [1]), (2000, "c", [2])], steps=3)
    # Horizon is 2000 - 500: a and b are final, c stays pending.
    assert progress.checkpoint.slots == [(0, 0, "a"), (0, 400, "b"), None]
    assert progress.pending == [Entry(2000, 2, "c", 2)]
    assert progress.level == 2  # c is outside the window of the chain started at 0


def test_fold_does_not_mutate_its_input() -> None:
    slots: list[Slot] = [None, None]
    fold(slots, [Entry(1, 0, "a", 0)], FoldRule(2, WINDOW))
    assert slots == [None, None]


def test_checkpoint_roundtrip_through_orjson_keeps_behaviour() -> None:
    head = [(0, "a", [0]), (300, "b", [1]), (1200, "x", [0])]
    tail = [(1000, "c", [2]), (1250, "d", [3])]
    whole, whole_transitions = run(head + tail, steps=4)

    progress, first = run(head, steps=4)
    doc = orjson.loads(orjson.dumps(progress.to_json()))
    restored = FunnelProgress.from_json(4, doc)
    assert restored == progress
    newest = 1200
    rest: list[Transition] = []
    for ts, event_id, matched in tail:
        newest = max(newest, ts)
        rest += restored.add(
            entries_for(ts, event_id, matched), FoldRule(4, WINDOW), newest - LATENESS
        )
    assert first + rest == whole_transitions
    assert restored == whole
    assert whole.level == 3  # d (1250) is outside the window of the chain started at 0


def test_from_json_reads_exact_fields() -> None:
    doc = {"c": [[1, 2, "a"], None], "p": [[5, 1, "b", 1]], "l": 1, "s": [[1, 2, "a"], None]}
    progress = FunnelProgress.from_json(2, doc)
    assert progress.checkpoint.slots == [(1, 2, "a"), None]
    assert progress.pending == [Entry(5, 1, "b", 1)]
    assert progress.level == 1
    assert progress.slots == [(1, 2, "a"), None]
    # Saved before the transitions table's rows were kept: the steps held stand in.
    assert progress.table() == {1: Transition(1, 2, 1, "a")}
    assert progress.to_json() == {
        "c": [(1, 2, "a"), None],
        "p": [[5, 1, "b", 1]],
        "l": 1,
        "s": [(1, 2, "a"), None],
        "m": [],
        "e": [[2, 1, 2, 1, "a"]],
    }
    assert FunnelProgress.from_json(2, progress.to_json()) == progress


STEP_SETS = st.lists(st.integers(0, 3), min_size=1, max_size=2, unique=True)


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[tuple[int, str, list[int]]], list[int]]:
    """Events, and an arrival order in which none is more than LATENESS behind the newest:
    each event arrives at its timestamp plus a delay of at most LATENESS."""
    n = draw(st.integers(1, 12))
    events = [(draw(st.integers(0, 3000)), f"e{i:02d}", sorted(draw(STEP_SETS))) for i in range(n)]
    delays = [draw(st.integers(0, LATENESS)) for _ in range(n)]
    order = sorted(range(n), key=lambda i: (events[i][0] + delays[i], i))
    return events, order


@settings(max_examples=300, deadline=None)
@given(arrivals())
def test_late_arrivals_within_lateness_give_the_batch_level(
    case: tuple[list[tuple[int, str, list[int]]], list[int]],
) -> None:
    events, order = case
    all_entries = [e for ts, i, m in events for e in entries_for(ts, i, m)]
    expected = reference_level(all_entries, FoldRule(4, WINDOW))

    in_order, in_order_transitions = run(sorted(events), steps=4)
    shuffled, transitions = run([events[i] for i in order], steps=4)

    assert in_order.level == expected
    assert shuffled.level == expected
    assert shuffled.slots == in_order.slots
    # In order, each level is reported exactly once, in order; shuffled, corrections
    # (retracted / corrected) leave the transitions table as in-order arrival does.
    # (sorted by id, events of one timestamp may still come out of the fold's order)
    assert sorted(table(in_order_transitions)) == list(range(1, expected + 1))
    assert table(transitions) == table(in_order_transitions) == table(in_order.table().values())
    assert shuffled.table() == in_order.table()


def table(moves: Iterable[Transition]) -> dict[int, tuple[int, int, str]]:
    """Per step, the row a reader of funnel_transitions sees after these writes."""
    out: dict[int, tuple[int, int, str]] = {}
    for t in moves:
        if t.kind == "retracted":
            assert out.pop(t.step) == (t.reached_at_ms, t.chain_started_at_ms, t.event_id)
        else:
            out[t.step] = (t.reached_at_ms, t.chain_started_at_ms, t.event_id)
    return out


@settings(max_examples=100, deadline=None)
@given(arrivals(), st.integers(0, 11))
def test_checkpoint_roundtrip_anywhere_in_a_stream(
    case: tuple[list[tuple[int, str, list[int]]], list[int]], cut: int
) -> None:
    events, order = case
    stream = [events[i] for i in order]
    whole, _ = run(stream, steps=4)

    progress = FunnelProgress(steps=4)
    newest = 0
    for k, (ts, event_id, matched) in enumerate(stream):
        if k == cut:
            progress = FunnelProgress.from_json(4, orjson.loads(orjson.dumps(progress.to_json())))
        newest = max(newest, ts)
        progress.add(entries_for(ts, event_id, matched), FoldRule(4, WINDOW), newest - LATENESS)
    assert progress == whole


def test_far_horizon_keeps_everything_pending() -> None:
    progress = FunnelProgress(steps=2)
    progress.add(entries_for(5, "a", [0]), FoldRule(2, WINDOW), -FAR)
    assert progress.checkpoint.slots == [None, None]
    assert progress.pending == [Entry(5, 0, "a", 0)]


# Options: per-step windows, optional steps, exclusions, strict order, total attempts,
# any order, sessions.


def feed(rule: FoldRule, events: list[tuple[int, str, list[int], list[int]]]) -> FunnelProgress:
    """(timestamp, event id, matched steps, matched exclusions) in the given order."""
    progress = FunnelProgress(steps=rule.steps)
    newest = 0
    for ts, event_id, matched, excluded in events:
        newest = max(newest, ts)
        every = rule.strict or rule.session_gap_ms is not None
        entries = entries_for(ts, event_id, matched, excluded, other=every)
        progress.add(entries, rule, newest - LATENESS)
    return progress


def test_per_step_window_counts_from_the_previous_step_inclusive() -> None:
    rule = FoldRule(3, WINDOW, step_windows_ms=(None, None, 100))
    assert feed(rule, [(0, "a", [0], []), (500, "b", [1], []), (600, "c", [2], [])]).level == 3
    assert feed(rule, [(0, "a", [0], []), (500, "b", [1], []), (601, "c", [2], [])]).level == 2


def test_optional_step_is_skipped_and_the_latest_attempt_takes_the_event() -> None:
    # Steps a, b (optional), c. b reached from the attempt at 0; a new attempt starts at 2.
    rule = FoldRule(3, WINDOW, sources=((), (0,), (1, 0)))
    events: list[tuple[int, str, list[int], list[int]]] = [
        (0, "a", [0], []),
        (1, "b", [1], []),
        (2, "a2", [0], []),
        (3, "c", [2], []),
    ]
    progress = feed(rule, events)
    assert progress.level == 3
    assert progress.slots[2] == (2, 3, "c")  # from slot 0 (start 2), not slot 1 (start 0)
    skipped = feed(rule, [(0, "a", [0], []), (3, "c", [2], [])])
    assert skipped.level == 3 and skipped.slots[1] is None


def test_exclusion_discards_the_attempt_in_its_range_and_a_clean_one_counts() -> None:
    rule = FoldRule(3, WINDOW, exclusions=((0, 2),))
    events = [(0, "a", [0], []), (10, "b", [1], []), (20, "x", [], [0])]
    assert feed(rule, events).level == 0
    again = feed(rule, [*events, (30, "a2", [0], []), (40, "b2", [1], [])])
    assert again.level == 2 and again.slots[0] == (30, 30, "a2")
    # Past the range (depth 2 is not below 2): the attempt keeps going.
    past = feed(rule, [*events[:2], (15, "c", [2], []), (20, "x", [], [0])])
    assert past.level == 3


def test_exclusion_at_the_same_timestamp_comes_before_the_step() -> None:
    rule = FoldRule(2, WINDOW, exclusions=((0, 1),))
    progress = feed(rule, [(10, "b", [1], []), (0, "a", [0], []), (10, "x", [], [0])])
    assert progress.level == 0  # x at 10 discards the attempt before b at 10 can extend it


def test_strict_order_needs_the_step_right_after_the_previous_one() -> None:
    rule = FoldRule(2, WINDOW, strict=True)
    assert feed(rule, [(0, "a", [0], []), (5, "b", [1], [])]).level == 2
    broken = feed(rule, [(0, "a", [0], []), (3, "q", [], []), (5, "b", [1], [])])
    assert broken.level == 1
    # The breaker arriving late still breaks the chain: the level goes back down.
    late = feed(rule, [(0, "a", [0], []), (5, "b", [1], []), (3, "q", [], [])])
    assert late.level == 1


def test_total_attempts_count_each_attempt_once_per_step() -> None:
    rule = FoldRule(2, WINDOW, count_attempts=True)
    events: list[tuple[int, str, list[int], list[int]]] = [
        (0, "a", [0], []),
        (5, "b", [1], []),
        (6, "b2", [1], []),  # the same attempt again: not a new one
        (7, "a2", [0], []),
        (7, "a3", [0], []),  # same millisecond: the same attempt
        (9, "b3", [1], []),
    ]
    progress = feed(rule, events)
    assert progress.attempts == [2, 2]
    doc = orjson.loads(orjson.dumps(progress.to_json()))
    assert FunnelProgress.from_json(2, doc) == progress


def test_strict_tail_survives_a_checkpoint_roundtrip() -> None:
    rule = FoldRule(2, WINDOW, strict=True)
    progress = feed(rule, [(0, "a", [0], [])])
    restored = FunnelProgress.from_json(2, orjson.loads(orjson.dumps(progress.to_json())))
    assert restored == progress
    restored.add(entries_for(5, "b", [1], other=True), rule, 5 - LATENESS)
    assert restored.level == 2


def test_held_property_keeps_attempts_of_one_value_apart() -> None:
    rule = FoldRule(2, WINDOW)
    progress = FunnelProgress(steps=2)
    # view product 1, view product 2, cart product 1: reaches step 2 with product 1 only.
    for ts, event_id, step, value in [(0, "a", 0, "p1"), (10, "b", 0, "p2"), (20, "c", 1, "p1")]:
        progress.add(entries_for(ts, event_id, [step]), rule, ts - LATENESS, value)
    assert progress.level == 2 and progress.slots[1] == (0, 20, "c")
    other = FunnelProgress(steps=2)
    for ts, event_id, step, value in [(0, "a", 0, "p1"), (20, "c", 1, "p2")]:
        other.add(entries_for(ts, event_id, [step]), rule, ts - LATENESS, value)
    assert other.level == 1


def test_held_values_that_cannot_move_are_dropped_keeping_their_level() -> None:
    rule = FoldRule(2, WINDOW)
    progress = FunnelProgress(steps=2)
    progress.add(entries_for(0, "a", [0]), rule, 0 - LATENESS, "p1")
    progress.add(entries_for(10, "b", [1]), rule, 10 - LATENESS, "p1")
    late = 10 + WINDOW + LATENESS + 1
    progress.add(entries_for(late, "c", [0]), rule, late - LATENESS, "p2")
    assert progress.by_value is not None and set(progress.by_value) == {"p2"}
    assert progress.level == 2 and progress.retired_level == 2
    restored = FunnelProgress.from_json(2, orjson.loads(orjson.dumps(progress.to_json())))
    assert restored == progress


def test_any_order_counts_distinct_steps_within_one_window() -> None:
    # docs/funnels.md rule 9: window 10 s, steps a, b, c.
    rule = FoldRule(3, 10_000, any_order=True)
    events: list[tuple[int, str, list[int], list[int]]] = [
        (0, "c", [2], []),
        (5_000, "b", [1], []),
        (11_000, "a", [0], []),
    ]
    progress = feed(rule, events)
    assert progress.level == 2  # c, b or b, a; never all three
    more = feed(rule, [*events, (12_000, "c2", [2], [])])
    assert more.level == 3
    assert more.slots[2] == (5_000, 12_000, "c2")  # the attempt from b@5 takes its third step


def test_any_order_window_is_inclusive_and_repeats_do_not_count() -> None:
    rule = FoldRule(2, WINDOW, any_order=True)
    assert feed(rule, [(0, "b", [1], []), (WINDOW, "a", [0], [])]).level == 2
    assert feed(rule, [(0, "b", [1], []), (WINDOW + 1, "a", [0], [])]).level == 1
    assert feed(rule, [(0, "a", [0], []), (1, "a2", [0], [])]).level == 1


def test_any_order_late_arrival_and_checkpoint_roundtrip() -> None:
    rule = FoldRule(3, WINDOW, any_order=True)
    # The step in the middle arrives last, within the lateness.
    progress = feed(rule, [(0, "a", [0], []), (900, "c", [2], []), (400, "b", [1], [])])
    assert progress.level == 3
    doc = orjson.loads(orjson.dumps(progress.to_json()))
    assert FunnelProgress.from_json(3, doc) == progress
    # Only the latest event per step is kept once folded into the checkpoint.
    two = FoldRule(2, WINDOW, any_order=True)
    restored = FunnelProgress(steps=2)
    restored.add(entries_for(0, "b", [1]), two, 1)
    restored.add(entries_for(5_000, "b2", [1]), two, 5_001)
    restored = FunnelProgress.from_json(2, orjson.loads(orjson.dumps(restored.to_json())))
    assert restored.checkpoint.latest == [None, (5_000, 5_000, "b2")]
    restored.add(entries_for(5_000 + WINDOW, "a", [0]), two, 5_000)
    assert restored.level == 2


def test_sessions_restart_attempts_and_count_each_session_once() -> None:
    rule = FoldRule(2, WINDOW, session_gap_ms=100)
    events: list[tuple[int, str, list[int], list[int]]] = [
        (0, "a", [0], []),
        (50, "b", [1], []),
        (150, "a2", [0], []),  # 100 ms after b: a new session (gap inclusive)
        (160, "q", [], []),  # no step: still read, it keeps the session open
        (259, "b2", [1], []),
    ]
    progress = feed(rule, events)
    assert progress.level == 2 and progress.attempts == [2, 2]
    # A step never reaches across a gap, even inside the funnel window.
    split = feed(rule, [(0, "a", [0], []), (100, "b", [1], [])])
    assert split.level == 0 and split.attempts == [1, 0]
    doc = orjson.loads(orjson.dumps(progress.to_json()))
    assert FunnelProgress.from_json(2, doc) == progress


def test_a_late_event_inside_a_gap_merges_two_sessions() -> None:
    rule = FoldRule(2, WINDOW, session_gap_ms=100)
    split: list[tuple[int, str, list[int], list[int]]] = [(0, "a", [0], []), (150, "b", [1], [])]
    assert feed(rule, split).attempts == [1, 0]
    merged = feed(rule, [*split, (80, "q", [], [])])  # within the lateness
    assert merged.level == 2 and merged.attempts == [1, 1]


def test_each_session_reports_the_steps_it_reaches() -> None:
    rule = FoldRule(2, WINDOW, session_gap_ms=100)
    progress = FunnelProgress(steps=2)
    reached = []
    for ts, event_id, step in [(0, "a", 0), (10, "b", 1), (200, "a2", 0), (210, "b2", 1)]:
        reached += progress.add(entries_for(ts, event_id, [step], other=True), rule, ts)
    assert reached == [
        Transition(1, 0, 0, "a"),
        Transition(2, 10, 0, "b"),
        Transition(1, 200, 200, "a2"),  # a new session: step 1 is reached again
        Transition(2, 210, 200, "b2"),
    ]
