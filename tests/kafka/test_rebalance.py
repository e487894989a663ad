"""Several processors in one consumer group, real Kafka group protocol, while events flow.

chdb opens one data path per process, so the group members are `Processor`s in this
process sharing the embedded engine (processes on separate machines need a ClickHouse
server; the code does not know the difference). Every rebalance is a real one: members
join and leave through the broker's group coordinator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from funnelstream.log.kafka import KafkaLog
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from schemas.funnels import FunnelDefinition
from tests.fixtures.clickhouse import InterceptedClickHouse
from tests.kafka.helpers import (
    FUNNEL,
    PARTITIONS,
    Traffic,
    assert_tables_exact,
    committed_total,
    produce,
    traffic,
    unique,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

EVERY_PARTITION = frozenset(range(PARTITIONS))


@dataclass
class Member:
    name: str
    processor: Processor
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> Member:
        self.task = asyncio.create_task(self.processor.run(self.stop), name=self.name)
        return self

    async def leave(self) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task

    def held(self) -> frozenset[int]:
        return self.processor.assignment()


@dataclass
class Group:
    log: KafkaLog
    ch: ClickHouse
    topic: str
    group: str
    members: list[Member] = field(default_factory=list)
    funnels: list[FunnelDefinition] = field(default_factory=lambda: [FUNNEL])

    def join(self, name: str, ch: ClickHouse | None = None) -> Member:
        config = ProcessorConfig(
            topic=self.topic,
            group=self.group,
            batch_max_messages=500,
            batch_max_seconds=0.1,
            retry_initial_seconds=0.1,
            retry_max_seconds=1.0,
        )
        processor = Processor(self.log, ch or self.ch, FunnelCatalog(self.funnels), config)
        member = Member(name, processor).start()
        self.members.append(member)
        return member

    def running(self) -> list[Member]:
        return [m for m in self.members if m.task is not None and not m.task.done()]

    async def settled(self, members: list[Member]) -> bool:
        """Exactly `members` run and they split every partition between them."""
        held = [m.held() for m in members]
        return (
            self.running() == members
            and all(held)
            and frozenset().union(*held) == EVERY_PARTITION
            and sum(len(h) for h in held) == PARTITIONS
        )

    async def caught_up(self, t: Traffic) -> None:
        await self.caught_up_to(len(t.events))

    async def caught_up_to(self, events: int) -> None:
        async def done() -> bool:
            committed, end = await committed_total(self.log, self.topic, self.group)
            return end == events and committed == end

        await wait_until(done, 120, "every offset committed")

    async def close(self) -> None:
        for m in self.running():
            m.stop.set()
        for m in self.members:
            if m.task is not None:
                await m.task  # re-raises a processor that died


@asynccontextmanager
async def consumer_group(bootstrap: str, ch: ClickHouse, **kafka: Any) -> AsyncIterator[Group]:
    log = KafkaLog(bootstrap, client_id="rebalance-test", **kafka)
    topic = unique("rebalance")
    await log.ensure_topic(topic, PARTITIONS)
    g = Group(log, ch, topic, unique("processors"))
    try:
        yield g
    finally:
        await g.close()
        await log.close()


async def test_members_join_and_leave_mid_stream_exact_numbers(
    ch: ClickHouse, kafka_bootstrap: str
) -> None:
    t = traffic(visitors=6000, seed=21)  # ~14k events in 6 waves
    size = -(-len(t.events) // 6)
    waves = [t.events[i : i + size] for i in range(0, len(t.events), size)]
    async with consumer_group(kafka_bootstrap, ch) as g:
        await produce(g.log, g.topic, waves[0])
        a = g.join("a")
        await wait_until(lambda: g.settled([a]), 60, "a holding every partition")
        await wait_until(lambda: _true(a.processor.processed_messages > 0), 60, "a processing")

        # b joins while a is busy with wave 1 and wave 2 is being produced.
        producing = asyncio.create_task(produce(g.log, g.topic, waves[1], chunk=200))
        b = g.join("b")
        await wait_until(lambda: g.settled([a, b]), 60, "a and b splitting the partitions")
        await producing
        before_c = b.processor.processed_messages

        # c joins: three members.
        await produce(g.log, g.topic, waves[2])
        c = g.join("c")
        await wait_until(lambda: g.settled([a, b, c]), 60, "three members")

        # a leaves mid-stream (flushes and commits what it holds, then leaves the group).
        producing = asyncio.create_task(produce(g.log, g.topic, waves[3], chunk=200))
        await asyncio.sleep(0.3)
        await a.leave()
        await wait_until(lambda: g.settled([b, c]), 60, "b and c taking a's partitions")
        await producing

        # b leaves too; c carries on alone, then d joins for the tail.
        await produce(g.log, g.topic, waves[4])
        await b.leave()
        await wait_until(lambda: g.settled([c]), 60, "c alone")
        d = g.join("d")
        await produce(g.log, g.topic, waves[5])
        await wait_until(lambda: g.settled([c, d]), 60, "c and d")
        await g.caught_up(t)

        # Every member did real work, and b kept working after it had to share.
        assert all(m.processor.processed_messages > 0 for m in (a, b, c))
        assert b.processor.processed_messages > before_c
    assert_tables_exact(ch, t)


class GatedClickHouse(InterceptedClickHouse):
    """The real engine; while `gate` is closed, every write waits for it to open."""

    def __init__(self, real: ClickHouse) -> None:
        super().__init__(real)
        self.gate = asyncio.Event()
        self.gate.set()
        self.blocked = asyncio.Event()

    async def intercept(self, table: str, rows: Any) -> str:
        if rows and not self.gate.is_set():
            self.blocked.set()
            await self.gate.wait()
        return table


async def test_commit_refused_after_the_group_moved_on(
    ch: ClickHouse, kafka_bootstrap: str
) -> None:
    """A member stuck in a write past the rebalance timeout loses its partitions: its
    late commit is refused (`LogUnavailable`), it drops their state, writes nothing
    wrong, rejoins and carries on; the numbers stay exact."""
    t = traffic(visitors=3000, seed=22)
    third = len(t.events) // 3
    gated = GatedClickHouse(ch)
    refused_before = metrics.PROCESSOR_LOG_ERRORS.labels("commit")._value.get()
    # 6 s session = 6 s rebalance timeout (the broker's minimum session is 6 s).
    async with consumer_group(
        kafka_bootstrap, ch, session_timeout_ms=6000, heartbeat_interval_ms=500
    ) as g:
        await produce(g.log, g.topic, t.events[:third])
        a = g.join("a", gated)
        await wait_until(lambda: g.settled([a]), 60, "a holding every partition")
        await wait_until(
            lambda: _true(a.processor.processed_messages >= third), 60, "a through part 1"
        )

        gated.gate.clear()  # a's next write hangs (a slow or stuck ClickHouse)
        await produce(g.log, g.topic, t.events[third : 2 * third])
        await asyncio.wait_for(gated.blocked.wait(), 30)
        b = g.join("b")
        # a cannot rejoin while its write hangs: after the rebalance timeout the group
        # goes on without it and b owns every partition.
        await wait_until(lambda: _true(b.held() == EVERY_PARTITION), 60, "b taking over")
        await wait_until(
            lambda: _true(b.processor.processed_messages >= third), 60, "b through part 2"
        )
        gated.gate.set()  # a's write lands late; its commit is refused

        await wait_until(lambda: g.settled([a, b]), 60, "a rejoining")
        await produce(g.log, g.topic, t.events[2 * third :])
        await g.caught_up(t)
        assert a.task is not None and not a.task.done()
    refused = metrics.PROCESSOR_LOG_ERRORS.labels("commit")._value.get() - refused_before
    assert refused >= 1
    assert_tables_exact(ch, t)


async def _true(value: bool) -> bool:
    return value
