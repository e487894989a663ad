"""The processor's garbage collection between steps (processor/collector.py): automatic
collection off while it runs, reference cycles still reclaimed by the step collections."""

from __future__ import annotations

import gc
import time
import weakref

from processor.collector import FULL_EVERY_SECONDS, YOUNG_EVERY_EVENTS, StepCollector


class Node:
    def __init__(self) -> None:
        self.other: Node = self


def cycle() -> weakref.ref[Node]:
    """A reference cycle nobody holds: only the cyclic collector frees it."""
    return weakref.ref(Node())


def test_start_switches_automatic_collection_off_and_stop_restores_it() -> None:
    collector = StepCollector()
    collector.start()
    try:
        assert not gc.isenabled()
    finally:
        collector.stop()
    assert gc.isenabled()


def test_enough_events_collect_a_young_cycle_and_fewer_do_not() -> None:
    collector = StepCollector()
    collector.start()
    try:
        dead = cycle()
        collector.after_step(1)
        assert dead() is not None  # too early: no collection yet
        collector.after_step(YOUNG_EVERY_EVENTS)
        assert dead() is None
    finally:
        collector.stop()


def test_a_second_without_events_collects_the_young_generations() -> None:
    collector = StepCollector()
    collector.start()
    try:
        dead = cycle()
        collector.young_at = time.monotonic() - 1.5
        collector.after_step(0)
        assert dead() is None
    finally:
        collector.stop()


def test_a_cycle_promoted_to_the_old_generation_waits_for_the_full_collection() -> None:
    collector = StepCollector()
    collector.start()
    try:
        node = Node()
        dead = weakref.ref(node)
        collector.after_step(YOUNG_EVERY_EVENTS)  # survives: promoted to the oldest
        del node
        collector.after_step(YOUNG_EVERY_EVENTS)
        assert dead() is not None  # young collections do not walk the old generation
        collector.full_at = time.monotonic() - FULL_EVERY_SECONDS - 1
        collector.after_step(0)
        assert dead() is None
    finally:
        collector.stop()
