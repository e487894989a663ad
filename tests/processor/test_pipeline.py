"""The processor against the embedded log and the real ClickHouse engine."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from funnelstream.clickhouse import ClickHouse, ClickHouseUnavailable
from funnelstream.log import LogRecord
from funnelstream.log.embedded import EmbeddedLog
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from schemas.events import Event, encode
from schemas.funnels import FunnelDefinition
from tests.fixtures.clickhouse import InterceptedClickHouse

pytestmark = pytest.mark.clickhouse

FUNNEL = FunnelDefinition(
    id="f",
    project="p",
    window_seconds=3600,
    steps=({"event": "view"}, {"event": "cart"}, {"event": "buy"}),  # type: ignore[arg-type]
)
T0 = 1_760_000_000_000


def event(visitor: str, name: str, minute: int, n: int) -> Event:
    return Event(
        project_id="p",
        event_id=f"00000000-0000-4000-8000-{n:012d}",
        event=name,
        visitor_id=visitor,
        timestamp_ms=T0 + minute * 60_000,
        received_at_ms=T0,
    )


def stream() -> list[Event]:
    out = []
    n = 0
    for v in range(30):
        for k, name in enumerate(["view", "cart", "buy"][: 1 + v % 3]):
            n += 1
            out.append(event(f"v{v}", name, k, n))
    return out  # 10 visitors reach 1, 10 reach 2, 10 reach 3


class FlakyClickHouse(InterceptedClickHouse):
    """The real engine, with injected write failures (a ClickHouse outage)."""

    def __init__(self, real: ClickHouse, fail_tables: dict[str, int]) -> None:
        super().__init__(real)
        self.fail_tables = fail_tables

    async def intercept(self, table: str, rows: Sequence[Sequence[Any]]) -> str:
        if rows and self.fail_tables.get(table, 0) > 0:
            self.fail_tables[table] -= 1
            raise ClickHouseUnavailable(f"injected failure writing {table}")
        return table


async def append(log: EmbeddedLog, payloads: list[tuple[bytes, bytes]]) -> None:
    producer = log.producer("events")
    await producer.start()
    await producer.append([LogRecord(k, v, T0) for k, v in payloads])


async def run_until_idle(processor: Processor, log: EmbeddedLog, messages: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    for _ in range(600):
        if processor.processed_messages >= messages:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task


async def die_before_visitor_states(
    log: EmbeddedLog, ch: ClickHouse, catalog: FunnelCatalog, config: ProcessorConfig
) -> None:
    """Run a processor whose visitor-state writes all fail, so it writes rows but never
    commits, until it has retried a few; then cancel it (a crash at that point)."""
    flaky = FlakyClickHouse(ch, {"processor_state": 10**9})
    task = asyncio.create_task(Processor(log, flaky, catalog, config).run(asyncio.Event()))
    for _ in range(400):
        if flaky.fail_tables["processor_state"] < 10**9 - 2:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def levels(ch: ClickHouse) -> dict[int, int]:
    rows = ch.query_rows_sync("SELECT level, count() FROM funnel_state FINAL GROUP BY level")
    return {int(level): int(c) for level, c in rows}


async def test_poison_messages_are_dead_lettered_and_the_partition_flows(
    ch: ClickHouse, tmp_path: Path
) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    events = stream()
    payloads = [(e.partition_key(), encode(e)) for e in events]
    payloads.insert(5, (b"p\x1fv0", b"\xff not json"))
    payloads.insert(9, (b"p\x1fv0", b'{"v": 99, "p": "p"}'))
    await append(log, payloads)
    processor = Processor(log, ch, FunnelCatalog([FUNNEL]), ProcessorConfig(batch_max_seconds=0.05))
    await run_until_idle(processor, log, len(payloads))

    assert levels(ch) == {1: 10, 2: 10, 3: 10}
    reasons = ch.query_rows_sync("SELECT reason FROM dead_letters ORDER BY reason")
    assert reasons == [("undecodable",), ("unknown_schema_version",)]
    # ...and on the dead-letter topic, with the reason and where the message was.
    reader = log.consumer("events.dead-letters", "inspector")
    await reader.start()
    records = [orjson.loads(m.value) for m in await reader.poll(10, 1.0)]
    await reader.stop()
    assert sorted(r["reason"] for r in records) == ["undecodable", "unknown_schema_version"]
    assert all(r["topic"] == "events" and r["offset"] >= 0 for r in records)
    ((stored,),) = ch.query_rows_sync("SELECT count() FROM events FINAL")
    assert stored == len(events)


async def test_clickhouse_outage_retries_and_never_commits_an_unwritten_batch(
    ch: ClickHouse, tmp_path: Path
) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    events = stream()
    await append(log, [(e.partition_key(), encode(e)) for e in events])
    flaky = FlakyClickHouse(ch, {"funnel_state": 3})
    processor = Processor(
        log,
        flaky,
        FunnelCatalog([FUNNEL]),
        ProcessorConfig(batch_max_seconds=0.05, retry_initial_seconds=0.05),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    # While the writes fail, nothing is committed.
    for _ in range(200):
        if flaky.fail_tables["funnel_state"] < 3:
            break
        await asyncio.sleep(0.01)
    consumer = log.consumer("events", "observer")
    await consumer.start()
    group = processor.config.group
    assert log.store.committed("events", group, 0) is None
    assert log.store.committed("events", group, 1) is None
    await consumer.stop()
    for _ in range(400):
        if processor.processed_messages >= len(events):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    heads = log.store.heads("events")
    assert {p: log.store.committed("events", group, p) for p in heads} == heads
    assert levels(ch) == {1: 10, 2: 10, 3: 10}
    await log.close()


async def test_crash_between_rows_and_state_replays_exactly(ch: ClickHouse, tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    events = stream()
    await append(log, [(e.partition_key(), encode(e)) for e in events])
    # First run: every row is written, then the visitor-state write fails for good and
    # the process "dies" (is cancelled) without committing.
    config = ProcessorConfig(batch_max_seconds=0.05, retry_initial_seconds=0.01)
    await die_before_visitor_states(log, ch, FunnelCatalog([FUNNEL]), config)
    assert levels(ch) == {1: 10, 2: 10, 3: 10}  # rows landed before the "crash"

    second = Processor(log, ch, FunnelCatalog([FUNNEL]), ProcessorConfig(batch_max_seconds=0.05))
    await run_until_idle(second, log, len(events))
    await log.close()
    assert levels(ch) == {1: 10, 2: 10, 3: 10}
    ((transitions,),) = ch.query_rows_sync("SELECT count() FROM funnel_transitions FINAL")
    assert transitions == 10 * 1 + 10 * 2 + 10 * 3
    ((stored,),) = ch.query_rows_sync("SELECT count() FROM events FINAL")
    assert stored == len(events)


async def test_a_funnel_failing_at_run_time_is_quarantined_and_the_rest_flows(
    ch: ClickHouse, tmp_path: Path
) -> None:
    from funnelstream import metrics
    from tests.processor.test_transform import broken_funnel

    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    events = stream()
    await append(log, [(e.partition_key(), encode(e)) for e in events])
    broken = broken_funnel().model_copy(update={"project": "p"})
    catalog = FunnelCatalog([FUNNEL, broken])
    processor = Processor(log, ch, catalog, ProcessorConfig(batch_max_seconds=0.05))
    await run_until_idle(processor, log, len(events))
    await log.close()

    rows = ch.query_rows_sync(
        "SELECT level, count() FROM funnel_state FINAL WHERE funnel_id = 'f' GROUP BY level"
    )
    assert dict(rows) == {1: 10, 2: 10, 3: 10}  # the good funnel, every event
    ((stored,),) = ch.query_rows_sync("SELECT count() FROM events FINAL")
    assert stored == len(events)
    assert [f.id for f in catalog.for_project("p")] == ["f"]
    (quarantined,) = catalog.quarantined("p")
    assert (quarantined.funnel_id, quarantined.code) == ("broken", "runtime_error")
    assert quarantined.reason.startswith("TypeError")
    gauge = metrics.REGISTRY.get_sample_value(
        "funnelstream_funnels_quarantined",
        {"project": "p", "funnel": "broken", "code": "runtime_error"},
    )
    assert gauge == 1
    # A new definition under the same id lifts the quarantine.
    catalog.upsert(FUNNEL.model_copy(update={"id": "broken"}))
    assert sorted(f.id for f in catalog.for_project("p")) == ["broken", "f"]
    assert catalog.quarantined("p") == []


def test_the_catalog_keeps_its_objects_when_the_same_definitions_come_again() -> None:
    """The catalog refresh reloads every few seconds: equal definitions keep the objects
    already compiled (the compile cache is by identity), so nothing is rebuilt."""
    catalog = FunnelCatalog([FUNNEL])
    version = catalog.version
    catalog.replace([FunnelDefinition.model_validate(FUNNEL.model_dump())])
    assert catalog.for_project("p")[0] is FUNNEL
    assert catalog.version == version
    changed = FUNNEL.model_copy(update={"window_seconds": 60})
    catalog.replace([changed])
    assert catalog.for_project("p")[0] is changed
    assert catalog.version == version + 1


@pytest.mark.parametrize("count_by", ["visitor", "user"])
async def test_a_funnel_failing_over_stored_history_is_quarantined_and_the_rest_flows(
    ch: ClickHouse, tmp_path: Path, count_by: str
) -> None:
    """Saved after its events were stored, the broken funnel fails in its backfill (or,
    counted by user, in the user rebuild): quarantined there, the processor keeps going
    and later events still reach the good funnel."""
    from tests.processor.test_transform import broken_funnel

    log = EmbeddedLog(tmp_path / "log", default_partitions=2)
    events = [
        dataclasses.replace(e, user_id=f"u{e.visitor_id}") if count_by == "user" else e
        for e in stream()
    ]
    first, later = events[:30], events[30:]
    await append(log, [(e.partition_key(), encode(e)) for e in first])
    catalog = FunnelCatalog([FUNNEL])
    processor = Processor(log, ch, catalog, ProcessorConfig(batch_max_seconds=0.05))
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    for _ in range(400):
        if processor.processed_messages >= len(first):
            break
        await asyncio.sleep(0.02)
    broken = broken_funnel().model_copy(update={"project": "p", "count_by": count_by})
    catalog.upsert(broken)
    for _ in range(400):
        if catalog.quarantined("p"):
            break
        await asyncio.sleep(0.02)
    await append(log, [(e.partition_key(), encode(e)) for e in later])
    for _ in range(400):
        if processor.processed_messages >= len(events):
            break
        await asyncio.sleep(0.02)
    assert not task.done(), "the processor stopped"
    stop.set()
    await task
    await log.close()

    (quarantined,) = catalog.quarantined("p")
    assert (quarantined.funnel_id, quarantined.code) == ("broken", "runtime_error")
    assert processor.processed_messages == len(events)
    rows = ch.query_rows_sync(
        "SELECT level, count() FROM funnel_state FINAL WHERE funnel_id = 'f' GROUP BY level"
    )
    assert dict(rows) == {1: 10, 2: 10, 3: 10}
