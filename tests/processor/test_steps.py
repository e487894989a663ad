"""The processor's steps one at a time: batch policy, decode, commit, the sink's order.

Real components throughout: the embedded log for commits, the real engine for the sink.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from funnelstream.backoff import BackoffPolicy
from funnelstream.clickhouse import ClickHouse
from funnelstream.log import LogMessage, LogUnavailable
from funnelstream.log.embedded import EmbeddedConsumer, EmbeddedLog
from processor.batch import Batch, BatchPolicy
from processor.catalog import FunnelCatalog
from processor.commit import Committer
from processor.decode import Decoder
from processor.rebuild import LateRefolder, UserRebuilder
from processor.retry import Retrier
from processor.sink import BACKFILL_ORDER, BATCH_ORDER, Sink, Writes
from processor.state import HeldStates, VisitorState
from processor.transform import Timing, apply_event
from schemas.events import Event, encode
from tests.fixtures.clickhouse import InterceptedClickHouse

T0 = 1_760_000_000_000


def event(n: int, visitor: str = "v") -> Event:
    return Event(
        project_id="p",
        event_id=f"00000000-0000-4000-8000-{n:012d}",
        event="view",
        visitor_id=visitor,
        timestamp_ms=T0 + n,
        received_at_ms=T0,
    )


# -- batch -----------------------------------------------------------------------------


def test_a_batch_is_due_when_full_or_old_whichever_first() -> None:
    policy = BatchPolicy(max_messages=3, max_seconds=1.0, poll_max_messages=2)
    batch = Batch()
    assert policy.poll_limit(batch) == 2  # the poll size caps it
    assert policy.poll_timeout(batch, now=100.0) == 1.0
    assert not policy.due(batch, now=100.0)  # empty: never due
    batch.count(0, 7)
    started = batch.started
    assert policy.poll_limit(batch) == 2
    assert policy.poll_timeout(batch, now=started + 0.25) == pytest.approx(0.75)
    assert not policy.due(batch, now=started + 0.5)
    assert policy.due(batch, now=started + 1.0)  # old enough
    batch.count(0, 8)
    batch.count(1, 3)
    assert policy.poll_limit(batch) == 1  # full: still polls one, never zero
    assert policy.due(batch, now=started)  # full
    assert batch.next_offsets == {0: 9, 1: 4}


def test_a_batch_is_due_sooner_once_the_log_is_drained() -> None:
    policy = BatchPolicy(max_messages=100, max_seconds=1.0, poll_max_messages=10, idle_seconds=0.25)
    batch = Batch()
    batch.count(0, 1)
    # A round start: `now - started` is then exact at the bounds the test probes (with a
    # monotonic clock's value, started + 0.02 - started can fall a hair short of 0.02).
    batch.started = started = 0.0
    policy.polled(batch, asked=10, got=10)  # a backlog: the batch may grow to its bounds
    assert policy.poll_timeout(batch, now=started + 0.1) == pytest.approx(0.9)
    assert not policy.due(batch, now=started + 0.5)
    policy.polled(batch, asked=10, got=3)  # the log had no more
    assert policy.poll_timeout(batch, now=started + 0.1) == pytest.approx(0.15)
    assert not policy.due(batch, now=started + 0.2)
    assert policy.due(batch, now=started + 0.25)
    policy.polled(batch, asked=10, got=10)  # more came: back to the large bounds
    assert not policy.due(batch, now=started + 0.5)
    # The idle bound never exceeds the batch's age bound.
    short = BatchPolicy(max_messages=100, max_seconds=0.02, poll_max_messages=10)
    short.polled(batch, asked=10, got=0)
    assert short.due(batch, now=started + 0.02)


# -- decode ----------------------------------------------------------------------------


def test_decode_counts_every_message_and_dead_letters_the_bad_ones() -> None:
    good = event(1)
    messages = [
        LogMessage(0, 10, b"k", encode(good), T0),
        LogMessage(0, 11, b"k", b"\xff not json", T0),
        LogMessage(1, 4, b"k", b'{"v": 99, "p": "p"}', T0),
    ]
    batch = Batch()
    deliveries = Decoder("events").decode(messages, batch)
    assert [(d.partition, d.offset, d.event) for d in deliveries] == [(0, 10, good)]
    assert batch.messages == 3 and batch.next_offsets == {0: 12, 1: 5}
    assert [row[2] for row in batch.dead_letters] == ["undecodable", "unknown_schema_version"]
    assert [row[4:6] for row in batch.dead_letters] == [(0, 11), (1, 4)]
    assert len(batch.dead_letter_records) == 2


# -- commit ----------------------------------------------------------------------------


class FailingCommits(EmbeddedConsumer):
    """The embedded consumer, with its next `failures` commits failing (a broker blip)."""

    failures = 0

    async def commit(self, offsets: Mapping[int, int]) -> None:
        if self.failures:
            self.failures -= 1
            raise LogUnavailable("injected commit failure")
        await super().commit(offsets)


async def test_a_failed_commit_stays_pending_and_goes_with_the_next(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    await log.ensure_topic("events", 2)
    consumer = FailingCommits(log, "events", "g", None)
    await consumer.start()
    retrier = Retrier(BackoffPolicy(0.01, 0.02), log_unready_after_seconds=0)
    committer = Committer(retrier, timeout_seconds=5)
    committer.written({0: 5, 1: 3})
    consumer.failures = 1
    await committer.commit(consumer, frozenset())
    assert committer.pending == {0: 5, 1: 3}
    assert "commit" in retrier.problems().get("log", "")
    await asyncio.sleep(0.03)
    assert committer.retry_due()
    committer.written({0: 9})
    await committer.commit(consumer, frozenset())
    assert committer.pending == {}
    assert [await consumer.committed(p) for p in (0, 1)] == [9, 3]
    assert retrier.problems() == {}
    await consumer.stop()
    await log.close()


async def test_a_revoked_partitions_offsets_are_given_up(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    await log.ensure_topic("events", 2)
    consumer = FailingCommits(log, "events", "g", None)
    await consumer.start()
    committer = Committer(Retrier(BackoffPolicy(), 30), timeout_seconds=5)
    committer.written({0: 5, 7: 2})  # 7: not held (moved to another member)
    await committer.commit(consumer, frozenset())
    assert committer.pending == {7: 2}
    assert committer.forget(frozenset({7})) == {7: 2}
    assert committer.pending == {}
    await consumer.stop()
    await log.close()


# -- sink ------------------------------------------------------------------------------


def test_each_order_names_every_write_once_with_why_and_state_near_the_end() -> None:
    for order in (BATCH_ORDER, BACKFILL_ORDER):
        targets = [s.target for s in order]
        assert len(targets) == len(set(targets))
        assert all(s.why for s in order)
    assert [s.target for s in BATCH_ORDER][0] == "events"
    assert [s.target for s in BATCH_ORDER][-1] == "processor_state"
    assert [s.target for s in BACKFILL_ORDER][-3:] == [
        "visitor_funnel_progress",
        "funnel_backfill_progress",
        "funnel_backfills",
    ]


class Recording(InterceptedClickHouse):
    """The real engine, noting the table of every insert that carries rows."""

    def __init__(self, real: ClickHouse) -> None:
        super().__init__(real)
        self.tables: list[str] = []

    async def intercept(self, table: str, rows: Sequence[Sequence[Any]]) -> str:
        if rows:
            self.tables.append(table)
        return table


@pytest.mark.clickhouse
async def test_the_sink_writes_a_batch_in_its_declared_order(
    ch: ClickHouse, tmp_path: Path
) -> None:
    from schemas.funnels import FunnelDefinition

    funnel = FunnelDefinition.model_validate(
        {"id": "f", "project": "p", "steps": [{"event": "view"}, {"event": "buy"}]}
    )
    catalog = FunnelCatalog([funnel])
    recording = Recording(ch)
    log = EmbeddedLog(tmp_path / "log", default_partitions=1)
    states = HeldStates()
    timing = Timing()
    sink = Sink(
        recording,
        log,
        "g",
        "events.dead-letters",
        states,
        UserRebuilder(recording, catalog, timing),
        LateRefolder(recording, catalog, timing),
    )
    await sink.start()
    batch = Batch()
    messages = [
        LogMessage(0, 0, b"k", encode(event(1)), T0),
        LogMessage(0, 1, b"k", b"\xff", T0),
    ]
    deliveries = Decoder("events").decode(messages, batch)
    for d in deliveries:
        state = states.get_or_create(d.partition, "p", d.event.visitor_id)
        apply_event(
            state,
            d.event,
            partition=d.partition,
            offset=d.offset,
            funnels=[funnel],
            timing=timing,
            processed_at_ms=T0,
            out=batch.outputs,
        )
        batch.dirty["p\x1fv"] = (d.partition, state)
    await sink.write(Writes.of_batch(batch, "g"), BATCH_ORDER)
    await sink.stop()
    await log.close()
    assert recording.tables == [
        "events",
        "sessions",
        "funnel_state",
        "funnel_transitions",
        "dead_letters",
        "processor_state",
    ]


# -- held states -----------------------------------------------------------------------


def test_a_refolded_state_replaces_a_held_one_but_never_revives_a_revoked_partition() -> None:
    states = HeldStates()
    first = states.get_or_create(0, "p", "v")
    assert states.get_or_create(0, "p", "v") is first
    states.get_or_create(1, "p", "w")
    assert len(states) == 2
    refolded = VisitorState("p", "v", applied_offset=9)
    states.replace(0, "p\x1fv", refolded)
    assert states.of(0)["p\x1fv"] is refolded
    states.drop(frozenset({0}))
    states.replace(0, "p\x1fv", first)  # a re-fold finishing after the revocation
    assert states.of(0) == {} and len(states) == 1


async def test_one_call_succeeding_does_not_clear_another_calls_clickhouse_problem() -> None:
    """A rebalance's state load and the loop's batch write retry side by side: the first
    to succeed must leave the other's problem in /readyz."""
    import asyncio

    from funnelstream.backoff import BackoffPolicy
    from funnelstream.clickhouse import ClickHouseUnavailable
    from processor.retry import Retrier

    retrier = Retrier(BackoffPolicy(0.01, 0.01), log_unready_after_seconds=30)
    write_fails = True

    async def write() -> None:
        if write_fails:
            raise ClickHouseUnavailable("down")

    async def load() -> int:
        return 1

    writing = asyncio.create_task(retrier.retry("batch write", write))
    await asyncio.sleep(0.05)
    assert "batch write" in retrier.problems()["clickhouse"]
    assert await retrier.retry("loading state", load) == 1
    assert "batch write" in retrier.problems()["clickhouse"]
    write_fails = False
    await writing
    assert "clickhouse" not in retrier.problems()
