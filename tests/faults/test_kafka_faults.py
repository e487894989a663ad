"""Faults of the log under the processor, on real Kafka: a group member that stalls
mid-batch past its session timeout and then wakes up; a slow broker and a broker restart
while the processor is mid-batch.

chdb opens one data path per process, so the group members are `Processor`s in this
process sharing the engine (as in tests/kafka/test_rebalance.py). The stalled member
runs on its own thread and event loop, and is stalled by blocking that loop outright:
like SIGSTOP, nothing of it runs (no heartbeat, no poll, no write) until it is let go,
while the broker and the other member carry on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from funnelstream.clickhouse import ClickHouse
from funnelstream.log.kafka import KafkaLog
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from tests.faults.harness import (
    ATTEMPTS,
    CHECKOUT,
    SOAK,
    Expected,
    assert_stored_exactly,
    parsed,
    records,
    seed,
    shop_traffic,
    size,
)
from tests.fixtures.kafka import KafkaCluster
from tests.kafka.helpers import PARTITIONS, unique

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

# The broker's smallest session timeout (group.min.session.timeout.ms): a stall past it
# takes the member out of the group.
SESSION_MS = 6000


def config(topic: str, group: str) -> ProcessorConfig:
    return ProcessorConfig(
        topic=topic,
        group=group,
        batch_max_messages=300,
        batch_max_seconds=0.2,
        poll_max_messages=100,
        retry_initial_seconds=0.05,
        retry_max_seconds=0.5,
    )


def kafka(bootstrap: str, name: str) -> KafkaLog:
    return KafkaLog(bootstrap, client_id=name, session_timeout_ms=SESSION_MS)


class Stallable:
    """A processor on its own thread and event loop, which `stall` freezes whole."""

    def __init__(self, bootstrap: str, ch: ClickHouse, topic: str, group: str) -> None:
        self.log = kafka(bootstrap, "stalled")
        self.processor = Processor(
            self.log, ch, FunnelCatalog([CHECKOUT, ATTEMPTS]), config(topic, group)
        )
        self.loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._gate = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stallable")
        self.error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            try:
                await self.processor.run(self._stop)
            finally:
                await self.log.close()

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:  # shown by the test
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def stall(self) -> None:
        self._gate.clear()
        self.loop.call_soon_threadsafe(self._gate.wait)

    def wake(self) -> None:
        self._gate.set()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive()


async def wait_for(condition: Callable[[], Any], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.02)


class Offsets:
    """The group's committed offsets, read by a client outside the group, and every
    time one went backwards."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
        self._tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.last: dict[int, int] = {}
        self.regressions: list[tuple[int, int, int]] = []

    async def read(self) -> dict[int, int]:
        for tp in self._tps:
            offset = await self._consumer.committed(tp) or 0
            before = self.last.get(tp.partition, 0)
            if offset < before:
                self.regressions.append((tp.partition, before, offset))
            self.last[tp.partition] = offset
        return dict(self.last)

    async def watch(self, stop: asyncio.Event) -> None:
        await self._consumer.start()
        try:
            while not stop.is_set():
                await self.read()
                await asyncio.sleep(0.05)
        finally:
            await self._consumer.stop()


# Passes on its own (run the file, or with FUNNELSTREAM_FAULT_SOAK=1), but twice in two
# runs of the whole suite it timed out before both members had a batch written ("both
# members working"). The likely cause, a race of the two joins against the first half of
# the traffic, is fixed below (the half is appended once both hold partitions); it stays
# out of the CI profile until whole-suite runs confirm it (docs/reliability.md, scenario 8).
@pytest.mark.skipif(
    not SOAK and os.environ.get("FUNNELSTREAM_FAULT_STALL") != "1",
    reason="scenario 8 runs with FUNNELSTREAM_FAULT_SOAK=1 or FUNNELSTREAM_FAULT_STALL=1",
)
async def test_a_member_stalled_mid_batch_past_its_session_never_wins(
    ch: ClickHouse, kafka_bootstrap: str
) -> None:
    """A member stalls with a batch applied and not written, longer than its session
    timeout: the group moves its partitions to the other member, which replays from the
    last commit and goes on. When the stalled member wakes, it must not commit for the
    partitions it lost (no committed offset ever goes back) nor write for them (nothing
    stored twice, nothing stale wins); then it rejoins. Every number stays exact."""
    raw = shop_traffic(visitors=size(600, 6000), seed=seed(40))
    events = parsed(raw)
    half = len(events) // 2
    topic, group = unique("stall"), unique("members")
    producer_log = kafka(kafka_bootstrap, "producer")
    await producer_log.ensure_topic(topic, PARTITIONS)
    producer = producer_log.producer(topic)
    await producer.start()

    stalled = Stallable(kafka_bootstrap, ch, topic, group)
    other_log = kafka(kafka_bootstrap, "other")
    other = Processor(other_log, ch, FunnelCatalog([CHECKOUT, ATTEMPTS]), config(topic, group))
    offsets = Offsets(kafka_bootstrap, topic, group)
    watching = asyncio.Event()
    watcher = asyncio.create_task(offsets.watch(watching))
    stop_other = asyncio.Event()
    stalled.start()
    other_task = asyncio.create_task(other.run(stop_other))
    try:
        a = stalled.processor
        # The first half only once both hold partitions: the broker gives the first member
        # to join every partition at once (group.initial.rebalance.delay.ms=0), and one
        # that joined well ahead could drain a half already there before the other's join,
        # leaving the other nothing to write ("both members working" never came true).
        await wait_for(lambda: a.assignment() and other.assignment(), "both members in")
        await producer.append(records(events[:half]))
        await wait_for(lambda: a.processed_messages > 0, "both members working")
        # Mid-batch: applied, not written.
        await wait_for(lambda: a.applied_messages > a.processed_messages, "a batch in hand")
        stalled.stall()
        written_when_stalled = a.processed_messages
        await producer.append(records(events[half:]))
        await wait_for(
            lambda: other.assignment() == frozenset(range(PARTITIONS)),
            "the group giving every partition to the other member",
            SESSION_MS / 1000 * 4,
        )
        assert a.processed_messages == written_when_stalled
        await wait_for(lambda: sum(offsets.last.values()) >= len(events), "all committed")
        stalled.wake()
        await wait_for(lambda: bool(a.assignment()), "the stalled member rejoining", 60)
        await wait_for(lambda: sum(offsets.last.values()) >= len(events), "all committed again")
    finally:
        stalled.wake()
        stalled.stop()
        stop_other.set()
        await other_task
        watching.set()
        await watcher
        await producer.stop()
        await producer_log.close()
        await other_log.close()
    # It learned it was out before writing (the commit of what it had written was refused)
    # and dropped the batch in hand instead of writing it for partitions it had lost.
    assert stalled.processor.fenced_messages > 0
    assert stalled.error is None, stalled.error
    assert offsets.regressions == []
    assert_stored_exactly(ch, Expected.of(raw), replayed=True)


def node_pid(cluster: KafkaCluster, node: int) -> int:
    """The broker process of a node (deploy/kafka/broker.sh writes its pid file)."""
    return int((cluster.directory / f"node-{node}" / "pid").read_text())


async def test_slow_broker_and_broker_restart_while_the_processor_is_mid_batch(
    ch: ClickHouse, kafka_cluster3: KafkaCluster
) -> None:
    """On the three-node cluster (every partition on three replicas): a node frozen for a
    few seconds (SIGSTOP: every request to it hangs, as in a long GC pause), then another
    node restarted, each while the processor holds a batch applied and not written, and
    events keep coming. Polls and commits fail and are retried; nothing is lost or
    counted twice."""
    cluster = kafka_cluster3
    raw = shop_traffic(visitors=size(600, 6000), seed=seed(41))
    events = parsed(raw)
    thirds = [events[: len(events) // 3], events[len(events) // 3 : 2 * len(events) // 3]]
    thirds.append(events[2 * len(events) // 3 :])
    topic, group = unique("brokers"), unique("processor")
    log = KafkaLog(cluster.bootstrap, client_id="processor", request_timeout_ms=5000)
    producer_log = KafkaLog(cluster.bootstrap, client_id="producer")
    await producer_log.ensure_topic(topic, PARTITIONS)
    producer = producer_log.producer(topic)
    await producer.start()
    await producer.append(records(thirds[0]))
    processor = Processor(log, ch, FunnelCatalog([CHECKOUT, ATTEMPTS]), config(topic, group))
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    frozen: int | None = None
    restarted = False
    try:
        await wait_for(lambda: processor.processed_messages > 0, "processing")
        await wait_for(
            lambda: processor.applied_messages > processor.processed_messages, "a batch in hand"
        )
        frozen = node_pid(cluster, 0)
        os.kill(frozen, signal.SIGSTOP)
        sending = asyncio.create_task(producer.append(records(thirds[1])))
        await asyncio.sleep(3)
        os.kill(frozen, signal.SIGCONT)
        frozen = None
        await sending
        await wait_for(
            lambda: processor.applied_messages > processor.processed_messages, "a batch in hand"
        )
        await asyncio.to_thread(cluster.stop_node, 1)
        restarted = True
        await producer.append(records(thirds[2]))
        await asyncio.to_thread(cluster.start_node, 1)
        restarted = False
        await wait_for(
            lambda: processor.processed_messages >= len(events), "every event written", 120
        )
        committed = Offsets(cluster.bootstrap, topic, group)
        watching = asyncio.Event()
        watcher = asyncio.create_task(committed.watch(watching))
        await wait_for(lambda: sum(committed.last.values()) >= len(events), "all committed", 60)
        watching.set()
        await watcher
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        if restarted:
            await asyncio.to_thread(cluster.start_node, 1)
        stop.set()
        await task
        await producer.stop()
        await producer_log.close()
        await log.close()
    assert_stored_exactly(ch, Expected.of(raw), replayed=True)
