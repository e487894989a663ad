"""ClickHouse failing under the processor: refused writes, too many parts, down for a
while, and ambiguous writes (landed, then failed), each while events keep arriving.

The faults are injected at the one named point in front of the real engine
(funnelstream/faults.py via `ClickHouse(faults=...)`); the engine is chdb, the log the
embedded one, the processor the product's. Each scenario ends exact against the oracle.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from funnelstream import metrics
from funnelstream.clickhouse import ClickHouse
from funnelstream.faults import FaultPlan
from funnelstream.log.embedded import EmbeddedLog
from processor.catalog import FunnelCatalog
from processor.pipeline import Processor, ProcessorConfig
from tests.faults.harness import (
    ATTEMPTS,
    CHECKOUT,
    Expected,
    assert_stored_exactly,
    parsed,
    records,
    seed,
    shop_traffic,
    size,
    with_faults,
)

pytestmark = pytest.mark.clickhouse

CONFIG = ProcessorConfig(
    batch_max_seconds=0.05,
    batch_idle_seconds=0.02,
    poll_max_messages=200,
    retry_initial_seconds=0.01,
    retry_max_seconds=0.1,
)


async def wait_for(condition: Any, what: str, seconds: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.02)


async def feed(log: EmbeddedLog, raw: list[dict[str, Any]], chunks: int) -> None:
    """Append the events in `chunks` pieces, a little apart: events keep coming while
    the faults play."""
    producer = log.producer("events")
    await producer.start()
    events = parsed(raw)
    step = max(1, len(events) // chunks)
    for i in range(0, len(events), step):
        await producer.append(records(events[i : i + step]))
        await asyncio.sleep(0.05)


async def run_through(
    ch: ClickHouse, tmp_path: Path, raw: list[dict[str, Any]], plan: FaultPlan
) -> Processor:
    """Feed `raw` while a processor writes through `plan`; stop once all is written."""
    log = EmbeddedLog(tmp_path / "log", default_partitions=4)
    processor = Processor(log, with_faults(ch, plan), FunnelCatalog([CHECKOUT, ATTEMPTS]), CONFIG)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await feed(log, raw, chunks=8)
        await wait_for(lambda: processor.processed_messages >= len(raw), "every event written")
    finally:
        stop.set()
        await task
        await log.close()
    return processor


async def test_ambiguous_writes_are_not_counted_twice(ch: ClickHouse, tmp_path: Path) -> None:
    """Inserts land on the engine and then fail, a seeded third of them, across tables
    and batches; the processor retries each batch. Read without FINAL (as reports read
    events and the live stream reads transitions), nothing is there twice."""
    raw = shop_traffic(visitors=size(150, 2000), seed=seed(18))
    plan = FaultPlan(
        rules={
            "clickhouse.insert": {
                "fault": "ambiguous",
                "chance": 0.3,
                "seed": seed(18),
                "times": 40,
            }
        }
    )
    await run_through(ch, tmp_path, raw, plan)
    assert plan.injected["clickhouse.insert"] >= 10  # the faults did play
    assert_stored_exactly(ch, Expected.of(raw))


async def test_ambiguous_write_of_the_transitions_is_not_streamed_twice(
    ch: ClickHouse, tmp_path: Path
) -> None:
    """The materialized view's copy (read by the live stream without FINAL) is
    deduplicated with its source block."""
    raw = shop_traffic(visitors=60, seed=seed(19))
    plan = FaultPlan(
        rules={
            "clickhouse.insert": {"fault": "ambiguous", "match": "funnel_transitions", "times": 6}
        }
    )
    await run_through(ch, tmp_path, raw, plan)
    assert plan.injected["clickhouse.insert"] == 6
    assert_stored_exactly(ch, Expected.of(raw))


@pytest.mark.parametrize(
    ("point", "fault"),
    # Writes refused as by an engine that cannot merge fast enough; the engine down.
    [("clickhouse.insert", "too_many_parts"), ("clickhouse", "refuse")],
)
async def test_clickhouse_failing_while_events_keep_coming(
    ch: ClickHouse, tmp_path: Path, point: str, fault: str
) -> None:
    """Writes refused (or the whole engine down: reads too) for a while; the processor
    shows it in `problems()` (read by /readyz) and the retry metric, waits with the
    shared backoff, commits nothing unwritten, and catches up exactly."""
    raw = shop_traffic(visitors=size(120, 2000), seed=seed(20))
    plan = FaultPlan()
    log = EmbeddedLog(tmp_path / "log", default_partitions=4)
    processor = Processor(log, with_faults(ch, plan), FunnelCatalog([CHECKOUT, ATTEMPTS]), CONFIG)
    retries_before = metrics.PROCESSOR_WRITE_RETRIES._value.get()
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        feeding = asyncio.create_task(feed(log, raw, chunks=10))
        await wait_for(lambda: processor.processed_messages > 0, "a first batch written")
        plan.set({point: {"fault": fault}})  # down until set otherwise
        seen: dict[str, str] = {}

        def shown() -> bool:
            seen.update(processor.problems())
            return "clickhouse" in seen

        await wait_for(shown, "the failure shown as a problem")
        written = processor.processed_messages
        committed = {p: log.store.committed("events", CONFIG.group, p) for p in range(4)}
        await asyncio.sleep(0.5)  # events keep coming; nothing is written or committed
        assert processor.processed_messages == written
        assert {p: log.store.committed("events", CONFIG.group, p) for p in range(4)} == committed
        if point == "clickhouse.insert":
            # (With the engine down the poll's dedupe lookup, a read, may fail first.)
            assert metrics.PROCESSOR_WRITE_RETRIES._value.get() > retries_before
        plan.set({})  # back up
        await feeding
        await wait_for(lambda: processor.processed_messages >= len(raw), "every event written")
        await wait_for(lambda: not processor.problems(), "the problem cleared")
    finally:
        stop.set()
        await task
        await log.close()
    code = {"refuse": "210", "too_many_parts": "252"}[fault]
    assert f"Code: {code}" in seen["clickhouse"]
    assert_stored_exactly(ch, Expected.of(raw))
