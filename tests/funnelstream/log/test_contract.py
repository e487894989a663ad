"""One contract for every `Log` backend: the embedded log and real Kafka.

Each test runs once per backend against a fresh topic (and, for the embedded log, a
fresh directory). What the processor relies on is spelled out as assertions on the
records themselves: order and contiguous offsets per partition, key → partition,
commit/resume per group, seek, end offsets, and when rebalance callbacks run.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from funnelstream.log import (
    Log,
    LogConsumer,
    LogMessage,
    LogProducer,
    LogRecord,
    RebalanceListener,
)
from funnelstream.log.embedded import EmbeddedLog
from funnelstream.log.kafka import KafkaLog

PARTITIONS = 4
BASE_TS = 1_700_000_000_000


@dataclass
class Backend:
    """A log with a fresh topic; starts producers/consumers and stops them afterwards."""

    name: str
    log: Log
    topic: str
    _open: list[LogProducer | LogConsumer] = field(default_factory=list)

    async def producer(self) -> LogProducer:
        producer = self.log.producer(self.topic)
        await producer.start()
        self._open.append(producer)
        return producer

    async def consumer(self, group: str, listener: RebalanceListener | None = None) -> LogConsumer:
        consumer = self.log.consumer(self.topic, group, listener)
        await consumer.start()
        self._open.append(consumer)
        return consumer

    def adopt(self, thing: LogProducer | LogConsumer) -> None:
        """Stop `thing` at teardown too (for one the test had to start itself)."""
        self._open.append(thing)

    async def close(self) -> None:
        for thing in reversed(self._open):
            await thing.stop()
        await self.log.close()


@asynccontextmanager
async def open_backend(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Backend]:
    log: Log
    if name == "embedded":
        log = EmbeddedLog(tmp_path / "log")
    else:
        log = KafkaLog(request.getfixturevalue("kafka_bootstrap"), client_id="contract-test")
    backend = Backend(name, log, f"contract-{uuid.uuid4().hex[:12]}")
    await log.ensure_topic(backend.topic, PARTITIONS)
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with open_backend(request.param, request, tmp_path) as b:
        yield b


@pytest.fixture(params=[pytest.param("kafka", marks=pytest.mark.kafka)])
async def multi_member_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Backend]:
    # The embedded log allows one member per group by design (one process; several
    # processors sharing work is what Kafka is for), so group splitting is Kafka's alone.
    async with open_backend(request.param, request, tmp_path) as b:
        yield b


def make_records(count: int, keys: int, start: int = 0) -> list[LogRecord]:
    """Values are `key|seq` so order per key can be checked after reading back."""
    out = []
    for seq in range(start, start + count):
        key = f"visitor-{seq % keys}".encode()
        out.append(LogRecord(key=key, value=key + f"|{seq}".encode(), timestamp_ms=BASE_TS + seq))
    return out


async def read(consumer: LogConsumer, count: int, timeout_s: float = 30.0) -> list[LogMessage]:
    """Poll until `count` messages arrived; fail if they do not within `timeout_s`."""
    got: list[LogMessage] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(got) < count and loop.time() < deadline:
        got.extend(await consumer.poll(max_records=500, timeout_s=0.5))
    assert len(got) == count, f"read {len(got)} messages, expected {count}"
    return got


async def assert_nothing_more(consumer: LogConsumer, wait_s: float = 1.0) -> None:
    extra = await consumer.poll(max_records=500, timeout_s=wait_s)
    assert extra == [], f"unexpected extra messages: {extra[:5]}"


def by_partition(messages: Iterable[LogMessage]) -> dict[int, list[LogMessage]]:
    out: dict[int, list[LogMessage]] = defaultdict(list)
    for m in messages:
        out[m.partition].append(m)
    return dict(out)


def seq_of(m: LogMessage) -> int:
    return int(m.value.rsplit(b"|", 1)[1])


async def append_all(backend: Backend, records: list[LogRecord], batch: int = 50) -> None:
    producer = await backend.producer()
    for i in range(0, len(records), batch):
        await producer.append(records[i : i + batch])


async def test_read_back_in_order_with_contiguous_offsets(backend: Backend) -> None:
    records = make_records(150, keys=12)
    await append_all(backend, records)

    consumer = await backend.consumer("g")
    messages = await read(consumer, len(records))
    await assert_nothing_more(consumer)

    assert Counter((m.key, m.value) for m in messages) == Counter((r.key, r.value) for r in records)
    for partition, msgs in by_partition(messages).items():
        assert 0 <= partition < PARTITIONS
        assert [m.offset for m in msgs] == list(range(len(msgs))), f"partition {partition}"
        # Offset order within a partition is append order, so each key's seqs ascend.
        per_key: dict[bytes, list[int]] = defaultdict(list)
        for m in msgs:
            per_key[m.key].append(seq_of(m))
        for key, seqs in per_key.items():
            assert seqs == sorted(seqs), f"{key!r} out of order in partition {partition}"
    assert all(m.timestamp_ms == BASE_TS + seq_of(m) for m in messages)


async def test_key_chooses_partition(backend: Backend) -> None:
    # Two separate appends: the mapping must hold across calls, not just within a batch.
    await append_all(backend, make_records(100, keys=40))
    await append_all(backend, make_records(100, keys=40, start=100))

    consumer = await backend.consumer("g")
    messages = await read(consumer, 200)

    partitions_of: dict[bytes, set[int]] = defaultdict(set)
    for m in messages:
        partitions_of[m.key].add(m.partition)
    assert len(partitions_of) == 40
    assert all(len(ps) == 1 for ps in partitions_of.values()), partitions_of
    used = set().union(*partitions_of.values())
    assert len(used) > 1, "40 keys all landed in one partition"


async def test_commit_then_same_group_resumes_other_group_starts_over(backend: Backend) -> None:
    records = make_records(60, keys=10)
    await append_all(backend, records)

    first = await backend.consumer("g")
    counts = {p: len(ms) for p, ms in by_partition(await read(first, 60)).items()}
    # Commit half of each partition: the next member must start exactly there.
    commit = {p: n // 2 for p, n in counts.items()}
    await first.commit(commit)
    await first.stop()

    second = await backend.consumer("g")
    resumed = await read(second, sum(counts[p] - commit[p] for p in counts))
    await assert_nothing_more(second)
    for p, msgs in by_partition(resumed).items():
        assert [m.offset for m in msgs] == list(range(commit[p], counts[p])), f"partition {p}"
    for p in counts:
        assert await second.committed(p) == commit[p]
    await second.stop()

    other = await backend.consumer("other")
    from_start = await read(other, 60)
    assert sorted((m.partition, m.offset) for m in from_start) == sorted(
        (p, o) for p, n in counts.items() for o in range(n)
    )
    for p in range(PARTITIONS):
        assert await other.committed(p) is None


async def test_seek_rewinds_one_partition(backend: Backend) -> None:
    await append_all(backend, make_records(80, keys=16))
    consumer = await backend.consumer("g")
    first_pass = by_partition(await read(consumer, 80))
    target = max(first_pass, key=lambda p: len(first_pass[p]))
    assert len(first_pass[target]) >= 3

    consumer.seek(target, 1)
    again = await read(consumer, len(first_pass[target]) - 1)
    assert {m.partition for m in again} == {target}
    assert [(m.offset, m.value) for m in again] == [
        (m.offset, m.value) for m in first_pass[target][1:]
    ]
    await assert_nothing_more(consumer)


async def test_end_offsets(backend: Backend) -> None:
    await append_all(backend, make_records(70, keys=14))
    consumer = await backend.consumer("g")
    counts = Counter(m.partition for m in await read(consumer, 70))
    assert consumer.assignment() == frozenset(range(PARTITIONS))
    assert await consumer.end_offsets() == {p: counts.get(p, 0) for p in range(PARTITIONS)}

    # End offsets move with appends, not with what this consumer has read.
    await append_all(backend, make_records(30, keys=14, start=70))
    more = Counter(r.partition for r in await read(consumer, 30)) + counts
    assert await consumer.end_offsets() == {p: more.get(p, 0) for p in range(PARTITIONS)}


async def test_rebalance_callbacks_bracket_messages(backend: Backend) -> None:
    events: list[tuple[str, frozenset[int]]] = []

    async def on_assigned(partitions: frozenset[int]) -> None:
        events.append(("assigned", partitions))

    async def on_revoked(partitions: frozenset[int]) -> None:
        events.append(("revoked", partitions))

    await append_all(backend, make_records(40, keys=8))
    consumer = await backend.consumer("g", RebalanceListener(on_assigned, on_revoked))
    got = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while got < 40 and loop.time() < deadline:
        batch = await consumer.poll(max_records=500, timeout_s=0.5)
        if batch:
            events.append(("messages", frozenset(m.partition for m in batch)))
            got += len(batch)
    assert got == 40
    await consumer.stop()

    everything = frozenset(range(PARTITIONS))
    assert events[0] == ("assigned", everything)
    assert events[-1] == ("revoked", everything)
    middle = events[1:-1]
    assert middle and all(kind == "messages" and ps <= everything for kind, ps in middle)


async def test_on_assigned_can_seek(backend: Backend) -> None:
    await append_all(backend, make_records(40, keys=8))
    holder: list[LogConsumer] = []

    async def on_assigned(partitions: frozenset[int]) -> None:
        # Restoring state may mean "resume from my own checkpoint": skip offset 0.
        for p in partitions:
            holder[0].seek(p, 1)

    async def on_revoked(partitions: frozenset[int]) -> None:
        return None

    consumer = backend.log.consumer(backend.topic, "g", RebalanceListener(on_assigned, on_revoked))
    holder.append(consumer)
    backend.adopt(consumer)
    await consumer.start()

    # Every partition was moved past offset 0 before any message came back.
    ends = await consumer.end_offsets()
    got = await read(consumer, sum(max(0, e - 1) for e in ends.values()))
    await assert_nothing_more(consumer)
    for p, msgs in by_partition(got).items():
        assert [m.offset for m in msgs] == list(range(1, ends[p])), f"partition {p}"


async def test_two_members_split_partitions_without_double_delivery(
    multi_member_backend: Backend,
) -> None:
    backend = multi_member_backend
    everything = frozenset(range(PARTITIONS))

    @dataclass
    class Member:
        """A processor in miniature: it commits what it has handled when revoked."""

        name: str
        consumer: LogConsumer | None = None
        seen: list[tuple[int, int]] = field(default_factory=list)
        position: dict[int, int] = field(default_factory=dict)

        def listener(self) -> RebalanceListener:
            async def on_assigned(partitions: frozenset[int]) -> None:
                return None

            async def on_revoked(partitions: frozenset[int]) -> None:
                assert self.consumer is not None
                await self.consumer.commit(
                    {p: o for p, o in self.position.items() if p in partitions}
                )

            return RebalanceListener(on_assigned, on_revoked)

        async def poll(self) -> None:
            assert self.consumer is not None
            for m in await self.consumer.poll(max_records=100, timeout_s=0.2):
                self.seen.append((m.partition, m.offset))
                self.position[m.partition] = m.offset + 1

    a, b = Member("a"), Member("b")
    await append_all(backend, make_records(200, keys=40))
    a.consumer = await backend.consumer("g", a.listener())
    await a.poll()  # a alone holds every partition and starts reading
    b.consumer = await backend.consumer("g", b.listener())

    async def settled() -> bool:
        assert a.consumer is not None and b.consumer is not None
        ours, theirs = a.consumer.assignment(), b.consumer.assignment()
        return bool(ours) and bool(theirs) and ours | theirs == everything

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not await settled() and loop.time() < deadline:
        await asyncio.gather(a.poll(), b.poll())
    assert await settled(), "the second member never got partitions"
    assert a.consumer is not None and b.consumer is not None
    assert not a.consumer.assignment() & b.consumer.assignment()

    # A second wave after the split: both members must take part in reading it.
    await append_all(backend, make_records(200, keys=40, start=200))
    before = (len(a.seen), len(b.seen))
    while len(a.seen) + len(b.seen) < 400 and loop.time() < deadline:
        await asyncio.gather(a.poll(), b.poll())
    for _ in range(3):  # give a duplicate a chance to show up
        await asyncio.gather(a.poll(), b.poll())

    both = a.seen + b.seen
    duplicates = [k for k, n in Counter(both).items() if n > 1]
    assert duplicates == [], f"delivered more than once: {duplicates[:10]}"
    assert len(both) == 400
    assert len(a.seen) > before[0] and len(b.seen) > before[1], "one member read nothing"
    assert {p for p, _ in a.seen[before[0] :]} <= a.consumer.assignment()
    assert {p for p, _ in b.seen[before[1] :]} <= b.consumer.assignment()
