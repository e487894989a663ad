"""The processor's garbage collection (processor/collector.py): automatic collection off
while it runs, the cycles an I/O call leaves collected right after it, any other cycle
by the periodic full collection."""

from __future__ import annotations

import gc
import time
import weakref

from processor.collector import FULL_EVERY_SECONDS, StepCollector


class Node:
    def __init__(self) -> None:
        self.other: Node = self


class Leaf:
    __slots__ = ("__weakref__",)


def test_start_switches_automatic_collection_off_and_stop_restores_it() -> None:
    collector = StepCollector()
    collector.start()
    try:
        assert not gc.isenabled()
        with collector.io():
            assert gc.get_freeze_count() > 0
    finally:
        collector.stop()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_cycle_an_io_call_leaves_is_collected_right_after_it() -> None:
    collector = StepCollector()
    collector.start()
    try:
        with collector.io():
            dead = weakref.ref(Node())
            assert dead() is not None
        assert dead() is None
    finally:
        collector.stop()


def test_a_cycle_made_between_io_calls_waits_for_the_full_collection() -> None:
    collector = StepCollector()
    collector.start()
    try:
        dead = weakref.ref(Node())
        with collector.io():  # frozen with what the fold allocated
            pass
        collector.after_step(100)
        assert dead() is not None
        collector.full_at = time.monotonic() - FULL_EVERY_SECONDS - 1
        collector.after_step(100)
        assert dead() is None
    finally:
        collector.stop()


def test_an_idle_step_collects_the_young_generations() -> None:
    collector = StepCollector()
    collector.start()
    try:
        dead = weakref.ref(Node())
        collector.after_step(0)
        assert dead() is None
    finally:
        collector.stop()


def test_a_frozen_object_without_cycles_is_freed_as_soon_as_it_is_dropped() -> None:
    collector = StepCollector()
    collector.start()
    try:
        leaf = Leaf()
        dead = weakref.ref(leaf)
        with collector.io():
            pass
        del leaf
        assert dead() is None  # reference counting, no collection needed
    finally:
        collector.stop()
