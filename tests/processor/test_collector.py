"""The processor's garbage collection (processor/collector.py): automatic collection off
while it runs, reference cycles still reclaimed by the periodic full collection."""

from __future__ import annotations

import gc
import time
import weakref

from processor.collector import FREEZE_EVERY_EVENTS, FULL_EVERY_SECONDS, StepCollector


class Node:
    def __init__(self) -> None:
        self.other: Node = self


def test_start_switches_automatic_collection_off_and_stop_restores_it() -> None:
    collector = StepCollector()
    collector.start()
    try:
        assert not gc.isenabled()
        collector.after_step(FREEZE_EVERY_EVENTS)
        assert gc.get_freeze_count() > 0
    finally:
        collector.stop()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_frozen_cycle_is_collected_by_the_full_collection() -> None:
    collector = StepCollector()
    collector.start()
    try:
        node = Node()
        dead = weakref.ref(node)
        collector.after_step(FREEZE_EVERY_EVENTS)  # frozen while alive
        del node
        collector.after_step(FREEZE_EVERY_EVENTS)
        assert dead() is not None  # only a full collection frees a cycle
        collector.full_at = time.monotonic() - FULL_EVERY_SECONDS - 1
        collector.after_step(0)
        assert dead() is None
    finally:
        collector.stop()


class Leaf:
    __slots__ = ("__weakref__",)


def test_a_frozen_object_without_cycles_is_freed_as_soon_as_it_is_dropped() -> None:
    collector = StepCollector()
    collector.start()
    try:
        leaf = Leaf()
        dead = weakref.ref(leaf)
        collector.after_step(FREEZE_EVERY_EVENTS)  # frozen while alive
        del leaf
        assert dead() is None  # reference counting, no collection needed
    finally:
        collector.stop()
